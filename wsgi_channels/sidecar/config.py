"""One configuration object for the sidecar; every front door translates into it.

The command line (``wsgi-channels sidecar --flag``), environment variables
(``WSGI_CHANNELS_<FLAG>``) and the framework adapters' settings all build a
:class:`SidecarConfig`; the server reads nothing else.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..config import parse_address
from ..exceptions import ConfigurationError
from ..protocol.origin import normalize_origin, origin_allowed, origin_key

__all__ = ["SidecarConfig", "HTTP_MODES", "RECEIVE_OVERHEAD", "origin_key", "origin_allowed"]

HTTP_MODES = ("off", "layer")

#: Room a ``websocket.receive`` message needs beside its payload and its path: the keys, the
#: reply channel, ``order`` and msgpack's framing take under 200 bytes; this leaves a margin.
RECEIVE_OVERHEAD = 4096


@dataclass
class SidecarConfig:
    """Everything the sidecar server needs to know; defaults suit a sidecar behind nginx.

    Times are seconds, sizes are bytes. ``0`` disables a limit where noted.
    """

    #: Addresses to listen on: ``HOST:PORT`` or ``unix:PATH`` (gunicorn's grammar).
    bind: list[str] = field(default_factory=lambda: ["127.0.0.1:8001"])
    #: Channel layer URL (``WSGI_CHANNELS_LAYER`` when empty).
    layer: str = ""
    #: ``"off"``: plain HTTP gets 404 (except health and static files); ``"layer"``: ``http.request`` messages.
    http: str = "off"
    #: HTTP mode: seconds to wait for a response (504 when it has not started; the socket closes when it stalls).
    http_timeout: float = 60.0
    #: HTTP mode: bodies up to this size travel inside ``http.request``; larger ones stream on ``body_channel``.
    http_body_inline: int = 256 * 1024
    #: HTTP mode: largest request body accepted (413 above it; 0 = no limit).
    max_request_body: int = 64 * 1024 * 1024
    #: Seconds between keepalive pings to an idle WebSocket (0 = never ping).
    ping_interval: float = 20.0
    #: Seconds a pinged WebSocket may stay silent before it is closed as dead.
    ping_timeout: float = 30.0
    #: Seconds to wait for the ``websocket.connect`` consumer's answer.
    connect_timeout: float = 5.0
    #: Accept (instead of 503) when the connect consumer does not answer in time.
    connect_timeout_accept: bool = False
    #: Seconds a client has to send its complete request head (slow-loris defence).
    handshake_timeout: float = 10.0
    #: Largest WebSocket message accepted from a client, in payload bytes (close 1009 above it).
    #: The message travels in ``websocket.receive`` beside its path (up to ``max_header_size``)
    #: and a few keys, so this plus ``max_header_size`` plus :data:`RECEIVE_OVERHEAD` must fit
    #: the layer's ``max_message_size`` (checked at start): 1 MiB - 20 KiB suits the defaults.
    max_message_size: int = 1024 * 1024 - 16 * 1024 - 4096
    #: Largest request head (request line + headers); 431 above it.
    max_header_size: int = 16 * 1024
    #: Most simultaneous connections (WebSocket and HTTP); more get 503 (0 = no limit).
    max_connections: int = 20000
    #: Bytes queued for one slow client before it is closed (a WebSocket gets close 1013 "try again
    #: later" where its socket still takes it, then the TCP connection goes; counted as slow).
    max_outgoing_buffer: int = 4 * 1024 * 1024
    #: Bytes queued for all clients together; past it the clients with the most queued are closed
    #: first (1013, counted) until the total is back under three quarters of it (0 = no limit).
    #: A broadcast frame shared by many sockets counts once per socket.
    max_outgoing_total: int = 256 * 1024 * 1024
    #: Frames that carry no message a WebSocket client may send per second: pings, pongs, and
    #: fragments under 64 bytes that do not end their message; bursts of twice as many pass. Past it
    #: the socket is closed with 1008 (0 = no limit).
    control_frame_rate: float = 100.0
    #: Origins allowed for WebSockets (``https://example.com``, or ``https://*.example.com`` for its
    #: subdomains); empty = same origin as Host; ``*`` = any.
    allowed_origins: list[str] = field(default_factory=list)
    #: Trust ``X-Forwarded-For`` / ``X-Forwarded-Proto`` / ``X-Forwarded-Port`` (only behind your own proxy).
    proxy_headers: bool = False
    #: Mount point of the app (``SCRIPT_NAME``), sent as ``root_path``.
    root_path: str = ""
    #: File for the access log (``-`` for stdout; empty = none).
    access_log: str = ""
    #: ``HOST:PORT`` of the Prometheus metrics endpoint (empty = none).
    admin_bind: str = ""
    #: Offer permessage-deflate (RFC 7692) to clients that ask for it.
    compression: bool = True
    #: Seconds SIGTERM waits for in-flight HTTP and disconnect messages before exiting.
    grace_period: float = 10.0
    #: Path answering 200 while the sidecar and its layer are healthy (503 while the layer is down).
    health_path: str = "/_health"
    #: Most messages taken from the layer in one batch by the receive loop.
    receive_batch: int = 1000
    #: Most missed messages of a group one resume replays (or one hole in live messages is filled
    #: with) from the history; more is reported as a gap (``too_many``), never replayed in part.
    max_replay: int = 1000
    #: Secret(s) shared with the app for signed connect tokens (:mod:`wsgi_channels.tokens`), one per line;
    #: a handshake from another origin is accepted with a valid token for its path. Empty = no tokens.
    token_secret: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "SidecarConfig":
        """Raise :class:`ConfigurationError` naming the first bad field."""
        if isinstance(self.bind, str):
            self.bind = [b for b in self.bind.replace(",", " ").split() if b]
        if not self.bind:
            raise ConfigurationError("sidecar bind: at least one HOST:PORT or unix:PATH is needed")
        for address in self.bind:
            try:
                parse_address(address)
            except Exception as e:
                raise ConfigurationError(f"sidecar bind: {e}") from None
        if self.admin_bind:
            try:
                parse_address(self.admin_bind)
            except Exception as e:
                raise ConfigurationError(f"sidecar admin_bind: {e}") from None
        if self.http not in HTTP_MODES:
            raise ConfigurationError(f"sidecar http must be one of {', '.join(HTTP_MODES)}, not {self.http!r}")
        for name in ("http_timeout", "connect_timeout", "handshake_timeout", "ping_timeout"):
            if float(getattr(self, name)) <= 0:
                raise ConfigurationError(f"sidecar {name} must be a positive number of seconds")
        for name in ("ping_interval", "grace_period", "max_request_body", "max_connections",
                     "max_outgoing_total", "control_frame_rate", "max_replay"):
            if float(getattr(self, name)) < 0:
                raise ConfigurationError(f"sidecar {name} must not be negative")
        for name in ("max_message_size", "max_header_size", "max_outgoing_buffer", "receive_batch",
                     "http_body_inline"):
            if int(getattr(self, name)) < 1:
                raise ConfigurationError(f"sidecar {name} must be at least 1")
        if isinstance(self.allowed_origins, str):
            self.allowed_origins = [o for o in self.allowed_origins.replace(",", " ").split() if o]
        try:
            self.allowed_origins = [normalize_origin(o) for o in self.allowed_origins]
        except ValueError as e:
            raise ConfigurationError(str(e)) from None
        if self.root_path.endswith("/"):
            self.root_path = self.root_path.rstrip("/")
        if self.root_path and not self.root_path.startswith("/"):
            raise ConfigurationError(f"sidecar root_path must start with '/', got {self.root_path!r}")
        if not self.health_path.startswith("/"):
            raise ConfigurationError(f"sidecar health_path must start with '/', got {self.health_path!r}")
        return self

    @classmethod
    def from_mapping(cls, settings: dict[str, Any]) -> "SidecarConfig":
        """Build from a settings mapping (framework adapters); unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigurationError(f"unknown sidecar setting(s): {', '.join(unknown)}; "
                                     f"known: {', '.join(sorted(known))}")
        return cls(**settings)
