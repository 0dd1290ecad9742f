"""``WsgiConsumer(app)``: any PEP 3333 application as the consumer of ``http.request``.

The consumer builds an environ from the message, streams the request body
(``body`` then the chunks on ``body_channel``) into ``wsgi.input`` as the app
reads it, runs the app, and streams the response back to ``reply_channel`` in
messages of at most ``chunk_size`` bytes as the app produces it.

Outcomes a client sees:

- a body over ``max_body_size`` (declared or streamed): 413;
- a body that stops arriving for ``body_timeout`` seconds: 408;
- the app raises before the response starts: 500 with a generic page; the
  traceback goes to the log, never to the client; after the response started,
  the response is aborted (``{"abort": True}``: the sidecar closes the client's
  connection at once, so a truncated body is never mistaken for a complete one);
- the reply channel stays full for ``send_timeout`` seconds: the response is
  abandoned and the app's iterable closed, so a dead client cannot hold a worker;
- when the server offers flow control (the sidecar does: ``__wsc_flow`` in the
  request, see ``docs/protocol.md``), at most a window of the response is sent
  ahead of what the client has read; the consumer waits for credit, and abandons
  the response when none comes for the timeout the server named (the client
  stopped reading). A slow client then gets its whole response, slowly.

The app's iterable is always closed (``close()``), as PEP 3333 requires.
"""
from __future__ import annotations

import io
import logging
import sys
import time
from typing import Any, Callable, Iterable, List, Optional

from wsgi_channels.protocol.messages import http_response_abort

from .consumer import DEFAULT_SEND_TIMEOUT, given_up, hand_over_last, send_with_retry
from ..exceptions import ChannelsError, InvalidMessage, LayerUnavailable
from .message import Message
from ..protocol.responses import (DEFAULT_CHUNK_SIZE, ResponseEncoder, ResponseFlow, encode_response_headers, parse_status,
                        response_flow)
from ..protocol.translation import request_message_to_environ, validate_body_chunk, validate_request_message

__all__ = ["WsgiConsumer", "FileWrapper", "BodyStream", "RequestBodyError", "DEFAULT_MAX_BODY_SIZE"]

log = logging.getLogger(__name__)

#: Default request body limit (bytes).
DEFAULT_MAX_BODY_SIZE = 10 * 1024 * 1024
_TEXT = [[b"content-type", b"text/plain; charset=utf-8"]]
#: Largest last message handed to a worker's batched sender: far below the default message
#: size limit, so it cannot fail there for being too large (larger ones are sent at once,
#: where a failure still reaches the app's error handling).
_HAND_OVER_MAX = 64 * 1024
#: Most seconds a consumer waits for credit beyond the timeout the server named (it waits
#: twice that timeout when shorter), so that the server's own deadline, which closes the
#: client, comes first.
_CREDIT_MARGIN = 5.0


def _size(message: dict) -> int:
    """About the encoded size of a response message (content plus headers)."""
    return len(message["content"]) + sum(len(n) + len(v) + 8 for n, v in message.get("headers", ()))


