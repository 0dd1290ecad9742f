"""The WebSocket part of a sidecar connection: the held handshake, frames to the layer and back.

The upgrade request is checked (version, key, Origin, then a connect token may admit it:
:func:`~wsgi_channels.tokens.admit_handshake` right after
:func:`~wsgi_channels.protocol.origin.check_origin`) before anything reaches the layer;
``websocket.connect`` is sent and the ``101`` waits for the consumer's answer. Frames become
``websocket.receive`` messages with their ``order``; messages for the socket are checked
(:func:`~wsgi_channels.protocol.responses.validate_websocket_send`) and written, the frame of a
group message encoded once for every socket with the same compression.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import gevent
import h11

from .. import tokens
from ..protocol import websocket as ws_proto
from ..protocol.close_codes import CLOSE_ABNORMAL, CLOSE_NORMAL, CLOSE_TOO_BIG, CLOSE_TRY_AGAIN
from ..protocol.http import connect_message, request_info, simple_body
from ..protocol.messages import websocket_disconnect, websocket_receive
from ..protocol.origin import check_origin
from ..protocol.responses import validate_websocket_send
from ..protocol.translation import InvalidRequest
from ..layers.features import NOTICE_KEY, PRESENCE_KEY, STAMP_KEY
from .common import LAYER_RETRY_SECONDS, TURN, TURN_FRAMES, access_log, addr, let_others_run
from .resume import CONTROL_MARK, Follower, Options, control, has_reserved, split_options, strip_stamp
from .state import State

if TYPE_CHECKING:  # pragma: no cover
    from .connection import ClientConnection

__all__ = ["WebSocketSide", "FrameCache", "send_connect"]

log = logging.getLogger(__name__)

CONNECTING, OPEN = State.CONNECTING, State.OPEN

#: Seconds a websocket.disconnect is retried while its channel is full.
_DISCONNECT_RETRY = 2.0
#: Seconds between a waiting handshake's tries of a full websocket.connect channel: first, most.
_CONNECT_RETRY_FIRST = 0.01
_CONNECT_RETRY_MAX = 0.25


def send_connect(conn: "ClientConnection", message: Any) -> str:
    """Send a handshake's ``websocket.connect``; :meth:`ClientConnection.layer_send`'s outcome, or
    ``"answered"`` when the handshake was refused while it waited (its deadline, draining).

    A full ``websocket.connect`` channel (the consumers are behind: a reconnect storm) is not
    answered 503 at once: the handshake queues, in order, behind the others that found it full
    (``Sidecar.connect_gate``), and only the first in line tries again, backing off, so waiting
    handshakes cost the layer one send per try, not one each. It is answered 503 only when its
    ``connect_timeout`` passes first, as a handshake the consumer did not answer would be.
    """
    gate = conn.sidecar.connect_gate
    if not gate.locked():
        result = conn.layer_send("websocket.connect", message)
        if result != "full":
            return result
    if not gate.acquire(timeout=max(0.0, conn.deadline - time.monotonic())):
        return "answered" if conn.state is not CONNECTING else "full"
    try:
        delay = _CONNECT_RETRY_FIRST
        while True:
            if conn.state is not CONNECTING or conn.aborted:
                return "answered"
            result = conn.layer_send("websocket.connect", message)
            if result != "full" or time.monotonic() + delay > conn.deadline:
                return result
            gevent.sleep(delay)
            delay = min(delay * 2, _CONNECT_RETRY_MAX)
    finally:
        gate.release()


class FrameCache(dict[Any, bytes]):
    """The sidecar's encoded frames of the message being delivered, by (compression window, payload)
    (and its position frame, by (compression window, position)).

    The members of one group message arrive one after another sharing one message dict:
    ``checked`` is the last dict found valid, so it is checked once, not once per socket.
    """

    __slots__ = ("checked", "stripped", "limit")

    def __init__(self, limit: int = 8) -> None:
        super().__init__()
        #: Entries kept before it is cleared: a few for a broadcast; many for resumes' replays
        #: (:attr:`Sidecar.replay_frames`: the clients of a reconnect storm replay the same messages).
        self.limit = limit
        self.checked: object = None
        #: ``(message, its copy without __wsc_h)`` of the last history message delivered.
        self.stripped: tuple[object, Any] = (None, None)


class WebSocketSide:
    """The WebSocket part of one :class:`~.connection.ClientConnection`, from the moment its
    ``websocket.connect`` goes to the layer (``session`` is set once the socket is accepted)."""

    __slots__ = ("conn", "upgrade", "session", "order", "connect_sent", "disconnect_sent", "ping_sent", "follower")

    def __init__(self, conn: "ClientConnection", upgrade: ws_proto.Upgrade, options: Options | None = None) -> None:
        self.conn = conn
        #: History and presence state: from the handshake when the client opted in, else made by
        #: the first membership notice (presence entries are kept for every socket).
        self.follower: Follower | None = Follower(self, options) if options is not None and options.opted_in \
            else None
        self.upgrade: ws_proto.Upgrade | None = upgrade  # until accepted
        self.session: ws_proto.WebSocketSession | None = None  # once accepted
        self.order = 0  # of the last websocket.receive sent
        self.connect_sent = False
        self.disconnect_sent = False
        self.ping_sent = 0.0

    # -- the handshake --------------------------------------------------------------------------

    @classmethod
    def handshake(cls, conn: "ClientConnection", request: h11.Request, headers: list[tuple[bytes, bytes]],
                  target: bytes) -> None:
        """An upgrade request (state HEAD): answer it now (400/426/403/503), or send
        ``websocket.connect`` and hold it (CONNECTING) as the connection's WebSocket part."""
        http = conn.http
        assert http is not None  # the request was parsed there
        sidecar = conn.sidecar
        config = sidecar.config
        stats = sidecar.stats
        upgrade = ws_proto.check_upgrade(request.method, request.http_version, headers)
        if not isinstance(upgrade, str) and not isinstance(http.parser.next_event(), h11.EndOfMessage):
            upgrade = "a WebSocket handshake request cannot have a body"
        if isinstance(upgrade, str):
            stats.handshakes["bad_request"] += 1
            status = 426 if "Version" in upgrade else 400
            http.respond(status, simple_body(status, upgrade),
                         headers=[(b"sec-websocket-version", b"13")] if status == 426 else (), close=True)
            return
        info = request_info(headers, conn.peer, conn.local, config.proxy_headers)
        refusal = check_origin(headers, info.scheme, info.host, config.allowed_origins)
        admission = tokens.admit_handshake(target, headers, refusal, config.token_secret)  # a token may allow it
        if admission.target != target:  # the token never reaches the access log
            conn.request_line = f"{request.method.decode('latin-1')} {admission.target[:200].decode('latin-1')}"
        if admission.refusal is not None:
            stats.handshakes[admission.outcome] += 1
            log.info("WebSocket from %s refused: %s", addr(conn.peer), admission.refusal)
            http.respond(403, simple_body(403, admission.refusal), close=True)
            return
        target = admission.target  # without the token (nor does it reach a consumer)
        try:
            stripped, options = split_options(target)
        except ValueError as e:
            stats.handshakes["bad_request"] += 1
            log.info("WebSocket from %s refused: %s", addr(conn.peer), e)
            http.respond(400, simple_body(400, str(e)), close=True)
            return
        if stripped != target:  # _wsc* parameters reach no log line and no consumer
            target = stripped
            conn.request_line = f"{request.method.decode('latin-1')} {target[:200].decode('latin-1')}"
        if sidecar.draining or not sidecar.layer_ok:
            stats.handshakes["unavailable"] += 1
            http.respond(503, simple_body(503, "draining" if sidecar.draining else "channel layer unavailable"),
                         close=True)
            return
        reply_channel = conn.reply_channel = sidecar.route(conn)
        try:
            message = connect_message(reply_channel=reply_channel, target=target, headers=headers, info=info,
                                      root_path=config.root_path, subprotocols=upgrade.subprotocols)
        except InvalidRequest as e:
            stats.handshakes["bad_request"] += 1
            http.respond(400, simple_body(400, str(e)), close=True)
            return
        if admission.claims is not None:
            message[tokens.CLAIMS_KEY] = admission.claims  # type: ignore[literal-required]
        conn.path = message["path"]
        ws = conn.ws = cls(conn, upgrade, options)
        conn.set_state(CONNECTING)
        conn.held = 0
        conn.deadline = time.monotonic() + config.connect_timeout
        result = send_connect(conn, message)
        if result == "answered":
            return  # refused while it waited (connect timeout, draining)
        if result == "ok":
            ws.connect_sent = True
        elif result == "invalid":
            # The layer refused the message itself (logged by send_outcome): this request's
            # problem, answered as a bad request; the layer is not down.
            stats.handshakes["bad_request"] += 1
            http.respond(400, simple_body(400, "the handshake cannot be passed on"), close=True)
        else:
            stats.handshakes["connect_full" if result == "full" else "unavailable"] += 1
            http.respond(503, simple_body(503, "server busy" if result == "full" else "channel layer unavailable"),
                         close=True)

    def accept(self, subprotocol: str | None) -> None:
        """The consumer accepted (or the connect timeout accepts): send the 101, open the session."""
        conn = self.conn
        upgrade, http = self.upgrade, conn.http
        assert upgrade is not None and http is not None  # CONNECTING
        if subprotocol is not None and subprotocol not in upgrade.subprotocols:
            log.error("consumer chose subprotocol %r that %s did not offer (%r); accepting without it",
                      subprotocol, conn.reply_channel, upgrade.subprotocols)
            subprotocol = None
        config = conn.sidecar.config
        headers, extensions = ws_proto.accept_headers(upgrade, subprotocol, config.compression)
        data, trailing = http.parser.switch_protocols(headers)
        self.session = ws_proto.WebSocketSession(extensions, max_message_size=config.max_message_size,
                                                 control_rate=config.control_frame_rate)
        # The HTTP parser and the upgrade request are done with: free them (thousands of idle sockets).
        conn.http = None
        self.upgrade = None
        conn.set_state(OPEN)
        conn.last_active = time.monotonic()
        conn.write(data)
        stats = conn.sidecar.stats
        stats.handshakes["accepted"] += 1
        stats.websockets_open += 1
        stats.http_open -= 1  # counted as HTTP until the upgrade
        access_log.info("%s WSCONNECT %s", addr(conn.peer), conn.path)
        if self.follower is not None:
            self.follower.accepted()
        if trailing:
            gevent.spawn(self.on_data, trailing)  # frames sent before our 101: handle them on a reader

    def reject(self, status: int, outcome: str) -> None:
        """Refuse the held handshake with ``status`` (403: the consumer said no; 503: no answer, draining)."""
        conn = self.conn
        conn.sidecar.stats.handshakes[outcome] += 1
        if conn.http is not None:
            conn.http.respond(status, simple_body(status), close=True)

    def connect_timed_out(self) -> None:
        """No answer from the connect consumer within ``connect_timeout``."""
        conn = self.conn
        if conn.sidecar.config.connect_timeout_accept:
            conn.sidecar.stats.handshakes["timeout_accepted"] += 1
            self.accept(None)
        else:
            self.reject(503, "connect_timeout")

    # -- frames from the client -----------------------------------------------------------------

    def on_data(self, data: bytes) -> None:
        """Frames from the client: hand each finished message to the layer, a turn's worth of
        frames at a time (other connections run between turns)."""
        conn = self.conn
        ws = self.session
        assert ws is not None
        ws.feed(data)
        flooded = ws.flooded
        while True:
            out, messages = ws.process(TURN_FRAMES)
            if out:
                conn.write(out)
            if messages:
                self._receive_messages(ws, messages)
            if ws.flooded and not flooded:
                flooded = True
                conn.sidecar.stats.dropped["control_flood"] += 1
                log.info("closing %s: more than %g control frames or small fragments a second",
                         addr(conn.peer), ws.control_rate)
            if not ws.more or conn.aborted:
                break
            conn.credit = TURN
            let_others_run()
        if ws.closed:
            conn.close_soon()
        elif not ws.open and conn.state is OPEN:
            conn.closing()

    def _receive_messages(self, ws: ws_proto.WebSocketSession, messages: list[str | bytes]) -> None:
        conn = self.conn
        stats = conn.sidecar.stats
        reply_channel = conn.reply_channel or ""
        for payload in messages:
            stats.frames_in += 1
            if not ws.open:
                break
            self.order += 1
            result = conn.layer_send("websocket.receive",
                                     websocket_receive(reply_channel, conn.path, payload, self.order))
            if result == "ok":
                continue
            self.order -= 1
            if result == "full":
                conn.write(ws.close(CLOSE_TRY_AGAIN, "server busy"))
            elif result == "too-large":
                conn.write(ws.close(CLOSE_TOO_BIG, "message too big"))
            elif result == "invalid":
                stats.dropped["invalid"] += 1  # that message's problem (logged): the socket goes on
            else:
                stats.dropped["layer_down"] += 1  # the socket stays up through a layer outage

    def send_close(self, code: int) -> None:
        """Start the close handshake with ``code`` (an accepted socket only)."""
        ws = self.session
        if ws is not None:
            conn = self.conn
            conn.write(ws.close(code))
            if conn.state is OPEN:
                conn.closing()

    def check_pings(self, now: float) -> None:
        """OPEN: ping an idle client; close one that did not answer within ``ping_timeout``."""
        ws = self.session
        if ws is None:
            return
        conn = self.conn
        config = conn.sidecar.config
        if ws.awaiting_pong:
            if now - self.ping_sent > config.ping_timeout:
                conn.sidecar.stats.dead_closed += 1
                log.info("closing %s: no pong within %.1fs", conn.reply_channel, config.ping_timeout)
                ws.close_code = CLOSE_ABNORMAL
                conn.abort()
        elif config.ping_interval and now - conn.last_active > config.ping_interval:
            self.ping_sent = now
            conn.write(ws.ping())
        if self.follower is not None:
            self.follower.check(now)

    def send_disconnect(self) -> None:
        """The connection is done: send its one ``websocket.disconnect`` (if it sent a connect)."""
        if not self.connect_sent or self.disconnect_sent:
            return
        self.disconnect_sent = True
        conn = self.conn
        code = CLOSE_ABNORMAL
        if self.session is not None and self.session.close_code is not None:
            code = self.session.close_code
        conn.sidecar.stats.closes[code] += 1
        message = websocket_disconnect(conn.reply_channel or "", conn.path, code, self.order + 1)
        deadline = time.monotonic() + _DISCONNECT_RETRY
        while True:
            result = conn.layer_send("websocket.disconnect", message)
            if result != "full" or time.monotonic() > deadline:
                break
            gevent.sleep(LAYER_RETRY_SECONDS)
        if result != "ok":
            log.warning("websocket.disconnect for %s not delivered (%s)", conn.reply_channel, result)
        access_log.info("%s WSDISCONNECT %s %d", addr(conn.peer), conn.path, code)

    def closed(self) -> None:
        """The socket is gone: its presence entries are removed (the sidecar owns them)."""
        follower = self.follower
        if follower is not None:
            self.conn.sidecar.presence.closed(follower)

    # -- messages from the layer ----------------------------------------------------------------

    def deliver(self, message: Any, frames: FrameCache) -> None:
        """A message for a WebSocket (pending or open): accept/reject, a frame, a close."""
        position = None
        if has_reserved(message):
            follower = self.follower
            if NOTICE_KEY in message or PRESENCE_KEY in message:
                if follower is None and NOTICE_KEY in message:
                    follower = self.follower = Follower(self, Options())
                if follower is not None:
                    if NOTICE_KEY in message:
                        follower.notice(message[NOTICE_KEY])
                    else:
                        follower.presence_change(message[PRESENCE_KEY])
                return
            original = message
            if frames.stripped[0] is original:
                message = frames.stripped[1]
            else:
                message = strip_stamp(original)
                frames.stripped = (original, message)
            if follower is not None and follower.opted_in:
                deliver, position = follower.stamped(message, original[STAMP_KEY])
                if not deliver:
                    if self.conn.state is CONNECTING and message.get("accept") is not False \
                            and not message.get("close"):
                        self._deliver({"accept": True, "subprotocol": message.get("subprotocol")}, FrameCache())
                    return  # a frame accepts the handshake, as ever, even when it is held
        self._deliver(message, frames, position)

    def _deliver(self, message: Any, frames: FrameCache, position: tuple[str, str, int] | None = None) -> None:
        conn = self.conn
        if frames.checked is not message:
            try:
                validate_websocket_send(message)
            except Exception as e:
                log.error("bad message for WebSocket %s: %s", conn.reply_channel, e)
                return
            frames.checked = message
        text, data, close = message.get("text"), message.get("bytes"), message.get("close")
        if conn.state is CONNECTING:
            if close or message.get("accept") is False:
                self.reject(403, "rejected")
                return
            self.accept(message.get("subprotocol"))
        ws = self.session
        if ws is None or not ws.open:
            return
        if text is not None or data is not None:
            payload = text if text is not None else data
            hframe = b""
            if self.follower is not None and self.follower.opted_in:
                if position is not None:  # one encoding per broadcast, as for the message's frame
                    hkey = (ws.deflate_bits, position)
                    cached = frames.get(hkey)
                    if cached is not None:
                        hframe = cached
                    else:
                        if len(frames) >= frames.limit:
                            frames.clear()
                        hframe = frames[hkey] = ws_proto.message_frame(
                            control({"t": "h", "g": position[0], "e": position[1], "o": position[2]}),
                            ws.deflate_bits)
                if text is not None and text.startswith(CONTROL_MARK):
                    payload = CONTROL_MARK + text
            key = (ws.deflate_bits, payload)
            frame = frames.get(key)
            if frame is None:
                if len(frames) >= frames.limit:
                    frames.clear()  # a few entries: the payload being broadcast right now (and its
                    # position frame, escaped form), per window size
                frame = frames[key] = ws_proto.message_frame(payload, ws.deflate_bits)
            conn.write(hframe + frame if hframe else frame)  # the position and its message: one send
            conn.sidecar.stats.frames_out += 1
        if close:
            self.send_close(CLOSE_NORMAL if close is True else close)

    # -- control frames (resume, presence: see .resume) -----------------------------------------

    def write_control(self, body: dict[str, Any]) -> None:
        """One control frame for an opted-in client."""
        ws = self.session
        if ws is not None and ws.open:
            self.conn.write(ws_proto.message_frame(control(body), ws.deflate_bits))

    def write_message(self, message: Any, position: tuple[str, str, int]) -> None:
        """A history message (from the history, or held during a resume) with its position; the
        frames are shared by every socket replaying the same messages (``Sidecar.replay_frames``)."""
        self._deliver(message, self.conn.sidecar.replay_frames, position)
