"""The single-machine layer (``ipc://``) beyond the contract suite, with real processes.

The contract itself runs in ``test_layer_contract.py`` (backend ``ipc``). Here:
URLs and paths, file permissions, refusing foreign files, several writer and
reader processes at once, exact capacity under concurrent senders, SIGKILL in
the middle of traffic, cross-process wake-ups (threads and gevent), fork
safety and cleanup of expired rows. Speed figures live in
``benchmarks/ipc_layer.py``, not here.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Iterator

import pytest

from wsgi_channels.exceptions import ConfigurationError, LayerUnavailable, StoreError
from wsgi_channels.layers import from_url
from wsgi_channels.layers.ipc.store import APPLICATION_ID
from wsgi_channels.layers.ipc.wake import wake_dir_for
from wsgi_channels.layers.ipc import IpcChannelLayer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def store(tmp_path):
    return str(tmp_path / "channels.db")


@pytest.fixture
def layer(store):
    made = IpcChannelLayer(store)
    yield made
    made.close()


def spawn(code: str, *args: str) -> subprocess.Popen:
    """A real Python process running ``code`` (with ``sys.argv[1:] == args``)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{err}"
    return out


@contextlib.contextmanager
def raw(path: str) -> Iterator[sqlite3.Connection]:
    """A plain SQLite connection to look inside the store, as an operator would."""
    conn = sqlite3.connect(path, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def query(path: str, sql: str) -> list:
    with raw(path) as conn:
        return conn.execute(sql).fetchall()


def wait_for_waiter(path: str, queue: str, timeout: float = 20) -> None:
    """Block until some process has registered a wake-up socket for ``queue``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with raw(path) as conn:
            if conn.execute("SELECT 1 FROM waiters WHERE queue = ?", (queue,)).fetchone():
                return
        time.sleep(0.02)
    raise AssertionError(f"no receiver registered for {queue!r} within {timeout}s")


# -- URLs and paths -----------------------------------------------------------------------------


def test_url_selects_path_and_options(tmp_path):
    path = tmp_path / "sub dir" / "x.db"
    layer = from_url(f"ipc://{str(path).replace(' ', '%20')}?capacity=7&expiry=3&poll_interval=0.25")
    try:
        assert isinstance(layer, IpcChannelLayer)
        assert layer.path == str(path)
        assert (layer.capacity, layer.expiry, layer.poll_interval) == (7, 3.0, 0.25)
        other = from_url(f"ipc://{path}?capacity=7", capacity=9)
        assert other.capacity == 9  # keywords win over the query
        other.close()
        with pytest.raises(ConfigurationError, match="capacty"):
            from_url(f"ipc://{path}?capacty=5")
        with pytest.raises(ConfigurationError, match="poll_interval"):
            from_url(f"ipc://{path}?poll_interval=soon")
    finally:
        layer.close()


def test_relative_url_path_is_refused_with_the_absolute_url_to_write(tmp_path, monkeypatch):
    """``ipc://rel/ch.db`` used to resolve against each process's working directory: two processes
    started from different directories silently used two stores. It is refused where it is written."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as e:
        from_url("ipc://rel/ch.db")
    assert "'ipc://rel/ch.db'" in str(e.value) and "relative path 'rel/ch.db'" in str(e.value)
    assert f"ipc://{tmp_path}/rel/ch.db" in str(e.value)  # what to write instead
    assert not (tmp_path / "rel").exists()  # nothing created
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    layer = from_url("ipc://~/ch.db")  # the home directory is absolute: accepted
    try:
        assert layer.path == str(home / "ch.db")
    finally:
        layer.close()


def test_default_path_is_private_per_user_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    layer = from_url("ipc://")
    try:
        directory = tmp_path / f"wsgi_channels-{os.getuid()}"
        assert layer.path == str(directory / "channels.db")
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        layer.send("default.path", {"ok": 1})
        assert layer.receive(["default.path"]) == ("default.path", {"ok": 1})
    finally:
        layer.close()


def test_default_dir_open_to_others_or_foreign_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    directory = tmp_path / f"wsgi_channels-{os.getuid()}"
    directory.mkdir(mode=0o777)
    os.chmod(directory, 0o777)
    with pytest.raises(StoreError, match="open to other users"):
        from_url("ipc://")
    os.chmod(directory, 0o700)
    os.chown(directory, 65534, 65534)  # the tests run as root on CI; owned by "nobody" now
    if os.getuid() == 0:
        with pytest.raises(StoreError, match="belongs to uid 65534"):
            from_url("ipc://")


# -- permissions and foreign files --------------------------------------------------------------


def test_files_are_owner_only(tmp_path):
    # A short directory: the wake-up sockets go beside the store only when their paths fit in
    # sun_path, and pytest's tmp_path is longer under xdist (``popen-gwN``).
    short = tmp_path.__class__(tempfile.mkdtemp(prefix="wc_perm_", dir="/tmp"))
    try:
        _check_files_are_owner_only(short)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _check_files_are_owner_only(tmp_path) -> None:
    path = tmp_path / "new" / "deeper" / "channels.db"
    layer = IpcChannelLayer(str(path))
    try:
        layer.send("perm.a", {"x": 1})
        receiver = spawn(
            """
            import sys
            from wsgi_channels.layers.ipc import IpcChannelLayer
            layer = IpcChannelLayer(sys.argv[1])
            print(layer.receive(["perm.wait"], block=True, timeout=20)[1]["x"])
            """,
            str(path),
        )
        wait_for_waiter(str(path), "perm.wait")
        for name in ("channels.db", "channels.db-wal", "channels.db-shm", "channels.db-lock"):
            mode = stat.S_IMODE((path.parent / name).stat().st_mode)
            assert mode == 0o600, f"{name} has mode {mode:o}"
        assert wake_dir_for(str(path)) == (str(path) + "-wake", False)
        for directory in (path.parent, path.parent.parent, path.parent / "channels.db-wake"):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
        layer.send("perm.wait", {"x": 5})
        assert finish(receiver).strip() == "5"
    finally:
        layer.close()


def test_path_that_cannot_be_created_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create the directory"):
        IpcChannelLayer(str(blocker / "channels.db"))
    with pytest.raises(StoreError, match="is a directory"):
        IpcChannelLayer(str(tmp_path))
    with pytest.raises(StoreError):
        IpcChannelLayer("/proc/wsgi_channels_test/channels.db")


def test_store_not_writable_for_this_user(tmp_path):
    """A process of another user (uid 65534) gets StoreError for a root-owned store and directory."""
    if os.getuid() != 0:
        pytest.fail("this test drops privileges with setuid and needs root (CI runs as root)")
    # pytest's own tmp_path is closed to other users; work in a directory "nobody" can enter.
    tmp_path = tmp_path.__class__(tempfile.mkdtemp(prefix="wsgi_channels_perm_", dir="/tmp"))
    try:
        _check_not_writable_as_nobody(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _check_not_writable_as_nobody(tmp_path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    store = closed / "channels.db"
    IpcChannelLayer(str(store)).close()
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    IpcChannelLayer(str(open_dir / "channels.db")).close()
    os.chmod(tmp_path, 0o755)
    results = {}
    for name, path in (("closed", store), ("new_in_closed", closed / "other.db"), ("file", open_dir / "channels.db")):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: become nobody and try
            os.close(r)
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                try:
                    IpcChannelLayer(str(path))
                    message = "opened"
                except StoreError as e:
                    message = "StoreError: " + str(e)
                    code = 0
                except BaseException as e:  # noqa: BLE001 - reported to the parent
                    message = f"{type(e).__name__}: {e}"
                os.write(w, message.encode())
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r) as fh:
            results[name] = fh.read()
        os.waitpid(pid, 0)
    for name, message in results.items():
        assert message.startswith("StoreError") and "not writable" in message, (name, message)
        assert str(tmp_path) in message


def test_foreign_files_are_refused_untouched(tmp_path):
    text = tmp_path / "notes.db"
    text.write_bytes(b"these are my notes, not a database " * 200)
    before = hashlib.sha256(text.read_bytes()).hexdigest()
    with pytest.raises(StoreError, match="not a wsgi_channels store"):
        IpcChannelLayer(str(text))
    assert hashlib.sha256(text.read_bytes()).hexdigest() == before

    other = tmp_path / "app.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.close()
    before = hashlib.sha256(other.read_bytes()).hexdigest()
    with pytest.raises(StoreError, match="not a wsgi_channels store") as info:
        IpcChannelLayer(str(other))
    assert isinstance(info.value, OSError)
    assert hashlib.sha256(other.read_bytes()).hexdigest() == before
    with sqlite3.connect(other) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    conn.close()


def test_store_of_another_schema_version_is_refused(store):
    IpcChannelLayer(store).close()
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        IpcChannelLayer(store)


def test_empty_file_becomes_a_store(tmp_path):
    path = tmp_path / "empty.db"
    path.touch()
    layer = IpcChannelLayer(str(path))
    try:
        layer.send("e.x", {"a": 1})
        assert layer.receive(["e.x"]) == ("e.x", {"a": 1})
    finally:
        layer.close()


# -- many processes -----------------------------------------------------------------------------

WRITER = """
import sys, time
from wsgi_channels.layers.ipc import IpcChannelLayer
path, name, count, capacity = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
layer = IpcChannelLayer(path, capacity=capacity, process_capacity=capacity)
full = 0
for i in range(count):
    while True:
        try:
            layer.send("mp.q" if i % 3 else "mp.p!" + name, {"w": name, "i": i})
            break
        except layer.ChannelFull:
            full += 1
            time.sleep(0.001)
print(full)
"""

READER = """
import json, sys
from wsgi_channels.layers.ipc import IpcChannelLayer
layer = IpcChannelLayer(sys.argv[1])
got = []
while True:
    channel, message = layer.receive(["mp.q", "mp.p!"], block=True, timeout=20)
    if channel is None:
        raise SystemExit("reader timed out")
    if message.get("stop"):
        break
    got.append([channel, message["w"], message["i"]])
print(json.dumps(got))
"""


def test_several_writer_and_reader_processes_exactly_once_within_capacity(store):
    writers, per_writer, readers, capacity = 4, 240, 3, 15
    layer = IpcChannelLayer(store, capacity=capacity, process_capacity=capacity)
    try:
        reads = [spawn(READER, store) for _ in range(readers)]
        writes = [spawn(WRITER, store, f"w{n}", str(per_writer), str(capacity)) for n in range(writers)]
        peak = 0
        while any(p.poll() is None for p in writes):
            for queue in ("mp.q", "mp.p!"):
                peak = max(peak, layer.channel_statistics(queue)["messages_pending"])
            time.sleep(0.005)
        for p in writes:
            finish(p)
        deadline = time.monotonic() + 30  # drained before the stop messages, which only go to mp.q
        while sum(layer.channel_statistics(q)["messages_pending"] for q in ("mp.q", "mp.p!")):
            assert time.monotonic() < deadline, "readers stopped reading"
            time.sleep(0.01)
        for _ in range(readers):
            for _ in range(2000):
                try:
                    layer.send("mp.q", {"stop": True})
                    break
                except layer.ChannelFull:
                    time.sleep(0.005)
        received = []
        for p in reads:
            received.extend(tuple(item) for item in json.loads(finish(p)))
    finally:
        layer.close()
    expected = {(("mp.q" if i % 3 else f"mp.p!w{n}"), f"w{n}", i) for n in range(writers) for i in range(per_writer)}
    assert len(received) == len(expected), "a message was lost or delivered twice"
    assert set(received) == expected
    assert peak <= capacity
    # FIFO per writer on each queue, as seen by the reader that took them, is not guaranteed
    # across readers; the store must simply be empty now.
    with raw(store) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


CAPACITY_SENDER = """
import sys
from wsgi_channels.layers.ipc import IpcChannelLayer
layer = IpcChannelLayer(sys.argv[1], capacity=int(sys.argv[2]))
print("ready", flush=True)
sys.stdin.readline()
ok = 0
for i in range(int(sys.argv[3])):
    try:
        layer.send("cap.exact", {"i": i})
        ok += 1
    except layer.ChannelFull:
        pass
print(ok)
"""


def test_capacity_is_exact_under_concurrent_senders(store):
    senders, attempts, capacity = 6, 60, 137
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CAPACITY_SENDER, store, str(capacity), str(attempts)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(senders)
    ]
    for p in procs:
        line = p.stdout.readline().strip()
        if line != "ready":
            p.wait(timeout=10)
            raise AssertionError(f"sender did not start: {p.stderr.read()}")
    for p in procs:  # start them together
        p.stdin.write("go\n")
        p.stdin.flush()
    accepted = 0
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        accepted += int(out.split()[-1])
    layer = IpcChannelLayer(store, capacity=capacity)
    try:
        assert accepted == capacity
        assert layer.channel_statistics("cap.exact")["messages_pending"] == capacity
        assert layer.global_statistics()["channel_full_count"] == senders * attempts - capacity
    finally:
        layer.close()


GROUP_READER = """
import json, sys
from wsgi_channels.layers.ipc import IpcChannelLayer
layer = IpcChannelLayer(sys.argv[1])
got = []
while len(got) < int(sys.argv[3]):
    channel, message = layer.receive([sys.argv[2]], block=True, timeout=20)
    if channel is None:
        raise SystemExit("timed out with %d" % len(got))
    got.append([channel, message["n"]])
print(json.dumps(got))
"""


def test_group_fan_out_to_processes(store):
    layer = IpcChannelLayer(store, capacity=2, process_capacity=3)
    try:
        members = {prefix: [f"{prefix}c{i}" for i in range(50)] for prefix in ("sidecar.A!", "sidecar.B!")}
        for names in members.values():
            for name in names:
                layer.group_add("room", name)
        layer.group_add("room", "plain.member")
        readers = {prefix: spawn(GROUP_READER, store, prefix, str(150)) for prefix in members}
        for n in range(3):  # three broadcasts: 150 deliveries a prefix, but 3 copies, within its capacity of 3
            layer.send_group("room", {"n": n})
        for prefix, proc in readers.items():
            got = json.loads(finish(proc))
            assert sorted(c for c, n in got if n == 0) == sorted(members[prefix])
            per_member: dict[str, list[int]] = {}
            for channel, n in got:
                per_member.setdefault(channel, []).append(n)
            assert all(seq == [0, 1, 2] for seq in per_member.values())  # FIFO per member
        assert [layer.receive(["plain.member"])[1]["n"] for _ in range(2)] == [0, 1]
        assert layer.global_statistics()["group_drop_count"] == 1  # plain.member was full at n=2
    finally:
        layer.close()


# -- SIGKILL in the middle of traffic ------------------------------------------------------------

VICTIM = """
import sys, os
from wsgi_channels.layers.ipc import IpcChannelLayer
layer = IpcChannelLayer(sys.argv[1], capacity=1000)
print("ready", flush=True)
i = 0
while True:
    i += 1
    channel, message = layer.receive(["kill.in"])
    if channel is not None:
        os.write(1, b"%d\\n" % message["id"])
    try:
        layer.send("kill.churn", {"i": i, "pad": b"x" * (i % 700)})
    except layer.ChannelFull:
        pass
    layer.receive(["kill.churn"])
    layer.send_group("kill.g", {"i": i})
    layer.receive(["kill.m!"])
    layer.receive_batch(["kill.m!", "kill.churn"], 3)
    layer.group_add("kill.g", "kill.m!c%d" % (i % 5))
    layer.session_set("kill.s%d" % (i % 7), b"v" * (i % 50), 60)
"""


def test_sigkill_mid_traffic_leaves_store_consistent(store):
    layer = IpcChannelLayer(store, capacity=1000, busy_timeout=5)
    rng = random.Random(1234)
    try:
        for i in range(50):
            layer.send("kill.keep", {"keep": i})
        next_id = 0
        consumed: list[int] = []
        sent_in: list[int] = []
        for iteration in range(30):
            for _ in range(20):
                layer.send("kill.in", {"id": next_id})
                sent_in.append(next_id)
                next_id += 1
            proc = spawn(VICTIM, store)
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            time.sleep(rng.uniform(0.002, 0.06))
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
            out = proc.stdout.read()  # through the same buffer readline() filled
            proc.stdout.close()
            proc.stderr.close()
            consumed.extend(int(line) for line in out.split())

            # The store is intact and the other processes carry on at once.
            with raw(store) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                orphans = conn.execute(
                    "SELECT count(*) FROM targets WHERE msg NOT IN (SELECT id FROM messages)"
                ).fetchone()[0]
                assert orphans == 0
                fanout_ok = conn.execute(
                    "SELECT count(*) FROM messages m WHERE fanout > 0 AND "
                    "fanout != (SELECT count(*) FROM targets t WHERE t.msg = m.id)"
                ).fetchone()[0]
                assert fanout_ok == 0
            assert layer.channel_statistics("kill.keep")["messages_pending"] == 50
            layer.send("kill.after", {"it": iteration})
            assert layer.receive(["kill.after"], block=True, timeout=5) == ("kill.after", {"it": iteration})

        # Every message sent to kill.in is either consumed once or still queued; at most one per
        # kill can be lost: taken from the store in the instant before the victim could print it.
        remaining = [m["id"] for _, m in iter(lambda: layer.receive(["kill.in"]), (None, None))]
        assert len(consumed) == len(set(consumed)), "a message was delivered twice"
        assert not set(consumed) & set(remaining), "a delivered message is still queued"
        missing = set(sent_in) - set(consumed) - set(remaining)
        assert len(missing) <= 30, f"lost {len(missing)} messages"
        keep = [m["keep"] for _, m in iter(lambda: layer.receive(["kill.keep"]), (None, None))]
        assert keep == list(range(50))
    finally:
        layer.close()


# -- wake-ups across processes -------------------------------------------------------------------

BLOCKED = """
import sys, time
from wsgi_channels.layers.ipc import IpcChannelLayer
layer = IpcChannelLayer(sys.argv[1], poll_interval=60)
channel, message = layer.receive(["wake.other", sys.argv[2]], block=True, timeout=30)
print(channel, message["n"])
layer.close()
"""


def test_blocked_receiver_is_woken_by_another_process(store, layer):
    """The safety-net poll is 60 s and the timeout 30 s: only the sender's poke can wake it."""
    proc = spawn(BLOCKED, store, "wake.q")
    wait_for_waiter(store, "wake.q")
    layer.send("wake.q", {"n": 7})
    assert finish(proc, timeout=25).split() == ["wake.q", "7"]
    with raw(store) as conn:  # a clean exit unregisters its socket, and tidies up
        assert conn.execute("SELECT count(*) FROM waiters").fetchone()[0] == 0
    assert not os.path.exists(wake_dir_for(store)[0])


def test_group_send_and_bang_channels_wake_other_processes(store, layer):
    proc = spawn(BLOCKED, store, "wproc.X!")
    layer.group_add("wake.group", "wproc.X!conn")
    wait_for_waiter(store, "wproc.X!")
    layer.send_group("wake.group", {"n": 3})
    assert finish(proc, timeout=25).split() == ["wproc.X!conn", "3"]


def test_dead_receivers_are_cleaned_up_by_senders(store, layer):
    proc = spawn(BLOCKED, store, "dead.q")
    wait_for_waiter(store, "dead.q")
    proc.kill()
    proc.wait(timeout=10)
    sockets = os.listdir(wake_dir_for(store)[0])
    assert len(sockets) == 1
    layer.send("dead.q", {"n": 1})  # the poke fails: the sender drops the registration and file
    with raw(store) as conn:
        assert conn.execute("SELECT count(*) FROM waiters").fetchone()[0] == 0
    assert os.listdir(wake_dir_for(store)[0]) == []
    assert layer.receive(["dead.q"]) == ("dead.q", {"n": 1})


GEVENT_CHILD = """
from gevent import monkey
monkey.patch_all()
import sys, time, gevent
from wsgi_channels.layers.ipc import IpcChannelLayer
layer = IpcChannelLayer(sys.argv[1], poll_interval=60)
ticks = 0
def tick():
    global ticks
    while True:
        gevent.sleep(0.01)
        ticks += 1
ticker = gevent.spawn(tick)
# Nothing arrives for 1 s: the hub must keep running the ticker meanwhile.
assert layer.receive(["gevent.idle"], block=True, timeout=1.0) == (None, None)
idle_ticks = ticks
receiver = gevent.spawn(layer.receive, ["gevent.q"], block=True, timeout=30)
channel, message = receiver.get(timeout=40)
ticker.kill()
print(idle_ticks, channel, message["n"])
"""


def test_gevent_blocked_receive_yields_to_the_hub_and_wakes(store, layer):
    proc = spawn(GEVENT_CHILD, store)
    wait_for_waiter(store, "gevent.q", timeout=30)
    layer.send("gevent.q", {"n": 11})
    ticks, channel, n = finish(proc, timeout=40).split()
    assert (channel, n) == ("gevent.q", "11")
    # ~100 expected; a receive that blocked the hub would leave the ticker at 0 or 1.
    assert int(ticks) >= 20


def test_fork_child_uses_its_own_connections_and_sockets(store, layer):
    layer.send("fork.q", {"from": "parent"})
    assert layer.receive(["fork.none"], block=True, timeout=0.05) == (None, None)  # parent owns a waiter
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            channel, message = layer.receive(["fork.q"])
            layer.send("fork.back", {"got": message["from"]})
            assert layer.receive(["fork.none"], block=True, timeout=0.05) == (None, None)
            layer.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert layer.receive(["fork.back"]) == ("fork.back", {"got": "parent"})
    with raw(store) as conn:  # the parent's registration survived the child's close()
        assert conn.execute("SELECT count(*) FROM waiters WHERE queue = 'fork.none'").fetchone()[0] == 1
    layer.send("fork.q", {"from": "parent again"})
    assert layer.receive(["fork.q"]) == ("fork.q", {"from": "parent again"})


# -- housekeeping -------------------------------------------------------------------------------


def test_expired_rows_are_deleted_not_just_hidden(store):
    layer = IpcChannelLayer(store, expiry=1, group_expiry=1)
    try:
        for i in range(40):
            layer.send(f"grow.{i % 4}", {"i": i})
            layer.send(f"grow.p!c{i}", {"i": i})
            layer.session_set(f"grow.s{i}", b"x", ttl=0.5)
        for i in range(10):
            layer.group_add("grow.g", f"grow.p!m{i}")
        layer.send_group("grow.g", {"all": True})
        time.sleep(1.3)
        layer.global_statistics()  # sweeps
        with raw(store) as conn:
            for table in ("messages", "targets", "groups", "kv"):
                assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
    finally:
        layer.close()


def test_flush_clears_group_copies_and_sessions(layer, store):
    for i in range(5):
        layer.group_add("fl.g", f"fl.p!c{i}")
    layer.send_group("fl.g", {"x": 1})
    layer.session_set("fl.s", b"v", ttl=60)
    layer.flush()
    with raw(store) as conn:
        for table in ("messages", "targets", "groups", "kv"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
    assert layer.receive(["fl.p!"]) == (None, None)


def test_statistics_are_shared_by_processes(store, layer):
    other = IpcChannelLayer(store)
    try:
        before = layer.global_statistics()["messages_count"]
        for i in range(5):
            other.send("stat.q", {"i": i})
        other.close()  # its count reaches the store at close or within a second
        stats = layer.global_statistics()
        assert stats["messages_count"] == before + 5
        assert stats["messages_pending"] == 5
    finally:
        other.close()


def test_locked_store_raises_layer_unavailable_then_recovers(store):
    layer = IpcChannelLayer(store, busy_timeout=0.3)
    try:
        holder = sqlite3.connect(store, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another program holds SQLite's write lock
        with pytest.raises(LayerUnavailable, match="locked"):
            layer.send("locked.q", {"x": 1})
        holder.execute("ROLLBACK")
        holder.close()
        layer.send("locked.q", {"x": 2})
        assert layer.receive(["locked.q"]) == ("locked.q", {"x": 2})
    finally:
        layer.close()


def test_receiver_whose_socket_file_vanished_registers_again(store):
    layer = IpcChannelLayer(store, poll_interval=0.2)
    try:
        assert layer.receive(["vanish.q"], block=True, timeout=0.05) == (None, None)
        (addr,) = [r[0] for r in query(store, "SELECT addr FROM waiters WHERE queue = 'vanish.q'")]
        os.unlink(addr)  # as a temporary-files cleaner might
        # The receiver notices at its next safety-net look and registers a new socket.
        assert layer.receive(["vanish.q"], block=True, timeout=0.5) == (None, None)
        (new_addr,) = [r[0] for r in query(store, "SELECT addr FROM waiters WHERE queue = 'vanish.q'")]
        assert new_addr != addr and os.path.exists(new_addr)
    finally:
        layer.close()


# -- batches (the sidecar's reading path; order and copies are in the contract suite) ---------------


def test_receive_batch_leaves_no_rows_behind(layer):
    for i in range(50):
        layer.group_add("bat.g", f"bat.side!c{i}")
    layer.send_group("bat.g", {"n": 0})
    layer.send("bat.plain", {"n": 9})
    got = layer.receive_batch(["bat.side!", "bat.plain"], 100)
    assert len(got) == 51
    with raw(layer.path) as conn:
        assert conn.execute("SELECT count(*) FROM targets").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


def test_receive_batch_skips_expired_and_blocks_only_for_the_first(store):
    layer = IpcChannelLayer(store, expiry=1)
    try:
        layer.group_add("bx.g", "bx.side!a")
        layer.group_add("bx.g", "bx.side!b")
        layer.send_group("bx.g", {"old": True})
        time.sleep(1.2)
        assert layer.receive_batch(["bx.side!"], 10, block=True, timeout=0.3) == []
        assert layer.group_channels("bx.g") == []  # their message expired unread: evicted
        proc = spawn(
            """
            import sys, time
            from wsgi_channels.layers.ipc import IpcChannelLayer
            layer = IpcChannelLayer(sys.argv[1])
            for i in range(5):
                layer.send("bx.chan", {"i": i})
            """,
            store,
        )
        batch = layer.receive_batch(["bx.chan"], 10, block=True, timeout=10)
        finish(proc)
        rest = layer.receive_batch(["bx.chan"], 10)
        assert [m["i"] for _, m in batch + rest] == list(range(5))
        with pytest.raises(ValueError):
            layer.receive_batch(["bx.chan"], 0)
        with pytest.raises(TypeError):
            layer.receive_batch(["bad name"], 5)
    finally:
        layer.close()


def test_close_removes_the_empty_wake_directory(store):
    layer = IpcChannelLayer(store)
    assert layer.receive(["tidy.q"], block=True, timeout=0.05) == (None, None)
    wake_dir = wake_dir_for(store)[0]
    assert len(os.listdir(wake_dir)) == 1
    other = spawn(BLOCKED, store, "tidy.other")
    wait_for_waiter(store, "tidy.other")
    layer.close()
    assert len(os.listdir(wake_dir)) == 1  # the other process's socket stays, and its directory
    again = IpcChannelLayer(store)
    again.send("tidy.other", {"n": 2})
    assert finish(other, timeout=25).split() == ["tidy.other", "2"]
    assert not os.path.exists(wake_dir)  # the last one out removed it
    assert again.receive(["tidy.q"], block=True, timeout=0.05) == (None, None)  # and it comes back
    assert len(os.listdir(wake_dir)) == 1
    again.close()


def test_stuck_lock_holder_times_out_and_its_death_frees_the_store(store):
    """A process stuck while holding the writers' lock: others give up after busy_timeout, no hang."""
    holder = spawn(
        """
        import sys, time
        from wsgi_channels.layers.ipc import IpcChannelLayer
        layer = IpcChannelLayer(sys.argv[1])
        with layer._lock():
            print("held", flush=True)
            time.sleep(60)
        """,
        store,
    )
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        layer = IpcChannelLayer(store, busy_timeout=0.5)
        start = time.monotonic()
        with pytest.raises(LayerUnavailable, match="held by another process"):
            layer.send("stuck.q", {"x": 1})
        assert time.monotonic() - start < 5
        holder.kill()
        holder.wait(timeout=10)
        layer.send("stuck.q", {"x": 2})  # the kernel dropped the dead holder's lock
        assert layer.receive(["stuck.q"]) == ("stuck.q", {"x": 2})
        layer.close()
    finally:
        holder.kill()
        holder.communicate(timeout=10)


# -- history: batch trimming ------------------------------------------------------------------------


def test_history_is_trimmed_in_batches_and_reads_never_pass_size(store):
    """The stream is trimmed at every 16th offset (as on Redis): at most size + 15 rows are kept,
    contiguous, a reader sees the last ``size``, and the meta outlives the last message by
    ``meta_ttl`` at least."""
    from wsgi_channels import Group
    from wsgi_channels.layers.ipc.history import TRIM_EVERY

    layer = from_url(f"ipc://{store}?group_history=chat.*:size=10:ttl=300:meta_ttl=600")
    try:
        rows = []
        for n in range(1, 41):
            started = time.time()
            Group("chat.t", layer=layer).send({"text": str(n)})
            rows.append(query(store, "SELECT count(*) FROM hist WHERE grp = 'chat.t'")[0][0])
            (expires,) = query(store, "SELECT expires FROM hist_meta WHERE grp = 'chat.t'")[0]
            assert expires >= started + 600
            epoch, top, messages = layer.group_history("chat.t", 0)
            assert top == n
            assert [off for off, _ in messages] == list(range(max(1, n - 9), n + 1))
            assert [m["text"] for _, m in messages] == [str(o) for o, _ in messages]
        assert max(rows) == 10 + TRIM_EVERY - 1 and rows[15] == 10 and rows[31] == 10, rows
        kept = [off for (off,) in query(store, "SELECT off FROM hist WHERE grp = 'chat.t' ORDER BY off")]
        assert kept == list(range(40 - rows[-1] + 1, 41)) and len(kept) > 10
    finally:
        layer.close()
