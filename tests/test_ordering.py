"""``enforce_ordering``'s state changes are atomic, on every backend (what ``sessions.py`` claims).

Each test makes one interleaving happen for certain: a hook on the layer instance runs another
consumer at the exact point where a race used to hurt (between a read of the state and the
write or send that followed it).
"""
from __future__ import annotations

import threading

import pytest

from wsgi_channels import Message, enforce_ordering
from wsgi_channels.consumers.consumer import run_consumer

pytestmark = pytest.mark.timeout(60)

REPLY = "websocket.send!ordering"
KEY = "order:" + REPLY


def message(layer, order: int) -> Message:
    return Message({"reply_channel": REPLY, "path": "/", "text": str(order), "order": order}, "websocket.receive",
                   layer)


def resent(layer, timeout: float = 5.0) -> Message:
    """The next message put back on ``websocket.receive`` (by a release or a timer)."""
    channel, content = layer.receive(["websocket.receive"], block=True, timeout=timeout)
    assert channel == "websocket.receive", "nothing was resent"
    return Message(content, channel, layer)


def test_a_message_parked_as_its_predecessor_finishes_is_resent_at_once(layer, monkeypatch):
    # Message 2 reads the state (1: not its turn); message 1 then runs to the end and releases
    # the wait channel, still empty; only then is 2 parked. It used to wait there for the timeout.
    ran = []

    @enforce_ordering(timeout=30)
    def receive(m):
        ran.append(m["order"])

    layer.session_set(KEY, b"1", 60)  # connect (order 0) ran
    send, pending = layer.send, [message(layer, 1)]

    def send_after_predecessor(channel, content):
        if channel.startswith("wsgi_channels.wait.") and pending:
            run_consumer(receive, pending.pop(), {})
        return send(channel, content)

    monkeypatch.setattr(layer, "send", send_after_predecessor)
    second = message(layer, 2)
    run_consumer(receive, second, {})
    assert ran == [1] and not pending
    again = resent(layer, timeout=1.0)  # at once, not after the 30 s timeout
    assert again.content == second.content
    run_consumer(receive, again, {})
    assert ran == [1, 2] and layer.session_get(KEY) == b"3"


def test_the_state_never_moves_back_when_a_slow_predecessor_finishes_after_a_skip(layer):
    # Message 1 runs longer than the timeout, so the messages parked behind it run (documented);
    # when it finishes, the state must stay ahead: it used to go back to 2, parking 4 again.
    ran = []
    started, finish = threading.Event(), threading.Event()

    @enforce_ordering(timeout=0.3)
    def receive(m):
        if m["order"] == 1:
            started.set()
            finish.wait(10)
        ran.append(m["order"])

    layer.session_set(KEY, b"1", 60)
    slow = threading.Thread(target=run_consumer, args=(receive, message(layer, 1), {}))
    slow.start()
    try:
        assert started.wait(5)
        run_consumer(receive, message(layer, 3), {})  # 2 was lost: 3 parks, then the gap is skipped
        run_consumer(receive, resent(layer), {})
        assert ran == [3]
    finally:
        finish.set()
        slow.join(10)
    assert ran == [3, 1]
    assert layer.session_get(KEY) == b"4"
    run_consumer(receive, message(layer, 4), {})
    assert ran == [3, 1, 4]


def test_a_skip_never_undoes_progress_made_while_it_was_decided(layer, monkeypatch):
    # The timer of a parked message (3) reads the state (1, unchanged: skip?) and message 1
    # finishes right then (state 2). The skip must not happen: 2 is late, not lost. It used to
    # set the state to 3, and message 2 was dropped as "arrived after it was skipped".
    ran = []

    @enforce_ordering(timeout=1.0)
    def receive(m):
        ran.append(m["order"])

    layer.session_set(KEY, b"1", 60)
    get, pending = layer.session_get, [message(layer, 1)]

    def get_then_predecessor(key):
        value = get(key)
        if threading.current_thread() is not threading.main_thread() and pending:  # the timer's read
            run_consumer(receive, pending.pop(), {})
        return value

    monkeypatch.setattr(layer, "session_get", get_then_predecessor)
    run_consumer(receive, message(layer, 3), {})
    run_consumer(receive, resent(layer), {})  # put back by the timer: not its turn yet, parked again
    assert ran == [1] and not pending
    run_consumer(receive, message(layer, 2), {})  # the late message runs, and releases 3
    run_consumer(receive, resent(layer), {})
    assert ran == [1, 2, 3] and layer.session_get(KEY) == b"4"
