"""Live history messages in offset order, holes filled from the history, the replay limit (issue 18).

A real sidecar and worker on an ``ipc://`` store whose sidecar prefix holds 4 messages
(``process_capacity=4``): while the sidecar is stopped (SIGSTOP), copies past the fourth are
dropped by the layer, as for a sidecar that fell behind; the next message then arrives after a
hole, which the sidecar fills from the history. Copies injected out of order on the sidecar's
prefix (what cross-shard fan-out looks like) are put back in order. A resume or a hole of more
than ``--max-replay`` messages is a ``gap`` with ``why: "too_many"``, never replayed in part.
"""
from __future__ import annotations

import signal
import time
import urllib.request

import pytest

import stack
from servers import free_port
from test_sidecar_resume import TESTS, Client

MAX_REPLAY = 20
OPTIONS = "process_capacity=4&group_history=chat.*:size=50:ttl=300&group_history=small.*:size=3:ttl=300"


class ReorderStack:
    def __init__(self, tmp_path) -> None:
        self.url = f"ipc://{tmp_path}/channels.db?{OPTIONS}"
        self.env = stack.env_for(self.url, TESTS)
        self.port, self.admin = free_port(), free_port()
        side = stack.sidecar(self.env, tmp_path, self.port, "--ping-interval", "0", "--connect-timeout", "2",
                             "--max-replay", str(MAX_REPLAY), "--admin-bind", f"127.0.0.1:{self.admin}")
        work = stack.worker("resume_app:routing", TESTS, self.env, tmp_path)
        self.procs = [side.start(), work.start()]
        work.wait_for_log("worker serving", timeout=30)
        from wsgi_channels.layers import from_url
        self.layer = from_url(self.url)

    def stop(self) -> None:
        stack.stop_all(self.procs)
        self.layer.close()

    def connect(self, group: str, query: str = "_wsc=1") -> Client:
        c = Client(f"ws://127.0.0.1:{self.port}/ws/{group}?{query}")
        deadline = time.monotonic() + 10
        while not self.layer.group_channels(group):
            assert time.monotonic() < deadline, f"{group}: no member"
            time.sleep(0.02)
        return c

    def publish(self, group: str, *texts: str) -> None:
        for text in texts:
            self.layer.send_group(group, {"text": text})

    def first(self, c: Client, group: str, text: str) -> tuple[str, int]:
        """Publish ``text``; the (epoch, offset) the client got it at."""
        self.publish(group, text)
        (g, epoch, offset), value = c.messages(1)[0]
        assert (g, value) == (group, text)
        return epoch, offset

    def stopped(self):
        """A context in which the sidecar takes nothing from its prefix (SIGSTOP, then SIGCONT)."""
        proc = self.procs[0].proc
        return _Paused(proc)

    def drops(self) -> int:
        return self.layer.global_statistics().get("group_drop_count", 0)

    def metric(self, outcome: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5).read().decode()
        line = f'wsgi_channels_sidecar_history_total{{outcome="{outcome}"}} '
        return next((float(x[len(line):]) for x in text.splitlines() if x.startswith(line)), 0.0)


