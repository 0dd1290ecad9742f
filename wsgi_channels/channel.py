"""The push API: ``Channel(name).send(...)`` and ``Group(name).send(...)`` from ordinary code.

A view, a CLI script, a cron job or a Celery task calls these synchronously;
each call is one layer operation (one Redis round trip on the Redis layer).

:func:`get_layer` keeps one layer per URL per process. After ``os.fork()`` (how
gunicorn starts its workers) the child builds its own layer, so parent and child
never share a socket or a file handle.

Inside a consumer (see :func:`deferred_sends`), sends are collected and made
when the consumer returns, so a consumer that raises half-way still sends what
it queued, in order, and nothing is sent twice.

Mistakes are refused here, where they are made (``InvalidMessage`` naming the key and
the rule), rather than logged far away by the sidecar:

- a reserved key (``__wsc_*``, ``__asgi_*``: CONTRACT.md section 5), always;
- a message in the WebSocket send shape (it has ``text``, ``bytes``, ``close`` or
  ``accept``) that breaks the rule of ``websocket.send`` (CONTRACT.md section 3: ``text``
  a str, ``bytes`` bytes, no other keys than those and ``subprotocol``...), for a
  ``Group.send`` and for a ``Channel.send`` to a sidecar's reply channel;
- a ``Group.send`` to a group with history or presence (its members are WebSockets by
  definition) that is not a valid ``websocket.send`` message;
- a ``Channel.send`` to a sidecar's reply channel (``sidecar.<token>!<suffix>``, what
  ``message.reply_channel`` is behind the sidecar) whose keys are neither a WebSocket
  send's nor an HTTP response's (``{"title": ...}``).

Other channels and groups carry any message: an application's own channels (and groups of
them) define their own shapes.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Optional, Union

from .exceptions import InvalidMessage
from .layers import from_url
from .layers.base import BaseChannelLayer, HistoryPage, Position, PresenceEntry
from .layers.names import is_sidecar_prefix, non_local_name, validate_channel_name, validate_group_name
from .presence import current_user
from .protocol.responses import validate_websocket_send
from .serialization import EncodedMessage, encode, refuse_reserved
from .settings import DEFAULT_LAYER_URL, ENV_VAR, default_layer_url

__all__ = ["Channel", "Group", "get_layer", "resolve_layer", "default_layer_url", "deferred_sends",
           "check_push", "DEFAULT_LAYER_URL"]

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


#: Keys that make a message a WebSocket send (CONTRACT.md section 3).
_WEBSOCKET_KEYS = ("text", "bytes", "close", "accept")
#: Keys of an HTTP response message (and the worker's ``abort``), the other thing a sidecar reply channel takes.
_HTTP_KEYS = ("status", "headers", "content", "more_content", "abort")


def _websocket_shape(content: Any, target: Any, known: bool) -> None:
    """Check ``content`` as a ``websocket.send`` message when it is one (or ``known`` to be one).

    Raises :class:`InvalidMessage` naming the target (a Channel or Group: its repr, made only
    then), the key and the rule.
    """
    if type(content) is not dict:
        return  # not a dict: encode() says so, with the type
    if len(content) == 1 and type(content.get("text")) is str:
        return  # the common push, checked in one lookup
    for key in _WEBSOCKET_KEYS:
        if key in content:
            why = "a message with 'text', 'bytes', 'close' or 'accept' is a WebSocket send"
            break
    else:
        if not known:
            return
        why = "this group keeps history or presence, so its messages go to WebSockets"
    try:
        validate_websocket_send(content)
    except InvalidMessage as e:
        raise InvalidMessage(
            f"{target!r}.send: {e} ({why}: 'text' a str or 'bytes' bytes, and only 'close', 'accept' or "
            "'subprotocol' besides; for JSON send {'text': json.dumps(data)})") from None


def _reply_shape(content: Any, channel: "Channel") -> None:
    """A message for a sidecar's reply channel: a WebSocket send or an HTTP response, nothing else."""
    if type(content) is not dict or not content:
        return
    for key in _WEBSOCKET_KEYS:
        if key in content:
            _websocket_shape(content, channel, True)
            return
    for key in _HTTP_KEYS:
        if key in content:
            return  # an HTTP response: the sidecar checks it against the response's state
    raise InvalidMessage(
        f"{channel!r}.send: a sidecar's reply channel takes a WebSocket send ('text', 'bytes', 'close', "
        f"'accept') or an HTTP response ('status', 'content', ...), and this message has only "
        f"{sorted(content)[:5]!r}; for JSON send {{'text': json.dumps(data)}}")


def check_push(layer: BaseChannelLayer, kind: str, name: str, content: Any) -> None:
    """The checks ``Channel(name).send`` (``kind`` "send") and ``Group(name).send`` ("send_group")
    make before a message leaves: the WebSocket shape where it is known, and the reserved keys,
    strictly. For code that queues pushes itself and sends them later through the layer (the
    adapters' after-commit buffers), so that a mistake still surfaces where it is made."""
    if kind == "send_group":
        _websocket_shape(content, Group(name), layer._has_features and layer.group_features(name) is not None)
    elif "!" in name and is_sidecar_prefix(non_local_name(name)):
        _reply_shape(content, Channel(name))
    refuse_reserved(content)


