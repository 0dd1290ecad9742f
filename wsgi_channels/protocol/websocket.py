"""The WebSocket side of a sidecar connection, sans-IO: bytes in -> messages out, messages in -> bytes out.

The HTTP upgrade request is parsed by :mod:`wsgi_channels.protocol.http` (h11);
this module checks it (:func:`check_upgrade`; the Origin in :mod:`.origin`), builds
the ``101`` headers (:func:`accept_headers`) and then runs RFC 6455 through
wsproto inside :class:`WebSocketSession`. wsproto hands over fragments as they
arrive; the session buffers them into whole messages and enforces the message
size while buffering, so a client cannot grow memory past the limit.

No sockets, gevent or layer here: the server feeds bytes and writes what it is
given back. :func:`message_frame` builds an unmasked server frame once so a
broadcast can write the same bytes to every socket that agreed the same thing.

permessage-deflate (RFC 7692) is agreed with ``server_no_context_takeover`` and
``client_no_context_takeover``, which a server may add to any accepted offer (sections
7.1.1.1 and 7.1.1.2): every message, ours and the client's, is compressed on its own. A
compressed socket then holds no zlib state between messages (a compressor costs about
256 KiB and an inflater about 40 KiB, which 10,000 browser sockets could not afford), and
a broadcast is compressed once per window size instead of once per socket. Messages
under :data:`COMPRESS_MIN` bytes go uncompressed (RSV1 clear, as the RFC allows per
message): deflate saves nothing on them, and their frame is shared by every socket.
"""
from __future__ import annotations

import re
import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import LocalProtocolError, generate_accept_token

from .close_codes import (CLOSE_ABNORMAL, CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_NORMAL, CLOSE_POLICY,
                          CLOSE_TOO_BIG, CLOSE_TRY_AGAIN)
from .origin import check_origin

__all__ = [
    "Upgrade",
    "check_upgrade",
    "check_origin",
    "check_extension_offers",
    "accept_headers",
    "WebSocketSession",
    "encode_frame",
    "message_frame",
    "COMPRESS_MIN",
    "OP_TEXT",
    "OP_BINARY",
    "CLOSE_NORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_AGAIN",
    "CLOSE_ABNORMAL",
    "CLOSE_POLICY",
    "CLOSE_INTERNAL",
]

OP_TEXT = 0x1
OP_BINARY = 0x2
# The CLOSE_* names are re-exported from .close_codes (the policy table) for the session's users.

#: Messages shorter than this (in bytes, or characters for text) are sent uncompressed.
COMPRESS_MIN = 128

#: Compressed input is handed to the inflater this many bytes at a time (see receive_data).
_INFLATE_SLICE = 1024
#: A fragment (a frame that does not end its message) shorter than this counts against
#: ``control_rate`` like a ping: it costs a frame's work and carries almost nothing. Longer
#: fragments carry the message forward and end within ``max_message_size`` (the Autobahn
#: suite's smallest are 64 bytes).
SMALL_FRAGMENT = 64


@dataclass
class Upgrade:
    """What the server needs from a valid upgrade request."""

    key: bytes
    subprotocols: list[str] = field(default_factory=list)
    extension_offers: list[str] = field(default_factory=list)


def _split(value: bytes) -> list[str]:
    return [p.strip() for p in value.decode("latin-1").split(",") if p.strip()]


#: RFC 6455 section 4.1: a subprotocol is an HTTP token (RFC 9110 section 5.6.2).
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # used with fullmatch (no "$" before a newline)


