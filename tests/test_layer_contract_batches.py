"""The contract's batch methods on every backend: ``receive_batch``, ``send_many`` and
``send_many_then_receive``, each through the backend's own implementation (its fast path) and
through ``BaseChannelLayer``'s default one.

Parametrised by ``conftest.BACKENDS``, as ``test_layer_contract.py``.
"""
from __future__ import annotations

import threading
import time

import pytest

from wsgi_channels import exceptions as exc
from wsgi_channels.layers.base import BaseChannelLayer

from test_layer_contract import drain

pytestmark = pytest.mark.timeout(60)

#: Methods that BaseChannelLayer implements from the others and a backend may override with a faster one.
FAST_PATHS = ("send_many", "receive_batch", "send_many_then_receive")


@pytest.fixture(params=["own", "default"])
def method(request):
    """``method(layer, name)``: the layer's own method, or BaseChannelLayer's default implementation
    of it run on that layer, so every backend goes through both code paths."""
    assert set(FAST_PATHS) <= set(vars(BaseChannelLayer))

    def get(layer, name):
        if request.param == "own" or name not in FAST_PATHS:
            return getattr(layer, name)
        return getattr(BaseChannelLayer, name).__get__(layer)

    return get


def test_receive_batch_takes_a_backlog_in_order(layer, method):
    receive_batch = method(layer, "receive_batch")
    assert receive_batch(["batch.a"], limit=10) == []
    for i in range(5):
        layer.send("batch.a", {"i": i})
        layer.send(f"batch.p!c{i}", {"i": i})
    layer.group_add("batch.g", "batch.p!x")
    layer.group_add("batch.g", "batch.p!y")
    layer.send_group("batch.g", {"g": True})
    got = receive_batch(["batch.a", "batch.p!"], limit=4)
    assert len(got) == 4
    rest = receive_batch(["batch.a", "batch.p!"], limit=100, block=True, timeout=1)
    everything = got + rest
    assert len(everything) == 12
    assert [m["i"] for c, m in everything if c == "batch.a"] == list(range(5))
    assert [m.get("i") for c, m in everything if c.startswith("batch.p!c")] == list(range(5))
    assert sorted(c for c, m in everything if m.get("g")) == ["batch.p!x", "batch.p!y"]
    assert receive_batch(["batch.a", "batch.p!"], limit=3) == []
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            receive_batch(["batch.a"], limit=bad)


def test_receive_batch_hands_out_group_copies_per_member_in_order(layer, method):
    receive_batch = method(layer, "receive_batch")
    members = [f"bat.side!c{i}" for i in range(500)]
    for m in members:
        layer.group_add("bat.g", m)
    layer.send("bat.side!c7", {"n": -1})
    layer.send_group("bat.g", {"n": 0})
    layer.send_group("bat.g", {"n": 1})
    layer.send("bat.plain", {"n": 9})
    got = []
    while True:
        batch = receive_batch(["bat.side!", "bat.plain"], 300)
        assert len(batch) <= 300
        if not batch:
            break
        got += batch
    assert len(got) == 1 + 1000 + 1
    per_member: dict = {}
    for channel, message in got:
        per_member.setdefault(channel, []).append(message["n"])
    assert per_member.pop("bat.plain") == [9]
    assert per_member.pop("bat.side!c7") == [-1, 0, 1]  # FIFO per member
    assert all(v == [0, 1] for v in per_member.values()) and len(per_member) == 499
    zeros = [m for _, m in got if m["n"] == 0]
    zeros[0]["n"] = "changed"  # every delivery is its own copy
    assert zeros[1]["n"] == 0
    assert receive_batch(["bat.side!"], 10) == []


def test_receive_batch_shared_still_delivers_to_every_member_in_order(layer, method):
    receive_batch = method(layer, "receive_batch")
    # shared=True lets a reader that never changes messages (the sidecar) skip the copies.
    members = [f"shr.side!c{i}" for i in range(300)]
    for m in members:
        layer.group_add("shr.g", m)
    layer.send_group("shr.g", {"n": 0, "list": [1, 2]})
    layer.send("shr.side!c3", {"n": 1})
    layer.send_group("shr.g", {"n": 2, "list": [1, 2]})
    got = []
    while True:
        batch = receive_batch(["shr.side!"], 128, shared=True)
        assert len(batch) <= 128
        if not batch:
            break
        got += batch
    per_member: dict = {}
    for channel, message in got:
        assert message == {"n": 1} or message["list"] == [1, 2]
        per_member.setdefault(channel, []).append(message["n"])
    assert per_member.pop("shr.side!c3") == [0, 1, 2]
    assert len(per_member) == 299 and all(v == [0, 2] for v in per_member.values())


