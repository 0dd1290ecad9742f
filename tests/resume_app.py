"""The app of the resume and presence tests (``wsgi-channels worker resume_app:routing``).

A WebSocket on ``/ws/<group>`` joins ``group`` on connect (with a presence entry when the group
has a ``group_presence`` pattern, the user from ``?user=``), echoes text frames, and leaves on
disconnect. The tests publish to the groups themselves, through the same layer URL.
"""
from __future__ import annotations

from urllib.parse import parse_qs

from wsgi_channels import Group, route
from wsgi_channels.channel import get_layer


def _group(message) -> str:
    return message["path"].rstrip("/").rsplit("/", 1)[-1]


def ws_connect(message) -> None:
    group = _group(message)
    query = parse_qs(message["query_string"].decode("latin-1"))
    if get_layer().presence_options(group) is not None:
        user = query.get("user", [None])[0]
        Group(group).add(message.reply_channel, presence={"user": user, "info": {"q": sorted(query)}})
    else:
        Group(group).add(message.reply_channel)
    message.reply_channel.send({"accept": True})
    if "hello" in query:  # the query the consumer saw, so a test can check _wsc* never reaches it
        message.reply_channel.send({"text": "query=" + message["query_string"].decode("latin-1")})


def ws_receive(message) -> None:
    if message.get("text") is not None:
        message.reply_channel.send({"text": message["text"]})
    else:
        message.reply_channel.send({"bytes": message["bytes"]})


def ws_disconnect(message) -> None:
    Group(_group(message)).discard(message.reply_channel)


routing = [
    route("websocket.connect", ws_connect),
    route("websocket.receive", ws_receive),
    route("websocket.disconnect", ws_disconnect),
]