def is_upgrade(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request asks for a WebSocket (``Upgrade: websocket``)."""
    return any(name == b"upgrade" and b"websocket" in value.lower() for name, value in headers)


def check_upgrade(method: bytes, http_version: bytes, headers: Sequence[tuple[bytes, bytes]]) -> Upgrade | str:
    """Validate an RFC 6455 opening handshake; return :class:`Upgrade` or the reason it is bad."""
    if method != b"GET":
        return f"WebSocket handshake must use GET, not {method.decode('latin-1')}"
    if http_version != b"1.1":
        return "WebSocket handshake needs HTTP/1.1"
    connection: list[str] = []
    key = version = None
    subprotocols: list[str] = []
    offers: list[str] = []
    for name, value in headers:
        if name == b"connection":
            connection += [t.lower() for t in _split(value)]
        elif name == b"sec-websocket-key":
            key = value.strip()
        elif name == b"sec-websocket-version":
            version = value.strip()
        elif name == b"sec-websocket-protocol":
            # Offers that are not tokens could never be echoed in a valid header: ignore them.
            subprotocols += [p for p in _split(value) if _TOKEN_RE.fullmatch(p)]
        elif name == b"sec-websocket-extensions":
            offers += _split(value)
    if "upgrade" not in connection:
        return "WebSocket handshake without 'Connection: Upgrade'"
    if version != b"13":
        return "unsupported Sec-WebSocket-Version (only 13)"
    if not key or len(key) != 24:
        return "missing or malformed Sec-WebSocket-Key"
    checked = check_extension_offers(offers)
    if isinstance(checked, str):
        return checked
    return Upgrade(key=key, subprotocols=subprotocols, extension_offers=checked)


#: RFC 6455 section 9.1: ``extension-param = token [ "=" (token | quoted-string) ]``.
_PARAM_RE = re.compile(r'\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*(?:=\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+|"[^"]*")\s*)?')
_DEFLATE_FLAGS = ("server_no_context_takeover", "client_no_context_takeover")
_DEFLATE_BITS = ("server_max_window_bits", "client_max_window_bits")


def _window_bits_ok(digits: str) -> bool:
    return len(digits) <= 2 and 8 <= int(digits) <= 15  # (a long digit string never reaches int())


def check_extension_offers(offers: Sequence[str]) -> list[str] | str:
    """Check ``Sec-WebSocket-Extensions`` offers at handshake time: the offers to negotiate, or
    the reason the header is malformed (answered 400 before anything reaches the layer).

    Malformed syntax, and a ``permessage-deflate`` window size that is not a number, make the
    request bad. A ``permessage-deflate`` offer that is well formed but not acceptable (an
    unknown or repeated parameter, a window size outside 8-15, a value on a flag) is declined,
    as RFC 7692 section 5.1 requires: it is left out, and the socket may be agreed without it.
    What is returned has quoted values unquoted, so the negotiation never meets them.
    """
    kept: list[str] = []
    for offer in offers:
        name, *raw_params = offer.split(";")
        name = name.strip()
        if not _TOKEN_RE.fullmatch(name):
            return f"malformed Sec-WebSocket-Extensions offer {offer[:100]!r}"
        params: list[tuple[str, str | None]] = []
        for raw in raw_params:
            m = _PARAM_RE.fullmatch(raw)
            if m is None:
                return f"malformed parameter {raw.strip()[:100]!r} in Sec-WebSocket-Extensions"
            value = m.group(2)
            if value is not None and value.startswith('"'):
                value = value[1:-1]
                if not _TOKEN_RE.fullmatch(value):  # section 9.1: a quoted value is still a token
                    return f"malformed parameter {raw.strip()[:100]!r} in Sec-WebSocket-Extensions"
            params.append((m.group(1).lower(), value))
        if name.lower() != "permessage-deflate":
            kept.append(offer)  # never agreed here; its syntax is all we check
            continue
        for param, value in params:
            if param in _DEFLATE_BITS and value is not None and not value.isdigit():
                return f"permessage-deflate {param} must be a number of bits, not {value[:20]!r}"
        names = [param for param, _ in params]
        acceptable = len(set(names)) == len(names) and all(
            (param in _DEFLATE_FLAGS and value is None)
            or (param == "client_max_window_bits" and (value is None or _window_bits_ok(value)))
            or (param == "server_max_window_bits" and value is not None and _window_bits_ok(value))
            for param, value in params)
        if acceptable:
            kept.append("; ".join([name] + [p if v is None else f"{p}={int(v)}" for p, v in params]))
    return kept


def accept_headers(upgrade: Upgrade, subprotocol: str | None, compression: bool
                   ) -> tuple[list[tuple[bytes, bytes]], list[Extension]]:
    """Headers of the ``101 Switching Protocols`` response and the agreed extensions."""
    headers = [
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Accept", generate_accept_token(upgrade.key)),
    ]
    if subprotocol:
        headers.append((b"Sec-WebSocket-Protocol", subprotocol.encode("ascii")))
    extensions: list[Extension] = []
    if compression and upgrade.extension_offers:
        deflate = PerMessageDeflate(client_no_context_takeover=True, server_no_context_takeover=True)
        agreed = server_extensions_handshake(upgrade.extension_offers, [deflate])
        if agreed:
            headers.append((b"Sec-WebSocket-Extensions", agreed))
            extensions.append(deflate)
    return headers, extensions


def encode_frame(opcode: int, payload: bytes, rsv1: bool = False) -> bytes:
    """One final, unmasked server frame (RFC 6455 section 5.2); ``rsv1`` marks a deflated message."""
    first = 0xC0 | opcode if rsv1 else 0x80 | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 126, n)
    else:
        head = struct.pack("!BBQ", first, 127, n)
    return head + payload


def message_frame(data: str | bytes, window_bits: int = 0) -> bytes:
    """The frame of one whole message: text for ``str``, binary for ``bytes``.

    ``window_bits`` (from :attr:`WebSocketSession.deflate_bits`) compresses it on its
    own, as ``server_no_context_takeover`` allows; 0 (an uncompressed socket) or a
    message under :data:`COMPRESS_MIN` gives a plain frame.
    """
    opcode, payload = (OP_TEXT, data.encode()) if isinstance(data, str) else (OP_BINARY, data)
    if not window_bits or len(data) < COMPRESS_MIN:
        return encode_frame(opcode, payload)
    deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -window_bits)
    body = deflate.compress(payload) + deflate.flush(zlib.Z_SYNC_FLUSH)
    return encode_frame(opcode, body[:-4], rsv1=True)  # without the 00 00 ff ff tail (section 7.2.1)


class WebSocketSession:
    """RFC 6455 for one accepted connection: feed bytes, get whole messages and bytes to write.

    ``receive_data`` returns ``(out, messages)``: ``out`` is what must be
    written to the peer (pongs, the close handshake) and ``messages`` a list of
    complete ``str`` or ``bytes`` payloads. After it, ``closed`` tells whether
    the close handshake is over (or the peer misbehaved) and ``close_code``
    carries the code for ``websocket.disconnect``.

    A server that serves many clients from one thread uses :meth:`feed` and
    :meth:`process` instead, handling a bounded amount of work per call: ``more`` is
    then True until everything fed has been processed (call :meth:`process` again,
    after letting other connections run, before feeding more).

    ``max_message_size`` bounds a message's payload in bytes (UTF-8 for text) while its
    fragments are buffered. ``control_rate`` (per second, 0 = no limit) bounds the frames
    that carry no message: pings, pongs, fragments under :data:`SMALL_FRAGMENT` bytes that
    do not end their message, and anything after our close frame; a burst of twice the
    rate passes. Past it the session closes with 1008 and sets ``flooded``.
    """

    __slots__ = ("_conn", "_parts", "_size", "_text", "max_message_size", "compressed", "deflate_bits",
                 "close_code", "closed", "awaiting_pong", "control_rate", "flooded", "more", "_input",
                 "_frame_size", "_tokens", "_tokens_at")

    def __init__(self, extensions: list[Extension] | None = None, trailing_data: bytes = b"",
                 max_message_size: int = 1 << 20, control_rate: float = 0.0) -> None:
        self._conn = Connection(ConnectionType.SERVER, extensions or None)
        self._parts: list[Any] = []
        self._size = 0
        self._text = False
        self.max_message_size = max_message_size
        self.compressed = bool(extensions)
        #: The window of our compressed messages (0: we send plain frames); see message_frame.
        self.deflate_bits = next((e.server_max_window_bits for e in extensions or ()
                                  if isinstance(e, PerMessageDeflate) and e.server_no_context_takeover), 0)
        self.close_code: int | None = None
        self.closed = False
        self.awaiting_pong = False
        self.control_rate = float(control_rate)
        #: Closed with 1008 for sending frames that carry no message faster than ``control_rate``.
        self.flooded = False
        #: :meth:`process` stopped at its limit with input left: call it again before feeding more.
        self.more = False
        self._input: deque[bytes | memoryview] = deque()  # compressed input not yet handed to wsproto (see feed)
        self._frame_size = 0  # payload bytes of the data frame being received
        self._tokens = 2.0 * self.control_rate  # the rate limit's bucket, full at first
        self._tokens_at: float | None = None
        if trailing_data:
            self.feed(trailing_data)

    @property
    def open(self) -> bool:
        return self._conn.state is ConnectionState.OPEN

    def receive_data(self, data: bytes | None, now: float | None = None) -> tuple[bytes, list[str | bytes]]:
        """Feed bytes from the peer (``None`` = the peer's socket closed) and process all of them."""
        self.feed(data)
        return self.process(None, now)

    def feed(self, data: bytes | None) -> None:
        """Take bytes from the peer (``None`` = the peer's socket closed) without processing them."""
        if self.closed:
            return
        if data is None:
            self.closed = True
            self._input.clear()
            if self.close_code is None:
                self.close_code = CLOSE_ABNORMAL
            return
        if self._input or (self.compressed and len(data) > _INFLATE_SLICE):
            # wsproto inflates everything it has been given in one call, without a bound:
            # compressed input goes to it in small slices (process), so the size limit is
            # checked before a "deflate bomb" (about 1000:1) can inflate past it by much.
            self._input.append(data)
        elif data:
            self._conn.receive_data(data)

    def process(self, limit: int | None = None, now: float | None = None) -> tuple[bytes, list[str | bytes]]:
        """Handle what has been fed, at most ``limit`` units of work (a frame is one unit, and one
        more per 8 KiB of its payload; None = all): the bytes to write and the finished messages.
        ``now`` (``time.monotonic()`` by default) drives the ``control_rate`` limit."""
        out = b""
        messages: list[str | bytes] = []
        self.more = False
        if self.control_rate and now is None:
            now = time.monotonic()
        while not self.closed:
            more_out, more, spent, exhausted = self._pending(limit, now or 0.0)
            out += more_out
            messages += more
            if self.closed:
                break
            if not exhausted:
                self.more = True
                break
            if not self._input:
                break
            if limit is not None:
                limit -= spent
                if limit <= 0:
                    self.more = True
                    break
            self._feed_slice()
        return out, messages

    def _feed_slice(self) -> None:
        """Hand wsproto the next piece of queued input (compressed: :data:`_INFLATE_SLICE` bytes)."""
        data = self._input.popleft()
        if not self.compressed or len(data) <= _INFLATE_SLICE:
            self._conn.receive_data(bytes(data))
            return
        view = memoryview(data)
        self._conn.receive_data(bytes(view[:_INFLATE_SLICE]))
        self._input.appendleft(view[_INFLATE_SLICE:])

    def _allow(self, now: float) -> bool:
        """Spend one frame that carries no message; False once the peer is over ``control_rate``."""
        rate = self.control_rate
        if not rate:
            return True
        if self._tokens_at is not None:
            self._tokens = min(2.0 * rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        self._tokens -= 1.0
        return self._tokens >= 0.0

    def _flood(self) -> bytes:
        """The peer sends frames that carry no message too fast: close 1008, or give up when
        our close is already on its way."""
        self.flooded = True
        if self.open:
            return self.close(CLOSE_POLICY, "too many control frames or small fragments")
        if self.close_code is None:
            self.close_code = CLOSE_POLICY
        self.closed = True
        return b""

    def _pending(self, limit: int | None, now: float) -> tuple[bytes, list[str | bytes], int, bool]:
        """Process events that wsproto can parse from what it was given, at most ``limit`` units:
        ``(out, messages, units spent, exhausted)``; not exhausted = stopped at the limit or closed."""
        out = b""
        messages: list[str | bytes] = []
        spent = 0
        for event in self._conn.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                data = event.data
                size = len(data) if not isinstance(data, str) or data.isascii() else len(data.encode())
                spent += 1 + (size >> 13)
                if not self.open:
                    # Frames after our close are discarded (RFC 6455 section 5.5.1), and counted.
                    if event.frame_finished and not self._allow(now):
                        out += self._flood()
                        return out, messages, spent, False
                    continue
                self._size += size
                if self._size > self.max_message_size:
                    self._parts.clear()
                    out += self.close(CLOSE_TOO_BIG, "message too big")
                    return out, messages, spent, False
                if event.message_finished and not self._parts:
                    messages.append(bytes(data) if isinstance(data, bytearray) else data)
                else:
                    self._text = isinstance(event, TextMessage)
                    self._parts.append(data)
                    if event.message_finished:
                        messages.append(("" if self._text else b"").join(self._parts))
                        self._parts.clear()
                if event.message_finished:
                    self._size = 0
                    self._frame_size = 0
                elif event.frame_finished:
                    small = self._frame_size + size < SMALL_FRAGMENT
                    self._frame_size = 0
                    if small and not self._allow(now):
                        out += self._flood()
                        return out, messages, spent, False
                else:
                    self._frame_size += size
            elif isinstance(event, (Ping, Pong)):
                spent += 1
                if not self._allow(now):
                    out += self._flood()
                    return out, messages, spent, False
                if isinstance(event, Pong):
                    self.awaiting_pong = False
                elif self.open:
                    out += self._conn.send(event.response())
            elif isinstance(event, CloseConnection):
                if self._conn.state is ConnectionState.REMOTE_CLOSING:
                    # The peer started the close (or broke the protocol: wsproto reports that
                    # as a close with 1002/1007); answer it and we are done.
                    if self.close_code is None:
                        self.close_code = event.code
                    out += self._conn.send(event.response())
                elif self.open:
                    # A protocol violation (bad frame, bad UTF-8, bad close code) arrives as a close
                    # event while the connection is still open: fail it with that code, telling the
                    # peer why (RFC 6455 section 7.1.7).
                    out += self.close(event.code)
                elif self.close_code is None:
                    self.close_code = event.code
                self.closed = True
                return out, messages, spent, False
            if limit is not None and spent >= limit:
                return out, messages, spent, False
        return out, messages, spent, True

    def send_message(self, data: str | bytes) -> bytes:
        """Bytes of one whole message (compressed when the extension was agreed)."""
        if not self.open:
            return b""
        event = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        return self._conn.send(event)

    def ping(self, payload: bytes = b"") -> bytes:
        if not self.open:
            return b""
        self.awaiting_pong = True
        return self._conn.send(Ping(payload=payload))

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
        """Start the close handshake; ``close_code`` becomes ``code``. Empty when already closing."""
        if self._conn.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            return b""
        if self.close_code is None:
            self.close_code = code
        try:
            return self._conn.send(CloseConnection(code=code, reason=reason or None))
        except LocalProtocolError:
            return b""