class RequestBodyError(ChannelsError, IOError):
    """Reading ``wsgi.input`` failed: ``status`` is 413 (too large), 408 (timed out) or 400 (client left)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


class BodyStream(io.RawIOBase):
    """``wsgi.input``: the message's ``body``, then chunks read from ``body_channel`` on demand."""

    def __init__(self, body: bytes, layer: Any, body_channel: Optional[str], max_size: int,
                 timeout: float) -> None:
        self._buf = bytearray(body)
        self._pos = 0
        self._layer = layer
        self._channel = body_channel
        self._more = body_channel is not None
        self._max = max_size
        self._timeout = timeout
        self.received = len(body)
        if self.received > max_size:
            raise RequestBodyError(413, f"request body over the limit of {max_size} bytes")

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Wait for the next chunk; False at the end of the body."""
        if not self._more:
            return False
        deadline = time.monotonic() + self._timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._more = False
                raise RequestBodyError(408, f"no request body chunk within {self._timeout:g}s")
            try:
                channel, chunk = self._layer.receive([self._channel], block=True, timeout=min(remaining, 1.0))
            except LayerUnavailable:
                time.sleep(min(0.1, max(0.0, remaining)))
                continue
            if channel is not None:
                break
        validate_body_chunk(chunk)
        if chunk.get("closed"):
            self._more = False
            raise RequestBodyError(400, "the client closed the connection while sending the body")
        content = chunk.get("content") or b""
        self.received += len(content)
        if self.received > self._max:
            self._more = False
            raise RequestBodyError(413, f"request body over the limit of {self._max} bytes")
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += content
        self._more = bool(chunk.get("more_content"))
        return True

    def _available(self) -> int:
        return len(self._buf) - self._pos

    def read(self, size: Optional[int] = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
        else:
            while self._available() < size and self._fill():
                pass
        end = len(self._buf) if size is None or size < 0 else min(len(self._buf), self._pos + size)
        data = bytes(self._buf[self._pos:end])
        self._pos = end
        return data

    def readline(self, size: Optional[int] = -1) -> bytes:
        while True:
            nl = self._buf.find(b"\n", self._pos)
            limit_hit = size is not None and size >= 0 and self._available() >= size
            if nl >= 0 or limit_hit or not self._fill():
                break
        end = nl + 1 if nl >= 0 else len(self._buf)
        if size is not None and size >= 0:
            end = min(end, self._pos + size)
        data = bytes(self._buf[self._pos:end])
        self._pos = end
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readlines(self, hint: Any = -1) -> List[bytes]:
        lines: List[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and hint > 0 and total >= hint:
                return lines

    def __iter__(self):  # type: ignore[override]
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class FileWrapper:
    """``wsgi.file_wrapper``: iterate a file in blocks; ``close()`` closes it."""

    def __init__(self, filelike: Any, blksize: int = 64 * 1024) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):  # type: ignore[no-untyped-def]
        read = self.filelike.read
        size = self.blksize
        while True:
            data = read(size)
            if not data:
                return
            yield data


class _ResponseAbandoned(Exception):
    """The response cannot go on (the reply channel stayed full, the client stopped reading)."""


class _Response:
    """The state of one response: start_response, write() and the encoder, sending as it goes."""

    __slots__ = ("consumer", "layer", "reply", "head", "status_line", "headers", "encoder", "sent_any",
                 "aborted", "flow", "sent", "acked")

    def __init__(self, consumer: "WsgiConsumer", layer: Any, reply: str, head: bool,
                 flow: Optional[ResponseFlow] = None) -> None:
        self.consumer = consumer
        self.layer = layer
        self.reply = reply
        self.head = head
        self.status_line: Optional[str] = None
        self.headers: Any = None
        self.encoder: Optional[ResponseEncoder] = None
        self.sent_any = False
        self.aborted = False
        self.flow = flow  # the server's flow control offer, or None (stream as fast as the app makes it)
        self.sent = 0  # content bytes sent
        self.acked = 0  # content bytes the server says it has passed on

    def start_response(self, status: str, headers: List[tuple], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.sent_any:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # break the traceback cycle (PEP 3333)
        elif self.status_line is not None:
            raise AssertionError("start_response() called a second time without exc_info")
        code = parse_status(status)
        encoded = encode_response_headers(headers)
        self.status_line, self.headers = status, encoded
        chunk_size = self.consumer.chunk_size
        if self.flow is not None:  # messages of at most half a window keep the pipe full while waiting
            chunk_size = max(1, min(chunk_size, self.flow["window"] // 2))
        self.encoder = ResponseEncoder(code, encoded, chunk_size)
        return self.write

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        self.feed(data)

    def _send(self, messages: list) -> None:
        timeout = self.consumer.send_timeout
        flow = self.flow
        for m in messages:
            size = len(m["content"])
            if flow is not None:
                if self.sent > self.acked and self.sent - self.acked + size > flow["window"]:
                    self._wait_for_credit(flow, size)
                self.sent += size
            # The response's last message (only the last has more_content False): a worker with
            # a batched sender sends it together with other threads' responses (one round trip
            # for many under load).
            handed_over = not m["more_content"] and _size(m) <= _HAND_OVER_MAX \
                and hand_over_last(self.layer, self.reply, m, timeout)
            if not handed_over and not send_with_retry(self.layer, self.reply, m, timeout):
                self.aborted = True
                raise _ResponseAbandoned(f"reply channel {self.reply!r} stayed full for {timeout:.1f}s")
            self.sent_any = True

    def _wait_for_credit(self, flow: ResponseFlow, size: int) -> None:
        """Wait until ``size`` more bytes fit in the window; abandon the response when no credit
        comes for the server's timeout (the client stopped reading)."""
        timeout = flow["timeout"] + min(_CREDIT_MARGIN, flow["timeout"])
        deadline = time.monotonic() + timeout
        while self.sent > self.acked and self.sent - self.acked + size > flow["window"]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.aborted = True
                raise _ResponseAbandoned(f"the client read nothing for {timeout:.0f}s "
                                         f"({self.sent - self.acked} bytes unacknowledged)")
            try:
                channel, credit = self.layer.receive([flow["channel"]], block=True, timeout=min(remaining, 1.0))
            except LayerUnavailable:
                time.sleep(min(0.1, remaining))
                continue
            acked = credit.get("acked") if channel is not None and isinstance(credit, dict) else None
            if type(acked) is int and acked > self.acked:
                self.acked = acked
                deadline = time.monotonic() + timeout  # the client reads: a new deadline

    def feed(self, data: bytes) -> None:
        if self.encoder is None:
            raise AssertionError("the app produced body data before calling start_response()")
        if self.head or not data:
            return
        self._send(self.encoder.feed(data))

    def finish(self) -> None:
        assert self.encoder is not None
        self._send(self.encoder.finish())
        if self.encoder.overflow:
            log.warning("app sent %d bytes beyond its Content-Length; they were dropped", self.encoder.overflow)