class _Paused:
    def __init__(self, proc) -> None:
        self.proc = proc

    def __enter__(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture(scope="module")
def rs(tmp_path_factory):
    s = ReorderStack(tmp_path_factory.mktemp("reorder"))
    yield s
    s.stop()


def offsets_and_controls(c: Client, n: int) -> tuple[list, list, list]:
    got = c.messages(n)
    return ([k[2] for k, v in got if k != "control"], [v for k, v in got if k != "control"],
            [v for k, v in got if k == "control"])


def test_copies_dropped_on_a_full_prefix_are_filled_from_the_history_in_order(rs):
    group = "chat.fill"
    c = rs.connect(group)
    epoch, base = rs.first(c, group, "b0")
    drops, filled = rs.drops(), rs.metric("filled")
    with rs.stopped():
        rs.publish(group, *[f"b{i}" for i in range(1, 12)])  # the prefix keeps 4: b5..b11 are dropped
    assert rs.drops() - drops == 7  # still counted as dropped by the layer
    first, _, _ = offsets_and_controls(c, 4)  # what the prefix kept (it has room again)
    rs.publish(group, "b12")  # arrives after the hole: b5..b11 come from the history
    offsets, texts, controls = offsets_and_controls(c, 8)
    assert first + offsets == list(range(base + 1, base + 13)), offsets
    assert texts == [f"b{i}" for i in range(5, 13)] and controls == []
    assert rs.metric("filled") - filled == 7
    rs.publish(group, "b13")
    assert c.messages(1) == [((group, epoch, base + 13), "b13")]
    c.close()


def test_copies_out_of_order_on_the_prefix_reach_the_client_in_order_once(rs):
    """Cross-shard fan-out delivers offset n+2 before n+1: the sidecar waits for n+1 and reorders."""
    group = "chat.cross"
    c = rs.connect(group)
    epoch, base = rs.first(c, group, "c0")
    reordered = rs.metric("reordered")
    with rs.stopped():  # the three copies reach the prefix before the sidecar reads any
        # The copy of the next-but-one message arrives first (injected as the layer would stamp it) ...
        rs.layer._send_group_internal(group, {"text": "c2", "__wsc_h": [group, epoch, base + 2]})
        rs.publish(group, "c1", "c2")  # ... then n+1, then the regular copy of n+2 (a duplicate)
    offsets, texts, controls = offsets_and_controls(c, 2)
    assert offsets == [base + 1, base + 2] and texts == ["c1", "c2"] and controls == []
    rs.publish(group, "c3")
    assert c.messages(1) == [((group, epoch, base + 3), "c3")]  # c2 was not delivered twice
    assert rs.metric("reordered") - reordered == 1
    # A copy ahead whose predecessor never comes as a copy: filled from the history after the wait.
    rs.publish(group, "c4")
    assert c.messages(1) == [((group, epoch, base + 4), "c4")]
    with rs.stopped():
        rs.publish(group, *[f"d{i}" for i in range(1, 7)])  # base+5..base+10: 4 kept, 2 dropped
    offsets, texts, controls = offsets_and_controls(c, 4)
    rs.layer._send_group_internal(group, {"text": "d6", "__wsc_h": [group, epoch, base + 10]})  # d5's never comes
    more, more_texts, more_controls = offsets_and_controls(c, 2)
    offsets, texts, controls = offsets + more, texts + more_texts, controls + more_controls
    assert offsets == list(range(base + 5, base + 11)) and texts == [f"d{i}" for i in range(1, 7)], (offsets, texts)
    assert controls == []
    c.close()


def test_a_hole_the_history_no_longer_has_is_a_trimmed_gap_then_what_it_has(rs):
    group = "small.hole"
    c = rs.connect(group)
    epoch, base = rs.first(c, group, "s0")
    with rs.stopped():
        rs.publish(group, *[f"s{i}" for i in range(1, 10)])  # prefix: s1..s4; history (size 3): s7..s9
    offsets, texts, controls = offsets_and_controls(c, 4)
    rs.publish(group, "s10")  # history now s8..s10
    more, more_texts, more_controls = offsets_and_controls(c, 3)
    texts, controls = texts + more_texts, controls + more_controls
    assert texts == ["s1", "s2", "s3", "s4", "s8", "s9", "s10"], texts
    assert controls == [{"t": "gap", "g": group, "why": "trimmed", "e": epoch, "o": base + 7}]
    c.close()


def test_a_hole_larger_than_max_replay_is_a_too_many_gap(rs):
    group = "chat.many"
    c = rs.connect(group)
    epoch, base = rs.first(c, group, "t0")
    with rs.stopped():
        rs.publish(group, *[f"t{i}" for i in range(1, 30)])  # 4 kept, 25 dropped (> 20)
    offsets, texts, controls = offsets_and_controls(c, 4)
    rs.publish(group, "t30")
    more, more_texts, more_controls = offsets_and_controls(c, 1)
    texts, controls = texts + more_texts, controls + more_controls
    assert texts == ["t1", "t2", "t3", "t4", "t30"]
    assert controls == [{"t": "gap", "g": group, "why": "too_many", "e": epoch, "o": base + 29}]
    c.close()


def test_a_resume_past_max_replay_replays_nothing_and_is_a_too_many_gap(rs):
    group = "chat.resume"
    c = rs.connect(group)
    epoch, base = rs.first(c, group, "r0")
    c.close()
    deadline = time.monotonic() + 10
    while rs.layer.group_channels(group):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    rs.publish(group, *[f"r{i}" for i in range(1, MAX_REPLAY + 2)])  # 21 missed
    c = Client(f"ws://127.0.0.1:{rs.port}/ws/{group}?_wsc_r={group}:{epoch}:{base}")
    kind, value = c.next()
    assert (kind, value) == ("control", {"t": "gap", "g": group, "why": "too_many", "e": epoch,
                                         "o": base + MAX_REPLAY + 1})
    rs.publish(group, "live")
    assert c.messages(1) == [((group, epoch, base + MAX_REPLAY + 2), "live")]
    c.close()
    # Exactly the limit is replayed.
    c = Client(f"ws://127.0.0.1:{rs.port}/ws/{group}?_wsc_r={group}:{epoch}:{base + 2}")
    offsets, texts, controls = offsets_and_controls(c, MAX_REPLAY)
    assert offsets == list(range(base + 3, base + MAX_REPLAY + 3)) and controls == []
    assert c.next() == ("control", {"t": "recovered", "g": group, "e": epoch, "o": base + MAX_REPLAY + 2,
                                    "n": MAX_REPLAY})
    c.close()
