"""Issue 18's race: 1,000 clients reconnect while 200 messages/s are published to their groups.

Three real Redis shards (a hash ring), a real worker (``resume_app:routing``) and a real sidecar
process, 1,000 opted-in raw WebSocket clients in three gevent processes
(``benchmarks/_resume_clients.py``), one group per process, the groups chosen so that each
group's history lives on a different shard: whichever shard a sidecar's process prefix lands
on, two of the three groups keep their history on another shard than the prefix that delivers
their messages (checked, for the killed sidecar and for the new one). Publishers send 200
messages/s in all, the sidecar is killed with SIGKILL and started again on the same port while
they go on, and every client reconnects with its ``_wsc_r`` position. Every client must end with
every offset from its first message to the group's last exactly once, in order: no duplicate,
no gap (announced or silent), no epoch change.

This is a correctness test at the issue's scale; how fast the clients catch up is measured by
``benchmarks/history_presence.py storm``, not asserted here.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import stack
from servers import free_port

BENCHMARKS = stack.ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from _storm import Publisher, _listening, _sidecar  # noqa: E402

CLIENTS = 1000
RATE = 200.0  # messages/s, over the three groups
OPTIONS = "group_history=race.*:size=5000:ttl=300&prefix=race"


def _groups_one_per_shard(layer) -> list[str]:
    """Three group names whose history (kept on the group's own shard) is on three different shards."""
    shards = layer._shards
    assert len(shards) == 3
    found: dict = {}
    i = 0
    while len(found) < 3:
        name = f"race.g{i}"
        found.setdefault(id(layer._shard_of(name)), name)
        i += 1
    return list(found.values())


def _prefixes(layer, groups: list[str]) -> set[str]:
    """The sidecar prefixes among the groups' members."""
    return {m[:m.index("!") + 1] for g in groups for m in layer.group_channels(g) if "!" in m}


def _wait_members(layer, groups: list[str], counts: list[int], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = [len(layer.group_channels(g)) for g in groups]
        if got == counts:
            return
        assert time.monotonic() < deadline, f"members {got}, expected {counts}"
        time.sleep(0.1)


@pytest.mark.timeout(300)
def test_a_thousand_clients_reconnecting_under_200_messages_a_second_get_every_offset_once(tmp_path,
                                                                                               redis_shards):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    url = ",".join(f"{s.url}?{OPTIONS}" for s in redis_shards)
    env = stack.env_for(url, stack.ROOT / "tests")
    from wsgi_channels.layers import from_url

    layer = from_url(url)
    layer.flush()
    groups = _groups_one_per_shard(layer)
    shard_of_group = {g: id(layer._shard_of(g)) for g in groups}
    port = free_port()
    worker = stack.worker("resume_app:routing", stack.ROOT / "tests", env, tmp_path, 8).start()
    worker.wait_for_log("worker serving", timeout=30)
    sidecar = _sidecar(env, port, str(tmp_path), 1).start()
    procs = [worker, sidecar]
    clients: list[subprocess.Popen] = []
    publishers: list = []
    counts = [CLIENTS // 3 + (1 if i < CLIENTS % 3 else 0) for i in range(3)]
    try:
        deadline = time.monotonic() + 20
        while not _listening(port):
            assert time.monotonic() < deadline and sidecar.proc.poll() is None, "the sidecar did not start"
            time.sleep(0.02)
        for group, n in zip(groups, counts):
            clients.append(subprocess.Popen(
                [sys.executable, str(BENCHMARKS / "_resume_clients.py"), "--port", str(port), "--group", group,
                 "--count", str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                cwd=str(BENCHMARKS), env=env))
        for c, n in zip(clients, counts):
            line = c.stdout.readline()  # type: ignore[union-attr]
            assert line.split()[:3] == ["READY", str(n), "0"], line
        _wait_members(layer, groups, counts)  # every socket joined (its own name under the prefix)
        before = _prefixes(layer, groups)

        publishers = [Publisher(url, g, RATE / 3) for g in groups]
        for p in publishers:
            p.start()
        time.sleep(2.0)  # every client has had messages, so a position to resume from
        at_kill = {g: layer.group_position(g)[1] for g in groups}
        sidecar.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        sidecar.proc.wait()  # type: ignore[union-attr]
        time.sleep(0.5)
        sidecar = _sidecar(env, port, str(tmp_path), 2).start()
        procs.append(sidecar)
        deadline = time.monotonic() + 20
        while not _listening(port):
            assert time.monotonic() < deadline and sidecar.proc.poll() is None, "the new sidecar did not start"
            time.sleep(0.005)
        t_listen = time.time()
        time.sleep(2.0)  # the reconnect storm, publishers still sending
        for p in publishers:
            p.stop.set()
        for p in publishers:
            p.join(10)
        tops = {g: layer.group_position(g)[1] for g in groups}
        after = _prefixes(layer, groups) - before  # the killed sidecar's memberships linger until they expire
        summaries = {}
        for c, g in zip(clients, groups):
            c.stdin.write(f"REPORT {t_listen} {tops[g]} 60\n")  # type: ignore[union-attr]
            c.stdin.flush()  # type: ignore[union-attr]
        for c, g in zip(clients, groups):
            summaries[g] = json.loads(c.stdout.readline())  # type: ignore[union-attr]
    finally:
        for c in clients:
            try:
                c.stdin.write("QUIT\n")  # type: ignore[union-attr]
                c.stdin.flush()  # type: ignore[union-attr]
                c.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                c.kill()
        for p in publishers:
            p.stop.set()
            p.layer.close()
        stack.stop_all(procs)

    try:
        # the shape the issue asks for: history on another shard than the prefix, for each sidecar
        for prefixes in (before, after):
            assert len(prefixes) == 1, prefixes
            prefix_shard = id(layer._shard_of(next(iter(prefixes))))
            assert sum(1 for g in groups if shard_of_group[g] != prefix_shard) == 2, (prefixes, shard_of_group)
        for p in publishers:
            assert p.errors == {}, p.errors
        total = 0
        for g in groups:
            top = tops[g]
            assert top >= RATE / 3 * 3, f"{g}: only {top} published"
            for s in summaries[g]:
                assert s["first"] is not None and s["first"] <= at_kill[g], (g, s)  # had a position before the kill
                assert (s["last"], s["dups"], s["gaps"], s["silent_gaps"], s["gap_frames"], s["epoch_changes"]) \
                    == (top, 0, 0, 0, 0, 0), (g, top, s)
                assert s["received"] == top - s["first"] + 1, (g, top, s)
                assert s["reconnect_s"] is not None, (g, s)  # it did reconnect to the new sidecar
                total += s["received"]
        assert total > CLIENTS * 100
    finally:
        layer.flush()
        layer.close()
