"""What travels back to a client, as pure functions (sans-IO): ``http.response`` messages,
the WSGI response encoder that makes them, and messages for a WebSocket reply channel.

The message shapes are CONTRACT.md sections 2 and 3. A response is cut into chunks
of at most ``chunk_size`` bytes and the last message carries ``more_content=False``;
no empty message is sent after it. Header names must be HTTP tokens and values free
of CR, LF and NUL, checked here before any server frames them.
"""
from __future__ import annotations

import re
from typing import Any, List, Optional, TypedDict, cast

from ..exceptions import InvalidMessage
from .messages import Header, HttpResponseMessage

__all__ = [
    "Header",
    "HttpResponseMessage",
    "DEFAULT_CHUNK_SIZE",
    "validate_response_message",
    "parse_status",
    "encode_response_headers",
    "ResponseEncoder",
    "validate_websocket_send",
    "WEBSOCKET_SEND_KEYS",
    "FLOW_KEY",
    "ResponseFlow",
    "response_flow",
]

#: Largest ``content`` of one response message made by :class:`ResponseEncoder` (bytes).
DEFAULT_CHUNK_SIZE = 256 * 1024

# -- responses ------------------------------------------------------------------------------

# Used with fullmatch: "$" would also match before a trailing newline ("X-A\n" passing as a token).
_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_RE = re.compile(rb"[\x00\r\n]")
_RESPONSE_KEYS = frozenset({"status", "headers", "content", "more_content", "abort"})


def _check_keys(message: Any, allowed: frozenset[str], a_message: str, kind: str) -> None:
    """Refuse a non-dict, and keys outside ``allowed`` (so that typos surface)."""
    if not isinstance(message, dict):
        raise InvalidMessage(f"{a_message} must be a dict, not {type(message).__name__}")
    unknown = set(message) - allowed
    if unknown:
        raise InvalidMessage(f"{kind} has unknown key(s) {sorted(unknown)!r}; allowed: {sorted(allowed)!r}")


def check_header_pairs(headers: Any, where: str, framed: bool = False) -> None:
    """Raise :class:`InvalidMessage` unless ``headers`` is a list of ``[bytes, bytes]`` pairs;
    ``framed`` (headers a server will write) also needs token names and values without CR,
    LF or NUL. ``where`` names the list in the error (``message['headers']``)."""
    if not isinstance(headers, (list, tuple)):
        raise InvalidMessage(f"{where} must be a list of [bytes, bytes], got {type(headers).__name__}")
    for i, pair in enumerate(headers):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not isinstance(pair[0], bytes) or not isinstance(pair[1], bytes)):
            raise InvalidMessage(f"{where}[{i}] must be [bytes, bytes], got {pair!r:.100}")
        if not framed:
            continue
        if not _TOKEN_RE.fullmatch(pair[0]):
            raise InvalidMessage(f"{where}[{i}]: header name {pair[0]!r:.60} is not an HTTP token")
        if _BAD_VALUE_RE.search(pair[1]):
            raise InvalidMessage(f"{where}[{i}]: header value {pair[1]!r:.60} contains CR, LF or NUL")


def validate_response_message(message: Any, first: bool) -> HttpResponseMessage:
    """Check one ``http.response`` message; ``first`` says whether it starts the response.

    The first message needs ``status`` (int 200-999; 1xx cannot end a request)
    and may carry ``headers``; later ones may not carry either. ``content`` is
    bytes, ``more_content`` a bool; ``abort`` (True, in a later message only) gives
    the response up (:func:`~wsgi_channels.protocol.messages.http_response_abort`);
    other keys are refused so typos surface.
    Raises :class:`InvalidMessage` naming the key.
    """
    _check_keys(message, _RESPONSE_KEYS, "an http.response message", "http.response message")
    if first:
        if "status" not in message:
            raise InvalidMessage("message['status'] is missing: the first http.response message needs it")
        status = message["status"]
        if type(status) is not int or not 200 <= status <= 999:
            raise InvalidMessage(f"message['status'] must be an int from 200 to 999, got {status!r:.40}")
        check_header_pairs(message.get("headers", []), "message['headers']", framed=True)
    else:
        for key in ("status", "headers"):
            if key in message:
                raise InvalidMessage(f"message[{key!r}] is only allowed in the first http.response message")
    if "abort" in message and (message["abort"] is not True or first):
        raise InvalidMessage("message['abort'] must be True, in a message after the first (a response that has "
                             "not started is answered with a status instead)")
    content = message.get("content", b"")
    if not isinstance(content, bytes):
        raise InvalidMessage(f"message['content'] must be bytes, got {type(content).__name__}")
    more = message.get("more_content", False)
    if not isinstance(more, bool):
        raise InvalidMessage(f"message['more_content'] must be a bool, got {type(more).__name__}")
    return cast(HttpResponseMessage, message)


