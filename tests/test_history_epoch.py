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


# -- ipc: the store file and the machine's boot ---------------------------------------------------


def _ipc(path, query=Q):
    return from_url(f"ipc://{path}?{query}")


def test_ipc_epoch_is_per_store_file_and_shared_by_processes(tmp_path):
    one = _ipc(tmp_path / "one.db")
    one.send_group("chat.e", {"text": "x"})
    epoch = one.group_position("chat.e").epoch
    code = textwrap.dedent("""
        import sys
        from wsgi_channels.layers import from_url
        layer = from_url(sys.argv[1])
        layer.send_group("chat.e", {"text": "from another process"})
        print(*layer.group_position("chat.e"))
    """)
    out = subprocess.run([sys.executable, "-c", code, f"ipc://{tmp_path / 'one.db'}?{Q}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [epoch, "2"]  # the same stream, continued
    reopened = _ipc(tmp_path / "one.db")
    assert reopened.group_position("chat.e") == (epoch, 2)
    other = _ipc(tmp_path / "two.db")
    assert other.group_position("chat.e").epoch != epoch  # a new file: a new stream
    for layer in (one, reopened, other):
        layer.close()


def test_ipc_epoch_changes_after_a_reboot(tmp_path):
    """A row written under another boot id (the machine restarted: ``synchronous=NORMAL`` may have
    lost the last transactions) is not the stream clients followed."""
    layer = _ipc(tmp_path / "c.db")
    for i in range(3):
        layer.send_group("chat.boot", {"text": str(i)})
    before = layer.group_position("chat.boot")
    conn = sqlite3.connect(tmp_path / "c.db")
    with conn:
        conn.execute("UPDATE hist_meta SET boot = 'another-boot' WHERE grp = 'chat.boot'")
    conn.close()
    after = layer.group_position("chat.boot")
    assert after.epoch != before.epoch and after.offset == 0
    assert layer.group_history("chat.boot", 0).messages == []  # the old stream's messages are gone with it
    layer.send_group("chat.boot", {"text": "new"})
    assert layer.group_history("chat.boot", 0) == (after.epoch, 1, [(1, {"text": "new"})])
    layer.close()


def test_ipc_schema_1_store_is_upgraded_in_place(tmp_path):
    path = tmp_path / "old.db"
    layer = from_url(f"ipc://{path}")
    layer.send("kept.channel", {"text": "queued before the upgrade"})
    layer.close()
    conn = sqlite3.connect(path)  # make it a schema-1 store: the version-2 tables are the additions
    for table in ("hist", "hist_meta", "presence", "presence_owner", "presence_users", "presence_meta"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    layer = _ipc(path)
    assert layer.receive(["kept.channel"])[1] == {"text": "queued before the upgrade"}
    layer.send_group("chat.up", {"text": "x"})
    assert layer.group_position("chat.up").offset == 1
    layer.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()


def test_ipc_publisher_without_the_pattern_is_reported(tmp_path, caplog):
    keeper = _ipc(tmp_path / "c.db")
    keeper.group_add("chat.drift", "member.x")
    keeper.send_group("chat.drift", {"text": "kept"})
    drifted = from_url(f"ipc://{tmp_path / 'c.db'}")  # no group_history: a process configured apart
    with caplog.at_level("WARNING"):
        drifted.send_group("chat.drift", {"text": "not kept"})
        drifted.send_group("chat.drift", {"text": "not kept either"})  # one warning per group and minute
    warnings = [r for r in caplog.records if "keeps history (configured elsewhere)" in r.getMessage()]
    assert len(warnings) == 1 and "chat.drift" in warnings[0].getMessage()
    assert drifted.global_statistics()["history_unstamped_count"] == 1
    assert keeper.group_history("chat.drift", 0).messages == [(1, {"text": "kept"})]
    assert [m["text"] for _, m in [keeper.receive(["member.x"]) for _ in range(3)]] == [
        "kept", "not kept", "not kept either"]  # delivered as before, only not kept
    for layer in (keeper, drifted):
        layer.close()
