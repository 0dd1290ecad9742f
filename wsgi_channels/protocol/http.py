"""The HTTP/1.1 side of a server connection, sans-IO, on h11.

:class:`HttpConnection` wraps one ``h11.Connection``: the server feeds it
bytes, takes parsed events (a request head, body chunks, its end, or an
:class:`HttpError` to answer), and gets back the bytes of responses,
including the ``101`` that hands the socket to the WebSocket session.

:func:`request_info` works out scheme, client and server addresses (trusting
``X-Forwarded-*`` only when asked), and :func:`connect_message` builds the
``websocket.connect`` message (CONTRACT.md section 3). ``http.request``
messages are built by :func:`wsgi_channels.protocol.translation.build_request_message`.
:func:`head_problem` checks the values of a request head that the parser lets
through but that must not reach a message (RFC 9112 sections 3.2 and 6.1, the
proxy headers): the caller answers 400 with the reason.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Sequence

import h11

from .messages import WebSocketConnectMessage, websocket_connect
from .translation import split_target, target_authority

__all__ = ["HttpConnection", "HttpError", "RequestInfo", "request_info", "connect_message", "simple_body",
           "header_value", "head_problem", "host_problem"]

_REASONS = {
    200: b"OK", 400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 413: b"Content Too Large", 426: b"Upgrade Required",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error", 501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}
SERVER_HEADER = (b"server", b"wsgi-channels-sidecar")
_MIGHT_SWITCH_PROTOCOL = getattr(h11, "MIGHT_SWITCH_PROTOCOL")  # exported at run time, not in h11's stubs
_BETWEEN_REQUESTS = (h11.IDLE, h11.DONE)
# h11 quotes the offending input in its messages as a bytes or bytearray repr; an error body
# names the problem without echoing the client's bytes back.
_QUOTED_INPUT = re.compile(r":?\s*(?:bytearray\(|b'|b\").*", re.S)


@dataclass
class HttpError:
    """A request the parser refused: answer ``status`` and close."""

    status: int
    reason: str


def header_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case), or None."""
    for n, v in headers:
        if n == name:
            return v
    return None


def raw_response(status: int) -> bytes:
    """A complete ``Connection: close`` response written without h11 (for requests h11 never saw)."""
    body = simple_body(status)
    return (b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\nserver: wsgi-channels-sidecar\r\n\r\n%s"
            % (status, _REASONS.get(status, b"Error"), len(body), body))


def simple_body(status: int, detail: str = "") -> bytes:
    text = _REASONS.get(status, b"Error").decode()
    return f"{status} {text}{': ' + detail if detail else ''}\n".encode()


