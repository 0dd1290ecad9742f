"""Test utilities: run consumers against the in-memory layer, no server, no worker process.

::

    from wsgi_channels.testing import Client

    def test_chat():
        client = Client(myapp.routing.routing)
        ws = client.websocket("/chat/lobby/")
        assert ws.connect()                    # websocket.connect accepted
        ws.send_text("hello")
        assert ws.receive() == {"text": "hello"}

        status, headers, body = client.http("GET", "/")
        assert status == 200

Consumers run in the calling thread through the same code path the worker
uses (:func:`~wsgi_channels.consumers.consumer.run_consumer`), so deferred sends,
routing defaults and sessions behave as in production. ``Group``/``Channel``
calls inside consumers that name no layer use the default layer. When
``WSGI_CHANNELS_LAYER`` is unset, the client makes ``memory://`` this process's
default (:func:`~wsgi_channels.settings.set_process_default`), so its layer and
the consumers' are the same in-memory instance, and no test touches (or, with
``flush``, empties) the user's ``ipc://`` store.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Optional

from .channel import resolve_layer
from .consumers.consumer import run_consumer
from .layers.base import BaseChannelLayer
from .consumers.message import Message
from .consumers.routing import Router
from .settings import ENV_VAR, set_process_default
from .protocol.translation import build_request_message

__all__ = ["Client", "WebsocketClient", "NoMessage", "TEST_LAYER_URL"]

#: The client's layer when nothing names one.
TEST_LAYER_URL = "memory://"


class NoMessage(AssertionError):
    """An expected message was not there."""


class Client:
    """Drive a routing by hand: ``send`` a message, ``consume`` it, read the replies."""

    def __init__(self, routing: Any, layer: Any = None, *, flush: bool = True) -> None:
        self.router = routing if isinstance(routing, Router) else Router(routing)
        if layer is None and not os.environ.get(ENV_VAR, "").strip():
            set_process_default(TEST_LAYER_URL)
        self.layer: BaseChannelLayer = resolve_layer(layer)
        if flush:
            self.layer.flush()

    def new_reply_channel(self, kind: str = "test.reply") -> str:
        return self.layer.new_channel(kind + "?")

    def send(self, channel: str, content: dict) -> None:
        """Queue ``content`` on ``channel`` (validated and copied by the layer)."""
        self.layer.send(channel, content)

    def consume(self, channels: Optional[Iterable[str]] = None, fail_on_none: bool = True) -> Optional[str]:
        """Take one message from ``channels`` (default: every routed channel) and run its consumer.

        Returns the channel it came from, or None (or raises :class:`NoMessage`
        when ``fail_on_none``) if nothing was waiting. The consumer's exception
        propagates, after its sends were made.
        """
        names = list(channels) if channels is not None else sorted(self.router.channels)
        channel, content = self.layer.receive(names, block=False)
        if channel is None or content is None:
            if fail_on_none:
                raise NoMessage(f"no message waiting on {names}")
            return None
        found = self.router.match(channel, content)
        if found is None:
            raise NoMessage(f"no route for the message on {channel!r}")
        consumer, kwargs = found
        run_consumer(consumer, Message(content, channel, self.layer), kwargs)
        return channel

    def send_and_consume(self, channel: str, content: dict) -> None:
        """Send one message and run its consumer."""
        self.send(channel, content)
        self.consume([channel])

    def receive(self, channel: str, timeout: float = 0.0, fail_on_none: bool = True) -> Optional[dict]:
        """The next message on ``channel`` (a reply channel, a group member...), or None."""
        got, content = self.layer.receive([channel], block=timeout > 0, timeout=timeout or None)
        if got is None and fail_on_none:
            raise NoMessage(f"nothing on {channel!r}")
        return content

    def drain(self, channel: str) -> list[dict]:
        """Every message waiting on ``channel``."""
        out: list[dict[str, Any]] = []
        while True:
            got, content = self.layer.receive([channel], block=False)
            if got is None or content is None:
                return out
            out.append(content)

    # -- HTTP -------------------------------------------------------------------------------

    def http_message(self, method: str, target: str | bytes, headers: Optional[list] = None, body: bytes = b"",
                     *, root_path: str = "", scheme: str = "http", host: str = "testserver",
                     body_channel: Optional[str] = None) -> dict:
        """An ``http.request`` message as a server would send it (``target`` is percent-encoded here)."""
        from urllib.parse import quote

        reply = self.new_reply_channel("http.response.test")
        raw_target = quote(target, safe="/?&=%:@!$'()*+,;~").encode("ascii") if isinstance(target, str) else target
        all_headers = [(n.encode("latin-1") if isinstance(n, str) else n,
                        v.encode("latin-1") if isinstance(v, str) else v) for n, v in headers or []]
        if not any(n.lower() == b"host" for n, _ in all_headers):
            all_headers.insert(0, (b"host", host.encode("idna")))
        if body and body_channel is None and not any(n.lower() == b"content-length" for n, _ in all_headers):
            all_headers.append((b"content-length", str(len(body)).encode()))
        default_port = 443 if scheme == "https" else 80
        return dict(build_request_message(reply_channel=reply, method=method, target=raw_target,
                                          headers=all_headers, http_version="1.1", scheme=scheme,
                                          client=["127.0.0.1", 50000], server=[host, default_port],
                                          root_path=root_path, body=body, body_channel=body_channel))

    def http(self, method: str, target: str | bytes, headers: Optional[list] = None, body: bytes = b"",
             **options: Any) -> tuple[int, list, bytes]:
        """Send an ``http.request``, run it, and return ``(status, headers, body)`` of the response.

        ``options``: ``root_path``, ``scheme``, ``host`` (see :meth:`http_message`).
        """
        message = self.http_message(method, target, headers, body, **options)
        self.send_and_consume("http.request", message)
        return self.read_response(message["reply_channel"])

    def read_response(self, reply: str) -> tuple[int, list, bytes]:
        """Collect a whole response from ``reply`` (already produced)."""
        first = self.receive(reply)
        assert first is not None
        if "status" not in first:
            raise NoMessage(f"first message on {reply!r} has no status: {first!r}")
        parts = [first.get("content", b"")]
        more = first.get("more_content", False)
        while more:
            chunk = self.receive(reply)
            assert chunk is not None
            parts.append(chunk.get("content", b""))
            more = chunk.get("more_content", False)
        return first["status"], [tuple(h) for h in first.get("headers", [])], b"".join(parts)

    # -- WebSocket --------------------------------------------------------------------------

    def websocket(self, path: str = "/", **extra: Any) -> "WebsocketClient":
        return WebsocketClient(self, path, **extra)


class WebsocketClient:
    """One simulated WebSocket connection: ``connect``, ``send_text``/``send_bytes``, ``receive``, ``disconnect``."""

    def __init__(self, client: Client, path: str = "/", *, headers: Optional[list] = None,
                 query_string: bytes = b"", subprotocols: Optional[list] = None) -> None:
        self.client = client
        self.path = path
        self.reply_channel = client.new_reply_channel("websocket.send.test")
        self.headers = [list(h) for h in headers or []]
        self.query_string = query_string
        self.subprotocols = subprotocols or []
        self.order = 0
        self._pushback: Optional[dict[str, Any]] = None

    def _send(self, channel: str, content: dict) -> None:
        content = {"reply_channel": self.reply_channel, "path": self.path, "order": self.order, **content}
        self.order += 1
        self.client.send_and_consume(channel, content)

    def connect(self) -> bool:
        """Send ``websocket.connect``; True when the consumer accepted (an accept or a frame came back)."""
        self._send("websocket.connect", {"scheme": "ws", "query_string": self.query_string, "root_path": "",
                                         "headers": self.headers, "client": ["127.0.0.1", 50000],
                                         "server": ["testserver", 80], "subprotocols": self.subprotocols})
        reply = self.client.receive(self.reply_channel, fail_on_none=False)
        if reply is None:
            return False
        if reply.get("accept") is False or reply.get("close"):
            return False
        if "text" in reply or "bytes" in reply:
            self._pushback = reply
        return True

    def send_text(self, text: str) -> None:
        self._send("websocket.receive", {"text": text, "bytes": None})

    def send_bytes(self, data: bytes) -> None:
        self._send("websocket.receive", {"bytes": data, "text": None})

    def send_json(self, value: Any) -> None:
        import json

        self.send_text(json.dumps(value))

    def disconnect(self, code: int = 1000) -> None:
        self._send("websocket.disconnect", {"code": code})

    def receive(self, fail_on_none: bool = True) -> Optional[dict]:
        """The next message the consumers sent to this connection."""
        pushed = self._pushback
        if pushed is not None:
            self._pushback = None
            return pushed
        return self.client.receive(self.reply_channel, fail_on_none=fail_on_none)

    def receive_json(self) -> Any:
        import json

        message = self.receive()
        assert message is not None
        if "text" not in message:
            raise NoMessage(f"expected a text frame, got {message!r}")
        return json.loads(message["text"])
