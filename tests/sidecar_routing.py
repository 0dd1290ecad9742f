"""Routing for the sidecar end-to-end tests, served by a real ``wsgi-channels worker``.

- ``websocket.connect``: ``/reject`` is refused, everything else accepted;
- ``websocket.receive``: echo (text stays text, bytes stay bytes);
- ``websocket.disconnect``: reported on the channel ``test.disconnects`` so the test can read it;
- ``http.request``: a Flask app (uploads, a streamed response, JSON) through ``WsgiConsumer``.
"""
from __future__ import annotations

import hashlib

from flask import Flask, Response, request

from wsgi_channels import Channel, WsgiConsumer
from wsgi_channels.consumers.routing import route

app = Flask(__name__)


@app.route("/hello")
def hello():
    return {"hello": request.args.get("name", "world"), "scheme": request.scheme,
            "remote_addr": request.remote_addr}


@app.route("/upload", methods=["POST"])
def upload():
    f = request.files["file"]
    data = f.read()
    return {"name": f.filename, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "field": request.form.get("field")}


@app.route("/stream")
def stream():
    def gen():
        for i in range(5):
            yield f"part {i}\n".encode()

    return Response(gen(), mimetype="text/plain")


def connect(message):
    if message.content["path"] == "/reject":
        message.reply_channel.send({"close": True})
    else:
        message.reply_channel.send({"accept": True})


def receive(message):
    if message.content.get("text") is not None:
        message.reply_channel.send({"text": message.content["text"]})
    else:
        message.reply_channel.send({"bytes": message.content["bytes"]})


def disconnect(message):
    Channel("test.disconnects", layer=message.channel_layer).send(
        {"path": message.content["path"], "code": message.content["code"], "order": message.content["order"]})


routing = [
    route("websocket.connect", connect),
    route("websocket.receive", receive),
    route("websocket.disconnect", disconnect),
    route("http.request", WsgiConsumer(app)),
]
