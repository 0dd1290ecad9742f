"""HTTP mode of a sidecar connection (``--http layer``): requests out to the layer, responses back.

A mixin of :class:`~.connection.ClientConnection`. A request whose body fits in
``http_body_inline`` travels inside its ``http.request``; a larger one is sent as
soon as that much has arrived, with a ``body_channel`` that gets the rest chunk by
chunk (held back while the application reads slowly). Response messages arriving
on the reply channel are checked (:func:`~wsgi_channels.responses.validate_response_message`)
and streamed to the client; keep-alive then starts the next request.

Flow control of responses (``docs/protocol.md``): every ``http.request`` (but HEAD) names
a ``?`` credit channel under the reserved key ``__wsc_flow``, with a window. A consumer that
knows the key (:class:`~wsgi_channels.wsgi.WsgiConsumer`) keeps at most a window of response
bytes unacknowledged and waits for credit; the sidecar sends ``{"acked": n}`` (the response's
content bytes that have left its queue for the kernel) each time half a window more has
drained. A response of up to half a window costs no credit message at all. A client that reads
nothing for ``http_timeout`` seconds is closed; a consumer that does not know the key streams
as before, bounded by ``max_outgoing_buffer``.
"""
from __future__ import annotations

import time

import gevent
import h11

from ..exceptions import InvalidMessage
from ..responses import FLOW_KEY, validate_response_message
from ..translation import InvalidRequest, build_request_message
from ._connbase import _LAYER_RETRY_SECONDS, DONE, HTTP_BODY, log
from .http import header_value, request_info, simple_body

__all__ = ["HttpModeMixin", "flow_window"]

_FRAMING = (b"content-length", b"transfer-encoding")
#: Credit channels: this prefix plus the random suffix of the request's reply channel.
_CREDIT_PREFIX = "http.response.credit?"
#: The largest flow-control window (bytes a consumer may have sent and not had acknowledged).
MAX_FLOW_WINDOW = 1024 * 1024