class WsgiConsumer:
    """Serve ``http.request`` messages with a WSGI application.

    ``max_body_size``: request bodies over it get 413 (default 10 MiB).
    ``body_timeout``: seconds to wait for each body chunk before 408 (default 30).
    ``chunk_size``: largest response message content (default 256 KiB).
    ``send_timeout``: seconds a full reply channel is retried before the
    response is abandoned (default 5).
    """

    def __init__(self, app: Callable[..., Any], *, max_body_size: int = DEFAULT_MAX_BODY_SIZE,
                 body_timeout: float = 30.0, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 send_timeout: float = DEFAULT_SEND_TIMEOUT, errors: Any = None) -> None:
        if not callable(app):
            raise TypeError(f"WsgiConsumer needs a WSGI callable, got {app!r}")
        self.app = app
        self.max_body_size = max_body_size
        self.body_timeout = body_timeout
        self.chunk_size = chunk_size
        self.send_timeout = send_timeout
        self.errors = errors if errors is not None else sys.stderr

    def __repr__(self) -> str:
        return f"WsgiConsumer({self.app!r})"

    def __call__(self, message: Message, **kwargs: Any) -> None:
        content = message.content
        layer = message.channel_layer
        reply = content.get("reply_channel") if isinstance(content, dict) else None
        try:
            validate_request_message(content)
        except InvalidMessage as e:
            log.error("invalid http.request message: %s", e)
            if isinstance(reply, str):
                self._simple(layer, reply, 400, b"Bad Request\n")
            return
        assert isinstance(reply, str)  # checked by validate_request_message
        response = _Response(self, layer, reply, content["method"] == "HEAD", response_flow(content))
        try:
            self._run(message, content, layer, response)
        except _ResponseAbandoned as e:
            if not given_up():  # else the worker's time limit answered the client and logged it
                log.warning("response abandoned: %s", e)

    def _simple(self, layer: Any, reply: str, status: int, body: bytes) -> None:
        send_with_retry(layer, reply, {"status": status, "headers": _TEXT, "content": body, "more_content": False},
                        self.send_timeout)

    def _declared_length(self, content: dict) -> Optional[int]:
        for name, value in content["headers"]:
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    def _run(self, message: Message, content: dict, layer: Any, response: _Response) -> None:
        reply = response.reply
        declared = self._declared_length(content)
        if declared is not None and declared > self.max_body_size:
            log.info("request body of %d bytes is over the limit of %d: 413", declared, self.max_body_size)
            self._simple(layer, reply, 413, b"Request Entity Too Large\n")
            return
        body = content.get("body") or b""
        body_channel = content.get("body_channel")
        try:
            if body_channel is None:
                if len(body) > self.max_body_size:
                    raise RequestBodyError(413, "request body over the limit")
                stream: Any = io.BytesIO(body)
            else:
                stream = BodyStream(body, layer, body_channel, self.max_body_size, self.body_timeout)
        except RequestBodyError as e:
            self._simple(layer, reply, e.status, b"Request Entity Too Large\n")
            return
        environ = request_message_to_environ(content, stream, self.errors)
        environ["wsgi.file_wrapper"] = FileWrapper
        result: Optional[Iterable[bytes]] = None
        try:
            result = self.app(environ, response.start_response)
            for data in result:
                if not isinstance(data, bytes):
                    raise TypeError(f"the app yielded {type(data).__name__}, not bytes")
                response.feed(data)
            if response.encoder is None:
                raise AssertionError("the app returned without calling start_response()")
            response.finish()
        except _ResponseAbandoned:
            raise
        except RequestBodyError as e:
            self._fail(response, e.status, e, log_traceback=False)
        except Exception as e:
            self._fail(response, 500, e, log_traceback=True)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("the app's iterable raised in close()")

    def _fail(self, response: _Response, status: int, error: Exception, log_traceback: bool) -> None:
        path = response.reply
        if log_traceback:
            log.error("WSGI app %r failed on %s", self.app, path, exc_info=error)
        else:
            log.info("request body error: %s", error)
        if response.sent_any:
            log.warning("response to %r abandoned after it started: the client sees a truncated response", path)
            if status != 400:  # (400: the client left; nobody to tell)
                send_with_retry(response.layer, path, http_response_abort(), self.send_timeout)
            return
        if status == 400:
            return  # the client left: nobody to answer
        text = {413: b"Request Entity Too Large\n", 408: b"Request Timeout\n"}.get(status, b"Internal Server Error\n")
        self._simple(response.layer, path, status, text)
