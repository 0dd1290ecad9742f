"""``--group-history`` and ``--group-presence``: the layer options every command that opens a layer takes.

::

    wsgi-channels worker myapp:routing --group-history 'chat.*:size=100:ttl=300' --group-history 'news.*'
    WSGI_CHANNELS_GROUP_PRESENCE='room.*:max_members=1000 lobby' wsgi-channels sidecar

Each value is one or more ``PATTERN[:FIELD=VALUE]...`` items (the grammar of
:mod:`wsgi_channels.layers.features`), checked when the command starts: a bad one is a
usage error naming the flag (or its environment variable). They are added to the
command's layer URL (:func:`wsgi_channels.settings.with_layer_options`), after the
items the URL already carries, so the URL's own patterns win where both match.

They configure this command's process only. Every process that publishes to or adds
members to a history or presence group needs the same patterns (the app under
gunicorn included), so the documented place for them is the layer URL all processes
read (``WSGI_CHANNELS_LAYER``), or an adapter's options, which travel in the app's
layer URL to ``wsgi-channels worker``.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from ..config import add_option
from ..exceptions import ConfigurationError, LayerUnavailable
from ..settings import feature_items, with_layer_options

__all__ = ["add_layer_feature_options", "layer_url_with_features", "check_layer_at_start"]

log = logging.getLogger(__name__)


def _checked(option: str) -> Any:
    def check(value: str) -> str:
        try:
            items = feature_items(option, value)
        except ConfigurationError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if not items:
            raise argparse.ArgumentTypeError(f"expected PATTERN[:FIELD=VALUE]..., got {value!r}")
        return " ".join(items)

    check.__name__ = option  # argparse names the type in some messages
    return check


def add_layer_feature_options(parser: Any) -> None:
    """Add ``--group-history`` and ``--group-presence`` (repeatable; ``WSGI_CHANNELS_GROUP_*``)."""
    add_option(parser, "--group-history", action="append", type=_checked("group_history"), default=None,
               metavar="PATTERN[:FIELD=VALUE]...",
               help="keep and number the messages of groups matching PATTERN, for resume (fields size, ttl, "
                    "meta_ttl; e.g. 'chat.*:size=100:ttl=300'); repeatable; added to the layer URL, whose own "
                    "group_history items come first")
    add_option(parser, "--group-presence", action="append", type=_checked("group_presence"), default=None,
               metavar="PATTERN[:FIELD=VALUE]...",
               help="list who is in groups matching PATTERN (fields max_members, join_leave, events_max, "
                    "info_max_bytes, ttl; e.g. 'room.*:max_members=1000'); repeatable; added to the layer URL")


def layer_url_with_features(url: str, args: argparse.Namespace) -> str:
    """``url`` with the command's ``--group-history``/``--group-presence`` items (unchanged without any)."""
    options = {}
    for option in ("group_history", "group_presence"):
        values = getattr(args, option, None)
        if values:
            options[option] = " ".join(values)
    return with_layer_options(url, options) if options else url


def check_layer_at_start(layer: Any, channel: str, who: str) -> None:
    """One call to the layer before a command serves (``channel_statistics``: it takes nothing).
    A layer the servers refuse as configured (``ConfigurationError``: a Redis Cluster recording
    another ``cluster_tags``) raises here, so the command exits with its message; a layer down is
    logged, and the command's loop retries it."""
    try:
        layer.channel_statistics(channel)
    except LayerUnavailable as e:
        log.warning("channel layer not reachable at start-up (%s); the %s will keep retrying", e, who)
