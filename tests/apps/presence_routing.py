"""Routing for the worker and command-line tests of group history and presence.

``test.join``: ``{"group", "member", "reply_channel"}`` adds ``member`` to ``group`` with a presence
entry and no user (the worker's current message gives it: the connect token's ``sub`` here), then
answers ``{"done": True}``. ``test.position``: answers the group's position (or the error).
"""
from __future__ import annotations

from wsgi_channels import Group, route


def join(message):
    Group(message["group"]).add(message["member"], presence={"info": {"via": "worker"}})
    message.reply_channel.send({"done": True})


def position(message):
    try:
        epoch, offset = Group(message["group"]).position()
    except Exception as e:  # the test reads the error's name
        message.reply_channel.send({"error": type(e).__name__})
        return
    message.reply_channel.send({"epoch": epoch, "offset": offset})


routing = [route("test.join", join), route("test.position", position)]
