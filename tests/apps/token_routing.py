"""Routing for the connect token tests: consumers that report what a signed token gave them.

On connect: accept, then one JSON frame with ``message.user_id``, ``message.token_claims``
and the ``query_string`` (the token must be gone from it). On each frame: the same two
attributes again, read through the channel session (the frame itself carries no claims).
"""
from __future__ import annotations

import json

from wsgi_channels import channel_session, route


def _report(message, **more):
    return {"text": json.dumps({"user_id": message.user_id, "claims": message.token_claims, **more})}


@channel_session
def connect(message):
    message.reply_channel.send({"accept": True})
    message.reply_channel.send(_report(message, query_string=message["query_string"].decode("latin-1"),
                                       path=message["path"]))


@channel_session
def receive(message):
    message.reply_channel.send(_report(message, said=message.get("text")))


routing = [route("websocket.connect", connect), route("websocket.receive", receive)]
