"""The resume rules of one socket (:class:`wsgi_channels.sidecar.resume.Follower`), in memory.

The follower is driven as the sidecar drives it (notices, stamped messages, the accept, the
sweeper's timer check) on a real in-memory layer with history; what it would write to the socket
is recorded. The same rules run over real processes in ``test_sidecar_resume.py``.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from types import SimpleNamespace

import gevent

from wsgi_channels.exceptions import LayerUnavailable
from wsgi_channels.layers.memory import MemoryChannelLayer
from wsgi_channels.sidecar.resume import Follower, HistoryReader, Options

GROUP = "chat.f"


class Side:
    """What a Follower needs of its WebSocketSide: the connection's sidecar, and the writes (recorded)."""

    def __init__(self, layer) -> None:
        presence = SimpleNamespace(joined=lambda *a: None, left=lambda *a: None, closed=lambda *a: None,
                                   count=lambda *a: None, uncount=lambda *a: None)
        sidecar = SimpleNamespace(layer=layer, stats=SimpleNamespace(resumes=Counter()), presence=presence,
                                  config=SimpleNamespace(connect_timeout=1.0, max_replay=1000), history_reader=HistoryReader(layer))
        self.conn = SimpleNamespace(sidecar=sidecar, reply_channel="sidecar.x!y", aborted=False,
                                    corked=contextlib.nullcontext)
        self.session = None
        self.out: list = []

    def open(self) -> None:
        self.session = SimpleNamespace(open=True)

    def write_control(self, body) -> None:
        if self.session is not None:
            self.out.append(("control", body))

    def write_message(self, message, position) -> None:
        self.out.append((position[2], message["text"]))


def make(resume=None):
    layer = MemoryChannelLayer(group_history={"chat.*": {"size": 5}})
    side = Side(layer)
    follower = Follower(side, Options(True, resume or {}))
    return layer, side, follower


def live(follower, side, layer_epoch, offset, text):
    """A live stamped copy, as the receive loop hands it over: written when the follower says so."""
    message = {"text": text}
    deliver, position = follower.stamped(message, [GROUP, layer_epoch, offset])
    if deliver:
        side.out.append((position[2], text))


def test_resume_merges_history_and_held_live_messages_exactly_once():
    layer, side, _ = make()
    for i in range(1, 4):
        layer.send_group(GROUP, {"text": f"m{i}"})
    epoch = layer.group_position(GROUP).epoch
    side = Side(layer)
    follower = Follower(side, Options(True, {GROUP: (epoch, 1)}))
    follower.notice({"g": GROUP, "a": True, "h": True, "p": None})
    live(follower, side, epoch, 4, "m4")  # arrives before the accept: held
    side.open()
    follower.accepted()  # starts the read
    live(follower, side, epoch, 5, "m5")  # while the read runs: held
    layer.send_group(GROUP, {"text": "m4"})  # the history now has m2..m4 (size 5)
    layer.send_group(GROUP, {"text": "m5"})
    gevent.sleep(0.05)
    live(follower, side, epoch, 5, "m5")  # a late copy of what was delivered: dropped
    live(follower, side, epoch, 6, "m6")
    assert side.out == [(2, "m2"), (3, "m3"), (4, "m4"), (5, "m5"),
                        ("control", {"t": "recovered", "g": GROUP, "e": epoch, "o": 5, "n": 4}), (6, "m6")]
    assert side.conn.sidecar.stats.resumes["duplicate_dropped"] == 3  # the two held ones, and the late copy


def test_trimmed_history_is_a_gap_and_the_held_messages_follow_it():
    layer, side, _ = make()
    for i in range(1, 9):
        layer.send_group(GROUP, {"text": f"m{i}"})  # size 5: m1..m3 are gone
    epoch = layer.group_position(GROUP).epoch
    side = Side(layer)
    follower = Follower(side, Options(True, {GROUP: (epoch, 1)}))
    side.open()
    follower.notice({"g": GROUP, "a": True, "h": True, "p": None})
    live(follower, side, epoch, 9, "m9")
    gevent.sleep(0.05)
    assert side.out == [("control", {"t": "gap", "g": GROUP, "why": "trimmed", "e": epoch, "o": 8}), (9, "m9")]


