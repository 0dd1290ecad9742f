"""Helpers for the adapter tests: run a routing on one message exactly as the worker does."""
from __future__ import annotations

from wsgi_channels.consumers.consumer import run_consumer
from wsgi_channels.consumers.message import Message
from wsgi_channels.consumers.routing import Router


def dispatch(routing, channel: str, content: dict, layer):
    """Route ``content`` on ``channel`` and run the consumer (its sends are made when it returns)."""
    found = Router(routing).match(channel, content)
    assert found is not None, f"no consumer for {channel}"
    consumer, kwargs = found
    return run_consumer(consumer, Message(content, channel, layer), kwargs)


def replies(layer, channel: str, limit: int = 20) -> list:
    """Every message waiting on ``channel`` (non-blocking)."""
    out = []
    for _ in range(limit):
        got, msg = layer.receive([channel])
        if got is None:
            break
        out.append(msg)
    return out


def ws_connect(reply_channel: str, path: str, cookie: str | None = None, origin: str | None = None) -> dict:
    headers = [[b"host", b"testserver"]]
    if cookie:
        headers.append([b"cookie", cookie.encode("latin-1")])
    if origin:
        headers.append([b"origin", origin.encode("latin-1")])
    return {"reply_channel": reply_channel, "scheme": "ws", "path": path, "query_string": b"", "root_path": "",
            "headers": headers, "client": ["127.0.0.1", 50000], "server": ["testserver", 80], "subprotocols": [],
            "order": 0}


def ws_receive(reply_channel: str, path: str, text: str, order: int = 1) -> dict:
    return {"reply_channel": reply_channel, "path": path, "text": text, "bytes": None, "order": order}


def call(app, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """One request through a WSGI app: ``(status, [(name, value)], body)``."""
    from werkzeug.test import Client

    response = Client(app).open(path, method=method, data=body, headers=headers or {})
    return response.status, list(response.headers.items()), response.get_data()