def flow_window(max_outgoing_buffer: int) -> int:
    """The window offered to consumers: at most half the per-client outgoing buffer, so a
    consumer that keeps to it never makes a reading client look too slow (and 1 MiB at most)."""
    return max(16 * 1024, min(MAX_FLOW_WINDOW, max_outgoing_buffer // 2))


class HttpModeMixin:
    """The HTTP-mode methods of :class:`~.connection.ClientConnection` (state lives there)."""

    __slots__ = ()

    def _start_http_request(self, request: h11.Request, headers: list, target: bytes) -> None:
        sidecar = self.sidecar
        config = sidecar.config
        if sidecar.draining or not sidecar.layer_ok:
            self._respond(503, simple_body(503, "draining" if sidecar.draining else "channel layer unavailable"),
                          close=True)
            return
        length = header_value(headers, b"content-length")
        if config.max_request_body and length is not None and length.isdigit() \
                and int(length) > config.max_request_body:
            self._respond(413, simple_body(413), close=True)
            return
        self.state = HTTP_BODY
        self.request_started = True
        self.reply_channel = sidecar.route(self)
        self.deadline = time.monotonic() + config.http_timeout
        info = request_info(headers, self.peer, self.local, config.proxy_headers)
        try:
            self.path = target.split(b"?", 1)[0].decode("latin-1")
            message = build_request_message(
                reply_channel=self.reply_channel, method=request.method, target=target, headers=headers,
                http_version=request.http_version.decode("ascii"), scheme=info.scheme, client=info.client,
                server=info.server, root_path=config.root_path, parsed=True)
        except (InvalidRequest, InvalidMessage) as e:
            self._respond(400, simple_body(400, str(e)), close=True)
            return
        self.path = message["path"]
        if request.method != b"HEAD":
            window = flow_window(config.max_outgoing_buffer)
            # The reply channel's random suffix names the credit channel too: unique per
            # request, known only to whoever has the reply channel, and no token to draw.
            channel = _CREDIT_PREFIX + self.reply_channel.rpartition("!")[2]
            self.flow = (channel, window)
            message[FLOW_KEY] = {"channel": channel, "window": window,  # type: ignore[literal-required]
                                 "timeout": config.http_timeout}
        self.body_buffer = [message]  # the request itself waits here until the body is known
        self.write(self.http.continue_if_expected())
        self.body_size = 0

    def _on_body(self, data: bytes) -> None:
        if self.state is not HTTP_BODY or not data:
            return
        config = self.sidecar.config
        self.body_size += len(data)
        if config.max_request_body and self.body_size > config.max_request_body:
            if self.request_sent:
                self._body_chunk(b"", closed=True)
                self.abort()
            else:
                self._respond(413, simple_body(413), close=True)
            return
        if self.request_sent:
            self._body_chunk(data, more=True)
            return
        self.body_buffer.append(data)
        if self.body_size > config.http_body_inline:
            # Too big to travel inline: send the request now with what we have, stream the rest.
            message = self.body_buffer[0]
            message["body"] = b"".join(self.body_buffer[1:])
            message["body_channel"] = self.sidecar.layer.new_channel("http.request.body?")
            self.body_channel = message["body_channel"]
            self.body_buffer = []
            self._send_request(message)

    def _on_body_end(self) -> None:
        if self.state is not HTTP_BODY:
            return
        if self.request_sent:
            self._body_chunk(b"", more=False)
        else:
            message = self.body_buffer[0]
            message["body"] = b"".join(self.body_buffer[1:])
            self.body_buffer = []
            self._send_request(message)

    def _send_request(self, message: dict) -> None:
        reply_channel = self.reply_channel
        sender = self.sidecar.sender
        if sender.batching and message["body_channel"] is None:
            # The request's only message: nothing else of it follows, so this greenlet goes back
            # to reading at once, and the flusher answers 503/413 if the send fails.
            self.request_sent = True
            sender.send_nowait("http.request", message, lambda error: self._after_request_send(
                reply_channel, self._send_outcome("http.request", error)))
            return
        self._after_request_send(reply_channel, self._layer_send("http.request", message))

    def _after_request_send(self, reply_channel: str | None, result: str) -> None:
        """Given the outcome of a request's send: answer 503 or 413 unless it is ``"ok"``."""
        if self.reply_channel is not reply_channel or self.response_started or self.state is DONE:
            # The whole response arrived (and keep-alive moved on) before the send's outcome
            # was known: this request is done, and nothing here is its state.
            return
        if result == "ok":
            self.request_sent = True
            return
        self.request_sent = False
        status = {"too-large": 413, "invalid": 400}.get(result, 503)
        self._respond(status, simple_body(status, {"full": "too many requests waiting",
                                                   "down": "channel layer unavailable",
                                                   "invalid": "the request cannot be passed on"}.get(result, "")),
                      close=True)

    def _body_chunk(self, content: bytes, more: bool = False, closed: bool = False) -> None:
        if self.body_channel is None:
            return
        chunk = {"content": content, "more_content": more, "closed": closed}
        deadline = time.monotonic() + self.sidecar.config.http_timeout
        while True:
            result = self._layer_send(self.body_channel, chunk)
            if result != "full" or time.monotonic() > deadline or self.aborted:
                break
            gevent.sleep(_LAYER_RETRY_SECONDS)  # the app reads slowly: hold the client back
        if result != "ok" and not closed:
            log.warning("request body chunk for %s not delivered (%s); closing", self.path, result)
            self.abort()

    def _deliver_http(self, message: dict) -> None:
        if type(message) is dict and message.get("abort") is True:
            # The worker gave the response up (time limit): the client must see it cut, not complete.
            log.warning("response for %s %s aborted by the worker", self.request_line, self.reply_channel)
            self.abort()
            return
        first = not self.response_started
        try:
            validate_response_message(message, first=first)
        except Exception as e:
            log.error("bad http.response for %s %s: %s", self.request_line, self.reply_channel, e)
            if first:
                self.response_started = True
                self._respond(502, simple_body(502, "the application sent an invalid response"), close=True)
            else:
                self.abort()
            return
        more = message.get("more_content", False)
        content = message.get("content", b"")
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
            data = self.http.start_response(self.status, headers, close=self.sidecar.draining, from_app=True)
        else:
            data = b""
        data += self.http.send_data(content)
        self.resp_bytes += len(content)
        self.deadline = time.monotonic() + self.sidecar.config.http_timeout
        if more:
            self.write(data)
            if self.flow is not None:
                self._grant_credit()
            return
        self.flow = None  # the response is complete: no consumer waits for credit any more
        self.write(data + self.http.end_response())
        self._count_response(self.status, self.resp_bytes)
        if self.http.keep_alive and not self.sidecar.draining:
            parked = self.resume is not None  # the reader waits (PIPELINE_LIMIT) and goes on itself
            self._next_request()
            if not parked and not self.http.nothing_to_parse:
                event = self.http.next_event()
                if event is not h11.NEED_DATA:
                    gevent.spawn(self._pump_http, event)  # a pipelined request was waiting
        else:
            self._close_soon()

    # -- response flow control ------------------------------------------------------------------

    def _drained(self) -> None:
        """Some of a flow-controlled response left the outgoing queue for the kernel: the
        client is reading. That is progress (the stall deadline starts again) and maybe credit."""
        if self.state is HTTP_BODY and self.response_started:
            self.deadline = time.monotonic() + self.sidecar.config.http_timeout
            self._grant_credit()

    def _grant_credit(self) -> None:
        """Tell the consumer how much of its response has drained, once half a window more has."""
        flow = self.flow
        if flow is None or self.aborted:
            return
        # Content bytes that have left the queue; the queue also holds chunk framing, so this
        # errs low until the queue is empty, when it is exact.
        acked = self.resp_bytes - self.out_bytes
        if acked - self.granted < flow[1] // 2:
            return
        self.granted = acked
        message = {"acked": acked}
        sender = self.sidecar.sender
        if sender.batching:
            sender.send_nowait(flow[0], message, self._credit_failed)
            return
        try:  # never waits: the caller is the layer's receive loop or the socket's writer
            self.sidecar.layer.send(flow[0], message)
        except Exception as e:
            self._credit_failed(e)

    def _credit_failed(self, error: BaseException) -> None:
        # A later grant carries the total again; without one the consumer gives up after the
        # timeout it was given and the stall deadline closes the connection.
        log.warning("response credit for %s not delivered (%s: %s)", self.request_line, type(error).__name__, error)