def joined_live(size=20, max_replay=1000):
    """A follower in step with a group of a memory layer after its first message (offset 1)."""
    layer = MemoryChannelLayer(group_history={"chat.*": {"size": size}})
    side = Side(layer)
    side.conn.sidecar.config.max_replay = max_replay
    follower = Follower(side, Options(True, {}))
    side.open()
    follower.notice({"g": GROUP, "a": True, "h": True, "p": None})
    layer.send_group(GROUP, {"text": "m1"})
    epoch = layer.group_position(GROUP).epoch
    live(follower, side, epoch, 1, "m1")
    return layer, side, follower, epoch


def test_copies_out_of_order_are_written_in_offset_order_without_reading_the_history():
    layer, side, follower, epoch = joined_live()
    live(follower, side, epoch, 3, "m3")
    live(follower, side, epoch, 4, "m4")
    assert side.out[-1] == (1, "m1")  # held ahead of the hole
    live(follower, side, epoch, 2, "m2")
    live(follower, side, epoch, 3, "m3")  # a late duplicate
    gevent.sleep(0.3)
    assert side.out[1:] == [(1, "m1"), (2, "m2"), (3, "m3"), (4, "m4")]
    stats = side.conn.sidecar.stats.resumes
    assert stats["reordered"] == 2 and stats["filled"] == 0 and stats["duplicate_dropped"] == 1


def test_a_hole_that_no_copy_fills_is_read_from_the_history_after_the_wait():
    from wsgi_channels.sidecar.resume import REORDER_WAIT

    layer, side, follower, epoch = joined_live()
    for i in range(2, 6):
        layer.send_group(GROUP, {"text": f"m{i}"})  # kept; copies 2..4 never reach the socket
    live(follower, side, epoch, 5, "m5")
    gevent.sleep(REORDER_WAIT / 2)
    assert side.out[-1] == (1, "m1")
    gevent.sleep(REORDER_WAIT)
    live(follower, side, epoch, 6, "m6")
    assert side.out[1:] == [(1, "m1"), (2, "m2"), (3, "m3"), (4, "m4"), (5, "m5"), (6, "m6")]
    assert side.conn.sidecar.stats.resumes["filled"] == 3


def test_a_hole_the_history_no_longer_has_is_a_trimmed_gap_then_what_it_has():
    layer, side, follower, epoch = joined_live(size=3)
    for i in range(2, 9):
        layer.send_group(GROUP, {"text": f"m{i}"})  # size 3: 6..8 kept
    live(follower, side, epoch, 8, "m8")
    gevent.sleep(0.3)
    assert side.out[1:] == [(1, "m1"), ("control", {"t": "gap", "g": GROUP, "why": "trimmed", "e": epoch, "o": 5}),
                            (6, "m6"), (7, "m7"), (8, "m8")]


def test_a_hole_larger_than_max_replay_is_a_too_many_gap():
    layer, side, follower, epoch = joined_live(max_replay=3)
    for i in range(2, 7):
        layer.send_group(GROUP, {"text": f"m{i}"})
    live(follower, side, epoch, 6, "m6")  # 2..5 missing: 4 > 3
    gevent.sleep(0.3)
    assert side.out[1:] == [(1, "m1"), ("control", {"t": "gap", "g": GROUP, "why": "too_many", "e": epoch, "o": 5}),
                            (6, "m6")]


def test_a_hole_in_another_epoch_is_an_epoch_gap():
    layer, side, follower, _ = joined_live()
    live(follower, side, "E", 3, "a")  # a stream the history does not know (its epoch changed)
    live(follower, side, "E", 4, "b")
    live(follower, side, "E", 7, "c")
    gevent.sleep(0.3)
    assert side.out[2:] == [(3, "a"), (4, "b"), ("control", {"t": "gap", "g": GROUP, "why": "epoch",
                                                             "e": layer.group_position(GROUP).epoch, "o": 1}),
                            (7, "c")]


def test_a_read_that_never_answers_is_a_timeout_gap():
    class Stuck(MemoryChannelLayer):
        def _history_read(self, requests):
            gevent.sleep(30)

    layer = Stuck(group_history={"chat.*": {}})
    side = Side(layer)
    follower = Follower(side, Options(True, {GROUP: ("E", 1)}))
    side.open()
    follower.notice({"g": GROUP, "a": True, "h": True, "p": None})
    live(follower, side, "E", 2, "held")
    import time
    follower.check(time.monotonic() + 2)
    assert side.out == [("control", {"t": "gap", "g": GROUP, "why": "timeout"}), (2, "held")]