def parse_status(status: Any) -> int:
    """The code of a WSGI status line such as ``"404 Not Found"``; ``ValueError`` if malformed."""
    if not isinstance(status, str):
        raise ValueError(f"WSGI status must be a str such as '200 OK', got {type(status).__name__}")
    code = status[:3]
    if len(status) < 3 or not code.isdigit() or (len(status) > 3 and status[3] != " "):
        raise ValueError(f"WSGI status {status!r:.60} is not 'NNN Reason'")
    value = int(code)
    if value < 200:
        raise ValueError(f"WSGI status {status!r:.60}: 1xx statuses cannot be a final response")
    if _BAD_VALUE_RE.search(status.encode("latin-1", "replace")):
        raise ValueError(f"WSGI status {status!r:.60} contains CR, LF or NUL")
    return value


def encode_response_headers(headers: Any) -> List[Header]:
    """WSGI ``[(name, value), ...]`` (latin-1 str) -> ``[[bytes, bytes], ...]``; ``ValueError`` if malformed."""
    if not isinstance(headers, list):
        raise ValueError(f"WSGI response headers must be a list, got {type(headers).__name__}")
    out: List[Header] = []
    for i, pair in enumerate(headers):
        if not isinstance(pair, tuple) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise ValueError(f"WSGI response header {i} must be a (str, str) tuple, got {pair!r:.100}")
        try:
            name, value = pair[0].encode("latin-1"), pair[1].encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"WSGI response header {pair!r:.100} is not latin-1 (PEP 3333)") from None
        if not _TOKEN_RE.fullmatch(name):
            raise ValueError(f"WSGI response header name {pair[0]!r:.60} is not an HTTP token")
        if _BAD_VALUE_RE.search(value):
            raise ValueError(f"WSGI response header {pair[0]!r:.60} has CR, LF or NUL in its value")
        # Whitespace around a field value is not part of it (RFC 9110 5.5); Django's
        # Set-Cookie values start with a space, which HTTP/1.1 framers such as h11 refuse.
        out.append([name, value.strip(b" \t")])
    return out


