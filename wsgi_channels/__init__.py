"""wsgi_channels: real-time messaging for WSGI apps.

Push from any synchronous code::

    from wsgi_channels import Group
    Group("liveblog").send({"text": "new post"})

The default layer comes from the ``WSGI_CHANNELS_LAYER`` environment variable;
unset, it is ``ipc://``, a store every process of the current user on this
machine shares (see :mod:`wsgi_channels.settings`; :mod:`wsgi_channels.layers`
for URLs).
"""
from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0.dev0"

from .channel import Channel, Group, get_layer
from .exceptions import (
    ChannelFull,
    ChannelsError,
    ConfigurationError,
    HistoryNotEnabled,
    InvalidChannelName,
    InvalidGroupName,
    InvalidMessage,
    InvalidToken,
    LayerUnavailable,
    MessageTooLarge,
    PresenceFull,
    PresenceNotEnabled,
    StoreError,
    TokenExpired,
)
from .layers import from_url

logging.getLogger(__name__).addHandler(logging.NullHandler())

# Consumer-side names are imported on first use, so pushing from a view does not
# import the routing, consumer and WSGI machinery.
_LAZY = {
    "route": "wsgi_channels.consumers.routing",
    "route_class": "wsgi_channels.consumers.routing",
    "include": "wsgi_channels.consumers.routing",
    "Message": "wsgi_channels.consumers.message",
    "WsgiConsumer": "wsgi_channels.consumers.wsgi",
    "channel_session": "wsgi_channels.consumers.sessions",
    "enforce_ordering": "wsgi_channels.consumers.sessions",
    "WebsocketConsumer": "wsgi_channels.consumers.generic",
    "JsonWebsocketConsumer": "wsgi_channels.consumers.generic",
    "WebsocketDemultiplexer": "wsgi_channels.consumers.generic",
}

__all__ = [
    "__version__",
    "Channel",
    "Group",
    "get_layer",
    "from_url",
    "ChannelsError",
    "ChannelFull",
    "ConfigurationError",
    "InvalidChannelName",
    "InvalidGroupName",
    "InvalidMessage",
    "LayerUnavailable",
    "MessageTooLarge",
    "StoreError",
    "InvalidToken",
    "TokenExpired",
    "PresenceFull",
    "HistoryNotEnabled",
    "PresenceNotEnabled",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wsgi_channels' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