def test_a_history_read_that_fails_is_an_unavailable_gap():
    class Down(MemoryChannelLayer):
        def _history_read(self, requests):
            return [LayerUnavailable("the store is gone") for _ in requests]

    side = Side(Down(group_history={"chat.*": {}}))
    follower = Follower(side, Options(True, {GROUP: ("E", 1)}))
    side.open()
    follower.notice({"g": GROUP, "a": True, "h": True, "p": None})
    gevent.sleep(0.05)
    assert side.out == [("control", {"t": "gap", "g": GROUP, "why": "unavailable"})]


def test_identical_history_reads_waiting_together_are_read_once():
    class Counting(MemoryChannelLayer):
        asked: list = []

        def _history_read(self, requests):
            Counting.asked.append(list(requests))
            return super()._history_read(requests)

    layer = Counting(group_history={"chat.*": {}})
    layer.send_group(GROUP, {"text": "m1"})
    reader = HistoryReader(layer)
    pages = [gevent.spawn(reader.read, GROUP, 0, 10, 1.0) for _ in range(50)]
    pages.append(gevent.spawn(reader.read, GROUP, 1, 10, 1.0))
    gevent.joinall(pages, timeout=2)
    assert [len(p.value.messages) for p in pages] == [1] * 50 + [0]
    assert sum(len(batch) for batch in Counting.asked) == 2  # (GROUP, 0, 10) once, (GROUP, 1, 10) once


class Sock:
    """What the presence keeper needs of a follower's socket: the control frames it writes, timed."""

    def __init__(self) -> None:
        self.session = SimpleNamespace(open=True)
        self.frames: list = []

    def write_control(self, body) -> None:
        import time
        self.frames.append((time.monotonic(), body))


def keeper():
    from wsgi_channels.sidecar.presence import PresenceKeeper

    sidecar = SimpleNamespace(prefix="sidecar.test!", stats=SimpleNamespace(resumes=Counter()),
                              layer=MemoryChannelLayer(group_presence={"room.*": {}}))
    return PresenceKeeper(sidecar)


def test_presence_changes_coming_fast_reach_a_socket_merged_at_most_three_a_second():
    import time
    from wsgi_channels.sidecar.presence import FRAME_INTERVAL

    k = keeper()
    sock = Sock()
    follower = SimpleNamespace(side=sock, pframes={})
    start = time.monotonic()
    for v in range(1, 61):  # 60 changes in 1.2 s
        k.frame(follower, {"g": "room.a", "v": v, "c": v, "u": v, "m": "e", "ev": [["j", f"c{v}", "u", None, 0]]})
        gevent.sleep(0.02)
    gevent.sleep(FRAME_INTERVAL + 0.05)
    times = [t - start for t, _ in sock.frames]
    assert all(b - a >= FRAME_INTERVAL - 0.01 for a, b in zip(times, times[1:])), times
    assert len(sock.frames) <= 5
    assert [ev[1] for _, f in sock.frames for ev in f["ev"]] == [f"c{v}" for v in range(1, 61)]  # none lost
    assert sock.frames[-1][1]["v"] == 60 and sock.frames[-1][1]["c"] == 60


def test_merging_a_join_with_its_leave_cancels_both():
    from wsgi_channels.sidecar.presence import merge

    pending = merge(None, {"g": "room.a", "v": 1, "c": 1, "u": 1, "m": "e", "ev": [["j", "x", "ann", None, 0]]})
    pending = merge(pending, {"g": "room.a", "v": 2, "c": 2, "u": 2, "m": "e", "ev": [["j", "y", "bob", None, 0]]})
    pending = merge(pending, {"g": "room.a", "v": 3, "c": 1, "u": 1, "m": "e", "ev": [["l", "x"]]})
    assert pending == {"g": "room.a", "v": 3, "c": 1, "u": 1, "m": "e", "ev": [["j", "y", "bob", None, 0]]}
    # A leave then a join of the same connection (a reassert) both stay; a stale change marks the merge stale.
    pending = merge(pending, {"g": "room.a", "v": 4, "c": 0, "u": 0, "m": "e", "ev": [["l", "z"]]})
    pending = merge(pending, {"g": "room.a", "v": 5, "c": 1, "u": 1, "m": "e", "ev": [["j", "z", "cy", None, 1]],
                              "stale": True})
    assert pending["ev"][1:] == [["l", "z"], ["j", "z", "cy", None, 1]] and pending["stale"] is True


