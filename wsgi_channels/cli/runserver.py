"""``wsgi-channels runserver APP --routing ROUTING``: the whole stack in one process, for development.

One gevent process holds:

- the sidecar, in HTTP mode, on ``--bind`` (default ``127.0.0.1:8000``): browsers
  load pages and open WebSockets on the same port, so pages need no extra
  configuration and the Origin check passes;
- a worker (``--threads`` greenlets) running ``ROUTING`` first, then
  ``route("http.request", WsgiConsumer(APP))`` for every plain HTTP request;
- the in-memory layer (``memory://``), which needs no Redis and no files. It is
  also made the process's default layer (``WSGI_CHANNELS_LAYER``), so
  ``Group(...).send()`` in views reaches the same sockets.

``APP`` and ``ROUTING`` are ``module:attribute`` names found from the current
directory (like gunicorn). Several ``--routing`` options are combined in order.
For production, run gunicorn, ``wsgi-channels sidecar`` and ``wsgi-channels
worker`` as separate processes on a shared layer (see docs/deployment.md).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from ..config import add_option
from ..exitcodes import EXIT_CONFIG, EXIT_OK
from .layer_options import add_layer_feature_options, check_layer_at_start, layer_url_with_features

__all__ = ["register", "build", "run"]

log = logging.getLogger(__name__)

DEFAULT_BIND = "127.0.0.1:8000"


def _import(spec: str, what: str) -> Any:
    from ..config import import_object

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    if ":" not in spec and "." not in spec:
        from ..exceptions import ConfigurationError

        raise ConfigurationError(f"{what} {spec!r} must be module:attribute (for example myapp:app)")
    return import_object(spec)


def build(app_spec: str, routing_specs: list[str], layer_url: str, bind: list[str], threads: int,
          sidecar_options: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """Import the app and routings and build ``(sidecar, worker)``, not started.

    Raises :class:`~wsgi_channels.ConfigurationError` naming what is wrong.
    """
    from ..channel import ENV_VAR, get_layer
    from ..consumers.routing import include, route
    from ..consumers.wsgi import WsgiConsumer
    from ..exceptions import ConfigurationError
    from ..sidecar.config import SidecarConfig
    from ..sidecar.server import Sidecar
    from ..worker import Worker

    # Before the app is imported: its pushes (Group(...).send()) must land on this layer.
    os.environ[ENV_VAR] = layer_url
    app = _import(app_spec, "APP")
    if not callable(app):
        raise ConfigurationError(f"APP {app_spec!r} is not a WSGI application (not callable)")
    imported = [_import(spec, "--routing") for spec in routing_specs]
    layer_url = _served_layer(layer_url, imported)
    os.environ[ENV_VAR] = layer_url
    layer = get_layer(layer_url)
    routing: list = [include(r) for r in imported]
    routing.append(route("http.request", WsgiConsumer(app)))
    config = SidecarConfig(bind=bind, layer=layer_url, http="layer", **(sidecar_options or {}))
    sidecar = Sidecar(config, layer=layer)
    worker = Worker(routing, layer, concurrency=threads, name="runserver-worker")
    return sidecar, worker


def _served_layer(url: str, routings: list[Any]) -> str:
    """The layer this process serves: ``url``, or the app's layer when a routing carries ``url`` with
    the app's own layer options added (``routing_for(app)`` of an app with ``WSGI_CHANNELS_OPTIONS``,
    such as ``group_history``). One process holds the app, the worker and the sidecar: they must
    share one layer instance (one per URL), or the app's pushes never reach the sockets.

    Raises :class:`~wsgi_channels.ConfigurationError` when routings carry different such layers.
    """
    from ..exceptions import ConfigurationError

    carried = {u for u in (getattr(r, "layer_url", None) for r in routings) if isinstance(u, str) and u != url}
    extending = {u for u in carried if u.startswith(url) and u[len(url)] in "?&"}
    for other in sorted(carried - extending):
        log.warning("a routing carries the layer %r, not %r which runserver serves: its app's pushes will not "
                    "reach these sockets", other, url)
    if len(extending) > 1:
        raise ConfigurationError(f"the routings carry different layer options ({', '.join(sorted(extending))}): "
                                 "one process serves one layer; put the options in one place, the layer URL "
                                 "(--layer, or --group-history/--group-presence)")
    return extending.pop() if extending else url


def _display_url(address: Any) -> str:
    if isinstance(address, str):
        return f"unix:{address}"
    host, port = address[0], address[1]
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def run(args: argparse.Namespace) -> int:
    from ..exceptions import ConfigurationError

    bind = [b for item in (args.bind or [DEFAULT_BIND]) for b in str(item).replace(",", " ").split()]
    layer_url = layer_url_with_features(args.layer or "memory://runserver", args)
    # A development server stops quickly: idle keep-alive connections are not waited for long.
    options = {"allowed_origins": list(args.allowed_origins or []), "grace_period": 2.0}
    try:
        sidecar, worker = build(args.app, args.routing or [], layer_url, bind, args.threads, options)
        check_layer_at_start(sidecar.layer, sidecar.prefix, "runserver")
    except ConfigurationError as e:
        print(f"wsgi-channels runserver: {e}", file=sys.stderr)
        return EXIT_CONFIG
    import gevent

    def serve() -> Any:
        # A failure to listen comes back as the greenlet's value: left as its exception, gevent's
        # hub would print a traceback before our one-line error.
        try:
            return sidecar.serve_forever()  # listens, handles SIGTERM/SIGINT, drains
        except OSError as e:
            return e

    worker.start()
    server = gevent.spawn(serve)
    while not sidecar.addresses and not server.dead:
        gevent.sleep(0.01)
    gevent.sleep(0)  # a second --bind that fails does so right after the first one listens
    if server.dead:
        worker.stop(grace=1)
        error = server.exception or server.value
        print(f"wsgi-channels runserver: cannot listen on {', '.join(bind)}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    urls = ", ".join(_display_url(a) for a in sidecar.addresses)
    # stdout, flushed: the line a person (or a test) waits for.
    print(f"wsgi-channels runserver: serving {args.app} on {urls} (layer {sidecar.config.layer}); press Ctrl+C to "
          "stop",
          flush=True)
    try:
        while not server.dead:
            worker.supervise_once()
            server.join(timeout=0.5)
    finally:
        worker.stop(grace=5)
    log.info("runserver stopped")
    return EXIT_OK


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "runserver",
        help="development server: a WSGI app, the sidecar and a worker in one process (in-memory layer)",
        description="Serve APP and its WebSocket consumers from one process on the in-memory layer. "
                    "For development only; see docs/deployment.md for production.",
    )
    p.add_argument("app", metavar="APP", help="the WSGI application as module:attribute (e.g. myapp:app)")
    add_option(p, "--routing", action="append", default=None, metavar="ROUTING",
               help="routing list as module:attribute; repeat to combine several")
    add_option(p, "--bind", action="append", default=None, metavar="ADDRESS",
               help=f"HOST:PORT or unix:PATH (default {DEFAULT_BIND})")
    add_option(p, "--layer", default="", metavar="URL",
               help="channel layer URL (default memory://runserver: no Redis needed)")
    add_option(p, "--threads", type=int, default=8, help="worker greenlets (default 8)")
    add_option(p, "--allowed-origins", default=[], nargs="*", metavar="ORIGIN",
               help="origins allowed to open WebSockets (default: same origin)")
    add_layer_feature_options(p)
    add_option(p, "--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)
    return p
