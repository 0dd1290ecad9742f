"""One client socket of the sidecar: the glue between the sans-IO protocol objects and the layer.

A :class:`ClientConnection` is driven from two sides:

- its own greenlet (:meth:`~ClientConnection.run`) only ``recv``s and hands the bytes to the
  part that reads them now: its :class:`~.http_side.HttpSide` (request heads, and in HTTP mode
  bodies and responses through the layer) or its :class:`~.websocket_side.WebSocketSide` (the
  held handshake, then frames);
- the sidecar's single layer receive loop calls :meth:`~ClientConnection.deliver` with each
  message for this connection's reply channel.

The connection owns what every part uses: the socket and its writing, the state
(:class:`~.state.State`, changed only by :meth:`~ClientConnection.set_state`, which checks
:data:`~.state.TRANSITIONS`), deadlines, the reply channel, and sends to the layer.

Writes go through :meth:`~ClientConnection.write`: a non-blocking send first, and only when the
kernel buffer is full a short-lived writer greenlet flushes a bounded queue. A client whose
queue passes ``max_outgoing_buffer`` is closed and counted, and when all queues together pass
``max_outgoing_total`` the clients with the most queued are (:meth:`Sidecar.shed_outgoing`); a
WebSocket gets close 1013 where its socket still takes it.

No connection holds the event loop for long: gevent's ``recv`` returns without switching
while data is waiting, and frames or requests the sidecar handles by itself never wait on
anything, so a connection that has done a turn's work (:data:`~.common.TURN` units: a byte
received is one, a frame or a request answered here more) waits until every other ready
greenlet has run (:func:`~.common.let_others_run`). Timeouts (handshake, connect, HTTP
response, keepalive) are checked by the sidecar's sweeper through :meth:`check_timers`, so no
timer exists per socket.
"""
from __future__ import annotations

import logging
import socket
import time
from collections import deque
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Union

import gevent
import gevent.event

from ..exceptions import ChannelFull, MessageTooLarge
from ..protocol.close_codes import CLOSE_TRY_AGAIN
from .common import CLOSE_WAIT, LAYER_SLOT_TIMEOUT, LINGER_BYTES, TURN, let_others_run
from .http_side import HttpSide
from .state import TRANSITIONS, State, illegal_transition
from .websocket_side import FrameCache, WebSocketSide

if TYPE_CHECKING:  # pragma: no cover
    from .server import Sidecar

__all__ = ["ClientConnection", "SendOutcome"]

log = logging.getLogger(__name__)

HEAD, HTTP_BODY, CONNECTING, OPEN, CLOSING, DONE = (State.HEAD, State.HTTP_BODY, State.CONNECTING, State.OPEN,
                                                    State.CLOSING, State.DONE)

#: A layer send's outcome: ``"ok"``, ``"full"``, ``"too-large"``, ``"invalid"`` (the message
#: itself was refused: that request's problem) or ``"down"`` (the layer failed).
SendOutcome = str

_RECV_SIZE = 65536
_LINGER_SECONDS = 2.0

#: Chunks queued for the writer: whole frames or responses, and the rest of a partly sent one.
_Chunk = Union[bytes, memoryview]


