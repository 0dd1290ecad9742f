"""The worker's per-message time limit: find consumers stuck past it and give their messages up.

Python cannot kill a thread, and killing a greenlet in the middle of a redis-py
command would leave its connection out of step (the next command would read the
previous reply). So a message that runs past the limit is *given up*, never
interrupted:

- the stack of its thread (or greenlet) is logged, to show where it is stuck;
- its client is answered: an ``http.request`` whose response has not started gets
  504, a started one is aborted (``{"abort": True}``: the server drops the
  connection, so the client sees a cut response, never a complete-looking one), a
  ``websocket.connect`` or ``websocket.receive`` gets ``{"close": 1011}``;
- every send its consumer makes afterwards is dropped (:meth:`Slot.guard`): no
  second response after the 504, and a streamed response ends at its next chunk;
- the worker starts a thread in its place, so its capacity is restored, and counts
  the abandoned thread until it returns (then it exits); too many at once and the
  worker restarts its process (see :class:`~wsgi_channels.worker.Worker`).

The limit runs from the start of a message, and again from each message the
consumer sends (a streamed response that keeps sending is not stuck). Sends made
with ``immediately=True`` or straight on the layer are not seen: only
``Channel``/``Group`` sends (deferred to the end of the consumer) and the
responses of :class:`~wsgi_channels.consumers.wsgi.WsgiConsumer` are.

This module holds the mechanism: the per-thread :class:`Slot` the worker's threads
run messages in, the :class:`TimeLimiter` thread that watches them, and the
answers. It costs the fast path one uncontended lock per message and per send.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from typing import Any, Callable, Optional

from wsgi_channels.protocol.close_codes import CLOSE_INTERNAL
from wsgi_channels.protocol.messages import http_response_abort

from ..consumers.consumer import ABANDONED

__all__ = ["Slot", "TimeLimiter", "answer_for", "stack_of", "DEFAULT_TIME_LIMIT", "GATEWAY_TIMEOUT", "ABORT",
           "CLOSE_INTERNAL_ERROR"]

log = logging.getLogger(__name__)

#: Seconds a message may run (or go without sending) before it is given up; 0 turns the limit off.
DEFAULT_TIME_LIMIT = 60.0
#: What a client whose response had not started gets.
GATEWAY_TIMEOUT = {"status": 504, "headers": [[b"content-type", b"text/plain; charset=utf-8"]],
                   "content": b"Gateway Timeout: the application did not answer in time\n",
                   "more_content": False}
#: Ends a started response without completing it: the server drops the connection.
ABORT = http_response_abort()  # {"content": b"", "more_content": True, "abort": True}
CLOSE_INTERNAL_ERROR = CLOSE_INTERNAL  # the close-code table's "internal error" (reconnect)
_MAX_STACK = 60  # frames logged per stuck thread

IDLE, RUNNING = "idle", "running"  # and ABANDONED, defined where sends are guarded
# What a slot's consumer has sent on the message's reply channel.
NOTHING, STARTED, FINISHED = 0, 1, 2


class Slot:
    """One executor thread (or greenlet) of the worker, and the message it runs.

    ``state`` goes IDLE -> RUNNING -> IDLE per message, or RUNNING -> ABANDONED once,
    when the limiter gives the message up; an abandoned slot's thread exits when its
    consumer returns. Changes that the limiter and the thread race on (the end of a
    message, a send, the abandonment) happen under ``lock``, so either the
    consumer's answer or the limiter's goes out, never both.
    """

    __slots__ = ("lock", "state", "started", "channel", "content", "replied", "dropped", "ident", "greenlet",
                 "thread", "given_up_at")

    def __init__(self) -> None:
        self.lock = threading.RLock()  # reentrant: a guarded send may retry through another guarded send
        self.state = IDLE
        self.started = 0.0  # time.perf_counter() of the message's start or its latest send
        self.channel = ""
        self.content: Any = None
        self.replied = NOTHING
        self.dropped = 0
        self.given_up_at = 0.0
        self.thread = threading.current_thread()
        self.ident = threading.get_ident()
        self.greenlet = _current_greenlet()

    def begin(self, channel: str, content: Any, now: float) -> None:
        """A message starts on this slot's thread (``now``: ``time.perf_counter()``)."""
        self.channel, self.content, self.replied, self.started = channel, content, NOTHING, now
        self.state = RUNNING  # last: the limiter reads the fields above only while RUNNING

    def end(self) -> bool:
        """The message's consumer returned; True when the message was given up meanwhile."""
        with self.lock:
            if self.state is ABANDONED:
                return True
            self.state = IDLE
            self.content = None
        return False

    def guard(self, send: Callable[..., bool], channel: str, message: dict[str, Any], *args: Any) -> bool:
        """Make ``send(channel, message, *args)`` unless the message was given up (then drop it and
        return False). A send that goes out is progress: the time limit starts again."""
        with self.lock:
            if self.state is not RUNNING:
                if self.state is IDLE:  # not inside a message (a retry between messages)
                    return send(channel, message, *args)
                self.dropped += 1
                return False
            sent = send(channel, message, *args)
            if sent:
                self.started = time.perf_counter()
                content = self.content
                if type(content) is dict and channel == content.get("reply_channel"):
                    self.replied = STARTED if message.get("more_content") else FINISHED
            return sent

    def give_up(self, limit: float, now: float) -> bool:
        """Mark the message abandoned if it still runs and has been past ``limit``; False when a send
        of it is in progress (that is progress: it is looked at again later) or it ended."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            if self.state is not RUNNING or now - self.started < limit:
                return False
            self.state = ABANDONED
            self.given_up_at = now
            return True
        finally:
            self.lock.release()


def _current_greenlet() -> Any:
    """The running greenlet when gevent has patched threading (so threads are greenlets), else None."""
    if "gevent" not in sys.modules:
        return None
    from gevent import getcurrent, monkey  # type: ignore[import-untyped]

    return getcurrent() if monkey.is_module_patched("threading") else None


def stack_of(slot: Slot) -> str:
    """The formatted stack of the thread or greenlet of ``slot``, where it is now."""
    if slot.greenlet is not None:
        frame = slot.greenlet.gr_frame
    else:
        frame = sys._current_frames().get(slot.ident)
    if frame is None:
        return "  (the stack is not available: the thread is not running Python code)\n"
    return "".join(traceback.format_stack(frame, limit=_MAX_STACK))


def answer_for(slot: Slot) -> tuple[Optional[str], Optional[dict[str, Any]], str]:
    """``(reply_channel, message, what)`` for the client of a given-up message; the message is None
    when there is nothing to send (``what`` says why)."""
    content = slot.content
    reply = content.get("reply_channel") if type(content) is dict else None
    if not isinstance(reply, str):
        return None, None, "no reply channel"
    channel = slot.channel
    if channel == "http.request":
        if slot.replied == FINISHED:
            return reply, None, "its response was already sent"
        if slot.replied == STARTED:
            return reply, dict(ABORT), "its started response aborted"
        return reply, dict(GATEWAY_TIMEOUT), "504 sent"
    if channel in ("websocket.connect", "websocket.receive"):
        return reply, {"close": CLOSE_INTERNAL_ERROR}, "WebSocket closed with 1011"
    return reply, None, "nothing to answer on this channel"


class TimeLimiter:
    """A daemon thread that gives up messages running past ``limit`` on the registered slots and
    calls ``on_stuck(slot)`` for each (the worker answers, logs and replaces the thread).

    It looks every tenth of the limit (at most every second, at least every 50 ms), so a
    message is given up between ``limit`` and about ``limit * 1.1`` seconds after its start.
    """

    def __init__(self, limit: float, on_stuck: Callable[[Slot], None], name: str = "worker") -> None:
        if not limit > 0:
            raise ValueError(f"the time limit must be positive, not {limit!r}")
        self.limit = limit
        self.interval = min(1.0, max(0.05, limit / 10))
        self._on_stuck = on_stuck
        self._slots: list[Slot] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._name = name

    def register(self) -> Slot:
        """A slot for the calling thread (one of the worker's executors)."""
        slot = Slot()
        with self._lock:
            self._slots = [*self._slots, slot]  # copy on write: check() reads without the lock
        return slot

    def unregister(self, slot: Slot) -> None:
        with self._lock:
            self._slots = [s for s in self._slots if s is not slot]

    def check(self, now: Optional[float] = None) -> list[Slot]:
        """Give up what runs past the limit now; returns the slots given up (for ``on_stuck``)."""
        now = time.perf_counter() if now is None else now
        limit = self.limit
        return [s for s in self._slots if s.state is RUNNING and now - s.started >= limit and s.give_up(limit, now)]

    def start(self) -> "TimeLimiter":
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name=f"{self._name}-time-limit", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()

    def _loop(self) -> None:
        while not self._stopping.wait(self.interval):
            for slot in self.check():
                self.unregister(slot)
                try:
                    self._on_stuck(slot)
                except Exception:  # the limiter must keep watching the others
                    log.exception("handling a message stuck past the time limit failed")
