"""The worker's batch scheduler: who receives, who runs what, and when a batch is split up.

N executor threads (greenlets under gevent) share one receiving role
(leader/follower): the thread that holds it makes the one blocking ``receive`` on
the served channels, taking as many messages as there are idle threads plus
itself in one round trip (Redis: one ``BLMPOP``), and runs them itself, in order.
No thread is created or woken per message, and a busy worker leaves messages
queued for other workers. The responses of a batch are held and go out with the
receive that waits for the next batch (Redis: the send scripts and the ``BLMPOP``
in one round trip, ``send_many_then_receive``): a CPU-bound WSGI app, which holds
the GIL anyway, costs one wake-up and one round trip per batch.

Two things keep that from costing concurrency:

- a slow message never holds back the rest for long: once a batch has run for
  :data:`STEAL_AFTER` seconds, or the message in progress has (the watchdog
  thread looks every STEAL_AFTER, backing off to :data:`WATCH_MAX` while it
  finds nothing), the rest of the batch and the receiving role go to idle
  threads (a hand-off), and the responses held so far are sent;
- an app that waits on I/O (a database) gets a thread per message: when
  messages run in batches wait (wall time beyond their CPU time) longer than
  :data:`IO_WAIT`, the holder of the role hands each message to an idle thread
  at once and passes the role on, as threads did before batches, for
  :data:`PARALLEL_HOLD` seconds (doubled while the app keeps waiting); then
  batches run again and show whether it still does.

Receives are bounded (a second), so a stop request is seen quickly. A layer
that is down (``LayerUnavailable``) is retried with capped exponential backoff,
and the outage is logged once when it starts and once when it ends.

This module knows nothing of routing or consumers: it is given a ``handle(channel,
content)`` callable and runs it. The :class:`~wsgi_channels.worker.Worker` owns
the threads, the statistics and the time limit.
"""
from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from typing import Any, Callable, Optional, Sequence

from ..consumers.consumer import hold_replies
from ..exceptions import LayerUnavailable
from ..layers.base import BaseChannelLayer
from .reply_sender import ReplySender
from .timelimit import ABANDONED, Slot

__all__ = ["Scheduler", "STEAL_AFTER", "WATCH_MAX", "IO_WAIT", "IO_MESSAGES", "PARALLEL_HOLD",
           "PARALLEL_HOLD_MAX", "RECEIVE_TIMEOUT"]

log = logging.getLogger(__name__)

#: Seconds a blocking receive waits at most, so a stopping worker notices within about that long.
RECEIVE_TIMEOUT = 1.0
_MAX_BACKOFF = 5.0
_PROBE_EVERY = 8
_LEAD = object()  # the receiving role, passed between threads through the inbox
#: Seconds a batch, or its message in progress, may run before the rest of the batch and the
#: receiving role go to idle threads and the responses its thread holds are sent (a message in
#: progress is noticed by the watchdog, which looks at least every WATCH_MAX seconds).
STEAL_AFTER = 0.005
#: The longest the watchdog waits between looks while batches run (see Scheduler.watch).
WATCH_MAX = 0.05
#: A message run in a batch that waited this long (seconds of wall time beyond its CPU time)
#: waited on I/O; IO_MESSAGES such among the last 32 make the worker run every message on its
#: own thread for PARALLEL_HOLD seconds (Scheduler._waited).
IO_WAIT = 0.00025
IO_MESSAGES = 2
PARALLEL_HOLD = 1.0
PARALLEL_HOLD_MAX = 30.0

Handle = Callable[[str, Any], None]


class _Run:
    """The batch the leader is running: the messages not started yet, when the one in progress
    started, and whether it was taken over (the rest and the receiving role went elsewhere)."""

    __slots__ = ("items", "started", "stolen", "owner")

    def __init__(self, messages: list) -> None:
        self.items = deque(messages)
        self.started = time.monotonic()
        self.stolen = False
        self.owner = threading.get_ident()  # the thread running it (see Scheduler.give_away)


