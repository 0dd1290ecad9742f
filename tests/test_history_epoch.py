"""The epoch rule (issue 18): an epoch changes whenever a stream may have lost messages, never otherwise.

memory: per layer instance (a new process is a new layer), and ``flush()``.
ipc: per store file; kept by other processes on the same file; changed by a new file, ``flush()``,
a machine reboot (the boot id the meta row was written under differs) and an expired meta.
Redis rows join with the Redis backend (run_id, FLUSHALL, restarts, failovers).
"""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from feature_backends import feature_backend, feature_layer  # noqa: F401
from wsgi_channels.layers import from_url

pytestmark = pytest.mark.timeout(120)

Q = "group_history=chat.*:size=10:ttl=300&group_history=brief.*:size=10:ttl=0.2:meta_ttl=0.4"


def test_epoch_is_stable_within_a_run(feature_layer):
    layer = feature_layer(Q)
    epoch = layer.group_position("chat.a").epoch
    for i in range(5):
        layer.send_group("chat.a", {"text": str(i)})
        assert layer.group_position("chat.a").epoch == epoch
    assert layer.group_history("chat.a", 0).epoch == epoch
    assert layer.group_position("chat.b").epoch != epoch  # one stream per group


def test_flush_starts_new_streams(feature_layer):
    layer = feature_layer(Q)
    layer.send_group("chat.f", {"text": "x"})
    before = layer.group_position("chat.f")
    layer.flush()
    after = layer.group_position("chat.f")
    assert after.epoch != before.epoch and after.offset == 0


def test_an_expired_meta_starts_a_new_stream(feature_layer):
    layer = feature_layer(Q)
    layer.send_group("brief.x", {"text": "x"})
    before = layer.group_position("brief.x")
    assert before.offset == 1
    time.sleep(0.6)
    after = layer.group_position("brief.x")
    assert after.epoch != before.epoch and after.offset == 0


def test_memory_new_layer_new_epoch():
    one = from_url("memory://?" + Q)
    two = from_url("memory://?" + Q)
    one.send_group("chat.m", {"text": "x"})
    assert one.group_position("chat.m").epoch != two.group_position("chat.m").epoch