def test_send_many_reports_each_items_outcome_and_keeps_order(make_layer, method):
    layer = make_layer(capacity=2, max_message_size=1000)
    send_many = method(layer, "send_many")
    full_before = layer.global_statistics()["channel_full_count"]
    items = [
        ("many.a", {"i": 0}),
        ("bad name", {"i": 1}),
        ("many.P!x", {"i": 2}),
        ("many.a", {"i": 3}),
        ("many.a", {"i": 4}),  # over the capacity of 2
        ("many.b", {"bad": object()}),
        ("many.b", {"big": b"x" * 2000}),
        ("many.b", {"text": "\ud800"}),
        ("many.P!y", {"i": 8}),
    ]
    outcomes = send_many(items)
    assert len(outcomes) == len(items)
    expected = [None, exc.InvalidChannelName, None, None, exc.ChannelFull, exc.InvalidMessage,
                exc.MessageTooLarge, exc.InvalidMessage, None]
    for outcome, kind in zip(outcomes, expected):
        assert outcome is None if kind is None else isinstance(outcome, kind), (outcome, kind)
    assert "'bad name'" in str(outcomes[1]) and "many.a" in str(outcomes[4])
    assert drain(layer, ["many.a"]) == [("many.a", {"i": 0}), ("many.a", {"i": 3})]
    assert drain(layer, ["many.P!"]) == [("many.P!x", {"i": 2}), ("many.P!y", {"i": 8})]
    assert drain(layer, ["many.b"]) == []
    assert layer.global_statistics()["channel_full_count"] == full_before + 1
    assert send_many([]) == []


def test_send_many_copies_its_messages(layer, method):
    message = {"list": [1]}
    assert method(layer, "send_many")([("many.copy", message)]) == [None]
    message["list"].append(2)
    assert layer.receive(["many.copy"]) == ("many.copy", {"list": [1]})


def test_send_many_then_receive_sends_first_then_takes_a_batch(layer, method):
    send_then_receive = method(layer, "send_many_then_receive")
    layer.send("smr.in", {"n": 0})
    outcomes: list = ["stale"]
    got = send_then_receive([("smr.reply", {"r": 1}), ("bad name", {}), ("smr.in", {"n": 1})],
                            ["smr.in"], 10, 5, outcomes)
    assert outcomes[0] is None and isinstance(outcomes[1], exc.InvalidChannelName) and outcomes[2] is None
    assert len(outcomes) == 3
    assert got == [("smr.in", {"n": 0}), ("smr.in", {"n": 1})]  # the send went first
    assert layer.receive(["smr.reply"]) == ("smr.reply", {"r": 1})
    # nothing waiting: it waits up to the timeout, then returns an empty batch
    start = time.monotonic()
    assert send_then_receive([("smr.reply", {"r": 2})], ["smr.in"], 10, 0.4, outcomes) == []
    assert 0.3 <= time.monotonic() - start < 3.0 and outcomes == [None]
    assert layer.receive(["smr.reply"]) == ("smr.reply", {"r": 2})
    # a message sent meanwhile ends the wait
    thread = threading.Thread(target=lambda: (time.sleep(0.3), layer.send("smr.in", {"n": 2})))
    thread.start()
    got = send_then_receive([], ["smr.in", "smr.P!"], 10, 5, outcomes)
    thread.join()
    assert got == [("smr.in", {"n": 2})] and outcomes == []


def test_the_declared_fast_paths_are_backed_by_overrides(layer):
    # A backend that claims cheap batches must implement them itself.
    if layer.send_many_batches:
        assert type(layer).send_many is not BaseChannelLayer.send_many
    if layer.batch_round_trips:
        assert type(layer).receive_batch is not BaseChannelLayer.receive_batch
