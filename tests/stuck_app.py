"""Consumers that get stuck, for the worker's time-limit tests (``stuck_app:routing``).

``http.request`` runs ``http_app``:

- ``/sleep?s=S`` sleeps S seconds, then answers ``slept`` (``S`` large: a consumer
  stuck for good);
- ``/stream-then-hang?s=S`` starts a chunked response (two blocks, so the first is
  sent), then sleeps S seconds before the rest;
- ``/stream-then-fail`` starts a chunked response, then raises (the app fails mid-stream);
- ``/stream?n=N&every=E`` sends N chunks E seconds apart (a slow response that
  keeps sending, so it is never stuck);
- anything else answers ``hello`` with the worker's pid.

A WebSocket is accepted on connect and echoes text frames; ``hang S`` makes its
``websocket.receive`` consumer sleep S seconds first. ``time.sleep`` is
cooperative under ``--greenlets`` (gevent patches it).
"""
from __future__ import annotations

import os
import time
from urllib.parse import parse_qs

from wsgi_channels import route
from wsgi_channels.consumers.wsgi import WsgiConsumer


def _params(environ) -> dict:
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def http_app(environ, start_response):
    path = environ["PATH_INFO"]
    params = _params(environ)
    if path == "/sleep":
        time.sleep(float(params.get("s", "5")))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slept"]
    if path == "/stream-then-hang":
        def stream():
            yield b"first block\n"
            yield b"second block\n"  # the encoder holds one block back: this sends the first
            time.sleep(float(params.get("s", "5")))
            yield b"too late\n"

        start_response("200 OK", [("Content-Type", "text/plain")])
        return stream()
    if path == "/stream-then-fail":
        def failing():
            yield b"first block\n"
            yield b"second block\n"  # the encoder holds one block back: this sends the first
            raise RuntimeError("the app failed mid-stream")

        start_response("200 OK", [("Content-Type", "text/plain")])
        return failing()
    if path == "/stream":
        def chunks():
            for i in range(int(params.get("n", "5"))):
                yield b"chunk %d\n" % i
                time.sleep(float(params.get("every", "0.2")))

        start_response("200 OK", [("Content-Type", "text/plain")])
        return chunks()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from %d" % os.getpid()]


def ws_connect(message) -> None:
    message.reply_channel.send({"accept": True})


def ws_receive(message) -> None:
    text = message.get("text") or ""
    if text.startswith("hang "):
        time.sleep(float(text.split()[1]))
    message.reply_channel.send({"text": text})


routing = [
    route("websocket.connect", ws_connect),
    route("websocket.receive", ws_receive),
    route("http.request", WsgiConsumer(http_app)),
]
