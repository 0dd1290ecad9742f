"""Routing for the sidecar benchmarks and the Autobahn run: an echo consumer, a group join, HTTP.

``wsgi-channels worker benchmarks.echo_routing:routing --layer URL`` (run from the repository root).

- ``websocket.receive``: echo the frame back unchanged (text stays text, bytes stay bytes);
  the text ``"join G"`` adds the socket to group ``G`` and answers ``"joined G"``;
- ``http.request``: a small Flask app through :class:`~wsgi_channels.WsgiConsumer`.
"""
from __future__ import annotations

from flask import Flask

from wsgi_channels import WsgiConsumer
from wsgi_channels.consumers.routing import route

app = Flask(__name__)


@app.route("/")
def index():
    return "hello from flask\n"


@app.route("/json")
def json_view():
    return {"items": list(range(10)), "ok": True}


def echo(message):
    text = message.content.get("text")
    if text is not None and text.startswith("join "):
        group = text.split(" ", 1)[1]
        message.channel_layer.group_add(group, message.content["reply_channel"])
        message.reply_channel.send({"text": "joined " + group})
        return
    if text is not None:
        message.reply_channel.send({"text": text})
    else:
        message.reply_channel.send({"bytes": message.content["bytes"]})


routing = [
    route("websocket.receive", echo),
    route("http.request", WsgiConsumer(app)),
]
