"""Presence helpers shared by the layer, the worker, the sidecar and the adapters.

``conn_id(reply_channel)``
    the public id of a connection in a presence group. Every process computes it from the
    reply channel without a shared secret, and it reveals nothing of the channel's name: a
    reply channel holds 72 random bits after its process prefix's 96, so its hash cannot be
    turned back, and knowing a conn_id does not let anyone send to the socket.
``current_user()``
    the user of the message being consumed, for ``Group(name).add(channel, presence={})``
    without a ``"user"``: the worker makes the message current around each consumer call
    (:func:`consuming`), and a resolver turns it into a str (the default below; adapters may
    :func:`set_user_resolver` their own).
"""
from __future__ import annotations

import base64
import hashlib
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

__all__ = ["conn_id", "current_message", "consuming", "current_user", "set_user_resolver", "resolve_user"]

_CONN_ID_SALT = b"wsc.presence\0"


def conn_id(reply_channel: str) -> str:
    """16 characters (urlsafe base64 of SHA-256, 96 bits) naming ``reply_channel`` in presence lists."""
    digest = hashlib.sha256(_CONN_ID_SALT + reply_channel.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:16]


class _State(threading.local):
    message: Any = None


_state = _State()


def current_message() -> Any:
    """The message this thread (or greenlet) is consuming, or None outside a consumer."""
    return _state.message


@contextmanager
def consuming(message: Any) -> Iterator[None]:
    """Make ``message`` this thread's current message for the block (the worker wraps each
    consumer call in it); blocks nest, the outer message is current again afterwards."""
    outer = _state.message
    _state.message = message
    try:
        yield
    finally:
        _state.message = outer


def _user_of(user: Any) -> Optional[str]:
    """A user object (Django's, Flask-Login's, a plain id) as the str presence lists, or None."""
    if user is None or user is False:
        return None
    if isinstance(user, str):
        return user or None
    if isinstance(user, int) and not isinstance(user, bool):
        return str(user)
    if getattr(user, "is_authenticated", True) is False:  # Django's AnonymousUser, Flask-Login's
        return None
    for attr in ("get_id", "pk", "id"):
        value = getattr(user, attr, None)
        if callable(value):
            value = value()
        if value is not None:
            return str(value)
    return str(user)


def resolve_user(message: Any) -> Optional[str]:
    """The default resolver: ``message.user`` (set by the adapters from the session) when it is
    there and authenticated, else the connect token's ``sub`` (``message.user_id``), else None."""
    if message is None:
        return None
    user = getattr(message, "user", None)
    if user is not None:
        return _user_of(user)
    user_id = getattr(message, "user_id", None)
    return None if user_id is None else _user_of(user_id)


_resolver: Callable[[Any], Optional[str]] = resolve_user


def set_user_resolver(resolver: Optional[Callable[[Any], Optional[str]]]) -> None:
    """Use ``resolver(message) -> str | None`` for presence entries added without a ``user``
    (None: back to :func:`resolve_user`)."""
    global _resolver
    _resolver = resolver or resolve_user


def current_user() -> Optional[str]:
    """The user of the message being consumed (see :func:`resolve_user`), or None."""
    message = _state.message
    if message is None:
        return None
    user = _resolver(message)
    if user is not None and not isinstance(user, str):
        user = _user_of(user)
    return user
