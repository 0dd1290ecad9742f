"""The application the fault, churn and security tests break things around.

Two halves, as in production:

- ``app`` is a bare WSGI app for gunicorn: ``POST /push?group=G&seq=N`` sends
  ``{"text": "N"}`` to group G through the default layer and answers 200, or 503
  when the layer is unavailable (the push is then known lost);
- ``routing`` is for ``wsgi-channels worker``: a WebSocket on ``/ws/G`` joins group
  G on connect and leaves it on disconnect, and echoes text frames; ``http.request``
  runs ``http_app`` (``/pid`` names the worker process, ``/slow?s=S`` records the
  pid in ``$FAULT_APP_PIDFILE`` then sleeps, ``/boom`` raises with a secret in
  the message, ``/bytes?n=N`` streams N bytes in 64 KiB blocks, with ``&cl=1`` under
  a ``Content-Length``, anything else says hello).

``group_of(path)`` maps a WebSocket path to its group name.
"""
from __future__ import annotations

import os
import time
from urllib.parse import parse_qs

from wsgi_channels import Group, LayerUnavailable, route
from wsgi_channels.consumers.wsgi import WsgiConsumer

SECRET = "s3cr3t-do-not-leak-7f1b"


def group_of(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name if name and name.replace("-", "").replace("_", "").replace(".", "").isalnum() else "faults"


def _params(environ) -> dict:
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def app(environ, start_response):
    """The gunicorn side: pushes to groups."""
    params = _params(environ)
    if environ["PATH_INFO"] == "/push":
        try:
            Group(params.get("group", "faults")).send({"text": params.get("seq", "0")})
        except LayerUnavailable:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"layer unavailable\n"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"pushed\n"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"fault app\n"]


def http_app(environ, start_response):
    """The worker side of HTTP-over-layer requests."""
    path = environ["PATH_INFO"]
    params = _params(environ)
    if path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/slow":
        pidfile = os.environ.get("FAULT_APP_PIDFILE")
        if pidfile:
            with open(pidfile, "w") as fh:
                fh.write(str(os.getpid()))
        time.sleep(float(params.get("s", "5")))
        body = b"slept"
    elif path == "/boom":
        raise RuntimeError(f"application failure carrying {SECRET}")
    elif path == "/bytes":
        return _stream_bytes(int(params.get("n", "0")), params.get("cl") == "1", start_response)
    else:
        body = b"hello"
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Pid", str(os.getpid()))])
    return [body]


def _stream_bytes(n: int, content_length: bool, start_response):
    """``n`` bytes of a repeating pattern (so truncation and reordering both show), 64 KiB a block."""
    headers = [("Content-Type", "application/octet-stream")]
    if content_length:
        headers.append(("Content-Length", str(n)))
    start_response("200 OK", headers)
    block = bytes(range(256)) * 256
    for start in range(0, n, len(block)):
        yield block[: min(len(block), n - start)]


def ws_connect(message) -> None:
    Group(group_of(message["path"])).add(message.reply_channel)
    message.reply_channel.send({"accept": True})


def ws_receive(message) -> None:
    text = message.get("text")
    if text == "boom":
        raise RuntimeError(f"consumer failure carrying {SECRET}")
    if text is not None:
        message.reply_channel.send({"text": text})


def ws_disconnect(message) -> None:
    Group(group_of(message["path"])).discard(message.reply_channel)


routing = [
    route("websocket.connect", ws_connect),
    route("websocket.receive", ws_receive),
    route("websocket.disconnect", ws_disconnect),
    route("http.request", WsgiConsumer(http_app)),
]
