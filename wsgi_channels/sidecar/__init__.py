"""The sidecar: a gevent server that holds browsers' WebSockets (and optionally HTTP) beside a WSGI server.

Run it with ``wsgi-channels sidecar --bind 127.0.0.1:8001 --layer redis://...``.
Protocol handling is sans-IO (:mod:`wsgi_channels.protocol`: h11 and wsproto);
:mod:`.server` (listeners, the layer receive loop, the sweeper, draining) and
:mod:`.connection` (one state machine per client socket, :mod:`.state`, owning an
:mod:`.http_side` and a :mod:`.websocket_side`) only move bytes and messages.
:class:`SidecarConfig` is the one configuration object every front door builds.
"""
from __future__ import annotations

from typing import Any

from .config import SidecarConfig

__all__ = ["SidecarConfig", "Sidecar"]


def __getattr__(name: str) -> Any:
    # The server imports gevent; keep `from wsgi_channels.sidecar import SidecarConfig` light.
    if name == "Sidecar":
        from .server import Sidecar

        return Sidecar
    raise AttributeError(f"module 'wsgi_channels.sidecar' has no attribute {name!r}")
