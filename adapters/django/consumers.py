"""Consumer decorators: a request cycle for the database, the handshake's session and user.

``websocket.connect`` carries the browser's cookies; the session cookie is read
through ``settings.SESSION_ENGINE`` (database, cache, file or signed-cookie
sessions alike) and the user through ``django.contrib.auth.get_user``, exactly
as ``SessionMiddleware`` and ``AuthenticationMiddleware`` would in a view. Later
frames of the same socket find the cookie in the channel session, so
``message.user`` is the same user on every message of the connection.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from ...consumers.sessions import channel_session
from .._common import consuming, extend_message, handshake_cookies, header, message_content, reject, set_attribute

logger = logging.getLogger(__name__)

__all__ = ["django_consumer", "login_required"]


class _HandshakeRequest:
    """The little of ``HttpRequest`` that ``django.contrib.auth.get_user`` reads."""

    def __init__(self, session: Any, message: Any) -> None:
        self.session = session
        self.META = {"HTTP_USER_AGENT": header(message, "user-agent") or ""}
        self.path = message_content(message).get("path") or "/"


def _load_session_and_user(message: Any, with_user: bool) -> None:
    from importlib import import_module

    from django.conf import settings

    cookie = handshake_cookies(message).get(settings.SESSION_COOKIE_NAME)
    engine = import_module(settings.SESSION_ENGINE)
    session = engine.SessionStore(session_key=cookie)
    set_attribute(message, "session", session)
    if with_user:
        from django.contrib.auth import get_user

        set_attribute(message, "user", get_user(_HandshakeRequest(session, message)))




def django_consumer(func: Callable | None = None, *, session: bool = True, user: bool = True) -> Any:
    """Run a consumer like a Django request: connections closed if stale before, and after.

    With ``session`` (default) the message gets ``message.session`` (the
    handshake's Django session, never saved back) and, with ``user``,
    ``message.user`` (``AnonymousUser`` when not logged in), which is also the user
    of presence entries the consumer adds without one
    (``Group(name).add(message.reply_channel, presence={})``).
    """
    if func is None:
        return lambda f: django_consumer(f, session=session, user=user)

    @functools.wraps(func)
    def run(message: Any, **kwargs: Any) -> Any:
        from django.db import close_old_connections, reset_queries

        message = extend_message(message)
        reset_queries()
        close_old_connections()
        try:
            if session:
                _load_session_and_user(message, user)
            with consuming(message):
                return func(message, **kwargs)
        finally:
            close_old_connections()

    return channel_session(run) if session else run


def login_required(func: Callable) -> Callable:
    """Like :func:`django_consumer`, and refuse anonymous users.

    On ``websocket.connect`` the handshake is rejected (the browser sees HTTP
    403); on later messages of a socket whose user logged out, the socket is
    closed with 1008 (the browser client's "stop" code).
    """

    @functools.wraps(func)
    def guarded(message: Any, **kwargs: Any) -> Any:
        user = getattr(message, "user", None)
        if user is None or not user.is_authenticated:
            logger.info("WebSocket refused: not logged in", extra={"path": message_content(message).get("path")})
            return reject(message)
        return func(message, **kwargs)

    return django_consumer(guarded)
