"""Channel layers, chosen by URL.

===============================================  ==============================================
``memory://`` (or ``memory://name``)             one process (tests, ``runserver``)
``ipc:///path/to/store.db``                      every process on one machine, no server
``redis://[:password@]host:port/db``             Redis; ``rediss://`` for TLS (a Cluster node is
                                                 detected and used as a Cluster)
``redis+cluster://host:port[,host:port...]/``    a Redis Cluster, by seed nodes; ``rediss+cluster://``
``redis+sentinel://host:port[,...]/NAME[/db]``   the primary of Sentinel service NAME;
                                                 ``rediss+sentinel://``
``redis://a:6379/0,redis://b:6379/0``            several Redis servers, sharded by a hash ring
===============================================  ==============================================

Query parameters set constructor keywords (``redis://h:6379/0?capacity=500``);
keywords passed to :func:`from_url` win over them.
"""
from __future__ import annotations

import importlib
import re
from typing import Any, Sequence
from urllib.parse import parse_qsl, urlsplit

from ..exceptions import ConfigurationError
from .base import BaseChannelLayer

__all__ = ["from_url", "BaseChannelLayer", "SCHEMES", "parse_options", "require_cross_process", "supports_group_features"]

#: URL scheme -> "module:Class" (imported on first use, so Redis is not needed for memory://).
SCHEMES = {
    "memory": "wsgi_channels.layers.memory:MemoryChannelLayer",
    "ipc": "wsgi_channels.layers.ipc:IpcChannelLayer",
    "redis": "wsgi_channels.layers.redis:RedisChannelLayer",
    "rediss": "wsgi_channels.layers.redis:RedisChannelLayer",
    "redis+cluster": "wsgi_channels.layers.redis:RedisChannelLayer",
    "rediss+cluster": "wsgi_channels.layers.redis:RedisChannelLayer",
    "redis+sentinel": "wsgi_channels.layers.redis:RedisChannelLayer",
    "rediss+sentinel": "wsgi_channels.layers.redis:RedisChannelLayer",
}
_REDIS_SCHEMES = frozenset(s for s, target in SCHEMES.items() if target.endswith(":RedisChannelLayer"))

_NUMERIC = {"expiry": float, "group_expiry": float, "capacity": int, "max_message_size": int,
            "process_capacity": int}


#: Options a query may repeat, one ``PATTERN[:FIELD=VALUE]...`` item each (layers/features.py).
_REPEATED = frozenset({"group_history", "group_presence"})


def parse_options(query: str) -> dict[str, Any]:
    """Constructor keywords from a URL query string; numbers for the contract's numeric options.

    ``group_history``/``group_presence`` may repeat (``?group_history=chat.*:size=100&group_history=news.*``):
    their items are collected into a list, in order.
    """
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in _REPEATED:
            options.setdefault(key, []).append(value)
            continue
        convert = _NUMERIC.get(key)
        try:
            options[key] = convert(value) if convert else value
        except ValueError:
            raise ConfigurationError(f"layer URL option {key}={value!r} is not a number") from None
    return options


def _scheme(url: str) -> str:
    try:
        scheme = urlsplit(url.strip()).scheme.lower()
    except ValueError as e:  # an unbalanced [ in the host, for instance
        raise ConfigurationError(f"invalid channel layer URL {url!r}: {e}") from None
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ConfigurationError(f"unknown channel layer URL {url!r}: the scheme must be one of {known}")
    return scheme


def layer_class(url: str | Sequence[str]) -> type[BaseChannelLayer]:
    """The layer class a URL (or a list of Redis URLs) selects."""
    # A comma starts another URL only where a scheme follows: query values may hold commas.
    urls = re.split(r",(?=\s*[A-Za-z][A-Za-z0-9+.\-]*://)", url) if isinstance(url, str) else list(url)
    if not urls or not all(isinstance(u, str) and u.strip() for u in urls):
        raise ConfigurationError(f"empty or invalid channel layer URL: {url!r}")
    schemes = {_scheme(u) for u in urls}
    if len(urls) > 1 and not schemes <= _REDIS_SCHEMES:
        raise ConfigurationError(f"only Redis URLs can be combined into shards, got {url!r}")
    module_name, _, class_name = SCHEMES[schemes.pop()].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def require_cross_process(url: str | Sequence[str], command: str) -> None:
    """Raise :class:`ConfigurationError` unless processes other than this one can reach ``url``.

    The worker, the sidecar and the operator commands each run in a process of their
    own, so the in-memory layer would leave them talking to nobody.
    """
    if not layer_class(url).cross_process:
        raise ConfigurationError(
            f"{command} runs in its own process and the layer {url!r} is private to one process: "
            "use a layer other processes can reach (ipc:///path/to/store.db or redis://host:6379/0), "
            "set with --layer or WSGI_CHANNELS_LAYER"
        )


def from_url(url: str | Sequence[str], **options: Any) -> BaseChannelLayer:
    """Build a new layer from a URL (or a list of Redis shard URLs); ``options`` are constructor keywords."""
    return layer_class(url).from_url(url, **options)


def supports_group_features(url: str | Sequence[str]) -> bool:
    """Whether the layer ``url`` selects keeps group history and presence (``group_history`` and
    ``group_presence`` options), without building it: an app that works on any layer turns them
    on where they exist (the examples do)."""
    return layer_class(url)._history_read is not BaseChannelLayer._history_read
