"""The error hierarchy of wsgi_channels.

Every error the library raises on purpose derives from :class:`ChannelsError`.
Where a builtin exception already carries the meaning (an invalid name is a
``TypeError`` in Channels 1.x code, a lost connection is a
``ConnectionError``), the class inherits that builtin too, so callers can catch
either the library's class or the builtin.
"""
from __future__ import annotations

__all__ = [
    "ChannelsError",
    "InvalidChannelName",
    "InvalidGroupName",
    "InvalidMessage",
    "MessageTooLarge",
    "ChannelFull",
    "LayerUnavailable",
    "ConfigurationError",
    "StoreError",
    "InvalidToken",
    "TokenExpired",
    "PresenceFull",
    "FeatureNotEnabled",
    "HistoryNotEnabled",
    "PresenceNotEnabled",
]


class ChannelsError(Exception):
    """Base class of every error raised by wsgi_channels."""


class InvalidChannelName(ChannelsError, TypeError):
    """A channel name breaks the naming rules (which name and which rule are in the message)."""


class InvalidGroupName(InvalidChannelName):
    """A group name breaks the naming rules."""


class InvalidMessage(ChannelsError, TypeError):
    """A message is not a dict of allowed value types, or uses the reserved key.

    The message text names the key path of the offending value, for example
    ``message['headers'][2][0]``.
    """


class MessageTooLarge(ChannelsError, ValueError):
    """The encoded message is over the layer's size limit."""


class ChannelFull(ChannelsError):
    """The channel (for a ``!`` channel: its prefix) holds ``capacity`` messages already."""


class LayerUnavailable(ChannelsError, ConnectionError):
    """The layer's backing store cannot be reached right now.

    The call did not take effect (or, for a receive, nothing was taken). The
    next call reconnects by itself; no process restart is needed.
    """


class ConfigurationError(ChannelsError, ValueError):
    """A layer URL, option or setting is invalid (the message names it)."""


class StoreError(ChannelsError, OSError):
    """A file-backed store cannot be used (not writable, or not a wsgi_channels store)."""


class InvalidToken(ChannelsError, ValueError):
    """A connect token (:mod:`wsgi_channels.tokens`) cannot open this WebSocket.

    ``reason`` is one word saying why: ``malformed``, ``signature`` (tampered, or
    another secret), ``expired``, ``clock`` (issued in the future), ``path`` or
    ``origin`` (made for another path or site).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TokenExpired(InvalidToken):
    """A connect token whose ``exp`` has passed (a page older than the token's lifetime)."""


class PresenceFull(ChannelsError):
    """A presence entry was not added: the group holds ``max_members`` entries already.

    Raised by ``Group(name).add(channel, presence=...)`` before anything changed: the
    channel did not join the group either.
    """


class FeatureNotEnabled(ChannelsError, LookupError):
    """A history or presence operation on a group that no configured pattern names.

    The message names the group and the layer option to set (``group_history`` or
    ``group_presence``); every process that publishes, adds members or reads must have it.
    """


class HistoryNotEnabled(FeatureNotEnabled):
    """``position()``/``history()`` of a group that matches no ``group_history`` pattern."""


class PresenceNotEnabled(FeatureNotEnabled):
    """``add(..., presence=...)``, ``presence()`` or ``presence_stats()`` of a group that matches no
    ``group_presence`` pattern."""
