"""Pushing from Django code: now, or after the current transaction commits."""
from __future__ import annotations

from typing import Any

from ...channel import Channel, Group
from .conf import DEFAULT_ALIAS, alias_settings


def get_layer_url(alias: str = DEFAULT_ALIAS) -> str:
    """The layer URL of a ``WSGI_CHANNELS`` alias."""
    return alias_settings(alias).layer_url


def group(name: str, alias: str = DEFAULT_ALIAS) -> Group:
    return Group(name, layer=get_layer_url(alias))


def _later(func: Any, on_commit: bool, using: str | None) -> None:
    if on_commit:
        from django.db import transaction

        # Outside an atomic block Django runs the callback at once; after a rollback, never.
        transaction.on_commit(func, using=using)
    else:
        func()


def group_send(name: str, content: dict, *, on_commit: bool = False, using: str | None = None,
               alias: str = DEFAULT_ALIAS) -> None:
    """Send to a group; ``on_commit=True`` waits for ``transaction.on_commit`` (dropped on rollback).

    The message is validated now, so a bad message fails where it was made.
    """
    g = group(name, alias)
    from ...serialization import decode, encode

    layer = g.channel_layer
    copy = decode(encode(content, layer.max_message_size))
    _later(lambda: g.send(copy), on_commit, using)


def channel_send(name: str, content: dict, *, on_commit: bool = False, using: str | None = None,
                 alias: str = DEFAULT_ALIAS) -> None:
    """Send to one channel; ``on_commit=True`` as for :func:`group_send`."""
    c = Channel(name, layer=get_layer_url(alias))
    from ...serialization import decode, encode

    copy = decode(encode(content, c.channel_layer.max_message_size))
    _later(lambda: c.send(copy), on_commit, using)