class ResponseEncoder:
    """Turns a WSGI response into ``http.response`` messages (sans-IO).

    ``feed(data)`` and ``finish()`` return the messages to send now. Content is
    cut into pieces of at most ``chunk_size`` bytes. The last message carries
    ``more_content=False`` and is never empty unless the whole body is, which
    means one block is held back until the next arrives or the body ends
    (except with ``Content-Length``, whose last byte ends the response at once).
    Bytes beyond a declared ``Content-Length`` are dropped and counted in
    ``overflow``.
    """

    __slots__ = ("status", "headers", "chunk_size", "started", "finished", "overflow",
                 "_pending", "_remaining")

    def __init__(self, status: int, headers: List[Header], chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.status = status
        self.headers = headers
        self.chunk_size = chunk_size
        self.started = False
        self.finished = False
        self.overflow = 0
        self._pending = b""
        self._remaining: Optional[int] = None
        for name, value in headers:
            if name.lower() == b"content-length" and value.strip().isdigit():
                self._remaining = int(value)

    def _message(self, content: bytes, more: bool) -> HttpResponseMessage:
        if self.started:
            return {"content": content, "more_content": more}
        self.started = True
        return {"status": self.status, "headers": self.headers, "content": content, "more_content": more}

    def _emit(self, data: bytes, out: List[HttpResponseMessage], last: bool) -> None:
        size = self.chunk_size
        view = memoryview(data)
        n = len(data)
        start = 0
        while n - start > size:
            out.append(self._message(bytes(view[start:start + size]), True))
            start += size
        chunk = data if start == 0 else bytes(view[start:])
        out.append(self._message(chunk, not last))

    def feed(self, data: bytes) -> List[HttpResponseMessage]:
        """Add body bytes; returns the messages that can be sent now."""
        if self.finished:
            self.overflow += len(data)
            return []
        if self._remaining is not None:
            if len(data) > self._remaining:
                self.overflow += len(data) - self._remaining
                data = data[: self._remaining]
            self._remaining -= len(data)
            if self._remaining == 0:
                return self.finish(data)
        if not data:
            return []
        out: List[HttpResponseMessage] = []
        if self._pending:
            self._emit(self._pending, out, last=False)
        size = self.chunk_size
        if len(data) > size:
            # Send all full pieces but one, keeping the tail back as the candidate last message.
            keep = len(data) % size or size
            self._emit(data[:-keep], out, last=False)
            data = data[-keep:]
        self._pending = data
        return out

    def finish(self, data: bytes = b"") -> List[HttpResponseMessage]:
        """End the body (optionally with last bytes); returns the final messages."""
        if self.finished:
            return []
        self.finished = True
        out: List[HttpResponseMessage] = []
        if self._pending and data:
            self._emit(self._pending, out, last=False)
            self._pending = b""
        self._emit(self._pending + data if self._pending else data, out, last=True)
        self._pending = b""
        return out


# -- response flow control (docs/protocol.md) ------------------------------------------------

#: Reserved key of an ``http.request`` by which a server offers response flow control:
#: ``{"channel": "<credit channel ?>", "window": bytes, "timeout": seconds}``.
FLOW_KEY = "__wsc_flow"


class ResponseFlow(TypedDict):
    channel: str
    window: int
    timeout: float


def response_flow(request: Any) -> Optional[ResponseFlow]:
    """The flow control a server offers in an ``http.request`` (its :data:`FLOW_KEY`), or None.

    With it, a consumer keeps at most ``window`` response content bytes sent and not yet
    acknowledged: past that it waits for a ``{"acked": n}`` message on ``channel`` (``n``
    counts the response's content bytes the server has passed on to its client), up to
    ``timeout`` seconds for each. A missing or malformed value means no flow control
    (streaming as before), so a server that does not offer it changes nothing.
    """
    flow = request.get(FLOW_KEY) if isinstance(request, dict) else None
    if not isinstance(flow, dict):
        return None
    channel, window, timeout = flow.get("channel"), flow.get("window"), flow.get("timeout")
    if (not isinstance(channel, str) or "?" not in channel or type(window) is not int or window < 1
            or not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0):
        return None
    return {"channel": channel, "window": window, "timeout": float(timeout)}


# -- WebSocket ------------------------------------------------------------------------------

#: Keys allowed in a message sent to a WebSocket reply channel.
WEBSOCKET_SEND_KEYS = frozenset({"text", "bytes", "close", "accept", "subprotocol"})


def validate_websocket_send(message: Any) -> dict[str, Any]:
    """Check a message sent to a WebSocket reply channel (CONTRACT.md section 3); return it.

    ``text`` (str) or ``bytes`` (bytes) sends a frame, not both; ``close`` is
    True/False or a close code a server may send (RFC 6455 7.4); ``accept`` is a bool,
    ``subprotocol`` a str or None. Unknown keys, or a message that does
    nothing, raise :class:`InvalidMessage`.
    """
    _check_keys(message, WEBSOCKET_SEND_KEYS, "a WebSocket reply message", "WebSocket reply message")
    text, data = message.get("text"), message.get("bytes")
    if text is not None and data is not None:
        raise InvalidMessage("WebSocket reply message has both 'text' and 'bytes': send one frame per message")
    if text is not None and not isinstance(text, str):
        raise InvalidMessage(f"message['text'] must be a str, got {type(text).__name__}")
    if data is not None and not isinstance(data, bytes):
        raise InvalidMessage(f"message['bytes'] must be bytes, got {type(data).__name__}")
    close = message.get("close")
    if close is not None and not isinstance(close, bool):
        if type(close) is not int or not (1000 <= close <= 1003 or 1007 <= close <= 1014 or 3000 <= close <= 4999):
            raise InvalidMessage(f"message['close'] must be True or a close code a server may send "
                                 f"(1000-1003, 1007-1014, 3000-4999), got {close!r:.40}")
    accept = message.get("accept")
    if accept is not None and not isinstance(accept, bool):
        raise InvalidMessage(f"message['accept'] must be a bool, got {type(accept).__name__}")
    sub = message.get("subprotocol")
    if sub is not None and not isinstance(sub, str):
        raise InvalidMessage(f"message['subprotocol'] must be a str or None, got {type(sub).__name__}")
    if text is None and data is None and close in (None, False) and accept is None:
        raise InvalidMessage("WebSocket reply message does nothing: give 'text', 'bytes', 'close' or 'accept'")
    return cast("dict[str, Any]", message)
