"""The two apps ``benchmarks/push_fanout.py`` compares: the same push, two stacks.

``ours``: a Flask view ``POST /push`` calls ``channels.group_send("bench", ...)``;
browsers connect to the wsgi_channels sidecar at ``/ws/bench/`` (run with
``wsgi-channels worker fanout_apps:routing``).

``peer``: the same Flask view with Flask-SocketIO, ``socketio.emit("push", ...)``
to every connected client, served the way its docs require under gunicorn:
one worker process (``-w 1``, threading mode with many threads).
"""
from __future__ import annotations

from flask import Flask, request

from wsgi_channels.adapters.flask import Channels, routing_for

ours = Flask("fanout_ours")
channels = Channels(ours)


@ours.post("/push")
def push():  # type: ignore[no-untyped-def]
    channels.group_send("bench", {"text": request.get_data(as_text=True)})
    return "ok"


@channels.consumer("websocket.connect", path=r"^/ws/bench/$", session=False)
def connect(message):  # type: ignore[no-untyped-def]
    channels.group("bench").add(message.reply_channel)
    message.reply_channel.send({"accept": True})


@channels.consumer("websocket.disconnect", path=r"^/ws/bench/$", session=False)
def disconnect(message):  # type: ignore[no-untyped-def]
    channels.group("bench").discard(message.reply_channel)


routing = routing_for(ours)


def make_peer():  # type: ignore[no-untyped-def]
    from flask_socketio import SocketIO

    peer = Flask("fanout_peer")
    socketio = SocketIO(peer, async_mode="threading")

    @peer.post("/push")
    def peer_push():  # type: ignore[no-untyped-def]
        socketio.emit("push", request.get_data(as_text=True))
        return "ok"

    return peer


try:
    peer = make_peer()
except ImportError:  # flask-socketio is in the 'benchmark' extra only
    peer = None
