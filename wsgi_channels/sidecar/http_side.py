"""The HTTP part of a sidecar connection: request heads, the answers the sidecar gives itself, and
HTTP mode (``--http layer``: requests out to the layer, responses back).

Every connection starts here. A request head is parsed by
:class:`~wsgi_channels.protocol.http.HttpConnection` (h11) and checked; an upgrade goes to
:meth:`WebSocketSide.handshake <.websocket_side.WebSocketSide.handshake>`, ``/_health`` and
the static files are answered at once, and in HTTP mode anything else becomes an
``http.request``. A request whose body fits in ``http_body_inline`` travels inside its
``http.request``; a larger one is sent as soon as that much has arrived, with a
``body_channel`` that gets the rest chunk by chunk (held back while the application reads
slowly). Response messages arriving on the reply channel are checked
(:func:`~wsgi_channels.protocol.responses.validate_response_message`) and streamed to the
client; keep-alive then starts the next request.

Flow control of responses (``docs/protocol.md``): every ``http.request`` (but HEAD) names
a ``?`` credit channel under the reserved key ``__wsc_flow``, with a window. A consumer that
knows the key (:class:`~wsgi_channels.consumers.wsgi.WsgiConsumer`) keeps at most a window of response
bytes unacknowledged and waits for credit; the sidecar sends ``{"acked": n}`` (the response's
content bytes that have left its queue for the kernel) each time half a window more has
drained. A response of up to half a window costs no credit message at all. A client that reads
nothing for ``http_timeout`` seconds is closed; a consumer that does not know the key streams
as before, bounded by ``max_outgoing_buffer``.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Sequence

import gevent
import gevent.event
import h11

from ..exceptions import InvalidMessage
from ..protocol.http import HttpConnection, HttpError, head_problem, header_value, request_info, simple_body
from ..protocol.messages import HttpRequestMessage, body_chunk, http_disconnect
from ..protocol.responses import FLOW_KEY, validate_response_message
from ..protocol.translation import InvalidRequest, build_request_message, target_authority, target_path
from ..protocol.websocket import is_upgrade
from .common import LAYER_RETRY_SECONDS, LINGER_BYTES, REQUEST_COST, access_log, addr
from .state import State
from .websocket_side import WebSocketSide

if TYPE_CHECKING:  # pragma: no cover
    from .connection import ClientConnection, SendOutcome

__all__ = ["HttpSide", "flow_window", "PIPELINE_LIMIT"]

log = logging.getLogger(__name__)

HEAD, HTTP_BODY, CLOSING, DONE = State.HEAD, State.HTTP_BODY, State.CLOSING, State.DONE

_FRAMING = (b"content-length", b"transfer-encoding")
#: Credit channels: this prefix plus the random suffix of the request's reply channel.
_CREDIT_PREFIX = "http.response.credit?"
#: The largest flow-control window (bytes a consumer may have sent and not had acknowledged).
MAX_FLOW_WINDOW = 1024 * 1024
#: The response counter's label of each status class.
_STATUS_CLASS = {n: f"{n}xx" for n in range(1, 6)}
#: HTTP: bytes a client may send ahead (pipelined requests) while a response is pending; past
#: it the connection stops reading until the response ends. h11 then holds at most this plus
#: one ``recv`` (64 KiB) per connection.
PIPELINE_LIMIT = 64 * 1024
#: Seconds a reader parked by :data:`PIPELINE_LIMIT` sleeps before it checks its state again
#: (it is woken at once when the response ends or the connection closes).
_PARKED_CHECK = 1.0
#: Seconds a connection that timed out (408) waits for the client to close before it is dropped.
_TIMED_OUT_LINGER = 1.0
#: What an unsuccessful ``http.request`` send is answered with.
_SEND_FAILED = {"full": (503, "too many requests waiting"), "down": (503, "channel layer unavailable"),
                "too-large": (413, ""), "invalid": (400, "the request cannot be passed on")}


def flow_window(max_outgoing_buffer: int) -> int:
    """The window offered to consumers: at most half the per-client outgoing buffer, so a
    consumer that keeps to it never makes a reading client look too slow (and 1 MiB at most)."""
    return max(16 * 1024, min(MAX_FLOW_WINDOW, max_outgoing_buffer // 2))


class HttpSide:
    """The HTTP part of one :class:`~.connection.ClientConnection` (until a WebSocket is accepted)."""

    __slots__ = ("conn", "parser", "partial", "request_sent", "response_started", "status", "resp_bytes",
                 "body_channel", "body_buffer", "body_size", "flow", "granted")

    def __init__(self, conn: "ClientConnection") -> None:
        self.conn = conn
        self.parser = HttpConnection(conn.sidecar.config.max_header_size)
        self.partial = False  # bytes of a request head have arrived
        self.request_sent = False  # the http.request went to the layer
        self.response_started = False
        self.status = 0
        self.resp_bytes = 0  # content bytes of the response so far
        self.body_channel: str | None = None
        #: HTTP mode: the request (first) and its body's chunks, until the body is known to fit inline.
        self.body_buffer: list[Any] = []
        self.body_size = 0
        self.flow: tuple[str, int] | None = None  # HTTP response flow control: (credit channel, window)
        self.granted = 0  # response bytes acknowledged to the consumer on the credit channel

    # -- reading --------------------------------------------------------------------------------

    def on_data(self, data: bytes) -> None:
        """Bytes from an HTTP client (not yet a WebSocket): parse, act on every event."""
        conn = self.conn
        if conn.state is CLOSING:
            # Our final response is out (lingering close): what arrives is discarded, up to the
            # size of a request body (a client finishing an upload we refused then reads our
            # answer), so a client cannot keep the sidecar reading junk for the whole close wait.
            conn.held += len(data)
            if conn.held > max(LINGER_BYTES, conn.sidecar.config.max_request_body):
                conn.abort()
            return
        if conn.state is HEAD and not self.partial:
            self.partial = True
            # A request head has its deadline from its first byte, also on a kept-alive socket
            # (whose idle allowance is longer): a head dripped in byte by byte is cut off after
            # handshake_timeout, not after the idle allowance.
            conn.deadline = min(conn.deadline, time.monotonic() + conn.sidecar.config.handshake_timeout)
        self.parser.receive_data(data)
        self.pump()

    def may_read(self) -> bool:
        """Whether the reader may ``recv`` now; False (after waiting, bounded) to check again.

        An HTTP client that has sent :data:`PIPELINE_LIMIT` bytes more than its pending
        requests is not read from until the response ends: what it sends meanwhile waits in
        the kernel's buffers (TCP flow control holds it back), not in ours.
        """
        if self.parser.unparsed < PIPELINE_LIMIT:
            return True
        conn = self.conn
        resume = conn.resume = gevent.event.Event()
        try:
            resume.wait(_PARKED_CHECK)
        finally:
            conn.resume = None
        if conn.state is HEAD and not self.parser.nothing_to_parse:
            self.pump()  # the response ended: the requests held back go on from here
        return False

    def pump(self, event: Any = None) -> None:
        """Handle every event the parser has; stop when it needs data or waits for us."""
        conn = self.conn
        parser = self.parser
        while conn.state is HEAD or conn.state is HTTP_BODY:
            if event is None:
                event = parser.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, HttpError):
                self.respond(event.status, simple_body(event.status, event.reason), close=True)
                return
            if isinstance(event, h11.Request):
                self._on_request(event)
            elif isinstance(event, h11.Data):
                self._on_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._on_body_end()
            elif isinstance(event, h11.ConnectionClosed):
                conn.set_state(DONE)
                return
            event = None
            if conn.state is HEAD:  # answered here, between requests: pipelined ones wait their turn
                conn._pace(REQUEST_COST)

    def client_left(self) -> None:
        """The client closed its side mid-request (HTTP mode): tell the application."""
        if self.request_sent:
            self._body_chunk(b"", closed=True)
            conn = self.conn
            conn.layer_send("http.disconnect", http_disconnect(conn.reply_channel or "", conn.path))

    # -- answering ------------------------------------------------------------------------------

    def respond(self, status: int, body: bytes = b"", headers: Sequence[tuple[bytes, bytes]] = (),
                close: bool = False, content_type: bytes = b"text/plain; charset=utf-8") -> None:
        """A whole response; keeps the connection for the next request unless ``close``."""
        if not close and not self._discard_body():
            close = True  # the client is still sending a body we will not read
        self.conn.write(self.parser.respond(status, body, headers, close=close, content_type=content_type))
        self.count_response(status, len(body))
        if close or self.parser.must_close:
            self.conn.close_soon()
        else:
            self.next_request()

    def _discard_body(self) -> bool:
        """Skip a request body already received; True when the whole request has been read."""
        parser = self.parser
        while not parser.client_done:
            event = parser.next_event()
            if isinstance(event, h11.Data):
                continue
            if not isinstance(event, h11.EndOfMessage):
                return False
        return True

    def count_response(self, status: int, size: int) -> None:
        self.conn.sidecar.stats.http_responses[_STATUS_CLASS.get(status // 100) or f"{status // 100}xx"] += 1
        if access_log.isEnabledFor(logging.INFO):  # the peer's address is formatted only for a log line
            access_log.info("%s \"%s\" %d %d", addr(self.conn.peer), self.conn.request_line, status, size)

    def next_request(self) -> None:
        """The response is complete: back to HEAD for the next request (keep-alive), or close."""
        conn = self.conn
        if not self.parser.keep_alive:
            conn.close_soon()
            return
        self.parser.start_next_cycle()
        conn.set_state(HEAD)
        self.request_sent = self.response_started = self.partial = False
        conn.request_line = ""
        self.resp_bytes = 0
        self.body_channel = None
        self.body_buffer = []
        self.body_size = 0
        self.flow = None
        self.granted = 0
        # The idle allowance of a kept-alive socket; a head that starts gets handshake_timeout
        # from its first byte (on_data).
        conn.deadline = time.monotonic() + conn.sidecar.config.handshake_timeout * 6
        if conn.reply_channel is not None:
            conn.sidecar.unroute(conn.reply_channel)
            conn.reply_channel = None
        conn.resume_reading()

    def drain(self) -> None:
        """The sidecar is stopping: answer a request head in progress with 503, close an idle socket."""
        if self.partial:
            self.respond(503, simple_body(503, "draining"), close=True)
        else:
            self.conn.close_soon()

    def timed_out(self, now: float) -> None:
        """The deadline passed in HEAD (no whole head in time: 408) or HTTP_BODY (no response: 504,
        or a response that stalled: the socket is closed mid-response)."""
        conn = self.conn
        if conn.state is HEAD:
            conn.sidecar.stats.dropped["handshake_timeout"] += 1
            if self.partial:
                self.respond(408, simple_body(408), close=True)
                # Long enough for the 408 to be read; a client that timed out does not hold
                # its slot for the whole close wait.
                conn.deadline = min(conn.deadline, now + _TIMED_OUT_LINGER)
            else:
                conn.abort()
        elif not self.response_started:
            self.respond(504, simple_body(504, "no response from the application in time"), close=True)
        else:
            # No response byte arrived or drained for http_timeout: the app or the client
            # stalled. Closing mid-response is what the client can recognise (a chunked
            # body without its last chunk, or fewer bytes than Content-Length).
            conn.sidecar.stats.dropped["http_response_stalled"] += 1
            log.info("closing %s: response to \"%s\" stalled for %.0fs (%d bytes queued)", conn.peer,
                     conn.request_line, conn.sidecar.config.http_timeout, conn.out_bytes)
            conn.abort()

    # -- a request ------------------------------------------------------------------------------

    def _on_request(self, request: h11.Request) -> None:
        conn = self.conn
        sidecar = conn.sidecar
        config = sidecar.config
        conn.deadline = time.monotonic() + config.handshake_timeout
        headers = list(request.headers)
        target = bytes(request.target)
        conn.request_line = f"{request.method.decode('latin-1')} {target[:200].decode('latin-1')}"
        if request.http_version not in (b"1.0", b"1.1"):
            # h11 parses any HTTP/d.d; only 1.0 and 1.1 can be answered (and put in a message).
            self.respond(505, simple_body(505, "only HTTP/1.0 and HTTP/1.1 are served here"), close=True)
            return
        # h11 bounds heads that arrive in pieces; a whole head read at once is measured here.
        if len(target) + sum(len(n) + len(v) + 4 for n, v in headers) > config.max_header_size:
            self.respond(431, simple_body(431), close=True)
            return
        if request.method == b"CONNECT":
            # Not a proxy: a 2xx would switch the socket to a tunnel (h11 sends no body after it).
            self.respond(501, simple_body(501, "CONNECT is not supported"), close=True)
            return
        problem = head_problem(headers, target, config.proxy_headers)
        if problem is not None:
            self.respond(400, simple_body(400, problem), close=True)
            return
        if target[:1] != b"/" and target != b"*":
            # Absolute-form (RFC 9112 3.2.2): the target's authority is the host; Host is ignored.
            headers = _with_target_host(headers, target)
        path = target_path(target)
        if is_upgrade(headers):
            WebSocketSide.handshake(conn, request, headers, target)
            return
        if path == config.health_path.encode():
            ok = sidecar.layer_ok and not sidecar.draining
            self.respond(200 if ok else 503, b"ok\n" if ok else b"unavailable\n")
            return
        if path.startswith(sidecar.STATIC_PREFIX):
            status, body, ctype = sidecar.static_file(path[len(sidecar.STATIC_PREFIX):].decode("latin-1"))
            self.respond(status, body, [(b"cache-control", b"public, max-age=3600")] if status == 200 else (),
                         content_type=ctype)
            return
        if config.http != "layer":
            self.respond(404, simple_body(404))
            return
        self._start_request(request, headers, target)

    def _start_request(self, request: h11.Request, headers: list[tuple[bytes, bytes]], target: bytes) -> None:
        """HTTP mode: build the ``http.request``; it waits in ``body_buffer`` until its body is known."""
        conn = self.conn
        sidecar = conn.sidecar
        config = sidecar.config
        if sidecar.draining or not sidecar.layer_ok:
            self.respond(503, simple_body(503, "draining" if sidecar.draining else "channel layer unavailable"),
                         close=True)
            return
        length = header_value(headers, b"content-length")
        if config.max_request_body and length is not None and length.isdigit() \
                and int(length) > config.max_request_body:
            self.respond(413, simple_body(413), close=True)
            return
        conn.set_state(HTTP_BODY)
        reply_channel = conn.reply_channel = sidecar.route(conn)
        conn.deadline = time.monotonic() + config.http_timeout
        info = request_info(headers, conn.peer, conn.local, config.proxy_headers)
        try:
            conn.path = target.split(b"?", 1)[0].decode("latin-1")
            message = build_request_message(
                reply_channel=reply_channel, method=request.method, target=target, headers=headers,
                http_version=request.http_version.decode("ascii"), scheme=info.scheme, client=info.client,
                server=info.server, root_path=config.root_path, parsed=True)
        except (InvalidRequest, InvalidMessage) as e:
            self.respond(400, simple_body(400, str(e)), close=True)
            return
        conn.path = message["path"]
        if request.method != b"HEAD":
            window = flow_window(config.max_outgoing_buffer)
            # The reply channel's random suffix names the credit channel too: unique per
            # request, known only to whoever has the reply channel, and no token to draw.
            channel = _CREDIT_PREFIX + reply_channel.rpartition("!")[2]
            self.flow = (channel, window)
            message[FLOW_KEY] = {"channel": channel, "window": window,  # type: ignore[literal-required]
                                 "timeout": config.http_timeout}
        self.body_buffer = [message]  # the request itself waits here until the body is known
        conn.write(self.parser.continue_if_expected())
        self.body_size = 0

    def _on_body(self, data: bytes) -> None:
        conn = self.conn
        if conn.state is not HTTP_BODY or not data:
            return
        config = conn.sidecar.config
        self.body_size += len(data)
        if config.max_request_body and self.body_size > config.max_request_body:
            if self.request_sent:
                self._body_chunk(b"", closed=True)
                conn.abort()
            else:
                self.respond(413, simple_body(413), close=True)
            return
        if self.request_sent:
            self._body_chunk(data, more=True)
            return
        self.body_buffer.append(data)
        if self.body_size > config.http_body_inline:
            # Too big to travel inline: send the request now with what we have, stream the rest.
            message: HttpRequestMessage = self.body_buffer[0]
            message["body"] = b"".join(self.body_buffer[1:])
            message["body_channel"] = self.body_channel = conn.sidecar.layer.new_channel("http.request.body?")
            self.body_buffer = []
            self._send_request(message)

    def _on_body_end(self) -> None:
        if self.conn.state is not HTTP_BODY:
            return
        if self.request_sent:
            self._body_chunk(b"", more=False)
        else:
            message: HttpRequestMessage = self.body_buffer[0]
            message["body"] = b"".join(self.body_buffer[1:])
            self.body_buffer = []
            self._send_request(message)

    def _send_request(self, message: HttpRequestMessage) -> None:
        conn = self.conn
        reply_channel = conn.reply_channel
        sender = conn.sidecar.sender
        if sender.batching and message["body_channel"] is None:
            # The request's only message: nothing else of it follows, so this greenlet goes back
            # to reading at once, and the flusher answers 503/413 if the send fails.
            self.request_sent = True
            sender.send_nowait("http.request", message, lambda error: self._after_request_send(
                reply_channel, conn.send_outcome("http.request", error)))
            return
        self._after_request_send(reply_channel, conn.layer_send("http.request", message))

    def _after_request_send(self, reply_channel: str | None, result: "SendOutcome") -> None:
        """Given the outcome of a request's send: answer 503, 413 or 400 unless it is ``"ok"``."""
        conn = self.conn
        if conn.reply_channel is not reply_channel or self.response_started or conn.state is DONE:
            # The whole response arrived (and keep-alive moved on) before the send's outcome
            # was known: this request is done, and nothing here is its state.
            return
        if result == "ok":
            self.request_sent = True
            return
        self.request_sent = False
        status, detail = _SEND_FAILED.get(result, (503, ""))
        self.respond(status, simple_body(status, detail), close=True)

    def _body_chunk(self, content: bytes, more: bool = False, closed: bool = False) -> None:
        channel = self.body_channel
        if channel is None:
            return
        conn = self.conn
        chunk = body_chunk(content, more, closed)
        deadline = time.monotonic() + conn.sidecar.config.http_timeout
        while True:
            result = conn.layer_send(channel, chunk)
            if result != "full" or time.monotonic() > deadline or conn.aborted:
                break
            gevent.sleep(LAYER_RETRY_SECONDS)  # the app reads slowly: hold the client back
        if result != "ok" and not closed:
            log.warning("request body chunk for %s not delivered (%s); closing", conn.path, result)
            conn.abort()

    # -- the response ---------------------------------------------------------------------------

    def deliver(self, message: Any) -> None:
        """A response message from the application (HTTP_BODY)."""
        conn = self.conn
        if type(message) is dict and message.get("abort") is True:
            # The worker gave the response up (time limit, or the app failed mid-stream): the
            # client must see it cut, not complete.
            log.warning("response for %s %s aborted by the worker", conn.request_line, conn.reply_channel)
            conn.abort()
            return
        first = not self.response_started
        try:
            validate_response_message(message, first=first)
        except Exception as e:
            log.error("bad http.response for %s %s: %s", conn.request_line, conn.reply_channel, e)
            if first:
                self.response_started = True
                self.respond(502, simple_body(502, "the application sent an invalid response"), close=True)
            else:
                conn.abort()
            return
        more = message.get("more_content", False)
        content = message.get("content", b"")
        parser = self.parser
        if first:
            self.response_started = True
            self.status = message["status"]
            headers = message.get("headers") or []  # [bytes, bytes] pairs (validated above)
            if not more:
                for n, _ in headers:
                    if n.lower() in _FRAMING:
                        break
                else:
                    headers = [*headers, (b"content-length", b"%d" % len(content))]
            data = parser.start_response(self.status, headers, close=conn.sidecar.draining, from_app=True)
        else:
            data = b""
        data += parser.send_data(content)
        self.resp_bytes += len(content)
        conn.deadline = time.monotonic() + conn.sidecar.config.http_timeout
        if more:
            conn.write(data)
            if self.flow is not None:
                self._grant_credit()
            return
        self.flow = None  # the response is complete: no consumer waits for credit any more
        conn.write(data + parser.end_response())
        self.count_response(self.status, self.resp_bytes)
        if parser.keep_alive and not conn.sidecar.draining:
            parked = conn.resume is not None  # the reader waits (PIPELINE_LIMIT) and goes on itself
            self.next_request()
            if not parked and not parser.nothing_to_parse:
                event = parser.next_event()
                if event is not h11.NEED_DATA:
                    gevent.spawn(self.pump, event)  # a pipelined request was waiting
        else:
            conn.close_soon()

    # -- response flow control ------------------------------------------------------------------

    def drained(self) -> None:
        """Some of a flow-controlled response left the outgoing queue for the kernel: the
        client is reading. That is progress (the stall deadline starts again) and maybe credit."""
        conn = self.conn
        if conn.state is HTTP_BODY and self.response_started:
            conn.deadline = time.monotonic() + conn.sidecar.config.http_timeout
            self._grant_credit()

    def _grant_credit(self) -> None:
        """Tell the consumer how much of its response has drained, once half a window more has."""
        flow = self.flow
        conn = self.conn
        if flow is None or conn.aborted:
            return
        # Content bytes that have left the queue; the queue also holds chunk framing, so this
        # errs low until the queue is empty, when it is exact.
        acked = self.resp_bytes - conn.out_bytes
        if acked - self.granted < flow[1] // 2:
            return
        self.granted = acked
        message: dict[str, Any] = {"acked": acked}  # a CreditMessage
        sender = conn.sidecar.sender
        if sender.batching:
            sender.send_nowait(flow[0], message, self._credit_failed)
            return
        try:  # never waits: the caller is the layer's receive loop or the socket's writer
            conn.sidecar.layer.send(flow[0], message)
        except Exception as e:
            self._credit_failed(e)

    def _credit_failed(self, error: BaseException) -> None:
        # A later grant carries the total again; without one the consumer gives up after the
        # timeout it was given and the stall deadline closes the connection.
        log.warning("response credit for %s not delivered (%s: %s)", self.conn.request_line, type(error).__name__,
                    error)


def _with_target_host(headers: list[tuple[bytes, bytes]], target: bytes) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``Host`` set to the authority of the absolute-form ``target``."""
    authority = target_authority(target)
    if authority is None:
        return headers
    out = [(n, v) for n, v in headers if n != b"host"]
    out.insert(next((i for i, (n, _) in enumerate(headers) if n == b"host"), 0), (b"host", authority))
    return out

