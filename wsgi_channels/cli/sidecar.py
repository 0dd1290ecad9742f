"""``wsgi-channels sidecar``: the command line front door of :class:`~wsgi_channels.sidecar.SidecarConfig`.

Every flag is also read from ``WSGI_CHANNELS_<FLAG>`` (an explicit flag wins).
gevent is monkey-patched by :func:`wsgi_channels.cli.main` before this module
is imported, so the layer's sockets are cooperative.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ..channel import default_layer_url
from ..config import add_option, parse_bool
from ..exceptions import ConfigurationError
from ..exitcodes import EXIT_CONFIG
from ..layers import require_cross_process
from ..sidecar.config import HTTP_MODES, SidecarConfig
from ..tokens import token_secret
from .layer_options import add_layer_feature_options, check_layer_at_start, layer_url_with_features

__all__ = ["register", "build_config", "run", "setup_access_log"]

log = logging.getLogger(__name__)


def _positive_float(value: str) -> float:
    f = float(value)
    if f < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value!r}")
    return f


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sidecar",
        help="serve WebSockets (and optionally HTTP) for browsers through the channel layer",
        description="A gevent server holding browsers' WebSockets beside your WSGI server; "
                    "it speaks to your consumers through the channel layer.",
    )
    d = SidecarConfig()
    add_option(p, "--bind", default=None, action="append", metavar="ADDRESS",
               help=f"HOST:PORT or unix:PATH to listen on; repeat for several (default {d.bind[0]})")
    add_option(p, "--layer", default="", metavar="URL",
               help="channel layer URL, redis://... or ipc:///path (default: ipc://, this user's store on this machine)")
    add_option(p, "--http", default=d.http, choices=HTTP_MODES,
               help="'layer': send plain HTTP requests to http.request consumers; 'off': 404 (default off)")
    add_option(p, "--http-timeout", default=d.http_timeout, type=float, metavar="SECONDS",
               help=f"504 when no response starts in time (default {d.http_timeout:g})")
    add_option(p, "--http-body-inline", default=d.http_body_inline, type=int, metavar="BYTES",
               help="larger request bodies stream through body_channel")
    add_option(p, "--max-request-body", default=d.max_request_body, type=int, metavar="BYTES",
               help="413 above this request body size (0 = no limit)")
    add_option(p, "--ping-interval", default=d.ping_interval, type=_positive_float, metavar="SECONDS",
               help=f"ping idle WebSockets this often, 0 = never (default {d.ping_interval:g})")
    add_option(p, "--ping-timeout", default=d.ping_timeout, type=float, metavar="SECONDS",
               help=f"close a pinged WebSocket that stays silent this long (default {d.ping_timeout:g})")
    add_option(p, "--connect-timeout", default=d.connect_timeout, type=float, metavar="SECONDS",
               help=f"wait this long for the websocket.connect consumer (default {d.connect_timeout:g})")
    add_option(p, "--connect-timeout-accept", action="store_true", default=False,
               help="accept instead of answering 503 when the connect consumer does not answer in time")
    add_option(p, "--handshake-timeout", default=d.handshake_timeout, type=float, metavar="SECONDS",
               help=f"time a client has to send its request head (default {d.handshake_timeout:g})")
    add_option(p, "--max-message-size", default=d.max_message_size, type=int, metavar="BYTES",
               help="close 1009 when a client message's payload is larger; with --max-header-size and 4 KiB "
                    f"it must fit the layer's message limit (default {d.max_message_size})")
    add_option(p, "--max-header-size", default=d.max_header_size, type=int, metavar="BYTES",
               help="431 when a request head is larger")
    add_option(p, "--max-connections", default=d.max_connections, type=int, metavar="N",
               help=f"503 above this many open connections, 0 = no limit (default {d.max_connections})")
    add_option(p, "--max-outgoing-buffer", default=d.max_outgoing_buffer, type=int, metavar="BYTES",
               help="close a client that has this much unread data queued (a WebSocket gets 1013)")
    add_option(p, "--max-outgoing-total", default=d.max_outgoing_total, type=int, metavar="BYTES",
               help="unread data queued for all clients together; past it the clients with the most queued "
                    f"are closed first, 0 = no limit (default {d.max_outgoing_total})")
    add_option(p, "--control-frame-rate", default=d.control_frame_rate, type=_positive_float, metavar="PER_SECOND",
               help="pings, pongs and fragments under 64 bytes a WebSocket client may send per second (bursts of "
                    f"twice that); close 1008 past it, 0 = no limit (default {d.control_frame_rate:g})")
    add_option(p, "--max-replay", default=d.max_replay, type=int, metavar="N",
               help="most missed messages of a history group a resume replays (or a hole in live messages is "
                    f"filled with); more gives the client a gap 'too_many' (default {d.max_replay})")
    add_option(p, "--allowed-origins", default=[], nargs="*", metavar="ORIGIN",
               help="origins allowed to open WebSockets (https://app.example.com, https://*.example.com for "
                    "its subdomains, '*' = any); default: same origin as Host")
    add_option(p, "--proxy-headers", action="store_true", default=False,
               help="trust X-Forwarded-For/-Proto/-Port (only behind your own proxy)")
    add_option(p, "--root-path", default="", metavar="PATH", help="mount point sent as root_path")
    add_option(p, "--access-log", default="", metavar="FILE", help="access log file ('-' = stdout)")
    add_option(p, "--admin-bind", default="", metavar="HOST:PORT", help="serve Prometheus /metrics here")
    add_option(p, "--compression", default=True, type=parse_bool, metavar="BOOL",
               help="offer permessage-deflate (default true)")
    add_option(p, "--grace-period", default=d.grace_period, type=float, metavar="SECONDS",
               help=f"SIGTERM drain time (default {d.grace_period:g})")
    add_option(p, "--health-path", default=d.health_path, metavar="PATH", help="health endpoint path")
    add_option(p, "--token-secret", default="", metavar="SECRET",
               help="secret shared with the app: a handshake from another origin is accepted with a valid "
                    "signed connect token for its path (wsgi_channels.tokens)")
    add_option(p, "--token-secret-file", default="", metavar="FILE",
               help="read the connect token secret(s) from FILE, one per line (keeps it out of `ps`)")
    add_layer_feature_options(p)
    add_option(p, "--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)
    return p


def build_config(args: argparse.Namespace) -> SidecarConfig:
    """Parsed arguments -> :class:`SidecarConfig` (raises ConfigurationError naming the bad value)."""
    bind = args.bind or SidecarConfig().bind
    flat = [b for item in bind for b in str(item).replace(",", " ").split()]
    layer = args.layer
    if getattr(args, "group_history", None) or getattr(args, "group_presence", None):
        layer = layer_url_with_features(layer or default_layer_url(), args)
    return SidecarConfig(
        bind=flat, layer=layer, http=args.http, http_timeout=args.http_timeout,
        http_body_inline=args.http_body_inline, max_request_body=args.max_request_body,
        ping_interval=args.ping_interval, ping_timeout=args.ping_timeout,
        connect_timeout=args.connect_timeout, connect_timeout_accept=args.connect_timeout_accept,
        handshake_timeout=args.handshake_timeout, max_message_size=args.max_message_size,
        max_header_size=args.max_header_size, max_connections=args.max_connections,
        max_outgoing_buffer=args.max_outgoing_buffer, max_outgoing_total=args.max_outgoing_total,
        control_frame_rate=args.control_frame_rate, allowed_origins=list(args.allowed_origins or []),
        proxy_headers=args.proxy_headers, root_path=args.root_path, access_log=args.access_log,
        admin_bind=args.admin_bind, compression=args.compression, grace_period=args.grace_period,
        health_path=args.health_path, max_replay=args.max_replay,
        token_secret=token_secret(args.token_secret, args.token_secret_file),
    )


def setup_access_log(target: str) -> None:
    logger = logging.getLogger("wsgi_channels.sidecar.access")
    if not target:
        # No access log: records are not even built (one per request and per socket).
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        return
    handler = logging.StreamHandler(sys.stdout) if target == "-" else logging.FileHandler(target)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def run(args: argparse.Namespace) -> int:
    try:
        config = build_config(args)
        require_cross_process(config.layer or default_layer_url(), "the sidecar")
    except ConfigurationError as e:
        print(f"wsgi-channels sidecar: {e}", file=sys.stderr)
        return EXIT_CONFIG
    setup_access_log(config.access_log)
    from ..sidecar.server import Sidecar

    try:
        sidecar = Sidecar(config)
        check_layer_at_start(sidecar.layer, sidecar.prefix, "sidecar")
    except ConfigurationError as e:
        print(f"wsgi-channels sidecar: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return sidecar.serve_forever()
    except OSError as e:
        if sidecar.addresses:
            raise
        print(f"wsgi-channels sidecar: cannot listen: {e}", file=sys.stderr)
        return EXIT_CONFIG
