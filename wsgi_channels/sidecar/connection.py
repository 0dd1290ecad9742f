"""One client socket of the sidecar: the glue between the sans-IO protocol objects and the layer.

A :class:`ClientConnection` is driven from two sides:

- its own greenlet (:meth:`run`) only ``recv``s, feeds the bytes to
  :class:`~.http.HttpConnection` or :class:`~.websocket.WebSocketSession`, and
  sends what comes out to the layer (``websocket.connect``/``receive``/
  ``disconnect``, ``http.request`` and body chunks);
- the sidecar's single layer receive loop calls :meth:`deliver` with each
  message for this connection's reply channel.

Writes go through :meth:`write`: a non-blocking send first, and only when the
kernel buffer is full a short-lived writer greenlet flushes a bounded queue.
A client whose queue passes ``max_outgoing_buffer`` is closed and counted, and
when all queues together pass ``max_outgoing_total`` the clients with the most
queued are (:meth:`Sidecar.shed_outgoing`); a WebSocket gets close 1013 where
its socket still takes it.

No connection holds the event loop for long: gevent's ``recv`` returns without
switching while data is waiting, and frames or requests the sidecar handles by
itself never wait on anything, so a connection that has done a turn's work
(:data:`_TURN` units: a byte received is one, a frame or a request answered here
more) waits until every other ready greenlet has run (:func:`~._connbase.let_others_run`).
Timeouts (handshake, connect, HTTP response, keepalive) are checked by the
sidecar's sweeper through :meth:`check_timers`, so no timer exists per socket.

The HTTP-mode methods live in :mod:`.connection_http` and the WebSocket ones in
:mod:`.connection_ws` (mixins without state of their own); states and limits in
:mod:`._connbase`.
"""
from __future__ import annotations

import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import h11

from ..exceptions import ChannelFull, MessageTooLarge
from ..translation import target_authority, target_path
from . import websocket as ws_proto
from ._connbase import (_CLOSE_WAIT, _LAYER_RETRY_SECONDS, _LINGER_BYTES, _LINGER_SECONDS, _RECV_SIZE, _TURN,
                        CLOSING, CONNECTING, DONE, HEAD, HTTP_BODY, LAYER_SLOT_TIMEOUT, OPEN, access_log, addr,
                        let_others_run, log)
from .connection_http import HttpModeMixin
from .connection_ws import FrameCache, WebSocketMixin
from .http import HttpConnection, HttpError, head_problem, simple_body

if TYPE_CHECKING:  # pragma: no cover
    from .server import Sidecar

__all__ = ["ClientConnection"]

#: The response counter's label of each status class.
_STATUS_CLASS = {n: f"{n}xx" for n in range(1, 6)}
#: Work units of a request the sidecar answers itself (health, static files, errors): about
#: 40 us of parsing and answering; 4 of them make a turn.
_REQUEST_COST = _TURN // 4
#: HTTP: bytes a client may send ahead (pipelined requests) while a response is pending; past
#: it the connection stops reading until the response ends. h11 then holds at most this plus
#: one ``recv`` (``_RECV_SIZE``) per connection.
PIPELINE_LIMIT = 64 * 1024
#: Seconds a reader parked by :data:`PIPELINE_LIMIT` sleeps before it checks its state again
#: (it is woken at once when the response ends or the connection closes).
_PARKED_CHECK = 1.0
#: Seconds a connection that timed out (408) waits for the client to close before it is dropped.
_TIMED_OUT_LINGER = 1.0


