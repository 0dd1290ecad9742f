"""The push API: ``Channel(name).send(...)`` and ``Group(name).send(...)`` from ordinary code.

A view, a CLI script, a cron job or a Celery task calls these synchronously;
each call is one layer operation (one Redis round trip on the Redis layer).

:func:`get_layer` keeps one layer per URL per process. After ``os.fork()`` (how
gunicorn starts its workers) the child builds its own layer, so parent and child
never share a socket or a file handle.

Inside a consumer (see :func:`deferred_sends`), sends are collected and made
when the consumer returns, so a consumer that raises half-way still sends what
it queued, in order, and nothing is sent twice.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Union

from .layers import from_url
from .layers.base import BaseChannelLayer, validate_channel_name, validate_group_name
from .serialization import EncodedMessage, encode
from .settings import DEFAULT_LAYER_URL, ENV_VAR, default_layer_url

__all__ = ["Channel", "Group", "get_layer", "resolve_layer", "default_layer_url", "deferred_sends",
           "DEFAULT_LAYER_URL"]

_layers: dict[tuple[int, str], BaseChannelLayer] = {}
_layers_lock = threading.Lock()


class _ThreadState(threading.local):
    #: This thread's open :func:`deferred_sends` list. A class default, not ``getattr(..., None)``:
    #: a missing attribute raises inside ``getattr``, which costs microseconds on every push.
    outbox: list | None = None


_local = _ThreadState()

LayerLike = Union[BaseChannelLayer, str, None]


def get_layer(url: str | None = None) -> BaseChannelLayer:
    """The process's layer for ``url`` (default: :func:`default_layer_url`), built on first use.

    One instance per URL per process id: a forked child gets a fresh layer.
    """
    url = url or default_layer_url()
    key = (os.getpid(), url)
    layer = _layers.get(key)
    if layer is None:
        with _layers_lock:
            layer = _layers.get(key)
            if layer is None:
                pid = os.getpid()
                for stale in [k for k in _layers if k[0] != pid]:
                    del _layers[stale]  # inherited from a parent: never closed here, never used
                layer = _layers[key] = from_url(url)
    return layer


def resolve_layer(layer: LayerLike) -> BaseChannelLayer:
    """``layer`` itself when it is a layer, else the process's layer for that URL (None: the default)."""
    if layer is None or isinstance(layer, str):
        return get_layer(layer)
    return layer


_resolve = resolve_layer  # the former private name, still imported by modules outside the core


def _name(obj: Any) -> Any:
    return obj.name if isinstance(obj, Channel) else obj


@contextmanager
def deferred_sends() -> Iterator[list]:
    """Collect ``Channel.send``/``Group.send`` calls made in this thread (or greenlet) until exit.

    Yields the list of pending ``(layer, kind, name, message)`` tuples, where
    ``kind`` is ``"send"`` or ``"send_group"``; the caller sends them (the
    worker does so with a bounded retry on ``ChannelFull``). Each message is
    validated and encoded when queued, as an
    :class:`~wsgi_channels.serialization.EncodedMessage` that the layer sends without
    encoding it again. Blocks nest: an inner block's sends join the outer list.
    """
    outer = _local.outbox
    if outer is not None:
        yield outer
        return
    outbox: list = []
    _local.outbox = outbox
    try:
        yield outbox
    finally:
        _local.outbox = None


def _dispatch(layer_like: LayerLike, kind: str, name: str, content: dict, immediately: bool) -> None:
    layer = layer_like if isinstance(layer_like, BaseChannelLayer) else get_layer(layer_like)
    outbox = None if immediately else _local.outbox
    if outbox is None:
        getattr(layer, kind)(name, content)
    else:
        # Validate, size-check and encode now, so later mutation changes nothing; the layer sends
        # these bytes as they are (the message is encoded once).
        outbox.append((layer, kind, name, EncodedMessage(encode(content, layer.max_message_size))))


class Channel:
    """A named channel to send to: ``Channel("chat.receive").send({"text": "hi"})``."""

    __slots__ = ("name", "_layer")

    def __init__(self, name: str, layer: LayerLike = None) -> None:
        self.name = validate_channel_name(_name(name))
        self._layer = layer

    @property
    def channel_layer(self) -> BaseChannelLayer:
        return resolve_layer(self._layer)

    def send(self, content: dict, immediately: bool = False) -> None:
        """Send ``content``; inside a consumer it goes out when the consumer ends unless ``immediately``."""
        _dispatch(self._layer, "send", self.name, content, immediately)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Channel({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Channel) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class Group:
    """A named group of channels: ``Group("liveblog").send({"text": "..."})``."""

    __slots__ = ("name", "_layer")

    def __init__(self, name: str, layer: LayerLike = None) -> None:
        self.name = validate_group_name(name)
        self._layer = layer

    @property
    def channel_layer(self) -> BaseChannelLayer:
        return resolve_layer(self._layer)

    def add(self, channel: Channel | str) -> None:
        """Add a channel (name or :class:`Channel`); repeated adds renew the membership."""
        self.channel_layer.group_add(self.name, validate_channel_name(_name(channel)))

    def discard(self, channel: Channel | str) -> None:
        """Remove a channel; a no-op when it is not a member."""
        self.channel_layer.group_discard(self.name, validate_channel_name(_name(channel)))

    def channels(self) -> list[str]:
        """The current members."""
        return self.channel_layer.group_channels(self.name)

    def send(self, content: dict, immediately: bool = False) -> None:
        """Send ``content`` to every member (one layer call); full members are skipped and counted."""
        _dispatch(self._layer, "send_group", self.name, content, immediately)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Group({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Group) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)
