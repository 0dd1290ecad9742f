"""The WebSocket side of a sidecar connection: the held handshake, frames to the layer and back.

A mixin of :class:`~.connection.ClientConnection`. The upgrade request is checked
(version, key, Origin) before anything reaches the layer; ``websocket.connect`` is
sent and the ``101`` waits for the consumer's answer. Frames become
``websocket.receive`` messages with their ``order``; messages for the socket are
checked (:func:`~wsgi_channels.responses.validate_websocket_send`) and written,
the frame of a group message encoded once for every socket with the same compression.
"""
from __future__ import annotations

import time

import gevent
import h11

from .. import tokens
from ..responses import validate_websocket_send
from ..translation import InvalidRequest
from . import websocket as ws_proto
from ._connbase import (_CLOSE_WAIT, _TURN, _TURN_FRAMES, CLOSING, CONNECTING, OPEN, access_log, addr,
                        let_others_run, log)
from .http import connect_message, request_info, simple_body

__all__ = ["WebSocketMixin", "FrameCache"]


class FrameCache(dict):
    """The sidecar's encoded frames of the message being delivered, by (compression window, payload).

    The members of one group message arrive one after another sharing one message dict:
    ``checked`` is the last dict found valid, so it is checked once, not once per socket.
    """

    __slots__ = ("checked",)

    def __init__(self) -> None:
        super().__init__()
        self.checked: object = None