def test_a_hole_among_the_messages_held_during_a_resume_is_filled_from_the_history():
    layer, side, _ = make()
    for i in range(1, 4):
        layer.send_group(GROUP, {"text": f"m{i}"})
    epoch = layer.group_position(GROUP).epoch
    side = Side(layer)
    follower = Follower(side, Options(True, {GROUP: (epoch, 1)}))
    follower.notice({"g": GROUP, "a": True, "h": True, "p": None})
    side.open()
    live(follower, side, epoch, 5, "m5")  # held; the copy of 4 never comes
    follower.accepted()
    gevent.sleep(0.02)  # the replay read 2..3
    layer.send_group(GROUP, {"text": "m4"})
    layer.send_group(GROUP, {"text": "m5"})
    gevent.sleep(0.3)
    controls = [o for o in side.out if o[0] == "control"]
    assert [o for o in side.out if o[0] != "control"] == [(2, "m2"), (3, "m3"), (4, "m4"), (5, "m5")], side.out
    assert controls == [("control", {"t": "recovered", "g": GROUP, "e": epoch, "o": 3, "n": 2})]
    assert side.out.index(controls[0]) == 2  # after the replay, before the held and the filled ones
    assert side.conn.sidecar.stats.resumes["filled"] == 1


def test_a_join_notice_with_a_position_places_the_stream_there():
    """``h: [epoch, offset]``: the ``j`` frame carries it, and the first live messages are in step
    with it (one ahead of a hole waits for the missing one, filled from the history), also at 0."""
    layer = MemoryChannelLayer(group_history={"chat.*": {"size": 20}})
    layer.send_group(GROUP, {"text": "before"})  # offset 1: before the join
    epoch = layer.group_position(GROUP).epoch
    side = Side(layer)
    follower = Follower(side, Options(True, {}))
    follower.notice({"g": GROUP, "a": True, "p": None, "h": [epoch, 1]})
    live(follower, side, epoch, 1, "before")  # a copy of what came before the join: not the socket's
    side.open()
    follower.accepted()
    assert side.out == [("control", {"t": "j", "g": GROUP, "e": epoch, "o": 1})]
    layer.send_group(GROUP, {"text": "m2"})
    layer.send_group(GROUP, {"text": "m3"})
    live(follower, side, epoch, 3, "m3")  # ahead of 2: waits, then 2 comes from the history
    gevent.sleep(0.3)
    assert side.out[1:] == [(2, "m2"), (3, "m3")]
    assert side.conn.sidecar.stats.resumes["filled"] == 1
    # at 0 (no message yet): the first live message is offset 1, in step too
    side2 = Side(layer)
    follower2 = Follower(side2, Options(True, {}))
    side2.open()
    follower2.notice({"g": GROUP, "a": True, "p": None, "h": ["Ep", 0]})
    live(follower2, side2, "Ep", 2, "x2")
    assert side2.out == [("control", {"t": "j", "g": GROUP, "e": "Ep", "o": 0})]  # held ahead of 1
    live(follower2, side2, "Ep", 1, "x1")
    assert side2.out[1:] == [(1, "x1"), (2, "x2")]


def test_a_join_notice_without_a_position_sends_a_bare_join_frame():
    layer = MemoryChannelLayer(group_history={"chat.*": {"size": 20}})
    side = Side(layer)
    follower = Follower(side, Options(True, {}))
    side.open()
    follower.notice({"g": GROUP, "a": True, "h": True, "p": None})  # a layer without positions
    follower.notice({"g": "chat.bad", "a": True, "h": ["not an epoch!", 3], "p": None})
    assert side.out == [("control", {"t": "j", "g": GROUP}), ("control", {"t": "j", "g": "chat.bad"})]
    live(follower, side, "E", 5, "m5")  # no position: the first message starts the stream
    assert side.out[-1] == (5, "m5")
