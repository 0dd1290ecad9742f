"""The worker: receive messages from the layer and run the routed consumers.

``wsgi-channels worker ROUTING [--layer URL] [--threads N | --greenlets N]
[--only-channels GLOB ...] [--exclude-channels GLOB ...] [--time-limit SECONDS]``

N threads (greenlets under gevent) share one receiving role (leader/follower):
the thread that holds it makes the one blocking ``receive`` on the served
channels, taking as many messages as there are idle threads plus itself in one
round trip (Redis: one ``BLMPOP``), and runs them itself, in order, through
:func:`~wsgi_channels.consumer.run_consumer`. No thread is created or woken per
message, and a busy worker leaves messages queued for other workers. The
responses of a batch are held and go out with the receive that waits for the
next batch (Redis: the send scripts and the ``BLMPOP`` in one round trip,
``send_many_then_receive``): a CPU-bound WSGI app, which holds the GIL anyway,
costs one wake-up and one round trip per batch.

Two things keep that from costing concurrency:

- a slow message never holds back the rest for long: once a batch has run for
  :data:`STEAL_AFTER` seconds, or the message in progress has (the watchdog
  thread looks every STEAL_AFTER, backing off to :data:`WATCH_MAX` while it
  finds nothing), the rest of the batch and the receiving role go to idle
  threads, and the responses held so far are sent;
- an app that waits on I/O (a database) gets a thread per message: when
  messages run in batches wait (wall time beyond their CPU time) longer than
  :data:`IO_WAIT`, the holder of the role hands each message to an idle thread
  at once and passes the role on, as threads did before batches, for
  :data:`PARALLEL_HOLD` seconds (doubled while the app keeps waiting); then
  batches run again and show whether it still does.

Receives are bounded (a second), so a stop request is seen quickly. The
main thread supervises: it replaces a thread that died, and on SIGTERM/SIGINT
it stops receiving and waits up to ``grace`` seconds for the messages in flight.

A consumer that raises is logged and counted; the worker goes on. A layer
that is down (``LayerUnavailable``) is retried with capped exponential backoff
and the outage is logged once when it starts and once when it ends.

A message that runs past the time limit (``time_limit``, default 60 s) is given
up (:mod:`wsgi_channels.timelimit`): its stack is logged, its client answered,
its later sends dropped, and another thread takes its place. When too many
given-up threads are still stuck (``max_abandoned``), :meth:`Worker.run` stops
as on SIGTERM and returns ``EXIT_RESTART`` for the supervisor to start a fresh
process.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import queue
import random
import signal
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from typing import Any, Iterable, Optional, Sequence

from .cli import EXIT_RESTART
from .consumer import DEFAULT_SEND_TIMEOUT, hold_replies, run_consumer, send_with_retry, use_reply_sender, use_slot
from .consumer import _local as _consumer_state  # handle() reads the thread's slot: one attribute, no call
from .exceptions import ConfigurationError, LayerUnavailable, StoreError
from .layers.base import BaseChannelLayer
from .message import Message
from .reply_sender import ReplySender
from .routing import Router
from .timelimit import ABANDONED, DEFAULT_TIME_LIMIT, Slot, TimeLimiter, answer_for, stack_of

__all__ = ["Worker", "select_channels", "register", "main", "STEAL_AFTER", "DEFAULT_TIME_LIMIT"]

log = logging.getLogger(__name__)

_RECEIVE_TIMEOUT = 1.0
_MAX_BACKOFF = 5.0
_PROBE_EVERY = 8
_LEAD = object()  # the receiving role, passed between threads through the inbox
#: Seconds a batch, or its message in progress, may run before the rest of the batch and the
#: receiving role go to idle threads and the responses its thread holds are sent (a message in
#: progress is noticed by the watchdog, which looks at least every WATCH_MAX seconds).
STEAL_AFTER = 0.005
#: The longest the watchdog waits between looks while batches run (see Worker._watch).
WATCH_MAX = 0.05
#: A message run in a batch that waited this long (seconds of wall time beyond its CPU time)
#: waited on I/O; IO_MESSAGES such among the last 32 make the worker run every message on its
#: own thread for PARALLEL_HOLD seconds (Worker._waited).
IO_WAIT = 0.00025
IO_MESSAGES = 2
PARALLEL_HOLD = 1.0
PARALLEL_HOLD_MAX = 30.0


class _Run:
    """The batch the leader is running: the messages not started yet, when the one in progress
    started, and whether the watchdog took the receiving role (and the rest) away."""

    __slots__ = ("items", "started", "stolen", "owner")

    def __init__(self, messages: list) -> None:
        self.items = deque(messages)
        self.started = time.monotonic()
        self.stolen = False
        self.owner = threading.get_ident()  # the thread running it (see Worker._on_stuck)


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


def select_channels(channels: Iterable[str], only: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """The channels kept by ``only`` (any glob matches, when given) minus ``exclude`` globs, sorted."""
    kept = []
    for name in sorted(channels):
        if only and not any(fnmatch.fnmatchcase(name, g) for g in only):
            continue
        if any(fnmatch.fnmatchcase(name, g) for g in exclude):
            continue
        kept.append(name)
    return kept


class Worker:
    """Serve ``routing`` from ``layer`` with ``concurrency`` threads (greenlets under gevent patching).

    ``layer`` is a layer instance or a URL (resolved with :func:`~wsgi_channels.get_layer`,
    so ``Channel``/``Group`` sends inside consumers that name no layer use the
    same instance when the URL is also the default). ``stats`` counts
    ``messages``, ``errors``, ``unrouted``, ``restarts`` and ``timed_out``; ``by_channel``,
    ``errors_by_channel``, ``seconds_by_channel`` and ``timed_out_by_channel`` break them
    down (see :mod:`wsgi_channels.worker_metrics` for Prometheus).

    ``time_limit``: seconds a message may run (the count starts again at each message
    its consumer sends) before it is given up (see :mod:`wsgi_channels.timelimit`): its
    stack is logged, its client answered (504, an aborted response, or close 1011),
    its later sends dropped, and its thread replaced; 0 turns the limit off.
    ``max_abandoned``: when this many given-up threads are still running at once (by
    default twice ``concurrency``), :meth:`run` stops receiving, finishes the messages
    in flight and returns :data:`~wsgi_channels.cli.EXIT_RESTART`, for the process
    supervisor to start a fresh worker; 0 never restarts.
    """

    def __init__(self, routing: Any, layer: Any = None, *, concurrency: int = 1,
                 only_channels: Sequence[str] = (), exclude_channels: Sequence[str] = (),
                 send_timeout: float = DEFAULT_SEND_TIMEOUT, grace: float = 30.0,
                 name: str = "worker", mode: str = "threads", time_limit: float = DEFAULT_TIME_LIMIT,
                 max_abandoned: Optional[int] = None) -> None:
        from .channel import _resolve

        self.router = routing if isinstance(routing, Router) else Router(routing)
        self.layer: BaseChannelLayer = _resolve(layer)
        self.channels = select_channels(self.router.channels, only_channels, exclude_channels)
        if not self.channels:
            raise ConfigurationError(
                f"no channels left to serve: routing has {sorted(self.router.channels)}, "
                f"--only-channels {list(only_channels)}, --exclude-channels {list(exclude_channels)}"
            )
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, not {concurrency}")
        if not 0 <= time_limit < float("inf"):
            raise ConfigurationError(f"time_limit must be a number of seconds (0 = no limit), not {time_limit!r}")
        if max_abandoned is not None and max_abandoned < 0:
            raise ConfigurationError(f"max_abandoned must be 0 (never restart) or more, not {max_abandoned}")
        self.concurrency = concurrency
        self.time_limit = time_limit
        self.max_abandoned = 2 * concurrency if max_abandoned is None else max_abandoned
        #: What :meth:`run` returns: EXIT_OK, or EXIT_RESTART after too many threads were abandoned.
        self.exit_status = 0
        self.send_timeout = send_timeout
        self.grace = grace
        self.name = name
        self.stats = {"messages": 0, "errors": 0, "unrouted": 0, "restarts": 0, "handed_out": 0, "timed_out": 0}
        self.by_channel: Counter[str] = Counter()
        self.errors_by_channel: Counter[str] = Counter()
        self.seconds_by_channel: dict[str, float] = defaultdict(float)
        self.timed_out_by_channel: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._stopping = threading.Event()
        self.mode = mode
        self._threads: list[threading.Thread] = []
        self._inbox: Any = queue.SimpleQueue()  # messages for idle threads, and the _LEAD token
        self._idle = 0  # threads waiting on the inbox
        self._idle_lock = threading.Lock()
        self._leading = False  # a thread is receiving
        self._run: Optional[_Run] = None  # the batch the leader is running (see _watch)
        self._run_lock = threading.Lock()
        self._busy = threading.Event()  # set while batches run: the watchdog is awake
        self._io_bits = 0  # 1 for each of the last 32 messages run in a batch that waited on I/O
        self._parallel_until = 0.0  # until then (monotonic), messages are not run in batches
        self._hold = PARALLEL_HOLD
        self._receive_batch = self.layer.receive_batch if concurrency > 1 else None
        self._backlog, self._probe, self._backoff = False, 0, 0.0
        self._outage_since: Optional[float] = None
        self._outage_lock = threading.Lock()
        # Responses' last messages of all threads share round trips (layers whose send_many batches).
        self._replies = ReplySender(self.layer) if self.layer.send_many_batches else None
        self._send_then_receive = self.layer.send_many_then_receive
        self._watchdog: Optional[threading.Thread] = None
        self._limiter: Optional[TimeLimiter] = None
        self._threads_lock = threading.Lock()  # _threads and _abandoned change in the limiter and in supervise_once
        self._abandoned: list[threading.Thread] = []  # replaced after a message given up, maybe still running

    # -- the loops ------------------------------------------------------------------------------
    #
    # Leader/follower: ``concurrency`` threads wait on one inbox holding the single _LEAD
    # token, and messages handed out (the rest of a batch taken over, messages of an app that
    # waits on I/O, the rest of a batch whose thread died) and _Jobs (responses to retry).
    # The thread that takes the token keeps it (_lead) until the worker stops, a batch of its
    # is taken over, or the app waits on I/O; then it puts the token back. With one thread,
    # receiving and running alternate. A stopping worker runs every message it received.

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def _serve_loop(self) -> None:
        inbox, idle_lock, stopping, handle = self._inbox, self._idle_lock, self._stopping, self.handle
        use_reply_sender(self._replies)
        limiter = self._limiter
        slot = limiter.register() if limiter is not None else None
        use_slot(slot)
        try:
            self._serve(inbox, idle_lock, stopping, handle, slot)
        finally:
            if limiter is not None and slot is not None and slot.state is not ABANDONED:
                limiter.unregister(slot)

    def _serve(self, inbox: Any, idle_lock: Any, stopping: threading.Event, handle: Any,
               slot: Optional[Slot]) -> None:
        while True:
            with idle_lock:
                self._idle += 1
            try:
                item = inbox.get(timeout=_RECEIVE_TIMEOUT)
            except queue.Empty:
                item = None
            finally:
                with idle_lock:
                    self._idle -= 1
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
                self._inbox.put(_LEAD)  # back to the others, even when this thread dies here
            if self._replies is not None:
                self._replies.flush()  # what this thread still holds

    def _receive(self, send_held: bool) -> list:
        """One blocking receive; ``send_held``: with the responses this thread held (its last batch's),
        sent along with it where the layer can (``send_many_then_receive``). Empty after a timeout
        or an outage."""
        limit = 1
        if self._receive_batch is not None:
            self._probe += 1
            if self._backlog or self._probe % _PROBE_EVERY == 0 \
                    or self.layer.batch_round_trips == 1:
                limit = self._idle + 1
        replies = self._replies
        held = replies.take() if send_held and replies is not None and self._send_then_receive is not None else []
        outcomes: list = []
        self._leading = True
        try:
            if held:
                messages = self._send_then_receive([(c, m) for c, m, _ in held], self.channels, limit,
                                                   _RECEIVE_TIMEOUT, outcomes)
            else:
                if send_held and replies is not None:
                    replies.flush()
                if limit > 1:
                    messages = self._receive_batch(self.channels, limit=limit, block=True, timeout=_RECEIVE_TIMEOUT)
                else:
                    channel, content = self.layer.receive(self.channels, block=True, timeout=_RECEIVE_TIMEOUT)
                    messages = [(channel, content)] if channel is not None else []
            self._backlog = len(messages) > 1
        except LayerUnavailable as e:
            self._backoff = min(_MAX_BACKOFF, self._backoff * 2 or 0.05)
            self._outage(e)
            self._stopping.wait(random.uniform(self._backoff / 2, self._backoff))
            return []
        finally:
            self._leading = False
            if held:
                assert replies is not None
                outcomes += [LayerUnavailable("the round trip failed")] * (len(held) - len(outcomes))
                failed = replies.settle(held, outcomes)
                if failed:  # retried by another thread: a slow client never holds up the receiving
                    self._inbox.put(_Job(replies.retry, failed))
        if self._backoff:
            self._backoff = 0.0
            self._recovered()
        return messages

    def _run_batch(self, run: "_Run") -> bool:
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

    def _take_over(self, run: "_Run") -> bool:
        """Mark ``run`` as stolen, unless it was already; its thread then gives up the receiving role."""
        with self._run_lock:
            if run.stolen:
                return False
            run.stolen = True
            if self._run is run:
                self._run = None
        self._count("handed_out")
        return True

    def _watch(self) -> None:
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
                    if self._replies is not None:
                        self._replies.flush()
                    continue
                active = True
            elif active:
                active = False  # between two batches: one more look before sleeping
            else:  # no batch for a while: sleep until one starts (the leader sets _busy)
                self._busy.clear()
                if self._run is None:  # checked again after clearing: a batch that started meanwhile set it
                    self._busy.wait(_RECEIVE_TIMEOUT)
                active = True
            time.sleep(interval)
            interval = min(WATCH_MAX, interval * 2)

    def _pass_on(self, items: deque) -> None:
        """Give idle threads ``items`` and then the receiving role (older messages first)."""
        self._hand_out(items)
        self._inbox.put(_LEAD)

    def _hand_out(self, items: deque) -> None:
        """Put what is left of ``items`` into the inbox (each item is popped by one thread only)."""
        while True:
            try:
                self._inbox.put(items.popleft())
            except IndexError:
                return

    def handle(self, channel: str, content: Any) -> None:
        """Run the consumer routed for one message; errors are logged and counted, never raised."""
        t0 = time.perf_counter()
        slot = _consumer_state.slot
        if slot is not None:
            slot.begin(channel, content, t0)
            outcome = self._dispatch(channel, content)
            if slot.end():
                self._late(slot)
                return  # counted when it was given up
        else:
            outcome = self._dispatch(channel, content)
        elapsed = time.perf_counter() - t0
        with self._stats_lock:
            self.stats["messages"] += 1
            self.by_channel[channel] += 1
            self.seconds_by_channel[channel] += elapsed
            if outcome:
                self.stats[outcome] += 1
                self.errors_by_channel[channel] += outcome == "errors"

    def _dispatch(self, channel: str, content: Any) -> str:
        """Route and run; returns "" on success, else the stats key to count."""
        if not isinstance(content, dict):
            log.error("message on %r is a %s, not a dict: dropped", channel, type(content).__name__)
            return "errors"
        try:
            found = self.router.match(channel, content)
        except Exception:
            log.exception("routing failed for a message on %r", channel)
            return "errors"
        if found is None:
            log.warning("no route for a message on %r: dropped", channel)
            return "unrouted"
        consumer, kwargs = found
        try:
            run_consumer(consumer, Message(content, channel, self.layer), kwargs, self.send_timeout)
        except Exception:
            log.exception("consumer %r raised on a message on %r", consumer, channel,
                          extra={"channel": channel})
            return "errors"
        return ""

    # -- the time limit (see wsgi_channels.timelimit) ----------------------------------------------

    def _on_stuck(self, slot: Slot) -> None:
        """The limiter gave up the message of ``slot`` (its thread is stuck in it): pass on the receiving
        role and the rest of its batch if it held them, start a thread in its place, log where it is
        stuck, and answer its client. Runs on the limiter's thread."""
        stuck_for = time.perf_counter() - slot.started
        stack = stack_of(slot)  # first: the thread may move on at any moment
        run = self._run
        if run is not None and run.owner == slot.ident and self._take_over(run):
            self._pass_on(run.items)
            if self._replies is not None:
                self._replies.flush()  # the responses of the batch's earlier messages
        old = slot.thread
        with self._threads_lock:
            for i, thread in enumerate(self._threads):
                if thread is old:
                    self._abandoned.append(thread)
                    if not self._stopping.is_set():
                        self._threads[i] = self._spawn(i)
                    break
            abandoned = sum(t.is_alive() for t in self._abandoned)
        with self._stats_lock:
            self.stats["messages"] += 1
            self.stats["timed_out"] += 1
            self.by_channel[slot.channel] += 1
            self.timed_out_by_channel[slot.channel] += 1
            self.seconds_by_channel[slot.channel] += stuck_for
        reply, answer, what = answer_for(slot)
        content = slot.content
        path = content.get("path") if type(content) is dict else None
        log.error("message on %r%s ran %.1fs without sending, past the time limit of %gs: given up (%s); "
                  "thread %s replaced (%d abandoned thread(s) still running). It is stuck here:\n%s",
                  slot.channel, f" for {path!r:.200}" if isinstance(path, str) else "", stuck_for, self.time_limit,
                  what, old.name, abandoned, stack, extra={"channel": slot.channel})
        if old.name.rpartition("-")[2] != "abandoned":
            old.name += "-abandoned"
        if answer is not None:
            assert reply is not None
            try:
                send_with_retry(self.layer, reply, answer, self.send_timeout)
            except Exception:
                log.exception("could not answer the client of a message given up on %r", slot.channel)

    def _late(self, slot: Slot) -> None:
        """The consumer of a message given up returned at last (its thread exits now)."""
        log.warning("the message on %r given up %.1fs ago has finished; %d of its sends were dropped",
                    slot.channel, time.perf_counter() - slot.given_up_at, slot.dropped,
                    extra={"channel": slot.channel})

    @property
    def abandoned(self) -> int:
        """Threads given up on (their message ran past the time limit) that still run."""
        with self._threads_lock:
            self._abandoned = [t for t in self._abandoned if t.is_alive()]
            return len(self._abandoned)

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

    # -- lifecycle --------------------------------------------------------------------------

    def _spawn(self, index: int) -> threading.Thread:
        thread = threading.Thread(target=self._serve_loop, name=f"{self.name}-{index}", daemon=True)
        thread.start()
        return thread

    def start(self) -> "Worker":
        """Start the threads and return at once (for tests and embedding); :meth:`stop` ends them."""
        self._stopping.clear()
        self._inbox = queue.SimpleQueue()  # looked up now: gevent's patching may have replaced it
        self._inbox.put(_LEAD)
        self._idle = 0
        log.info("worker serving %s with %d %s on %r, %s", ", ".join(self.channels), self.concurrency,
                 self.mode, self.layer, f"time limit {self.time_limit:g}s" if self.time_limit else "no time limit")
        if self.time_limit:
            self._limiter = TimeLimiter(self.time_limit, self._on_stuck, self.name).start()
        self._threads = [self._spawn(i) for i in range(self.concurrency)]
        if self.concurrency > 1:  # with one thread, nobody could take over
            self._watchdog = threading.Thread(target=self._watch, name=f"{self.name}-watchdog", daemon=True)
            self._watchdog.start()
        return self

    def supervise_once(self) -> None:
        """Replace any thread that died (a consumer raised a BaseException such as SystemExit)."""
        if self._stopping.is_set():
            return
        with self._threads_lock:
            for i, thread in enumerate(self._threads):
                if not thread.is_alive():
                    self._count("restarts")
                    log.error("worker thread %s died; starting a new one", thread.name)
                    self._threads[i] = self._spawn(i)

    def wants_restart(self) -> bool:
        """True when ``max_abandoned`` threads given up on still run: a fresh process should take over
        (:meth:`run` then stops and returns EXIT_RESTART)."""
        return bool(self.max_abandoned) and self._abandoned != [] and self.abandoned >= self.max_abandoned

    def stop(self, grace: Optional[float] = None) -> bool:
        """Stop receiving and wait up to ``grace`` seconds for in-flight messages; True if all finished.

        A receive in progress returns within a second; messages already received are run.
        """
        self._stopping.set()
        start = time.monotonic()
        deadline = start + (self.grace if grace is None else grace)
        for _ in self._threads:
            self._inbox.put(None)  # wakes the idle threads, which then see the stop
        while self._leading and time.monotonic() < start + _RECEIVE_TIMEOUT + 1.0:
            time.sleep(0.01)  # a receive in progress returns within _RECEIVE_TIMEOUT; its messages run below
        self._busy.set()  # wakes the watchdog, which then sees the stop
        while True:  # the list is read again: the time limit may give up a thread meanwhile
            alive = [t for t in self._threads if t.is_alive()]
            remaining = deadline - time.monotonic()
            if not alive or remaining <= 0:
                break
            alive[0].join(min(remaining, 0.1))
        if self._limiter is not None:
            self._limiter.stop()
        if alive:
            log.warning("%d worker thread(s) still busy after the grace period; exiting anyway", len(alive))
        return not alive

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT (main thread only), then stop within the grace period.

        Returns the process exit status: EXIT_OK, or EXIT_RESTART when it stopped because
        ``max_abandoned`` threads were stuck (see :meth:`wants_restart`)."""
        def on_signal(signum: int, frame: Any) -> None:
            log.info("received %s: finishing in-flight messages (grace %.0fs)", signal.Signals(signum).name,
                     self.grace)
            self._stopping.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not self._stopping.wait(0.5):
            self.supervise_once()
            if self.wants_restart():
                log.error("%d threads are stuck in messages given up (--max-abandoned %d): stopping, for the "
                          "process supervisor to start a fresh worker (exit status %d)", self.abandoned,
                          self.max_abandoned, EXIT_RESTART)
                self.exit_status = EXIT_RESTART
                break
        self.stop()
        log.info("worker stopped: %s", self.stats)
        return self.exit_status


# -- command line ---------------------------------------------------------------------------

def _load_routing(spec: str) -> Any:
    from .routing import import_object

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like gunicorn: the routing module is found from the cwd
    return import_object(spec)


def _command(args: Any) -> int:
    import argparse

    from . import cli
    from .channel import ENV_VAR, default_layer_url
    from .layers import require_cross_process

    url = args.layer or default_layer_url()
    try:
        require_cross_process(url, "the worker")
    except ConfigurationError as e:
        log.error("%s", e)
        return cli.EXIT_CONFIG
    if args.greenlets:
        from gevent import monkey

        if not monkey.is_module_patched("threading"):
            log.error("--greenlets needs gevent monkey-patching: run it as `wsgi-channels worker --greenlets N`")
            return cli.EXIT_CONFIG
    admin = None
    if args.admin_bind:
        from .config import parse_address

        try:
            admin = parse_address(args.admin_bind)
            if admin[0] == "unix":
                raise ValueError("--admin-bind takes HOST:PORT")
        except (ValueError, argparse.ArgumentTypeError) as e:
            log.error("--admin-bind %r: %s", args.admin_bind, e)
            return cli.EXIT_CONFIG
    os.environ[ENV_VAR] = url  # Channel()/Group() in consumers use the worker's layer
    try:
        routing = _load_routing(args.routing)
        worker = Worker(routing, url, concurrency=args.greenlets or args.threads,
                        only_channels=_flat(args.only_channels), exclude_channels=_flat(args.exclude_channels),
                        send_timeout=args.send_timeout, grace=args.grace,
                        mode="greenlets" if args.greenlets else "threads", time_limit=args.time_limit,
                        max_abandoned=args.max_abandoned)
    except (ConfigurationError, StoreError) as e:  # StoreError: an ipc:// file that cannot be used
        log.error("%s", e)
        return cli.EXIT_CONFIG
    if admin is not None:
        from .worker_metrics import serve_metrics

        try:
            address = serve_metrics(worker, admin[0], admin[1])
        except OSError as e:
            log.error("cannot serve metrics on %s: %s", args.admin_bind, e)
            return cli.EXIT_CONFIG
        log.info("metrics on http://%s:%d/metrics", *address)
    try:
        worker.layer.channel_statistics(worker.channels[0])  # reachable? (takes nothing)
    except LayerUnavailable as e:
        log.warning("channel layer not reachable at start-up (%s); the worker will keep retrying", e)
    return worker.run()


def _positive(value: str) -> int:
    import argparse

    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _count(value: str) -> int:
    import argparse

    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number (0 or more), got {value!r}")
    return n


def _seconds(value: str) -> float:
    import argparse

    try:
        n = float(value)
    except ValueError:
        n = -1.0
    if not n >= 0 or n == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds (0 or more), got {value!r}")
    return n


def _globs(value: str) -> list:
    """``a,b c`` -> ``["a", "b", "c"]``: the globs of one --only-channels/--exclude-channels value."""
    return value.replace(",", " ").split()


def _flat(values: Any) -> list:
    """The globs of repeated flags (lists of lists) or of the environment (one flat list)."""
    out: list = []
    for v in values or ():
        out.extend(v if isinstance(v, list) else [v])
    return out


def register(subparsers: Any) -> None:
    """Add ``worker`` to the ``wsgi-channels`` command."""
    from .config import add_option

    parser = subparsers.add_parser("worker", help="run consumers from a routing",
                                   description="Receive messages from the channel layer and run the routed consumers.")
    parser.add_argument("routing", metavar="ROUTING", help="the routing list as module:attribute")
    add_option(parser, "--layer", default=None, help="channel layer URL (default: WSGI_CHANNELS_LAYER)")
    group = parser.add_mutually_exclusive_group()
    add_option(group, "--threads", type=_positive, default=4, help="worker threads (default 4)")
    group.add_argument("--greenlets", type=_positive, default=None,
                       help="run N greenlets under gevent instead of threads")
    # One value per flag (repeatable, or comma-separated): with nargs="+" the globs would swallow a
    # ROUTING written after them (`--only-channels 'websocket.*' chat:routing`).
    add_option(parser, "--only-channels", action="append", type=_globs, default=None, metavar="GLOB[,GLOB]",
               help="serve only channels matching these globs (repeatable)")
    add_option(parser, "--exclude-channels", action="append", type=_globs, default=None, metavar="GLOB[,GLOB]",
               help="do not serve channels matching these globs (repeatable)")
    add_option(parser, "--send-timeout", type=_seconds, default=DEFAULT_SEND_TIMEOUT,
               help=f"seconds a send to a full channel is retried before it is dropped (default {DEFAULT_SEND_TIMEOUT:g})")
    add_option(parser, "--grace", type=_seconds, default=30.0,
               help="seconds to finish in-flight messages after SIGTERM (default 30)")
    add_option(parser, "--time-limit", type=_seconds, default=DEFAULT_TIME_LIMIT, metavar="SECONDS",
               help="give up a message that runs this long without sending (its stack is logged, its client "
                    "gets 504 or close 1011, another thread takes its place); 0 = no limit "
                    f"(default {DEFAULT_TIME_LIMIT:g})")
    add_option(parser, "--max-abandoned", type=_count, default=None, metavar="N",
               help="when N threads given up on are still stuck, stop and exit with status 75 for the "
                    "supervisor to restart the worker; 0 = never (default: twice the threads)")
    add_option(parser, "--admin-bind", default="", metavar="HOST:PORT", help="serve Prometheus /metrics here")
    add_option(parser, "--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=_command)


def main(argv: Optional[list] = None) -> int:
    """``python -m wsgi_channels.worker ROUTING ...``, same as ``wsgi-channels worker``."""
    from .cli import main as cli_main

    return cli_main(["worker", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
