"""The worker: receive messages from the layer and run the routed consumers.

:class:`Worker` owns ``concurrency`` executor threads (greenlets under gevent), the
statistics and the per-message time limit; who receives and who runs which
message is :mod:`.scheduler`'s job (leader/follower, batches, hand-offs, I/O-wait
detection), and what runs is :func:`~wsgi_channels.consumers.consumer.run_consumer`
on the consumer the routing picks. The command line is ``wsgi-channels worker``
(:mod:`wsgi_channels.cli.worker`).

The main thread supervises (:meth:`Worker.run`): it replaces a thread that died,
and on SIGTERM/SIGINT it stops receiving and waits up to ``grace`` seconds for the
messages in flight. A consumer that raises is logged and counted; the worker goes
on.

A message that runs past the time limit (``time_limit``, default 60 s) is given
up (:mod:`.timelimit`): its stack is logged, its client answered, its later sends
dropped, and another thread takes its place. When too many given-up threads are
still stuck (``max_abandoned``), :meth:`Worker.run` stops as on SIGTERM and
returns ``EXIT_RESTART`` for the supervisor to start a fresh process.
"""
from __future__ import annotations

import fnmatch
import logging
import signal
import threading
import time
from collections import Counter, defaultdict
from typing import Any, Iterable, Optional, Sequence

from ..channel import resolve_layer
from ..consumers.consumer import DEFAULT_SEND_TIMEOUT, run_consumer, send_with_retry, use_reply_sender, use_slot
from ..consumers.consumer import _local as _consumer_state  # handle() reads the thread's slot: one attribute, no call
from ..consumers.message import Message
from ..consumers.routing import Router
from ..exceptions import ConfigurationError
from ..exitcodes import EXIT_OK, EXIT_RESTART
from ..layers.base import BaseChannelLayer
from .scheduler import Scheduler
from .timelimit import ABANDONED, DEFAULT_TIME_LIMIT, Slot, TimeLimiter, answer_for, stack_of

__all__ = ["Worker", "select_channels", "DEFAULT_TIME_LIMIT"]

