"""Issue 19's kill test at full size: 1,000 members on 3 sidecars, 300 of them on the one killed.

Three real ``wsgi-channels sidecar`` processes and a worker (``resume_app:routing``) on Redis,
1,000 real WebSocket connections to ``/ws/room.crowd`` (each adds a presence entry on connect):
997 from gevent client processes (``benchmarks/_wsclients.py``: raw RFC 6455 sockets, a few MB
for all of them), 300 of them on the third sidecar, and three of this test's own: an observer
opted in (``_wsc=1``) on each surviving sidecar, and a member that closes its socket.

- a graceful close: the member leaves, for both observers, within a second;
- ``kill -9`` of the third sidecar: each of its 300 members leaves exactly once, for both
  observers, within ``ttl + 10 s`` of the kill (the two surviving sidecars sweep, racing each
  other); none of the other 699 leaves; ``group_presence`` then lists exactly the 699.

``ttl`` is the least a pattern takes (5 s) and ``events_max`` is above the group's size, so every
join and leave reaches the observers as an event (counts only past it). About 30 s in all.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

import stack
from servers import free_port
from test_sidecar_resume import TESTS, Client
from wsgi_channels.layers.names import new_process_prefix

pytestmark = pytest.mark.timeout(180)

TTL = 5.0
GROUP = "room.crowd"
KILLED, MEMBERS = 300, 1000
OPTIONS = f"group_presence=room.*:ttl={TTL:g}:events_max=2000:max_members=2000"
CLIENTS = os.path.join(os.path.dirname(TESTS), "benchmarks", "_wsclients.py")


class Observer:
    """An opted-in client whose reader thread keeps every presence frame with its arrival time."""

    def __init__(self, port: int, name: str) -> None:
        self.client = Client(f"ws://127.0.0.1:{port}/ws/{GROUP}?_wsc=1&user={name}")
        self.events: list[tuple[float, list]] = []  # (arrival, event) of every presence event
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stop.is_set():
            try:
                kind, value = self.client.next(timeout=0.2)
            except Exception:
                continue
            if kind == "control" and value["t"] == "p" and value["g"] == GROUP:
                now = time.monotonic()
                self.events.extend((now, ev) for ev in value["ev"])

    def leaves(self) -> list[tuple[float, str]]:
        return [(t, ev[1]) for t, ev in list(self.events) if ev[0] == "l"]

    def wait_leaves(self, ids: set, timeout: float) -> float:
        """When the last of ``ids`` had left (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = {cid: t for t, cid in self.leaves() if cid in ids}
            if len(seen) == len(ids):
                return max(seen.values())
            assert time.monotonic() < deadline, f"{len(ids) - len(seen)} of {len(ids)} never left"
            time.sleep(0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.client.close()


def _crowd(port: int, user: str, count: int, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, CLIENTS, "--url", f"ws://127.0.0.1:{port}/ws/{GROUP}?user={user}",
                             "--count", str(count), "--concurrency", "25"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)


def test_a_killed_sidecars_300_of_1000_members_each_leave_once_within_ttl_plus_10s(tmp_path, redis_server):
    url = f"{redis_server.url}?prefix=crowd{new_process_prefix('x')[2:10]}&{OPTIONS}"
    env = stack.env_for(url, TESTS)
    ports = [free_port() for _ in range(3)]
    sides = [stack.sidecar(env, tmp_path, port, "--ping-interval", "0") for port in ports]
    work = stack.worker("resume_app:routing", TESTS, env, tmp_path, threads=8)
    procs = [s.start() for s in sides] + [work.start()]
    crowds: list[subprocess.Popen] = []
    observers: list[Observer] = []
    from wsgi_channels.layers import from_url
    layer = from_url(url)
    try:
        work.wait_for_log("worker serving", timeout=30)
        started = time.monotonic()
        observers = [Observer(ports[0], "obs0"), Observer(ports[1], "obs1")]
        leaver = Client(f"ws://127.0.0.1:{ports[1]}/ws/{GROUP}?user=leaver")
        others = MEMBERS - KILLED - 3
        with open(tmp_path / "crowd.log", "w") as log:
            crowds = [_crowd(ports[2], "k", KILLED, log), _crowd(ports[0], "s", others // 2, log),
                      _crowd(ports[1], "s", others - others // 2, log)]
            for c in crowds:
                line = c.stdout.readline()
                assert line.startswith("READY ") and line.split()[2] == "0", line
        deadline = time.monotonic() + 30
        while layer.group_presence_stats(GROUP)["clients"] != MEMBERS:
            assert time.monotonic() < deadline, layer.group_presence_stats(GROUP)
            time.sleep(0.1)
        connected = time.monotonic() - started
        entries = layer.group_presence(GROUP)
        assert len(entries) == MEMBERS
        killed = {cid for cid, e in entries.items() if e["user"] == "k"}
        leaver_id = next(cid for cid, e in entries.items() if e["user"] == "leaver")
        assert len(killed) == KILLED

        # A graceful close: one leave, within a second, for both observers.
        time.sleep(0.5)  # past the frame interval: the leave is not merged with the joins
        closed = time.monotonic()
        leaver.close()
        took = [o.wait_leaves({leaver_id}, 5) - closed for o in observers]
        assert max(took) < 1.0, f"the leave came {took} s after the close"

        # kill -9: each of the 300 leaves once, within ttl + 10 s.
        procs[2].proc.send_signal(signal.SIGKILL)
        procs[2].proc.wait(5)
        at = time.monotonic()
        gone = [o.wait_leaves(killed, TTL + 15) - at for o in observers]
        time.sleep(2.5)  # a sweep period more: a second leave, if any, would come now
        for o in observers:
            counts = Counter(cid for _, cid in o.leaves())
            twice = {cid: n for cid, n in counts.items() if n > 1}
            assert not twice, f"{len(twice)} members left more than once"
            assert set(counts) == killed | {leaver_id}, (
                f"{len(set(counts) - killed - {leaver_id})} survivors left; {len(killed - set(counts))} killed stayed")
        print(f"\n{MEMBERS} members connected in {connected:.1f}s; a graceful close left after "
              f"{', '.join(f'{t * 1000:.0f}' for t in took)} ms; the {KILLED} members of the killed sidecar "
              f"all gone after {', '.join(f'{t:.1f}' for t in gone)} s (ttl {TTL:g} s), one leave each")
        assert max(gone) <= TTL + 10, gone
        after = layer.group_presence(GROUP)
        assert len(after) == MEMBERS - KILLED - 1 and not (set(after) & (killed | {leaver_id}))
        assert layer.group_presence_stats(GROUP)["clients"] == MEMBERS - KILLED - 1  # swept, not only filtered
    finally:
        for o in observers:
            o.close()
        for c in crowds:
            try:
                c.stdin.write("QUIT\n")
                c.stdin.flush()
                c.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                c.kill()
        stack.stop_all([p for p in procs if p.running])
        layer.flush()
        layer.close()