def _dispatch(layer_like: LayerLike, kind: str, name: str, content: dict, immediately: bool) -> None:
    layer = layer_like if isinstance(layer_like, BaseChannelLayer) else get_layer(layer_like)
    outbox = None if immediately else _local.outbox
    if outbox is None:
        refuse_reserved(content)  # strictly: application code never sends the server's keys
        getattr(layer, kind)(name, content)
    else:
        # Validate (reserved keys strictly), size-check and encode now, so later mutation changes
        # nothing; the layer sends these bytes as they are (the message is encoded once).
        outbox.append((layer, kind, name, EncodedMessage(encode(content, layer.max_message_size, strict=True))))


class Channel:
    """A named channel to send to: ``Channel("chat.receive").send({"text": "hi"})``."""

    __slots__ = ("name", "_layer", "_sidecar")

    def __init__(self, name: str, layer: LayerLike = None) -> None:
        self.name = validate_channel_name(_name(name))
        self._layer = layer
        self._sidecar = "!" in self.name and is_sidecar_prefix(non_local_name(self.name))

    @property
    def channel_layer(self) -> BaseChannelLayer:
        return resolve_layer(self._layer)

    def send(self, content: dict, immediately: bool = False) -> None:
        """Send ``content``; inside a consumer it goes out when the consumer ends unless ``immediately``.

        To a sidecar's reply channel (``message.reply_channel`` of a consumer behind the
        sidecar), ``content`` must be a WebSocket send (``{"text": str}``, ``{"bytes":
        bytes}``, ``{"close": True or code}``, ``{"accept": True}``) or an HTTP response;
        anything else raises :class:`InvalidMessage` here.
        """
        if self._sidecar:
            _reply_shape(content, self)
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

    def add(self, channel: Channel | str, presence: Optional[Mapping[str, Any]] = None) -> None:
        """Add a channel (name or :class:`Channel`); repeated adds renew the membership.

        ``presence={"user": "42", "info": {...}}`` (a group with a ``group_presence``
        pattern) also lists the channel in :meth:`presence`; without ``"user"``, the user of
        the message being consumed (:func:`wsgi_channels.presence.current_user`). Raises
        ``PresenceFull`` past the pattern's ``max_members``, the channel not added.
        """
        layer = self.channel_layer
        name = validate_channel_name(_name(channel))
        if presence is None:
            layer.group_add(self.name, name)
            return
        layer._require_presence(self.name)  # PresenceNotEnabled here, whatever the backend
        if isinstance(presence, Mapping) and "user" not in presence:
            presence = {**presence, "user": current_user()}
        layer.group_add(self.name, name, presence=presence)

    def discard(self, channel: Channel | str) -> None:
        """Remove a channel; a no-op when it is not a member."""
        self.channel_layer.group_discard(self.name, validate_channel_name(_name(channel)))

    def channels(self) -> list[str]:
        """The current members."""
        return self.channel_layer.group_channels(self.name)

    def send(self, content: dict, immediately: bool = False) -> None:
        """Send ``content`` to every member (one layer call); full members are skipped and counted.

        A message with ``text``, ``bytes``, ``close`` or ``accept`` is a WebSocket send and
        is checked as one (``{"text": str}`` or ``{"bytes": bytes}``, optionally ``"close"``);
        so is every message to a group with history or presence. A bad one raises
        :class:`InvalidMessage` here, naming the key. In a history group the message is
        kept and numbered (:meth:`history`).
        """
        layer = self._layer if isinstance(self._layer, BaseChannelLayer) else get_layer(self._layer)
        _websocket_shape(content, self, layer._has_features and layer.group_features(self.name) is not None)
        _dispatch(layer, "send_group", self.name, content, immediately)

    def position(self) -> Position:
        """``(epoch, offset)`` of the group's history: embed it in a page rendered now, so that the
        browser client resumes from it and misses nothing published after the page's data was
        read (call it before reading that data). Needs a ``group_history`` pattern."""
        return self.channel_layer.group_position(self.name)

    def history(self, since: int, limit: int = 300) -> HistoryPage:
        """``(epoch, top, [(offset, message), ...])``: the kept messages after offset ``since``."""
        return self.channel_layer.group_history(self.name, since, limit)

    def presence(self) -> dict[str, PresenceEntry]:
        """``{conn_id: {"user", "info", "since"}}`` of the group's members with a presence entry."""
        return self.channel_layer.group_presence(self.name)

    def presence_stats(self) -> dict[str, int]:
        """``{"clients": n, "users": m}``, at the same cost whatever the group's size."""
        return self.channel_layer.group_presence_stats(self.name)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Group({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Group) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)
