"""The worker: receive messages from the layer and run the routed consumers.

``wsgi-channels worker ROUTING [--layer URL] [--threads N | --greenlets N]
[--only-channels GLOB ...] [--exclude-channels GLOB ...]``

One receiver thread (a greenlet under gevent) makes a blocking ``receive`` on
the served channels whenever one of N executor threads is free, and hands the
message over; the executor runs :func:`~wsgi_channels.consumer.run_consumer`.
No thread is created per message, and a busy worker leaves messages queued
for other workers; with a backlog, a layer that has ``receive_batch`` (Redis)
hands over as many messages as there are free executors in one round trip. Receives are bounded (a second), so a stop request is seen
quickly. The main thread supervises: it replaces a thread that died, and on
SIGTERM/SIGINT it stops receiving and waits up to ``grace`` seconds for the
messages in flight.

A consumer that raises is logged and counted; the worker goes on. A layer
that is down (``LayerUnavailable``) is retried with capped exponential backoff
and the outage is logged once when it starts and once when it ends.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import random
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from queue import Queue
from typing import Any, Iterable, Optional, Sequence

from .consumer import DEFAULT_SEND_TIMEOUT, run_consumer
from .exceptions import ConfigurationError, LayerUnavailable, StoreError
from .layers.base import BaseChannelLayer
from .message import Message
from .routing import Router

__all__ = ["Worker", "select_channels", "register", "main"]

log = logging.getLogger(__name__)

_RECEIVE_TIMEOUT = 1.0
_MAX_BACKOFF = 5.0
_PROBE_EVERY = 8


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
        self._slots = threading.BoundedSemaphore(concurrency)
        self._queue: Queue = Queue()
        self._outage_since: Optional[float] = None
        self._outage_lock = threading.Lock()

    # -- the loops ------------------------------------------------------------------------------
    #
    # One thread receives; ``concurrency`` threads run consumers. A slot semaphore
    # lets the receiver take a message only when an executor is free, so a busy
    # worker leaves messages in the layer for other workers, and one blocking
    # receive per process avoids waking every thread for every message.

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def _receive_loop(self) -> None:
        channels, layer, slots, queue = self.channels, self.layer, self._slots, self._queue
        # Layers with ``receive_batch`` (Redis) fetch several waiting messages in one round
        # trip. Batching only pays when messages are queued up, so it is used while the last
        # batch came back with more than one, and tried every _PROBE_EVERY receives otherwise;
        # a layer whose batch costs one round trip whatever it holds (``batch_round_trips``
        # = 1, Redis) is always asked for as many messages as there are free executors.
        receive_batch = getattr(layer, "receive_batch", None) if self.concurrency > 1 else None
        backlog, probe = False, 0
        backoff = 0.0
        while not self._stopping.is_set():
            if not slots.acquire(timeout=_RECEIVE_TIMEOUT):
                continue
            taken = 1
            if receive_batch is not None:
                probe += 1
                if backlog or probe % _PROBE_EVERY == 0 or getattr(layer, "batch_round_trips", 0) == 1:
                    while taken < self.concurrency and slots.acquire(blocking=False):
                        taken += 1
            try:
                if taken > 1:
                    messages = receive_batch(channels, limit=taken, block=True, timeout=_RECEIVE_TIMEOUT)
                    backlog = len(messages) > 1
                else:
                    channel, content = layer.receive(channels, block=True, timeout=_RECEIVE_TIMEOUT)
                    messages = [] if channel is None else [(channel, content)]
            except LayerUnavailable as e:
                for _ in range(taken):
                    slots.release()
                backoff = min(_MAX_BACKOFF, backoff * 2 or 0.05)
                self._outage(e)
                self._stopping.wait(random.uniform(backoff / 2, backoff))
                continue
            except BaseException:
                for _ in range(taken):
                    slots.release()
                raise
            if backoff:
                backoff = 0.0
                self._recovered()
            for item in messages:
                queue.put(item)
            for _ in range(taken - len(messages)):
                slots.release()

    def _execute_loop(self) -> None:
        queue, slots, handle = self._queue, self._slots, self.handle
        while True:
            item = queue.get()
            if item is None:  # stop sentinel, queued after every received message
                return
            try:
                handle(*item)
            finally:
                slots.release()

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
        if index < 0:
            target, name = self._receive_loop, f"{self.name}-receiver"
        else:
            target, name = self._execute_loop, f"{self.name}-{index}"
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def start(self) -> "Worker":
        """Start the threads and return at once (for tests and embedding); :meth:`stop` ends them."""
        self._stopping.clear()
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._queue = Queue()
        log.info("worker serving %s with %d %s on %r", ", ".join(self.channels), self.concurrency,
                 self.mode, self.layer)
        self._threads = [self._spawn(i) for i in range(self.concurrency)]
        self._receiver = self._spawn(-1)
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
        if not self._receiver.is_alive():
            self._count("restarts")
            log.error("worker receiver thread died; starting a new one")
            self._receiver = self._spawn(-1)

    def stop(self, grace: Optional[float] = None) -> bool:
        """Stop receiving and wait up to ``grace`` seconds for in-flight messages; True if all finished."""
        self._stopping.set()
        deadline = time.monotonic() + (self.grace if grace is None else grace)
        receiver = getattr(self, "_receiver", None)
        if receiver is not None:
            receiver.join(_RECEIVE_TIMEOUT + 1.0)  # a receive returns within _RECEIVE_TIMEOUT
        for _ in self._threads:
            self._queue.put(None)
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
