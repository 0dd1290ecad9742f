"""Presence through the sidecar (issue 19): two real sidecars and a worker on one ``ipc://`` store.

The sidecar owns its sockets' presence entries: it keeps them alive past their ttl, removes them
when a socket closes, and sweeps the entries of a sidecar killed with SIGKILL, whose users then
leave for the other sidecar's clients within the ttl plus a sweep period. Opted-in clients get
each change as a presence control frame; a client that did not opt in gets none.
"""
from __future__ import annotations

import signal
import time

import stack
from servers import free_port
from test_sidecar_resume import TESTS, Client

TTL = 5.0
URL_OPTIONS = f"group_presence=room.*:ttl={TTL:g}"


def presence_events(client: Client, until, timeout: float) -> list:
    """Presence changes received until ``until(changes)`` is true (AssertionError after ``timeout``)."""
    changes: list = []
    deadline = time.monotonic() + timeout
    while not until(changes):
        left = deadline - time.monotonic()
        assert left > 0, f"no such presence change within {timeout}s: {changes}"
        try:
            kind, value = client.next(timeout=left)
        except Exception as e:
            raise AssertionError(f"no such presence change within {timeout}s: {changes} ({e!r})") from None
        if kind == "control" and value["t"] == "p":
            changes.append((time.monotonic(), value))
    return changes


def events_of(changes: list) -> list:
    return [ev for _, c in changes for ev in c["ev"]]


def test_killed_sidecars_users_leave_for_the_other_sidecars_clients_within_ttl(tmp_path):
    url = f"ipc://{tmp_path}/channels.db?{URL_OPTIONS}"
    env = stack.env_for(url, TESTS)
    ports = [free_port(), free_port()]
    sides = [stack.sidecar(env, tmp_path, port, "--ping-interval", "0") for port in ports]
    work = stack.worker("resume_app:routing", TESTS, env, tmp_path)
    procs = [sides[0].start(), sides[1].start(), work.start()]
    try:
        work.wait_for_log("worker serving", timeout=30)
        from wsgi_channels.layers import from_url
        layer = from_url(url)
        group = "room.kill"
        ann = Client(f"ws://127.0.0.1:{ports[0]}/ws/{group}?_wsc=1&user=ann")
        raw = Client(f"ws://127.0.0.1:{ports[0]}/ws/{group}?user=raw")  # did not opt in: no presence frames
        bob = Client(f"ws://127.0.0.1:{ports[1]}/ws/{group}?_wsc=1&user=bob")
        joined = presence_events(ann, lambda ch: any(ev[0] == "j" and ev[2] == "bob" for ev in events_of(ch)), 10)
        bob_id = next(ev[1] for ev in events_of(joined) if ev[0] == "j" and ev[2] == "bob")
        assert sorted(e["user"] for e in layer.group_presence(group).values()) == ["ann", "bob", "raw"]
        # Bob's sidecar stops answering (SIGSTOP) past the ttl: swept, he leaves; back (SIGCONT), its
        # refresh finds the lease gone and reasserts: he joins again, and stays past another ttl.
        procs[1].proc.send_signal(signal.SIGSTOP)
        try:
            presence_events(ann, lambda ch: ["l", bob_id] in events_of(ch), TTL + 6)
            assert bob_id not in layer.group_presence(group)
        finally:
            procs[1].proc.send_signal(signal.SIGCONT)
        back = presence_events(ann, lambda ch: any(ev[:3] == ["j", bob_id, "bob"] for ev in events_of(ch)), 6)
        rejoined = back[-1][0]
        try:
            presence_events(ann, lambda ch: ["l", bob_id] in events_of(ch), TTL + 1)
            raise AssertionError("bob left while his sidecar was refreshing")
        except AssertionError as e:
            assert "no such presence change" in str(e), e
        assert time.monotonic() - rejoined > TTL and bob_id in layer.group_presence(group)
        procs[1].proc.send_signal(signal.SIGKILL)
        procs[1].proc.wait(5)
        killed = time.monotonic()
        left = presence_events(ann, lambda ch: ["l", bob_id] in events_of(ch), TTL + 6)
        seen = left[-1][0] - killed
        assert seen <= TTL + 3, f"bob left {seen:.1f}s after the kill"  # lease (<= ttl) + a sweep period
        assert sorted(e["user"] for e in layer.group_presence(group).values()) == ["ann", "raw"]
        # A socket that closes leaves at once (its sidecar removes the entry).
        raw.close()
        gone = presence_events(ann, lambda ch: any(ev[0] == "l" for ev in events_of(ch)), 5)
        assert len(events_of(gone)) == 1
        assert sorted(e["user"] for e in layer.group_presence(group).values()) == ["ann"]
        ann.close()
        layer.close()
    finally:
        stack.stop_all([p for p in procs if p.running])


def test_a_client_that_did_not_opt_in_gets_no_presence_frames(tmp_path):
    url = f"ipc://{tmp_path}/channels.db?{URL_OPTIONS}"
    env = stack.env_for(url, TESTS)
    port = free_port()
    side = stack.sidecar(env, tmp_path, port, "--ping-interval", "0")
    work = stack.worker("resume_app:routing", TESTS, env, tmp_path)
    procs = [side.start(), work.start()]
    try:
        work.wait_for_log("worker serving", timeout=30)
        raw = Client(f"ws://127.0.0.1:{port}/ws/room.raw?user=raw")
        seen = Client(f"ws://127.0.0.1:{port}/ws/room.raw?_wsc=1&user=seen")
        third = Client(f"ws://127.0.0.1:{port}/ws/room.raw?user=third")
        presence_events(seen, lambda ch: any(ev[0] == "j" and ev[2] == "third" for ev in events_of(ch)), 10)
        third.close()
        presence_events(seen, lambda ch: any(ev[0] == "l" for ev in events_of(ch)), 5)
        raw.ws.send("ping")  # raw saw two joins and a leave happen: none of them reached it
        assert raw.ws.recv_data() == (1, b"ping")
        seen.close()
        raw.close()
    finally:
        stack.stop_all(procs)