class ClientConnection(HttpModeMixin, WebSocketMixin):
    """State machine of one client socket (HTTP requests, then maybe a WebSocket)."""

    __slots__ = ("sidecar", "sock", "peer", "local", "http", "ws", "state", "deadline", "last_active",
                 "ping_sent", "reply_channel", "upgrade", "path", "order", "connect_sent", "disconnect_sent",
                 "out", "out_bytes", "writer", "aborted", "request_started", "body_channel", "body_buffer",
                 "body_size", "request_sent", "response_started", "request_line", "status", "greenlet",
                 "close_after_flush", "started", "partial", "resp_bytes", "credit", "resume", "flow",
                 "granted")

    def __init__(self, sidecar: "Sidecar", sock: socket.socket, peer: Any) -> None:
        self.sidecar = sidecar
        self.sock = sock
        self.peer = peer
        try:
            self.local = sock.getsockname()
        except OSError:
            self.local = None
        self.http = HttpConnection(sidecar.config.max_header_size)
        self.ws: ws_proto.WebSocketSession | None = None
        self.state = HEAD
        now = time.monotonic()
        self.started = now
        self.deadline = now + sidecar.config.handshake_timeout
        self.last_active = now
        self.ping_sent = 0.0
        self.reply_channel: str | None = None
        self.upgrade: ws_proto.Upgrade | None = None
        self.path = ""
        self.order = 0
        self.connect_sent = False
        self.disconnect_sent = False
        self.out: deque = deque()
        self.out_bytes = 0
        self.writer: gevent.Greenlet | None = None
        self.aborted = False
        self.close_after_flush = False
        self.request_started = False
        self.body_channel: str | None = None
        self.body_buffer: list[bytes] = []
        self.body_size = 0
        self.request_sent = False
        self.response_started = False
        self.request_line = ""
        self.status = 0
        self.greenlet: gevent.Greenlet | None = None
        self.partial = False  # bytes of a request head have arrived
        self.resp_bytes = 0
        self.credit = _TURN  # work left in this turn (see _pace)
        self.resume: gevent.event.Event | None = None  # set while the reader is parked (_may_read)
        self.flow: tuple[str, int] | None = None  # HTTP response flow control: (credit channel, window)
        self.granted = 0  # response bytes acknowledged to the consumer on the credit channel

    # -- the reading greenlet -------------------------------------------------------------------

    def run(self) -> None:
        """Read until the peer leaves or we are done; then send the disconnect and close."""
        sock = self.sock
        try:
            while self.state is not DONE:
                if not self._may_read():
                    continue
                try:
                    data = sock.recv(_RECV_SIZE)
                except OSError:
                    data = b""
                if self.state is DONE:
                    break
                if not data:
                    self._peer_gone()
                    break
                self.last_active = time.monotonic()
                self.sidecar.stats.bytes_in += len(data)
                if self.ws is not None:
                    self._on_ws_data(data)
                elif self.state is CONNECTING:
                    # Frames before our 101 are kept for the session, within a bound.
                    self.body_size += len(data)
                    if self.body_size > self.sidecar.config.max_header_size:
                        self.abort()
                    else:
                        self.http.receive_data(data)
                else:
                    self._on_http_data(data)
                self._pace(len(data))
        except Exception:  # one bad client never takes the process down
            log.exception("sidecar connection from %s failed", self.peer)
        finally:
            self._finish()

    def _pace(self, cost: int) -> None:
        """Count ``cost`` units of work; at the end of a turn, let every other connection run."""
        self.credit -= cost
        if self.credit <= 0:
            self.credit = _TURN
            let_others_run()

    def _peer_gone(self) -> None:
        if self.ws is not None:
            self.ws.receive_data(None)
        elif self.state is HTTP_BODY and self.request_sent:
            self._body_chunk(b"", closed=True)
            self._layer_send("http.disconnect", {"reply_channel": self.reply_channel, "path": self.path})
        self.state = DONE

    def _finish(self) -> None:
        """Send the disconnect, close the socket; only then is the connection forgotten, so the
        open-connection gauges count every greenlet still working for a client."""
        self.state = DONE
        try:
            self._send_disconnect()
            self._lingering_close()
        finally:
            self.sidecar.forget(self)

    def _lingering_close(self) -> None:
        """Flush, shut down writing, drain input briefly, close (so the peer reads our last bytes)."""
        sock = self.sock
        writer = self.writer
        if writer is not None and not self.aborted:
            writer.join(timeout=self.sidecar.config.grace_period or 1.0)
        try:
            if not self.aborted:
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(_LINGER_SECONDS)
                deadline = time.monotonic() + _LINGER_SECONDS
                drained = 0
                while drained < _LINGER_BYTES and time.monotonic() < deadline:
                    chunk = sock.recv(_RECV_SIZE)
                    if not chunk:
                        break
                    drained += len(chunk)
        except OSError:
            pass
        finally:
            if self.writer is not None:
                self.writer.kill(block=False)
            self._drop_queue()
            sock.close()

    # -- writing --------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the peer without blocking the caller; close slow readers."""
        if not data or self.aborted:
            return
        self.sidecar.stats.bytes_out += len(data)
        if self.out:
            self._queue(data)
            return
        try:
            sent = self.sock.send(data, 0, 0.0)  # gevent: timeout 0.0 = never wait
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abort()
            return
        if sent < len(data):
            self._queue(memoryview(data)[sent:] if sent else data)
            if self.writer is None and self.out and not self.aborted:
                self.writer = gevent.spawn(self._flush)

    def _queue(self, chunk: Any) -> None:
        """Queue bytes the kernel did not take, within this client's and the process's bounds."""
        size = len(chunk)
        self.out.append(chunk)
        self.out_bytes += size
        sidecar = self.sidecar
        sidecar.queued_bytes += size
        config = sidecar.config
        if self.out_bytes > config.max_outgoing_buffer:
            self._slow("slow_client")
        elif config.max_outgoing_total and sidecar.queued_bytes > config.max_outgoing_total:
            sidecar.shed_outgoing()

    def _flush(self) -> None:
        """The writer greenlet: send the queue in order, waiting for the socket to take it.

        Invariant: only the writer takes from ``out``, and only its head (``out[0]``) may have
        been partly sent; everything behind it is untouched, whole chunks (whole frames).
        """
        out = self.out
        sock = self.sock
        try:
            while out and not self.aborted:
                chunk = out[0]
                sent = sock.send(chunk)
                if not out or out[0] is not chunk:
                    continue  # aborted while we waited: the queue is gone
                self.out_bytes -= sent
                self.sidecar.queued_bytes -= sent
                if sent == len(chunk):
                    out.popleft()
                else:
                    out[0] = memoryview(chunk)[sent:]
                if self.flow is not None:
                    self._drained()  # HTTP response flow control (connection_http)
        except OSError:
            self.abort()
        finally:
            self.writer = None
            if self.close_after_flush and not self.out and not self.aborted:
                self._shutdown_write()

    def _drop_queue(self) -> None:
        self.sidecar.queued_bytes -= self.out_bytes
        self.out.clear()
        self.out_bytes = 0

    def _slow(self, reason: str) -> None:
        """Too much is queued for this client (``reason``: ``slow_client`` for its own bound,
        ``outgoing_cap`` for the process's): drop the queue and close.

        A WebSocket keeps only the rest of the frame being written (the writer may be inside
        ``send`` with it, and a cut frame would break the stream), then gets close 1013 ("try
        again later": the shipped client reconnects) and the usual close wait; anything else is
        dropped at once.
        """
        stats = self.sidecar.stats
        stats.slow_closed += 1
        stats.dropped[reason] += 1
        log.info("closing %s: client too slow to read (%d bytes queued%s)", self.peer, self.out_bytes,
                 ", over the process's max_outgoing_total" if reason == "outgoing_cap" else "")
        ws = self.ws
        if ws is None or not ws.open:
            if ws is not None and ws.close_code is None:
                ws.close_code = ws_proto.CLOSE_TRY_AGAIN
            self.abort()
            return
        head = self.out[0] if self.out else None
        self._drop_queue()
        frame = ws.close(ws_proto.CLOSE_TRY_AGAIN, "client too slow to read")
        for chunk in (head, frame):
            if chunk:
                self.out.append(chunk)
                self.out_bytes += len(chunk)
                self.sidecar.queued_bytes += len(chunk)
        self.state = CLOSING
        self.deadline = time.monotonic() + _CLOSE_WAIT
        self.close_after_flush = True
        if self.writer is None:
            self.writer = gevent.spawn(self._flush)

    def abort(self) -> None:
        """Drop the socket now (dead or slow peer); the reading greenlet cleans up."""
        if self.aborted:
            return
        self.aborted = True
        self._drop_queue()
        self._resume_reading()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _close_soon(self) -> None:
        """Our last bytes are queued: shut down writing once they are flushed, then wait for the
        peer to close (discarding what it still sends) until a short deadline."""
        if self.state is not DONE:
            self.state = CLOSING
            self.deadline = time.monotonic() + _CLOSE_WAIT
            self.body_size = 0  # counts what is discarded from now on (_on_http_data)
            self._resume_reading()
        self.close_after_flush = True
        if not self.out:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    # -- the layer ------------------------------------------------------------------------------

    def _layer_send(self, channel: str, message: dict) -> str:
        """Send to the layer: ``"ok"``, ``"full"``, ``"too-large"`` or ``"down"``."""
        sidecar = self.sidecar
        sender = sidecar.sender
        if sender.batching:  # coalesced with other connections' sends (one round trip per batch)
            error = sender.send(channel, message)
        else:
            slots = sidecar.layer_slots
            if not slots.acquire(timeout=LAYER_SLOT_TIMEOUT):
                sidecar.layer_failed(TimeoutError(f"no free layer slot within {LAYER_SLOT_TIMEOUT:g}s"))
                return "down"
            try:
                sidecar.layer.send(channel, message)
                error = None
            except Exception as e:
                error = e
            finally:
                slots.release()
        return self._send_outcome(channel, error)

    def _send_outcome(self, channel: str, error: BaseException | None) -> str:
        """A send's outcome as :meth:`_layer_send` reports it (counting drops and layer failures)."""
        sidecar = self.sidecar
        if error is None:
            return "ok"
        if isinstance(error, ChannelFull):
            sidecar.stats.dropped[f"full:{channel.split('!')[0].split('?')[0]}"] += 1
            return "full"
        if isinstance(error, MessageTooLarge):
            return "too-large"
        if isinstance(error, (TypeError, ValueError)):
            # The message itself was refused (InvalidMessage, a bad name): that request's
            # problem, never a sign that the layer is down for everyone else.
            log.error("message for %s refused by the channel layer: %s", channel, error)
            return "invalid"
        sidecar.layer_failed(error)
        return "down"

    def _send_disconnect(self) -> None:
        if not self.connect_sent or self.disconnect_sent:
            return
        self.disconnect_sent = True
        code = ws_proto.CLOSE_ABNORMAL
        if self.ws is not None and self.ws.close_code is not None:
            code = self.ws.close_code
        self.sidecar.stats.closes[code] += 1
        message = {"reply_channel": self.reply_channel, "path": self.path, "code": code, "order": self.order + 1}
        deadline = time.monotonic() + 2.0
        while True:
            result = self._layer_send("websocket.disconnect", message)
            if result != "full" or time.monotonic() > deadline:
                break
            gevent.sleep(_LAYER_RETRY_SECONDS)
        if result != "ok":
            log.warning("websocket.disconnect for %s not delivered (%s)", self.reply_channel, result)
        access_log.info("%s WSDISCONNECT %s %d", addr(self.peer), self.path, code)

    # -- HTTP -----------------------------------------------------------------------------------

    def _on_http_data(self, data: bytes) -> None:
        """Bytes from an HTTP client (not yet a WebSocket): parse, act on every event."""
        if self.state is CLOSING:
            # Our final response is out (lingering close): what arrives is discarded, up to the
            # size of a request body (a client finishing an upload we refused then reads our
            # answer), so a client cannot keep the sidecar reading junk for the whole close wait.
            self.body_size += len(data)
            if self.body_size > max(_LINGER_BYTES, self.sidecar.config.max_request_body):
                self.abort()
            return
        if self.state is HEAD and not self.partial:
            self.partial = True
            # A request head has its deadline from its first byte, also on a kept-alive socket
            # (whose idle allowance is longer): a head dripped in byte by byte is cut off after
            # handshake_timeout, not after the idle allowance.
            self.deadline = min(self.deadline, time.monotonic() + self.sidecar.config.handshake_timeout)
        self.http.receive_data(data)
        self._pump_http()

    def _may_read(self) -> bool:
        """Whether the reader may ``recv`` now; False (after waiting, bounded) to check again.

        An HTTP client that has sent :data:`PIPELINE_LIMIT` bytes more than its pending
        requests is not read from until the response ends: what it sends meanwhile waits in
        the kernel's buffers (TCP flow control holds it back), not in ours.
        """
        if self.state is not HTTP_BODY or self.http.unparsed < PIPELINE_LIMIT:
            return True
        resume = self.resume = gevent.event.Event()
        try:
            resume.wait(_PARKED_CHECK)
        finally:
            self.resume = None
        if self.state is HEAD and not self.http.nothing_to_parse:
            self._pump_http()  # the response ended: the requests held back go on from here
        return False

    def _resume_reading(self) -> None:
        resume = self.resume
        if resume is not None:
            resume.set()

    def _pump_http(self, event: Any = None) -> None:
        """Handle every event the parser has; stop when it needs data or waits for us."""
        http = self.http
        while self.state is HEAD or self.state is HTTP_BODY:
            if event is None:
                event = http.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, HttpError):
                self._respond(event.status, simple_body(event.status, event.reason), close=True)
                return
            if isinstance(event, h11.Request):
                self._on_request(event)
            elif isinstance(event, h11.Data):
                self._on_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._on_body_end()
            elif isinstance(event, h11.ConnectionClosed):
                self.state = DONE
                return
            event = None
            if self.state is HEAD:  # answered here, between requests: pipelined ones wait their turn
                self._pace(_REQUEST_COST)

    def _respond(self, status: int, body: bytes = b"", headers: list | tuple = (), close: bool = False,
                 content_type: bytes = b"text/plain; charset=utf-8") -> None:
        """A whole response; keeps the connection for the next request unless ``close``."""
        if not close and not self._discard_body():
            close = True  # the client is still sending a body we will not read
        self.write(self.http.respond(status, body, headers, close=close, content_type=content_type))
        self._count_response(status, len(body))
        if close or self.http.must_close:
            self._close_soon()
        else:
            self._next_request()

    def _discard_body(self) -> bool:
        """Skip a request body already received; True when the whole request has been read."""
        http = self.http
        while not http.client_done:
            event = http.next_event()
            if isinstance(event, h11.Data):
                continue
            if not isinstance(event, h11.EndOfMessage):
                return False
        return True

    def _count_response(self, status: int, size: int) -> None:
        self.sidecar.stats.http_responses[_STATUS_CLASS.get(status // 100) or f"{status // 100}xx"] += 1
        if access_log.isEnabledFor(logging.INFO):  # the peer's address is formatted only for a log line
            access_log.info("%s \"%s\" %d %d", addr(self.peer), self.request_line, status, size)

    def _next_request(self) -> None:
        if self.http.keep_alive:
            self.http.start_next_cycle()
            self.state = HEAD
            self.request_started = self.request_sent = self.response_started = self.partial = False
            self.request_line = ""
            self.resp_bytes = 0
            self.body_channel = None
            self.body_buffer = []
            self.body_size = 0
            self.flow = None
            self.granted = 0
            # The idle allowance of a kept-alive socket; a head that starts gets handshake_timeout
            # from its first byte (_on_http_data).
            self.deadline = time.monotonic() + self.sidecar.config.handshake_timeout * 6
            if self.reply_channel is not None:
                self.sidecar.unroute(self.reply_channel)
                self.reply_channel = None
            self._resume_reading()
        else:
            self._close_soon()

    def _on_request(self, request: h11.Request) -> None:
        sidecar = self.sidecar
        config = sidecar.config
        self.deadline = time.monotonic() + config.handshake_timeout
        headers = list(request.headers)
        target = bytes(request.target)
        self.request_line = f"{request.method.decode('latin-1')} {target[:200].decode('latin-1')}"
        if request.http_version not in (b"1.0", b"1.1"):
            # h11 parses any HTTP/d.d; only 1.0 and 1.1 can be answered (and put in a message).
            self._respond(505, simple_body(505, "only HTTP/1.0 and HTTP/1.1 are served here"), close=True)
            return
        # h11 bounds heads that arrive in pieces; a whole head read at once is measured here.
        if len(target) + sum(len(n) + len(v) + 4 for n, v in headers) > config.max_header_size:
            self._respond(431, simple_body(431), close=True)
            return
        if request.method == b"CONNECT":
            # Not a proxy: a 2xx would switch the socket to a tunnel (h11 sends no body after it).
            self._respond(501, simple_body(501, "CONNECT is not supported"), close=True)
            return
        problem = head_problem(headers, target, config.proxy_headers)
        if problem is not None:
            self._respond(400, simple_body(400, problem), close=True)
            return
        if target[:1] != b"/" and target != b"*":
            # Absolute-form (RFC 9112 3.2.2): the target's authority is the host; Host is ignored.
            headers = _with_target_host(headers, target)
        path = target_path(target)
        if ws_proto.is_upgrade(headers):
            self._on_upgrade(request, headers, target)
            return
        if path == config.health_path.encode():
            ok = sidecar.layer_ok and not sidecar.draining
            self._respond(200 if ok else 503, b"ok\n" if ok else b"unavailable\n")
            return
        if path.startswith(sidecar.STATIC_PREFIX):
            status, body, ctype = sidecar.static_file(path[len(sidecar.STATIC_PREFIX):].decode("latin-1"))
            self._respond(status, body, [(b"cache-control", b"public, max-age=3600")] if status == 200 else (),
                          content_type=ctype)
            return
        if config.http != "layer":
            self._respond(404, simple_body(404))
            return
        self._start_http_request(request, headers, target)

    # -- messages from the layer ----------------------------------------------------------------

    def deliver(self, message: dict, frames: FrameCache) -> None:
        """One message for our reply channel; ``frames`` is the sidecar's :class:`FrameCache` (the frames
        encoded for the message being delivered, and the last message dict found valid)."""
        if self.state is DONE or self.aborted:
            return
        if self.ws is not None or self.state is CONNECTING:
            self._deliver_ws(message, frames)
        elif self.state is HTTP_BODY:
            self._deliver_http(message)

    def drain(self, code: int) -> None:
        """The sidecar is stopping: close WebSockets with ``code``, refuse pending handshakes,
        close idle keep-alive connections; in-flight HTTP requests carry on."""
        if self.ws is not None:
            self.send_ws_close(code)
        elif self.state is CONNECTING:
            self._reject(503, "draining")
        elif self.state is HEAD:
            if self.partial:
                self._respond(503, simple_body(503, "draining"), close=True)
            else:
                self._close_soon()

    # -- timers (called by the sidecar's sweeper) -----------------------------------------------

    def check_timers(self, now: float) -> None:
        state = self.state
        if state is OPEN:
            ws = self.ws
            config = self.sidecar.config
            if ws is None:
                return
            if ws.awaiting_pong:
                if now - self.ping_sent > config.ping_timeout:
                    self.sidecar.stats.dead_closed += 1
                    log.info("closing %s: no pong within %.1fs", self.reply_channel, config.ping_timeout)
                    ws.close_code = ws_proto.CLOSE_ABNORMAL
                    self.abort()
            elif config.ping_interval and now - self.last_active > config.ping_interval:
                self.ping_sent = now
                self.write(ws.ping())
            return
        if now < self.deadline:
            return
        if state is HEAD:
            self.sidecar.stats.dropped["handshake_timeout"] += 1
            if self.partial:
                self._respond(408, simple_body(408), close=True)
                # Long enough for the 408 to be read; a client that timed out does not hold
                # its slot for the whole close wait.
                self.deadline = min(self.deadline, now + _TIMED_OUT_LINGER)
            else:
                self.abort()
        elif state is CONNECTING:
            if self.sidecar.config.connect_timeout_accept:
                self.sidecar.stats.handshakes["timeout_accepted"] += 1
                self._accept(None)
            else:
                self._reject(503, "connect_timeout")
        elif state is HTTP_BODY:
            if not self.response_started:
                self._respond(504, simple_body(504, "no response from the application in time"), close=True)
            else:
                # No response byte arrived or drained for http_timeout: the app or the client
                # stalled. Closing mid-response is what the client can recognise (a chunked
                # body without its last chunk, or fewer bytes than Content-Length).
                self.sidecar.stats.dropped["http_response_stalled"] += 1
                log.info("closing %s: response to \"%s\" stalled for %.0fs (%d bytes queued)", self.peer,
                         self.request_line, self.sidecar.config.http_timeout, self.out_bytes)
                self.abort()
        elif state is CLOSING:
            self.abort()


def _with_target_host(headers: list, target: bytes) -> list:
    """``headers`` with ``Host`` set to the authority of the absolute-form ``target``."""
    authority = target_authority(target)
    if authority is None:
        return headers
    out = [(n, v) for n, v in headers if n != b"host"]
    out.insert(next((i for i, (n, _) in enumerate(headers) if n == b"host"), 0), (b"host", authority))
    return out
