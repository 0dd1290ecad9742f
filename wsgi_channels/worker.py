"""The worker: receive messages from the layer and run the routed consumers.

``wsgi-channels worker ROUTING [--layer URL] [--threads N | --greenlets N]
[--only-channels GLOB ...] [--exclude-channels GLOB ...]``

N threads (greenlets under gevent) take turns at one blocking ``receive`` on the
served channels (leader/follower): the thread that receives runs what it got
itself through :func:`~wsgi_channels.consumer.run_consumer`, after handing the
receiving role to an idle thread, so no message waits for a hand-over between
threads. No thread is created per message, and a busy worker leaves messages
queued for other workers; with a backlog, a layer that has ``receive_batch``
(Redis) takes as many messages as there are idle threads in one round trip.

A batch runs in order on the thread that received it, and the responses it
finishes go out together when it ends (one pipeline): waking a thread per
message costs more than most WSGI requests, which hold the GIL anyway. A slow
message never holds back the rest for long: once the message in progress has
run for :data:`STEAL_AFTER` seconds, the receiving thread (which then waits in
steps that short) sends the responses held so far and gives the rest of that
batch to idle threads.

Receives are bounded (a second), so a stop request is seen quickly. The
main thread supervises: it replaces a thread that died, and on SIGTERM/SIGINT
it stops receiving and waits up to ``grace`` seconds for the messages in flight.

A consumer that raises is logged and counted; the worker goes on. A layer
that is down (``LayerUnavailable``) is retried with capped exponential backoff
and the outage is logged once when it starts and once when it ends.
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

from .consumer import DEFAULT_SEND_TIMEOUT, hold_replies, run_consumer, use_reply_sender
from .exceptions import ConfigurationError, LayerUnavailable, StoreError
from .layers.base import BaseChannelLayer
from .message import Message
from .reply_sender import ReplySender
from .routing import Router

__all__ = ["Worker", "select_channels", "register", "main", "STEAL_AFTER"]

log = logging.getLogger(__name__)

_RECEIVE_TIMEOUT = 1.0
_MAX_BACKOFF = 5.0
_PROBE_EVERY = 8
_LEAD = object()  # the receiving role, passed between threads through the inbox
#: Seconds a batch's message may run before the rest of its batch goes to idle threads and the
#: responses held by its thread are sent: about the most one slow message delays the others by.
STEAL_AFTER = 0.005


class _Batch:
    """Messages received together, run in order by the thread that received them."""

    __slots__ = ("items", "started")

    def __init__(self, messages: list) -> None:
        self.items = deque(messages)  # popped by the runner, or taken by the leader when stale
        self.started = time.monotonic()  # when the message in progress started


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
    ``messages``, ``errors``, ``unrouted`` and ``restarts``; ``by_channel``,
    ``errors_by_channel`` and ``seconds_by_channel`` break them down (see
    :mod:`wsgi_channels.worker_metrics` for Prometheus).
    """

    def __init__(self, routing: Any, layer: Any = None, *, concurrency: int = 1,
                 only_channels: Sequence[str] = (), exclude_channels: Sequence[str] = (),
                 send_timeout: float = DEFAULT_SEND_TIMEOUT, grace: float = 30.0,
                 name: str = "worker", mode: str = "threads") -> None:
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
        self.concurrency = concurrency
        self.send_timeout = send_timeout
        self.grace = grace
        self.name = name
        self.stats = {"messages": 0, "errors": 0, "unrouted": 0, "restarts": 0}
        self.by_channel: Counter[str] = Counter()
        self.errors_by_channel: Counter[str] = Counter()
        self.seconds_by_channel: dict[str, float] = defaultdict(float)
        self._stats_lock = threading.Lock()
        self._stopping = threading.Event()
        self.mode = mode
        self._threads: list[threading.Thread] = []
        self._inbox: Any = queue.SimpleQueue()  # messages for idle threads, and the _LEAD token
        self._idle = 0  # threads waiting on the inbox
        self._idle_lock = threading.Lock()
        self._leading = False  # a thread is receiving
        self._batches: set[_Batch] = set()  # being run; the leader hands out a stale one's rest
        self._batch_lock = threading.Lock()
        self._receive_batch = getattr(self.layer, "receive_batch", None) if concurrency > 1 else None
        self._backlog, self._probe, self._backoff = False, 0, 0.0
        self._outage_since: Optional[float] = None
        self._outage_lock = threading.Lock()
        # Responses' last messages of all threads share round trips (layers with send_many).
        self._replies = ReplySender(self.layer) if getattr(self.layer, "send_many", None) else None

    # -- the loops ------------------------------------------------------------------------------
    #
    # Leader/follower: ``concurrency`` threads wait on one inbox holding the single _LEAD
    # token (and the rest of stale batches, or of a batch whose thread died). The thread that
    # takes the token makes the one blocking receive, asking for as many messages as there
    # are idle threads plus itself, puts the token back into the inbox, and runs what it got
    # (_run_batch). A message goes from the layer to its consumer without a hand-over to
    # another thread, a busy worker leaves messages queued for other workers, and one
    # blocking receive per process avoids waking every thread for every message. With one
    # thread, receiving and running alternate. A stopping worker runs every message it
    # received.

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def _serve_loop(self) -> None:
        inbox, idle_lock, stopping, handle = self._inbox, self._idle_lock, self._stopping, self.handle
        use_reply_sender(self._replies)
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
                messages = self._lead()
                if len(messages) > 1:
                    self._run_batch(messages)
                    continue
                if not messages:
                    continue
                item = messages[0]
            handle(*item)

    def _lead(self) -> list:
        """Receive as the leader: the messages to run here (none after a timeout or an outage)."""
        messages: list = []
        self._leading = True
        try:
            limit = 1
            if self._receive_batch is not None:
                self._probe += 1
                if self._backlog or self._probe % _PROBE_EVERY == 0 \
                        or getattr(self.layer, "batch_round_trips", 0) == 1:
                    limit = self._idle + 1
            # While batches run, wait in short steps: between them, see that none is stuck.
            timeout = STEAL_AFTER if self._batches else _RECEIVE_TIMEOUT
            try:
                if limit > 1:
                    messages = self._receive_batch(self.channels, limit=limit, block=True, timeout=timeout)
                    self._backlog = len(messages) > 1
                else:
                    channel, content = self.layer.receive(self.channels, block=True, timeout=timeout)
                    if channel is not None:
                        messages = [(channel, content)]
            except LayerUnavailable as e:
                self._backoff = min(_MAX_BACKOFF, self._backoff * 2 or 0.05)
                self._outage(e)
                self._stopping.wait(random.uniform(self._backoff / 2, self._backoff))
                return []
            if self._backoff:
                self._backoff = 0.0
                self._recovered()
        finally:
            self._inbox.put(_LEAD)  # always back, even when this thread dies here
            self._leading = False
            if self._batches:
                self._unstick()
        return messages

    def _run_batch(self, messages: list) -> None:
        """Run ``messages`` here in order, holding this thread's responses until the batch ends.

        A thread that dies mid-batch (a consumer raised ``SystemExit``) leaves the rest to the
        other threads, and sends what it held.
        """
        batch = _Batch(messages)
        items, handle = batch.items, self.handle
        with self._batch_lock:
            self._batches.add(batch)
        hold_replies(True)
        try:
            while True:
                try:
                    item = items.popleft()
                except IndexError:  # done, or the rest was handed out (_unstick)
                    break
                batch.started = time.monotonic()
                handle(*item)
        finally:
            with self._batch_lock:
                self._batches.discard(batch)
            self._hand_out(items)
            hold_replies(False)
            if self._replies is not None:
                self._replies.flush()

    def _unstick(self) -> None:
        """Give idle threads the rest of every batch whose message in progress has run for over
        :data:`STEAL_AFTER`, and send the responses held meanwhile."""
        stale_before = time.monotonic() - STEAL_AFTER
        with self._batch_lock:
            stale = [batch for batch in self._batches if batch.started < stale_before]
        for batch in stale:
            self._hand_out(batch.items)
        if stale and self._replies is not None:
            self._replies.flush()

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
        log.info("worker serving %s with %d %s on %r", ", ".join(self.channels), self.concurrency,
                 self.mode, self.layer)
        self._threads = [self._spawn(i) for i in range(self.concurrency)]
        return self

    def supervise_once(self) -> None:
        """Replace any thread that died (a consumer raised a BaseException such as SystemExit)."""
        if self._stopping.is_set():
            return
        for i, thread in enumerate(self._threads):
            if not thread.is_alive():
                self._count("restarts")
                log.error("worker thread %s died; starting a new one", thread.name)
                self._threads[i] = self._spawn(i)

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
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t for t in self._threads if t.is_alive()]
        if alive:
            log.warning("%d worker thread(s) still busy after the grace period; exiting anyway", len(alive))
        return not alive

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT (main thread only), then stop within the grace period."""
        def on_signal(signum: int, frame: Any) -> None:
            log.info("received %s: finishing in-flight messages (grace %.0fs)", signal.Signals(signum).name,
                     self.grace)
            self._stopping.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not self._stopping.wait(0.5):
            self.supervise_once()
        self.stop()
        log.info("worker stopped: %s", self.stats)


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
                        mode="greenlets" if args.greenlets else "threads")
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
    worker.run()
    return cli.EXIT_OK


def _positive(value: str) -> int:
    import argparse

    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
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
    add_option(parser, "--admin-bind", default="", metavar="HOST:PORT", help="serve Prometheus /metrics here")
    add_option(parser, "--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=_command)


def main(argv: Optional[list] = None) -> int:
    """``python -m wsgi_channels.worker ROUTING ...``, same as ``wsgi-channels worker``."""
    from .cli import main as cli_main

    return cli_main(["worker", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