class HttpConnection:
    """One HTTP/1.1 server connection (keep-alive aware) around h11."""

    __slots__ = ("_h11", "unparsed")

    def __init__(self, max_header_size: int = 16384) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_size)
        #: Bytes received since the parser last ran dry (answered ``NEED_DATA``): an upper bound
        #: of what h11 holds beyond one incomplete event. It grows while the parser is paused
        #: (the client pipelines requests while a response is pending); the connection stops
        #: reading past a bound, so a client can never make it buffer without limit.
        self.unparsed = 0

    def receive_data(self, data: bytes) -> None:
        """Feed bytes (``b""`` when the client shut its side).

        After the client's last request (HTTP/1.0, ``Connection: close``) bytes are only
        counted, never buffered: nothing the client sends after it is read.
        """
        self.unparsed += len(data) or 1  # an end of input is something to parse too
        if self._h11.their_state is not h11.MUST_CLOSE:
            self._h11.receive_data(data)

    def next_event(self) -> Any:
        """The next ``h11.Request``/``Data``/``EndOfMessage``/``ConnectionClosed``, an
        :class:`HttpError`, ``h11.PAUSED`` (an upgrade, or the next request before this
        response ended) or ``h11.NEED_DATA``."""
        conn = self._h11
        if conn.their_state is h11.MUST_CLOSE:
            # The client's last request is complete (HTTP/1.0 or "Connection: close"): what it
            # sends after it is ignored, not an error that would replace the app's response.
            # (``unparsed`` keeps counting those bytes: past the bound the connection stops reading.)
            return h11.NEED_DATA
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as e:
            status = getattr(e, "error_status_hint", 400) or 400
            return HttpError(status, _QUOTED_INPUT.sub("", str(e)) or "malformed request")
        if event is h11.NEED_DATA:
            self.unparsed = 0  # what is left is at most an incomplete event, bounded by h11
        return event

    @property
    def client_done(self) -> bool:
        return self._h11.their_state in (h11.DONE, _MIGHT_SWITCH_PROTOCOL)

    @property
    def response_started(self) -> bool:
        return self._h11.our_state in (h11.SEND_BODY, h11.DONE, h11.MUST_CLOSE, h11.CLOSED)

    def start_response(self, status: int, headers: Sequence[tuple[bytes, bytes]], close: bool = False,
                       from_app: bool = False) -> bytes:
        """The status line and headers; ``close`` adds ``Connection: close``.

        Headers that cannot be framed (``from_app``) turn into a 500 and a closed connection.
        """
        hs = [(n, v) for n, v in headers if n.lower() != b"connection" or not close]
        if close:
            hs.append((b"connection", b"close"))
        if not any(n.lower() == b"server" for n, _ in hs):
            hs.append(SERVER_HEADER)
        try:
            return self._h11.send(h11.Response(status_code=status, headers=hs,
                                               reason=_REASONS.get(status, b""))) or b""
        except h11.LocalProtocolError:
            # No request to answer (a timeout mid-head), or headers h11 cannot frame (a bad
            # Content-Length from the app): answer outside h11 and close the connection.
            self._h11 = h11.Connection(h11.SERVER)
            self._h11.send(h11.ConnectionClosed())
            return raw_response(500 if from_app else status)

    def send_data(self, data: bytes) -> bytes:
        if not data:
            return b""
        try:
            return self._h11.send(h11.Data(data=data)) or b""
        except h11.LocalProtocolError:
            return b""  # more body than Content-Length allows: drop the excess rather than break framing

    def end_response(self) -> bytes:
        try:
            return self._h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return b""

    def respond(self, status: int, body: bytes = b"", headers: Sequence[tuple[bytes, bytes]] = (),
                close: bool = False, content_type: bytes = b"text/plain; charset=utf-8") -> bytes:
        """A whole small response (errors, health, static files)."""
        hs = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]
        return self.start_response(status, hs, close=close) + self.send_data(body) + self.end_response()

    def continue_if_expected(self) -> bytes:
        """``100 Continue`` when the client waits for it before sending its body (``Expect: 100-continue``)."""
        if self._h11.they_are_waiting_for_100_continue:
            return self._h11.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
        return b""

    def switch_protocols(self, headers: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
        """The ``101 Switching Protocols`` bytes and whatever the client sent after its request."""
        data = self._h11.send(h11.InformationalResponse(status_code=101, headers=list(headers),
                                                        reason=b"Switching Protocols")) or b""
        trailing, _closed = self._h11.trailing_data
        return data, bytes(trailing)

    @property
    def closed(self) -> bool:
        return self._h11.our_state is h11.CLOSED

    @property
    def keep_alive(self) -> bool:
        """Whether another request may follow on this socket."""
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    def start_next_cycle(self) -> None:
        self._h11.start_next_cycle()

    @property
    def nothing_to_parse(self) -> bool:
        """True when :meth:`next_event` could only answer ``NEED_DATA``: the client is between
        requests or has sent all of this one, and nothing arrived since the parser last ran dry.

        A keep-alive connection asks this after each response instead of calling the parser
        (an h11 call per request that found nothing). It costs O(1): h11's ``trailing_data``
        copies the whole buffer, which made a pipelining client cost quadratic time.
        """
        return self.unparsed == 0 and self._h11.their_state in _BETWEEN_REQUESTS

    @property
    def must_close(self) -> bool:
        return self._h11.our_state in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)


def _last(value: bytes) -> str:
    # A trusted proxy appends the address it saw; earlier entries came from the client.
    return value.decode("latin-1").split(",")[-1].strip()


# RFC 3986 authority without userinfo: host (reg-name, IPv4 or an IP literal) and an optional port.
_HOST_RE = re.compile(rb"(?:\[[0-9A-Za-z:.%\-_~]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::([0-9]{0,5}))?")


def host_problem(value: bytes) -> str | None:
    """Why ``value`` cannot be a ``Host`` header (or an absolute-form target's authority), or None.

    RFC 9112 section 3.2: a server answers 400 to an invalid ``Host``. The value is an
    RFC 3986 host with an optional port up to 65535; an empty value is allowed.
    """
    m = _HOST_RE.fullmatch(value)
    if m is None:
        return "invalid Host header (RFC 9112 3.2: host[:port])"
    port = m.group(1)
    if port and int(port) > 65535:
        return "invalid Host header: port over 65535"
    return None


