"""Routing for worker tests: the Flask app, a consumer that raises, one that kills its thread."""
from __future__ import annotations

from wsgi_channels import route

from .flask_app import consumer as flask_consumer


def boom(message):
    raise RuntimeError("consumer failure for the worker test")


def die(message):
    raise SystemExit("a consumer that kills its thread")


def echo(message):
    message.reply_channel.send({"echo": message["n"]})


routing = [
    route("http.request", flask_consumer),
    route("test.boom", boom),
    route("test.die", die),
    route("test.echo", echo),
]
