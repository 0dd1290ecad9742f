"""The :class:`Message` a consumer receives.

A consumer is called as ``consumer(message, **kwargs)``, where ``kwargs`` are
the named groups of the route's filters. ``message.content`` is the plain dict
that travelled through the layer; ``message["key"]`` reads it directly.
``message.reply_channel`` is a :class:`~wsgi_channels.Channel` bound to the
same layer as the worker, so replies go back where the request came from.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

from ..channel import Channel
from ..layers.base import BaseChannelLayer

TOKEN_CLAIMS_KEY = "__wsc_token"  # wsgi_channels.tokens.CLAIMS_KEY, set by the sidecar

__all__ = ["Message"]


class Message:
    """One message taken from a channel, as a consumer sees it.

    ``content``
        the message dict.
    ``channel``
        the :class:`Channel` it arrived on.
    ``reply_channel``
        a :class:`Channel` for ``content["reply_channel"]``, or None.
    ``channel_layer``
        the layer it came from (sends through ``reply_channel`` use it too).
    ``channel_session``
        the per-connection session dict, set by :func:`~wsgi_channels.channel_session`.
    ``token_claims``, ``user_id``
        what the app signed into the connection's connect token, or None.
    """

    __slots__ = ("content", "channel", "channel_layer", "channel_session", "_reply_channel")

    def __init__(self, content: dict, channel_name: str, channel_layer: BaseChannelLayer) -> None:
        self.content = content
        self.channel = Channel(channel_name, layer=channel_layer)
        self.channel_layer = channel_layer
        self.channel_session: Any = None
        self._reply_channel: Optional[Channel] = None

    @property
    def reply_channel(self) -> Optional[Channel]:
        if self._reply_channel is None:
            name = self.content.get("reply_channel")
            if name is None:
                return None
            self._reply_channel = Channel(name, layer=self.channel_layer)
        return self._reply_channel

    @property
    def token_claims(self) -> Optional[dict]:
        """The verified claims of the connection's signed connect token (:mod:`~wsgi_channels.tokens`), or None.

        Carried in ``websocket.connect``; later messages of the socket find them in
        the channel session when the consumer uses ``@channel_session``.
        """
        claims = self.content.get(TOKEN_CLAIMS_KEY)
        if claims is None and isinstance(self.channel_session, dict):
            claims = self.channel_session.get(TOKEN_CLAIMS_KEY)
        return claims

    @property
    def user_id(self) -> Any:
        """The user id the app signed into the connect token (``sub``), or None."""
        claims = self.token_claims
        return claims.get("sub") if claims else None

    def __getitem__(self, key: str) -> Any:
        return self.content[key]

    def __contains__(self, key: object) -> bool:
        return key in self.content

    def __iter__(self) -> Iterator[str]:
        return iter(self.content)

    def __len__(self) -> int:
        return len(self.content)

    def get(self, key: str, default: Any = None) -> Any:
        return self.content.get(key, default)

    def keys(self):  # type: ignore[no-untyped-def]
        return self.content.keys()

    def items(self):  # type: ignore[no-untyped-def]
        return self.content.items()

    def values(self):  # type: ignore[no-untyped-def]
        return self.content.values()

    def copy(self) -> "Message":
        """A new Message with a shallow copy of the content (for changing it before passing it on)."""
        other = Message(dict(self.content), self.channel.name, self.channel_layer)
        other.channel_session = self.channel_session
        return other

    def __repr__(self) -> str:
        return f"<Message on {self.channel.name!r} keys={sorted(self.content)!r}>"