class WebSocketMixin:
    """The WebSocket methods of :class:`~.connection.ClientConnection` (state lives there)."""

    __slots__ = ()

    # -- WebSocket handshake --------------------------------------------------------------------

    def _on_upgrade(self, request: h11.Request, headers: list, target: bytes) -> None:
        sidecar = self.sidecar
        config = sidecar.config
        stats = sidecar.stats
        upgrade = ws_proto.check_upgrade(request.method, request.http_version, headers)
        if not isinstance(upgrade, str) and not isinstance(self.http.next_event(), h11.EndOfMessage):
            upgrade = "a WebSocket handshake request cannot have a body"
        if isinstance(upgrade, str):
            stats.handshakes["bad_request"] += 1
            status = 426 if "Version" in upgrade else 400
            self._respond(status, simple_body(status, upgrade),
                          headers=[(b"sec-websocket-version", b"13")] if status == 426 else (), close=True)
            return
        info = request_info(headers, self.peer, self.local, config.proxy_headers)
        refusal = ws_proto.check_origin(headers, info.scheme, info.host, config.allowed_origins)
        admission = tokens.admit_handshake(target, headers, refusal, config.token_secret)  # a token may allow it
        if admission.target != target:  # the token never reaches the access log
            self.request_line = f"{request.method.decode('latin-1')} {admission.target[:200].decode('latin-1')}"
        if admission.refusal is not None:
            stats.handshakes[admission.outcome] += 1
            log.info("WebSocket from %s refused: %s", addr(self.peer), admission.refusal)
            self._respond(403, simple_body(403, admission.refusal), close=True)
            return
        target = admission.target  # without the token (nor does it reach a consumer)
        if sidecar.draining or not sidecar.layer_ok:
            stats.handshakes["unavailable"] += 1
            self._respond(503, simple_body(503, "draining" if sidecar.draining else "channel layer unavailable"),
                          close=True)
            return
        self.upgrade = upgrade
        self.reply_channel = sidecar.route(self)
        try:
            message = connect_message(reply_channel=self.reply_channel, target=target, headers=headers, info=info,
                                      root_path=config.root_path, subprotocols=upgrade.subprotocols)
        except InvalidRequest as e:
            stats.handshakes["bad_request"] += 1
            self._respond(400, simple_body(400, str(e)), close=True)
            return
        if admission.claims is not None:
            message[tokens.CLAIMS_KEY] = admission.claims
        self.path = message["path"]
        self.state = CONNECTING
        self.deadline = time.monotonic() + config.connect_timeout
        result = self._layer_send("websocket.connect", message)
        if result != "ok":
            stats.handshakes["connect_full" if result == "full" else "unavailable"] += 1
            self._respond(503, simple_body(503, "server busy" if result == "full" else "channel layer unavailable"),
                          close=True)
            return
        self.connect_sent = True

    def _accept(self, subprotocol: str | None) -> None:
        assert self.upgrade is not None
        if subprotocol is not None and subprotocol not in self.upgrade.subprotocols:
            log.error("consumer chose subprotocol %r that %s did not offer (%r); accepting without it",
                      subprotocol, self.reply_channel, self.upgrade.subprotocols)
            subprotocol = None
        headers, extensions = ws_proto.accept_headers(self.upgrade, subprotocol, self.sidecar.config.compression)
        data, trailing = self.http.switch_protocols(headers)
        config = self.sidecar.config
        self.ws = ws_proto.WebSocketSession(extensions, max_message_size=config.max_message_size,
                                            control_rate=config.control_frame_rate)
        # The HTTP parser and the upgrade request are done with: free them (thousands of idle sockets).
        self.http = None  # type: ignore[assignment]
        self.upgrade = None
        self.state = OPEN
        self.last_active = time.monotonic()
        self.write(data)
        stats = self.sidecar.stats
        stats.handshakes["accepted"] += 1
        stats.websockets_open += 1
        stats.http_open -= 1  # counted as HTTP until the upgrade
        access_log.info("%s WSCONNECT %s", addr(self.peer), self.path)
        if trailing:
            gevent.spawn(self._on_ws_data, trailing)  # frames sent before our 101: handle them on a reader

    def _reject(self, status: int, outcome: str) -> None:
        self.sidecar.stats.handshakes[outcome] += 1
        self._respond(status, simple_body(status), close=True)

    # -- WebSocket frames -----------------------------------------------------------------------

    def _on_ws_data(self, data: bytes) -> None:
        """Frames from the client: hand each finished message to the layer, a turn's worth of
        frames at a time (other connections run between turns)."""
        ws = self.ws
        assert ws is not None
        ws.feed(data)
        flooded = ws.flooded
        while True:
            out, messages = ws.process(_TURN_FRAMES)
            if out:
                self.write(out)
            if messages:
                self._receive_messages(ws, messages)
            if ws.flooded and not flooded:
                flooded = True
                self.sidecar.stats.dropped["control_flood"] += 1
                log.info("closing %s: more than %g control frames or small fragments a second",
                         addr(self.peer), ws.control_rate)
            if not ws.more or self.aborted:
                break
            self.credit = _TURN
            let_others_run()
        if ws.closed:
            self._close_soon()
        elif not ws.open and self.state is OPEN:
            self.state = CLOSING
            self.deadline = time.monotonic() + _CLOSE_WAIT

    def _receive_messages(self, ws: ws_proto.WebSocketSession, messages: list) -> None:
        stats = self.sidecar.stats
        for payload in messages:
            stats.frames_in += 1
            if not ws.open:
                break
            self.order += 1
            key = "text" if isinstance(payload, str) else "bytes"
            result = self._layer_send("websocket.receive", {"reply_channel": self.reply_channel,
                                                            "path": self.path, key: payload,
                                                            "order": self.order})
            if result == "ok":
                continue
            self.order -= 1
            if result == "full":
                self.write(ws.close(ws_proto.CLOSE_TRY_AGAIN, "server busy"))
            elif result == "too-large":
                self.write(ws.close(ws_proto.CLOSE_TOO_BIG, "message too big"))
            else:
                stats.dropped["layer_down"] += 1  # the socket stays up through a layer outage

    def send_ws_close(self, code: int) -> None:
        ws = self.ws
        if ws is not None:
            self.write(ws.close(code))
            if self.state is OPEN:
                self.state = CLOSING
                self.deadline = time.monotonic() + _CLOSE_WAIT

    # -- messages from the layer ----------------------------------------------------------------

    def _deliver_ws(self, message: dict, frames: FrameCache) -> None:
        """A message for a WebSocket (pending or open): accept/reject, a frame, a close."""
        if frames.checked is not message:
            try:
                validate_websocket_send(message)
            except Exception as e:
                log.error("bad message for WebSocket %s: %s", self.reply_channel, e)
                return
            frames.checked = message
        text, data, close = message.get("text"), message.get("bytes"), message.get("close")
        if self.state is CONNECTING:
            if close or message.get("accept") is False:
                self._reject(403, "rejected")
                return
            self._accept(message.get("subprotocol"))
        ws = self.ws
        if ws is None or not ws.open:
            return
        stats = self.sidecar.stats
        if text is not None or data is not None:
            payload = text if text is not None else data
            key = (ws.deflate_bits, payload)
            frame = frames.get(key)
            if frame is None:
                if len(frames) > 3:
                    frames.clear()  # a few entries: the payload being broadcast right now, per window size
                frame = frames[key] = ws_proto.message_frame(payload, ws.deflate_bits)
            self.write(frame)
            stats.frames_out += 1
        if close:
            self.send_ws_close(ws_proto.CLOSE_NORMAL if close is True else close)