log = logging.getLogger(__name__)


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
    same instance when the URL is also the default); None: the app's layer when
    ``routing`` carries one (``routing_for(app)``), else the default layer. ``stats`` counts
    ``messages``, ``errors``, ``unrouted``, ``restarts`` and ``timed_out``; ``by_channel``,
    ``errors_by_channel``, ``seconds_by_channel`` and ``timed_out_by_channel`` break them
    down (see :mod:`wsgi_channels.worker.metrics` for Prometheus).

    ``time_limit``: seconds a message may run (the count starts again at each message
    its consumer sends) before it is given up (see :mod:`wsgi_channels.worker.timelimit`): its
    stack is logged, its client answered (504, an aborted response, or close 1011),
    its later sends dropped, and its thread replaced; 0 turns the limit off.
    ``max_abandoned``: when this many given-up threads are still running at once (by
    default twice ``concurrency``), :meth:`run` stops receiving, finishes the messages
    in flight and returns :data:`~wsgi_channels.exitcodes.EXIT_RESTART`, for the process
    supervisor to start a fresh worker; 0 never restarts.
    ``accept_unrouted``: accept a WebSocket handshake that no route takes instead of refusing
    it (see :class:`~wsgi_channels.consumers.routing.Router`; a ``routing`` that is already a
    Router keeps its own choice); either way it is counted as ``unrouted``.
    """

    def __init__(self, routing: Any, layer: Any = None, *, concurrency: int = 1,
                 only_channels: Sequence[str] = (), exclude_channels: Sequence[str] = (),
                 send_timeout: float = DEFAULT_SEND_TIMEOUT, grace: float = 30.0,
                 name: str = "worker", mode: str = "threads", time_limit: float = DEFAULT_TIME_LIMIT,
                 max_abandoned: Optional[int] = None, accept_unrouted: bool = False) -> None:
        self.router = routing if isinstance(routing, Router) else Router(routing, accept_unrouted=accept_unrouted)
        self._unrouted_connect = self.router.unrouted_connect
        self.layer: BaseChannelLayer = resolve_layer(layer if layer is not None else getattr(routing, "layer_url", None))
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
        self.exit_status = EXIT_OK
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
        self._scheduler = Scheduler(self.layer, self.channels, concurrency=concurrency, handle=self.handle,
                                    stopping=self._stopping, on_handed_out=self._count_handed_out)
        self._watchdog: Optional[threading.Thread] = None
        self._limiter: Optional[TimeLimiter] = None
        self._threads_lock = threading.Lock()  # _threads and _abandoned change in the limiter and in supervise_once
        self._abandoned: list[threading.Thread] = []  # replaced after a message given up, maybe still running

    # -- the executor threads -------------------------------------------------------------------

    def _serve_loop(self) -> None:
        """An executor thread: its reply sender and time-limit slot, then the scheduler's loop."""
        use_reply_sender(self._scheduler.replies)
        limiter = self._limiter
        slot = limiter.register() if limiter is not None else None
        use_slot(slot)
        try:
            self._scheduler.serve(slot)
        finally:
            if limiter is not None and slot is not None and slot.state is not ABANDONED:
                limiter.unregister(slot)

    def _count_handed_out(self) -> None:
        with self._stats_lock:
            self.stats["handed_out"] += 1

    # -- one message ------------------------------------------------------------------------------

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
        return "unrouted" if consumer is self._unrouted_connect else ""  # a handshake no route takes

    # -- the time limit (see .timelimit) -------------------------------------------------------

    def _on_stuck(self, slot: Slot) -> None:
        """The limiter gave up the message of ``slot`` (its thread is stuck in it): pass on the receiving
        role and the rest of its batch if it held them, start a thread in its place, log where it is
        stuck, and answer its client. Runs on the limiter's thread."""
        stuck_for = time.perf_counter() - slot.started
        stack = stack_of(slot)  # first: the thread may move on at any moment
        self._scheduler.give_away(slot.ident)  # the rest of its batch and the receiving role, if it held them
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

    @property
    def layer_up(self) -> bool:
        """False while the layer is unreachable (between the first failure and the next success)."""
        return self._scheduler.layer_up

    # -- lifecycle --------------------------------------------------------------------------

    def _spawn(self, index: int) -> threading.Thread:
        thread = threading.Thread(target=self._serve_loop, name=f"{self.name}-{index}", daemon=True)
        thread.start()
        return thread

    def start(self) -> "Worker":
        """Start the threads and return at once (for tests and embedding); :meth:`stop` ends them."""
        self._stopping.clear()
        self._scheduler.reset()
        log.info("worker serving %s with %d %s on %r, %s", ", ".join(self.channels), self.concurrency,
                 self.mode, self.layer, f"time limit {self.time_limit:g}s" if self.time_limit else "no time limit")
        if self.time_limit:
            self._limiter = TimeLimiter(self.time_limit, self._on_stuck, self.name).start()
        self._threads = [self._spawn(i) for i in range(self.concurrency)]
        if self.concurrency > 1:  # with one thread, nobody could take over
            self._watchdog = threading.Thread(target=self._scheduler.watch, name=f"{self.name}-watchdog",
                                              daemon=True)
            self._watchdog.start()
        return self

    def supervise_once(self) -> None:
        """Replace any thread that died (a consumer raised a BaseException such as SystemExit)."""
        if self._stopping.is_set():
            return
        with self._threads_lock:
            for i, thread in enumerate(self._threads):
                if not thread.is_alive():
                    with self._stats_lock:
                        self.stats["restarts"] += 1
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
        self._scheduler.wake(len(self._threads))  # idle threads and the watchdog see the stop; a receive returns
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
