"""The shapes of the messages between a server and the consumers (CONTRACT.md sections 2 and 3),
as ``TypedDict``s, and the functions that build the ones a server sends.

Every ``websocket.*`` message the sidecar sends is built here (the handshake by
:func:`~wsgi_channels.protocol.http.connect_message` through :func:`websocket_connect`);
``http.request`` by :func:`~wsgi_channels.protocol.translation.build_request_message`, which
also checks the request target. Builders do no checking of their own: their callers pass
values that came from a parser (h11, wsproto) or from the server itself.
"""
from __future__ import annotations

from typing import Any, List, Optional, TypedDict

__all__ = [
    "Header",
    "HttpRequestMessage",
    "BodyChunkMessage",
    "HttpResponseMessage",
    "HttpDisconnectMessage",
    "WebSocketConnectMessage",
    "WebSocketReceiveMessage",
    "WebSocketDisconnectMessage",
    "WebSocketSendMessage",
    "CreditMessage",
    "websocket_connect",
    "websocket_receive",
    "websocket_disconnect",
    "http_disconnect",
    "body_chunk",
    "http_response_abort",
]

Header = List[bytes]  # [name, value]; tuples are accepted on input and arrive as lists from a layer


class HttpRequestMessage(TypedDict, total=False):
    """``http.request`` (CONTRACT.md section 2)."""

    reply_channel: str
    http_version: str
    method: str
    scheme: str
    path: str
    query_string: bytes
    root_path: str
    headers: List[Header]
    body: bytes
    body_channel: Optional[str]
    client: Optional[List[Any]]
    server: Optional[List[Any]]


class BodyChunkMessage(TypedDict, total=False):
    """A request body chunk, on the request's ``body_channel``."""

    content: bytes
    more_content: bool
    closed: bool


class HttpResponseMessage(TypedDict, total=False):
    """A response message on the request's reply channel (``status`` and ``headers`` in the first only)."""

    status: int
    headers: List[Header]
    content: bytes
    more_content: bool


class HttpDisconnectMessage(TypedDict):
    """``http.disconnect``: the client left before its response ended."""

    reply_channel: str
    path: str


class WebSocketConnectMessage(TypedDict):
    """``websocket.connect`` (order 0): the handshake, held until a consumer answers."""

    reply_channel: str
    scheme: str
    path: str
    query_string: bytes
    root_path: str
    headers: List[Header]
    client: Optional[List[Any]]
    server: Optional[List[Any]]
    subprotocols: List[str]
    order: int


# The functional form: a key named ``bytes`` in a class body would shadow the type.
#: ``websocket.receive``: exactly one of ``text`` / ``bytes``.
WebSocketReceiveMessage = TypedDict("WebSocketReceiveMessage", {
    "reply_channel": str, "path": str, "text": str, "bytes": bytes, "order": int}, total=False)
#: A message to a WebSocket's reply channel (checked by
#: :func:`~wsgi_channels.protocol.responses.validate_websocket_send`).
WebSocketSendMessage = TypedDict("WebSocketSendMessage", {
    "text": Optional[str], "bytes": Optional[bytes], "close": Any, "accept": bool, "subprotocol": Optional[str]},
    total=False)


class WebSocketDisconnectMessage(TypedDict):
    """``websocket.disconnect``: exactly one per connection that sent ``websocket.connect``."""

    reply_channel: str
    path: str
    code: int
    order: int


class CreditMessage(TypedDict):
    """Response flow control (``__wsc_flow``): content bytes the server has passed on to its client."""

    acked: int


def websocket_connect(*, reply_channel: str, scheme: str, path: str, query_string: bytes, root_path: str,
                      headers: List[Header], client: Optional[List[Any]], server: Optional[List[Any]],
                      subprotocols: List[str]) -> WebSocketConnectMessage:
    """The ``websocket.connect`` message (``scheme`` is ``ws`` or ``wss``)."""
    return {
        "reply_channel": reply_channel,
        "scheme": scheme,
        "path": path,
        "query_string": query_string,
        "root_path": root_path,
        "headers": headers,
        "client": client,
        "server": server,
        "subprotocols": subprotocols,
        "order": 0,
    }


def websocket_receive(reply_channel: str, path: str, payload: str | bytes, order: int) -> WebSocketReceiveMessage:
    """A ``websocket.receive`` for one whole client message: ``text`` for ``str``, ``bytes`` for bytes."""
    if isinstance(payload, str):
        return {"reply_channel": reply_channel, "path": path, "text": payload, "order": order}
    return {"reply_channel": reply_channel, "path": path, "bytes": payload, "order": order}


def websocket_disconnect(reply_channel: str, path: str, code: int, order: int) -> WebSocketDisconnectMessage:
    """The ``websocket.disconnect``; ``order`` is one past the last ``websocket.receive``."""
    return {"reply_channel": reply_channel, "path": path, "code": code, "order": order}


def http_disconnect(reply_channel: str, path: str) -> HttpDisconnectMessage:
    """The ``http.disconnect`` of a request whose client left."""
    return {"reply_channel": reply_channel, "path": path}


def http_response_abort() -> dict[str, Any]:
    """The message by which a consumer gives up a response it has started (the app failed
    mid-stream, or ran past the worker's time limit): the server closes the client's
    connection at once, so the cut response is never taken for a complete one.
    ``more_content`` stays True: a server that does not know ``abort`` never ends the response
    cleanly either (it waits for the rest, then its own timeout closes the connection)."""
    return {"content": b"", "more_content": True, "abort": True}


def body_chunk(content: bytes, more_content: bool = False, closed: bool = False) -> BodyChunkMessage:
    """A request body chunk (``closed``: the client left, nothing more follows)."""
    return {"content": content, "more_content": more_content, "closed": closed}
