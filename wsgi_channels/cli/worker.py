"""``wsgi-channels worker ROUTING``: the command line front door of :class:`~wsgi_channels.worker.Worker`.

``wsgi-channels worker ROUTING [--layer URL] [--threads N | --greenlets N]
[--only-channels GLOB ...] [--exclude-channels GLOB ...] [--time-limit SECONDS]
[--group-history PATTERN[:FIELD=VALUE]...] [--group-presence ...]``

Every flag is also read from ``WSGI_CHANNELS_<FLAG>`` (an explicit flag wins).
``--greenlets`` runs under gevent, which :func:`wsgi_channels.cli.main` patches
before this module is imported.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Optional

from ..config import add_option
from ..consumers.consumer import DEFAULT_SEND_TIMEOUT
from .layer_options import add_layer_feature_options, check_layer_at_start, layer_url_with_features
from ..exceptions import ConfigurationError, StoreError
from ..exitcodes import EXIT_CONFIG
from ..worker.timelimit import DEFAULT_TIME_LIMIT

__all__ = ["register", "main"]

log = logging.getLogger(__name__)


def _load_routing(spec: str) -> Any:
    from ..config import import_object

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like gunicorn: the routing module is found from the cwd
    return import_object(spec)


def _command(args: Any) -> int:
    from ..layers import require_cross_process
    from ..settings import ENV_VAR, command_layer_url
    from ..worker import Worker

    if args.layer:  # checked before the routing is imported: the mistake is the flag's
        try:
            require_cross_process(args.layer, "the worker")
        except ConfigurationError as e:
            log.error("%s", e)
            return EXIT_CONFIG
    if args.greenlets:
        from gevent import monkey

        if not monkey.is_module_patched("threading"):
            log.error("--greenlets needs gevent monkey-patching: run it as `wsgi-channels worker --greenlets N`")
            return EXIT_CONFIG
    admin = None
    if args.admin_bind:
        from ..config import parse_address

        try:
            admin = parse_address(args.admin_bind)
            if admin[0] == "unix":
                raise ValueError("--admin-bind takes HOST:PORT")
        except (ValueError, argparse.ArgumentTypeError) as e:
            log.error("--admin-bind %r: %s", args.admin_bind, e)
            return EXIT_CONFIG
    if args.layer:
        os.environ[ENV_VAR] = args.layer  # before the app is imported: its default layer is the flag's
    try:
        routing = _load_routing(args.routing)
        # An explicit --layer, else the app's layer (routing_for(app) carries it), else the environment's.
        url = command_layer_url(args.layer, getattr(routing, "layer_url", None), command="wsgi-channels worker")
        url = layer_url_with_features(url, args)
        require_cross_process(url, "the worker")
        os.environ[ENV_VAR] = url  # Channel()/Group() in consumers use the worker's layer
        worker = Worker(routing, url, concurrency=args.greenlets or args.threads,
                        only_channels=_flat(args.only_channels), exclude_channels=_flat(args.exclude_channels),
                        send_timeout=args.send_timeout, grace=args.grace,
                        mode="greenlets" if args.greenlets else "threads", time_limit=args.time_limit,
                        max_abandoned=args.max_abandoned, accept_unrouted=args.accept_unrouted)
    except (ConfigurationError, StoreError) as e:  # StoreError: an ipc:// file that cannot be used
        log.error("%s", e)
        return EXIT_CONFIG
    if admin is not None:
        from ..worker.metrics import serve_metrics

        try:
            address = serve_metrics(worker, admin[0], admin[1])
        except OSError as e:
            log.error("cannot serve metrics on %s: %s", args.admin_bind, e)
            return EXIT_CONFIG
        log.info("metrics on http://%s:%d/metrics", *address)
    check_layer_at_start(worker.layer, worker.channels[0], "worker")
    return worker.run()


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number (0 or more), got {value!r}")
    return n


def _seconds(value: str) -> float:
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
    parser = subparsers.add_parser("worker", help="run consumers from a routing",
                                   description="Receive messages from the channel layer and run the routed consumers.")
    parser.add_argument("routing", metavar="ROUTING", help="the routing list as module:attribute")
    # Not add_option: the environment's layer must not pass for an explicit flag, which wins over
    # the app's own layer (see wsgi_channels.settings).
    parser.add_argument("--layer", default=None, metavar="URL",
                        help="channel layer URL (default: the app's layer when ROUTING carries one, else "
                             "WSGI_CHANNELS_LAYER, else ipc://, this user's store on this machine)")
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
    add_option(parser, "--accept-unrouted", action="store_true", default=False,
               help="accept a WebSocket handshake whose path no route takes (default: refuse it, the client gets "
                    "403 and the path is logged; either way it is counted as unrouted)")
    add_option(parser, "--admin-bind", default="", metavar="HOST:PORT", help="serve Prometheus /metrics here")
    add_layer_feature_options(parser)
    add_option(parser, "--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=_command)


def main(argv: Optional[list] = None) -> int:
    """``python -m wsgi_channels.cli.worker ROUTING ...``, same as ``wsgi-channels worker``."""
    from .main import main as cli_main

    return cli_main(["worker", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