class ClientConnection:
    """One client socket: its state machine, its writing, and the parts that read it."""

    __slots__ = ("sidecar", "sock", "peer", "local", "state", "deadline", "last_active", "reply_channel", "path",
                 "request_line", "out", "out_bytes", "writer", "aborted", "close_after_flush", "credit", "resume",
                 "held", "http", "ws", "cork")

    def __init__(self, sidecar: "Sidecar", sock: socket.socket, peer: Any) -> None:
        self.sidecar = sidecar
        self.sock = sock
        self.peer = peer
        self.local: Any
        try:
            self.local = sock.getsockname()
        except OSError:
            self.local = None
        self.state = HEAD
        now = time.monotonic()
        self.deadline = now + sidecar.config.handshake_timeout
        self.last_active = now
        self.reply_channel: str | None = None
        self.path = ""
        self.request_line = ""  # for the access log
        self.out: deque[_Chunk] = deque()
        self.out_bytes = 0
        self.writer: gevent.Greenlet[Any, Any] | None = None
        self.aborted = False
        self.close_after_flush = False
        self.credit = TURN  # work left in this turn (see _pace)
        self.resume: gevent.event.Event | None = None  # set while the reader is parked (HttpSide.may_read)
        #: Bytes received and not handed to a parser: while a handshake waits (CONNECTING, bounded by
        #: max_header_size) and, CLOSING, what is discarded after our final response.
        self.held = 0
        #: Request heads, and HTTP mode; None once a WebSocket is accepted (the parser is freed).
        self.http: HttpSide | None = HttpSide(self)
        #: The WebSocket part, from the moment its ``websocket.connect`` goes to the layer.
        self.ws: WebSocketSide | None = None
        #: While :meth:`corked`: the writes to make as one (a resume's replay: one syscall, not two a message).
        self.cork: list[bytes] | None = None

    @property
    def is_websocket(self) -> bool:
        """Whether this connection is an accepted WebSocket (counted as one, not as HTTP)."""
        ws = self.ws
        return ws is not None and ws.session is not None

    # -- the state machine ----------------------------------------------------------------------

    def set_state(self, new: State) -> None:
        """Move to ``new``; a change :data:`~.state.TRANSITIONS` does not allow is a bug (see :mod:`.state`)."""
        old = self.state
        if new is old:
            return
        if new not in TRANSITIONS[old]:
            illegal_transition(old, new, f"connection from {self.peer}")
        self.state = new

    def closing(self) -> None:
        """Our last bytes are out: wait for the peer (or the flush) until :data:`~.common.CLOSE_WAIT`."""
        self.set_state(CLOSING)
        self.deadline = time.monotonic() + CLOSE_WAIT
        self.held = 0  # counts what is discarded from now on (HttpSide.on_data)

    # -- the reading greenlet -------------------------------------------------------------------

    def run(self) -> None:
        """Read until the peer leaves or we are done; then send the disconnect and close."""
        sock = self.sock
        try:
            while self.state is not DONE:
                http = self.http
                if http is not None and self.state is HTTP_BODY and not http.may_read():
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
                ws = self.ws
                if ws is not None and ws.session is not None:
                    ws.on_data(data)
                elif self.state is CONNECTING:
                    # Frames before our 101 are kept for the session, within a bound.
                    self.held += len(data)
                    if self.held > self.sidecar.config.max_header_size or http is None:
                        self.abort()
                    else:
                        http.parser.receive_data(data)
                elif http is not None:
                    http.on_data(data)
                self._pace(len(data))
        except Exception:  # one bad client never takes the process down
            log.exception("sidecar connection from %s failed", self.peer)
        finally:
            self._finish()

    def _pace(self, cost: int) -> None:
        """Count ``cost`` units of work; at the end of a turn, let every other connection run."""
        self.credit -= cost
        if self.credit <= 0:
            self.credit = TURN
            let_others_run()

    def _peer_gone(self) -> None:
        ws = self.ws
        if ws is not None and ws.session is not None:
            ws.session.receive_data(None)
        elif self.http is not None and self.state is HTTP_BODY:
            self.http.client_left()
        self.set_state(DONE)

    def _finish(self) -> None:
        """Send the disconnect, close the socket; only then is the connection forgotten, so the
        open-connection gauges count every greenlet still working for a client."""
        self.set_state(DONE)
        try:
            if self.ws is not None:
                self.ws.send_disconnect()
                self.ws.closed()
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
                while drained < LINGER_BYTES and time.monotonic() < deadline:
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

    def resume_reading(self) -> None:
        """Wake the reader parked by :meth:`HttpSide.may_read` (the response ended or the connection closes)."""
        resume = self.resume
        if resume is not None:
            resume.set()

    # -- writing --------------------------------------------------------------------------------

    @contextmanager
    def corked(self) -> Iterator[None]:
        """Collect the writes made inside into one :meth:`write` at the end (nested: the outermost)."""
        if self.cork is not None:
            yield
            return
        cork = self.cork = []
        try:
            yield
        finally:
            self.cork = None
            if cork:
                self.write(cork[0] if len(cork) == 1 else b"".join(cork))

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the peer without blocking the caller; close slow readers."""
        if not data or self.aborted:
            return
        if self.cork is not None:
            self.cork.append(data)
            return
        self.sidecar.stats.bytes_out += len(data)
        if self.out:
            self._queue(data)
            return
        try:
            sent: int = self.sock.send(data, 0, 0.0)  # type: ignore[call-arg]  # gevent: timeout 0.0 = never wait
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abort()
            return
        if sent < len(data):
            self._queue(memoryview(data)[sent:] if sent else data)
            if self.writer is None and self.out and not self.aborted:
                self.writer = gevent.spawn(self._flush)

    def _queue(self, chunk: _Chunk) -> None:
        """Queue bytes the kernel did not take, within this client's and the process's bounds."""
        size = len(chunk)
        self.out.append(chunk)
        self.out_bytes += size
        sidecar = self.sidecar
        sidecar.queued_bytes += size
        config = sidecar.config
        if self.out_bytes > config.max_outgoing_buffer:
            self.slow("slow_client")
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
                http = self.http
                if http is not None and http.flow is not None:
                    http.drained()  # HTTP response flow control
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

    def slow(self, reason: str) -> None:
        """Too much is queued for this client (``reason``: ``slow_client`` for its own bound,
        ``outgoing_cap`` for the process's): drop the queue and close.

        A WebSocket keeps only the rest of the frame being written (the writer may be inside
        ``send`` with it, and a cut frame would break the stream), then gets close 1013 ("try
        again later": the shipped client reconnects) and the usual close wait; anything else is
        dropped at once, as is a connection whose reader is already closing it (DONE).
        """
        stats = self.sidecar.stats
        stats.slow_closed += 1
        stats.dropped[reason] += 1
        log.info("closing %s: client too slow to read (%d bytes queued%s)", self.peer, self.out_bytes,
                 ", over the process's max_outgoing_total" if reason == "outgoing_cap" else "")
        session = self.ws.session if self.ws is not None else None
        if session is None or not session.open or self.state is DONE:
            # (DONE: the reader is closing the socket; the queue may still be flushing, and
            # the process-wide bound can pick it: drop it, there is no close handshake left.)
            if session is not None and session.close_code is None:
                session.close_code = CLOSE_TRY_AGAIN
            self.abort()
            return
        head = self.out[0] if self.out else None
        self._drop_queue()
        frame = session.close(CLOSE_TRY_AGAIN, "client too slow to read")
        for chunk in (head, frame):
            if chunk:
                self.out.append(chunk)
                self.out_bytes += len(chunk)
                self.sidecar.queued_bytes += len(chunk)
        self.closing()
        self.close_after_flush = True
        if self.writer is None:
            self.writer = gevent.spawn(self._flush)

    def abort(self) -> None:
        """Drop the socket now (dead or slow peer); the reading greenlet cleans up."""
        if self.aborted:
            return
        self.aborted = True
        self._drop_queue()
        self.resume_reading()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close_soon(self) -> None:
        """Our last bytes are queued: shut down writing once they are flushed, then wait for the
        peer to close (discarding what it still sends) until a short deadline."""
        if self.state is not DONE:
            self.closing()
            self.resume_reading()
        self.close_after_flush = True
        if not self.out:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    # -- the layer ------------------------------------------------------------------------------

    def layer_send(self, channel: str, message: Any) -> SendOutcome:
        """Send to the layer: ``"ok"``, ``"full"``, ``"too-large"``, ``"invalid"`` or ``"down"``."""
        sidecar = self.sidecar
        sender = sidecar.sender
        error: BaseException | None
        if sender.batching:  # coalesced with other connections' sends (one round trip per batch)
            error = sender.send(channel, message)
        else:
            slots = sidecar.layer_slots
            if not slots.acquire(timeout=LAYER_SLOT_TIMEOUT):
                # Every slot was busy that long: this process is congested (a reconnect storm),
                # the layer is not down (a failing send says that): waiters take the slots in
                # order, and this one is answered as if the channel were full (503, 1013).
                sidecar.stats.dropped["layer_busy"] += 1
                log.info("no free layer slot within %gs for %s: answered as busy", LAYER_SLOT_TIMEOUT, channel)
                return "full"
            try:
                sidecar.layer.send(channel, message)
                error = None
            except Exception as e:
                error = e
            finally:
                slots.release()
        return self.send_outcome(channel, error)

    def send_outcome(self, channel: str, error: BaseException | None) -> SendOutcome:
        """A send's outcome as :meth:`layer_send` reports it (counting drops and layer failures)."""
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

    # -- messages from the layer ----------------------------------------------------------------

    def deliver(self, message: Any, frames: FrameCache) -> None:
        """One message for our reply channel; ``frames`` is the sidecar's :class:`FrameCache` (the frames
        encoded for the message being delivered, and the last message dict found valid)."""
        if self.state is DONE or self.aborted:
            return
        ws = self.ws
        if ws is not None:
            ws.deliver(message, frames)
        elif self.state is HTTP_BODY and self.http is not None:
            self.http.deliver(message)

    def drain(self, code: int) -> None:
        """The sidecar is stopping: close WebSockets with ``code``, refuse pending handshakes,
        close idle keep-alive connections; in-flight HTTP requests carry on."""
        ws = self.ws
        if ws is not None and ws.session is not None:
            ws.send_close(code)
        elif self.state is CONNECTING and ws is not None:
            ws.reject(503, "draining")
        elif self.state is HEAD and self.http is not None:
            self.http.drain()

    def send_ws_close(self, code: int) -> None:
        """Close an accepted WebSocket with ``code`` (the sidecar's layer-state watch)."""
        if self.ws is not None:
            self.ws.send_close(code)

    # -- timers (called by the sidecar's sweeper) -----------------------------------------------

    def check_timers(self, now: float) -> None:
        state = self.state
        if state is OPEN:
            if self.ws is not None:
                self.ws.check_pings(now)
            return
        if now < self.deadline:
            return
        if state is CONNECTING:
            if self.ws is not None:
                self.ws.connect_timed_out()
        elif state is HEAD or state is HTTP_BODY:
            if self.http is not None:
                self.http.timed_out(now)
        elif state is CLOSING:
            self.abort()