def _forwarded_port(value: bytes | None) -> int | None:
    """``X-Forwarded-Port`` as a port number, or None when it is not one."""
    if value is None:
        return None
    text = _last(value)
    return int(text) if text.isdigit() and len(text) <= 5 and int(text) <= 65535 else None


def _forwarded_for(value: bytes) -> str | None:
    """The address a trusted proxy appended to ``X-Forwarded-For`` (an IP address), or None."""
    text = _last(value)
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def head_problem(headers: Sequence[tuple[bytes, bytes]], target: bytes, proxy_headers: bool) -> str | None:
    """Why a request head that h11 parsed must be answered 400, or None.

    - ``Content-Length`` together with ``Transfer-Encoding`` (RFC 9112 6.1: a request
      smuggling risk behind a proxy that trusts the length);
    - an invalid ``Host`` or absolute-form authority (RFC 9112 3.2, 3.2.2), userinfo in it;
    - with ``proxy_headers``: an ``X-Forwarded-For`` whose last entry is not an IP address,
      an ``X-Forwarded-Port`` that is not a port, an ``X-Forwarded-Proto`` other than
      ``http``/``https``. Each of these would otherwise reach the application's message
      (and a port over 64 bits made the layer refuse the message).
    """
    has_length = has_te = False
    for name, value in headers:
        if name == b"content-length":
            has_length = True
        elif name == b"transfer-encoding":
            has_te = True
        elif name == b"host":
            problem = host_problem(value)
            if problem is not None:
                return problem
    if has_length and has_te:
        return "both Content-Length and Transfer-Encoding (RFC 9112 6.1)"
    authority = target_authority(target)
    if authority is not None:
        if b"@" in authority:
            return "userinfo in the request target (RFC 9110 4.2.4)"
        problem = host_problem(authority)
        if problem is not None or not authority:
            return "invalid authority in the absolute-form request target"
    if proxy_headers:
        fwd_for = header_value(headers, b"x-forwarded-for")
        if fwd_for is not None and _forwarded_for(fwd_for) is None:
            return "X-Forwarded-For: the last entry is not an IP address"
        port = header_value(headers, b"x-forwarded-port")
        if port is not None and _forwarded_port(port) is None:
            return "X-Forwarded-Port is not a port number (0-65535)"
        proto = header_value(headers, b"x-forwarded-proto")
        if proto is not None and _last(proto).lower() not in ("http", "https"):
            return "X-Forwarded-Proto must be http or https"
    return None


@dataclass
class RequestInfo:
    """Where a request came from and went to, after (optional) proxy headers."""

    scheme: str
    client: list[Any] | None
    server: list[Any] | None
    host: bytes | None


def request_info(headers: Sequence[tuple[bytes, bytes]], peer: Any, local: Any, proxy_headers: bool,
                 secure: bool = False) -> RequestInfo:
    """Scheme, client and server of a request; ``X-Forwarded-*`` counts only with ``proxy_headers``.

    Proxy header values that :func:`head_problem` refuses are ignored here (the connection
    answers 400 before it asks), so nothing a client wrote reaches a message unchecked.
    """
    scheme = "https" if secure else "http"
    client = [str(peer[0]), int(peer[1])] if isinstance(peer, tuple) and len(peer) >= 2 else None
    server = [str(local[0]), int(local[1])] if isinstance(local, tuple) and len(local) >= 2 else None
    host = header_value(headers, b"host")
    if proxy_headers:
        fwd_for = header_value(headers, b"x-forwarded-for")
        addr = _forwarded_for(fwd_for) if fwd_for else None
        if addr is not None:
            client = [addr, _forwarded_port(header_value(headers, b"x-forwarded-port")) or 0]
        proto = header_value(headers, b"x-forwarded-proto")
        if proto:
            p = _last(proto).lower()
            if p in ("http", "https"):
                scheme = p
    return RequestInfo(scheme=scheme, client=client, server=server, host=host)


def connect_message(*, reply_channel: str, target: bytes, headers: Sequence[tuple[bytes, bytes]],
                    info: RequestInfo, root_path: str, subprotocols: list[str]) -> WebSocketConnectMessage:
    """The ``websocket.connect`` message (order 0). Raises ``InvalidRequest`` for a bad target."""
    path, query_string = split_target(target)
    return websocket_connect(reply_channel=reply_channel, scheme="wss" if info.scheme == "https" else "ws",
                             path=path, query_string=query_string, root_path=root_path,
                             headers=[[n, v] for n, v in headers], client=info.client, server=info.server,
                             subprotocols=subprotocols)