class _Job:
    """Work for an idle thread other than a message (retrying responses that could not be sent)."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def run(self) -> None:
        try:
            self.fn(*self.args)
        except Exception:
            log.exception("worker job %r failed", self.fn)


class Scheduler:
    """Leader/follower receiving and batch running for ``concurrency`` executor threads.

    Every executor thread runs :meth:`serve`; they wait on one inbox holding the single
    receiving role (the ``_LEAD`` token), messages handed out (the rest of a batch taken
    over, messages of an app that waits on I/O, the rest of a batch whose thread died) and
    jobs (responses to retry). The thread that takes the token keeps it (:meth:`_lead`)
    until ``stopping`` is set, a batch of its is taken over, or the app waits on I/O; then
    it puts the token back. With one thread, receiving and running alternate. A stopping
    worker runs every message it received.

    ``handle(channel, content)`` runs one message and never raises; ``on_handed_out()`` is
    called once per batch taken over (the worker counts it).
    """

    def __init__(self, layer: BaseChannelLayer, channels: Sequence[str], *, concurrency: int, handle: Handle,
                 stopping: threading.Event, on_handed_out: Callable[[], None]) -> None:
        self.layer = layer
        self.channels = list(channels)
        self.handle = handle
        self._stopping = stopping
        self._on_handed_out = on_handed_out
        self.inbox: Any = queue.SimpleQueue()  # messages for idle threads, and the _LEAD token
        self.idle = 0  # threads waiting on the inbox
        self._idle_lock = threading.Lock()
        self.leading = False  # a thread is receiving
        self._run: Optional[_Run] = None  # the batch the leader is running (see watch)
        self._run_lock = threading.Lock()
        self._busy = threading.Event()  # set while batches run: the watchdog is awake
        self._io_bits = 0  # 1 for each of the last 32 messages run in a batch that waited on I/O
        self._parallel_until = 0.0  # until then (monotonic), messages are not run in batches
        self._hold = PARALLEL_HOLD
        self._receive_batch = layer.receive_batch if concurrency > 1 else None
        self._backlog, self._probe, self._backoff = False, 0, 0.0
        self._outage_since: Optional[float] = None
        self._outage_lock = threading.Lock()
        #: Responses' last messages of all threads share round trips (layers whose send_many batches).
        self.replies = ReplySender(layer) if layer.send_many_batches else None
        self._send_then_receive = layer.send_many_then_receive

    # -- the executor threads ------------------------------------------------------------------

    def reset(self) -> None:
        """A fresh inbox holding the receiving role (before the threads start)."""
        self.inbox = queue.SimpleQueue()  # looked up now: gevent's patching may have replaced it
        self.inbox.put(_LEAD)
        self.idle = 0

    def serve(self, slot: Optional[Slot]) -> None:
        """An executor thread's loop: take the role, a message or a job from the inbox, until the
        worker stops (or the time limit gave up this thread's message: another thread took over)."""
        inbox, idle_lock, stopping, handle = self.inbox, self._idle_lock, self._stopping, self.handle
        while True:
            with idle_lock:
                self.idle += 1
            try:
                item = inbox.get(timeout=RECEIVE_TIMEOUT)
            except queue.Empty:
                item = None
            finally:
                with idle_lock:
                    self.idle -= 1
            if item is None:
                if stopping.is_set():
                    return
                continue
            if item is _LEAD:
                if stopping.is_set():
                    inbox.put(_LEAD)  # the others still run what is queued before it, then stop
                    return
                self._lead()
            elif type(item) is _Job:
                item.run()
            else:
                handle(*item)
            if slot is not None and slot.state is ABANDONED:
                return  # another thread took this one's place while its message was stuck

    def wake(self, threads: int) -> None:
        """Wake ``threads`` idle threads (so they see a stop), and wait (bounded) for the receive in
        progress to return; its messages are still run. Wakes the watchdog too."""
        for _ in range(threads):
            self.inbox.put(None)
        start = time.monotonic()
        while self.leading and time.monotonic() < start + RECEIVE_TIMEOUT + 1.0:
            time.sleep(0.01)  # a receive in progress returns within RECEIVE_TIMEOUT
        self._busy.set()  # wakes the watchdog, which then sees the stop

    def flush_replies(self) -> None:
        """Send the responses this thread holds."""
        if self.replies is not None:
            self.replies.flush()

    # -- receiving and running batches ---------------------------------------------------------

    def _lead(self) -> None:
        """Hold the receiving role: receive a batch, run it here, and again, until the worker stops,
        a batch here runs too long (the role and the rest go to other threads), or the app waits on
        I/O (then each message is handed to a thread, and the role passed on at once)."""
        run: Optional[_Run] = None  # the batch running here: stolen means the role is passed on
        ran_batch = passed = False
        try:
            while not self._stopping.is_set():
                messages = self._receive(send_held=ran_batch)
                ran_batch = False
                if not messages:
                    continue
                if time.monotonic() < self._parallel_until:
                    # An app that waits on I/O: every message gets its own thread at once, and the
                    # role goes on now, to receive while this one runs.
                    passed = True
                    self._pass_on(deque(messages[1:]))
                    self.handle(*messages[0])
                    return
                run = _Run(messages)
                if not self._run_batch(run):
                    return  # the role went to another thread (with the rest of the batch)
                run, ran_batch = None, True
        finally:
            if not passed and (run is None or not run.stolen):
                self.inbox.put(_LEAD)  # back to the others, even when this thread dies here
            if self.replies is not None:
                self.replies.flush()  # what this thread still holds

    def _receive(self, send_held: bool) -> list:
        """One blocking receive; ``send_held``: with the responses this thread held (its last batch's),
        sent along with it where the layer can (``send_many_then_receive``). Empty after a timeout
        or an outage."""
        limit = 1
        if self._receive_batch is not None:
            self._probe += 1
            if self._backlog or self._probe % _PROBE_EVERY == 0 \
                    or self.layer.batch_round_trips == 1:
                limit = self.idle + 1
        replies = self.replies
        held = replies.take() if send_held and replies is not None and self._send_then_receive is not None else []
        outcomes: list = []
        messages: list[Any]
        self.leading = True
        try:
            if held:
                messages = self._send_then_receive([(c, m) for c, m, _ in held], self.channels, limit,
                                                   RECEIVE_TIMEOUT, outcomes)
            else:
                if send_held and replies is not None:
                    replies.flush()
                receive_batch = self._receive_batch
                if limit > 1 and receive_batch is not None:  # limit > 1 only with a batch receive
                    messages = receive_batch(self.channels, limit=limit, block=True, timeout=RECEIVE_TIMEOUT)
                else:
                    channel, content = self.layer.receive(self.channels, block=True, timeout=RECEIVE_TIMEOUT)
                    messages = [(channel, content)] if channel is not None else []
            self._backlog = len(messages) > 1
        except LayerUnavailable as e:
            self._backoff = min(_MAX_BACKOFF, self._backoff * 2 or 0.05)
            self._outage(e)
            self._stopping.wait(random.uniform(self._backoff / 2, self._backoff))
            return []
        finally:
            self.leading = False
            if held:
                assert replies is not None
                outcomes += [LayerUnavailable("the round trip failed")] * (len(held) - len(outcomes))
                failed = replies.settle(held, outcomes)
                if failed:  # retried by another thread: a slow client never holds up the receiving
                    self.inbox.put(_Job(replies.retry, failed))
        if self._backoff:
            self._backoff = 0.0
            self._recovered()
        return messages

    def _run_batch(self, run: _Run) -> bool:
        """Run a batch here in order, holding this thread's responses (sent with the next receive);
        False when the receiving role went to another thread meanwhile.

        When the batch has run for :data:`STEAL_AFTER` and messages are left, they and the role go
        to the other threads (many middling messages: a blocking app gets its concurrency back);
        the watchdog does the same for one message that runs long. A thread that dies mid-batch
        (a consumer raised ``SystemExit``) leaves the rest to the other threads.
        """
        items, handle = run.items, self.handle
        self._run = run
        if not self._busy.is_set():
            self._busy.set()  # wakes the watchdog (only when it went to sleep)
        hold_replies(True)
        gave_up = False
        thread_time, monotonic = time.thread_time, time.monotonic
        try:
            deadline = run.started + STEAL_AFTER
            while True:
                try:
                    item = items.popleft()
                except IndexError:  # done, or the watchdog handed the rest out
                    break
                now = monotonic()
                if now > deadline and self._take_over(run):
                    items.appendleft(item)  # handed out below, first, with the rest
                    gave_up = True
                    break
                run.started = now
                cpu = thread_time()
                handle(*item)
                if self._waited(monotonic() - now - (thread_time() - cpu)) and items and self._take_over(run):
                    gave_up = True
                    break
        finally:
            hold_replies(False)
            with self._run_lock:
                if self._run is run:
                    self._run = None
            if gave_up:
                self._pass_on(items)
            else:
                self._hand_out(items)  # what a dying thread leaves, or nothing
        return not run.stolen

    def _waited(self, seconds: float) -> bool:
        """Note how long a message just run by the leader waited (its wall time minus its thread's CPU
        time: I/O, or the OS running something else); True when :data:`IO_MESSAGES` of the last 32
        waited over :data:`IO_WAIT`: the app waits on I/O, and for the next :data:`PARALLEL_HOLD`
        seconds every message gets its own thread; then batches run here again, and show whether
        it still does (if so, the next period is twice as long, up to :data:`PARALLEL_HOLD_MAX`)."""
        bits = ((self._io_bits << 1) | (seconds > IO_WAIT)) & 0xFFFFFFFF
        if bin(bits).count("1") < IO_MESSAGES:
            self._io_bits = bits
            return False
        self._io_bits = 0
        now = time.monotonic()
        # Back within one hold of the last: the app still waits, so look again twice as late.
        self._hold = min(PARALLEL_HOLD_MAX, self._hold * 2) if now - self._parallel_until < self._hold \
            else PARALLEL_HOLD
        self._parallel_until = now + self._hold
        return True

    # -- hand-offs -----------------------------------------------------------------------------

    def _take_over(self, run: _Run) -> bool:
        """Mark ``run`` as stolen, unless it was already; its thread then gives up the receiving role."""
        with self._run_lock:
            if run.stolen:
                return False
            run.stolen = True
            if self._run is run:
                self._run = None
        self._on_handed_out()
        return True

    def give_away(self, owner: int) -> bool:
        """When thread ``owner`` runs the current batch, give the rest of it and the receiving role to
        the other threads and send the responses it holds (the time limit gave its message up)."""
        run = self._run
        if run is None or run.owner != owner or not self._take_over(run):
            return False
        self._pass_on(run.items)
        self.flush_replies()  # the responses of the batch's earlier messages
        return True

    def watch(self) -> None:
        """The watchdog: when the leader's message in progress has run for :data:`STEAL_AFTER`, give
        the rest of its batch and the receiving role to the other threads, and send the responses it
        holds. It looks every STEAL_AFTER at first and backs off to :data:`WATCH_MAX` while it finds
        nothing: each look takes the GIL from a leader running Python, which costs it time.
        """
        stopping = self._stopping
        interval = STEAL_AFTER
        active = False  # a batch ran since the last look
        while not stopping.is_set():
            run = self._run
            if run is not None:
                if time.monotonic() - run.started >= STEAL_AFTER and self._take_over(run):
                    interval = STEAL_AFTER
                    self._pass_on(run.items)
                    self.flush_replies()
                    continue
                active = True
            elif active:
                active = False  # between two batches: one more look before sleeping
            else:  # no batch for a while: sleep until one starts (the leader sets _busy)
                self._busy.clear()
                if self._run is None:  # checked again after clearing: a batch that started meanwhile set it
                    self._busy.wait(RECEIVE_TIMEOUT)
                active = True
            time.sleep(interval)
            interval = min(WATCH_MAX, interval * 2)

    def _pass_on(self, items: deque) -> None:
        """Give idle threads ``items`` and then the receiving role (older messages first)."""
        self._hand_out(items)
        self.inbox.put(_LEAD)

    def _hand_out(self, items: deque) -> None:
        """Put what is left of ``items`` into the inbox (each item is popped by one thread only)."""
        while True:
            try:
                self.inbox.put(items.popleft())
            except IndexError:
                return

    # -- layer outages -------------------------------------------------------------------------

    def _outage(self, error: Exception) -> None:
        with self._outage_lock:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.warning("channel layer unavailable, retrying with backoff: %s", error)

    @property
    def layer_up(self) -> bool:
        """False while the layer is unreachable (between the first failure and the next success)."""
        return self._outage_since is None

    def _recovered(self) -> None:
        with self._outage_lock:
            if self._outage_since is not None:
                log.warning("channel layer reachable again after %.1fs", time.monotonic() - self._outage_since)
                self._outage_since = None
