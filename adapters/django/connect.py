"""What a page needs to connect: ``channels_url`` (the URL to open) and ``channels_position``.

``channels_url``: the URL a page opens for a WebSocket path, with a signed connect token when needed.

With ``WSGI_CHANNELS["default"]["SIDECAR_URL"]`` set (the sidecar on another
origin, such as ``http://127.0.0.1:8001`` in development), the URL is the
sidecar's, with a token signed with ``TOKEN_SECRET`` (default ``SECRET_KEY``)
for that path, the page's origin and the logged-in user; the sidecar (started
with the same secret as ``--token-secret``; ``manage.py runsidecar`` passes it)
accepts it from the page's origin, and consumers read ``message.user_id`` and
``message.token_claims``. Without it, the path itself (nginx routes it to the
sidecar on the site's origin).

``channels_position``: a history group's position as JSON for ``channels.js``'s
``positions``, the same for the whole request (call it in the view before reading
the data the page renders; ``{% channels_position "group" %}`` then renders it).
"""
from __future__ import annotations

from typing import Any

from django.utils.safestring import SafeString, mark_safe

from .._common import position_json, position_of, sidecar_connect_url
from .conf import DEFAULT_ALIAS, alias_settings

__all__ = ["channels_url", "channels_position", "position"]

_FROM_REQUEST = object()


def channels_url(request: Any, path: str, *, user_id: Any = _FROM_REQUEST, groups: Any = None,
                 max_age: float | None = None, alias: str = DEFAULT_ALIAS, origin: str | None = None) -> str:
    """The URL for WebSocket ``path``; ``user_id`` defaults to ``request.user.pk`` when logged in.

    ``request`` may be None (no origin binding, anonymous unless ``user_id`` is given).
    """
    entry = alias_settings(alias)
    if user_id is _FROM_REQUEST:
        user = getattr(request, "user", None)
        user_id = user.pk if user is not None and getattr(user, "is_authenticated", False) else None
    if user_id is not None and not isinstance(user_id, (str, int)):
        user_id = str(user_id)  # a UUID primary key
    if origin is None and request is not None:
        origin = f"{request.scheme}://{request.get_host()}"
    where = f"WSGI_CHANNELS[{alias!r}]"
    return sidecar_connect_url(entry.sidecar_url, entry.token_secret, path, user_id=user_id, groups=groups,
                               origin=origin, max_age=max_age, setting=f"{where}['SIDECAR_URL']",
                               secret_setting=f"{where}['TOKEN_SECRET'] or SECRET_KEY")


def position(request: Any, group: str, *, alias: str = DEFAULT_ALIAS) -> dict:
    """``{"epoch", "offset"}`` of ``Group(group).position()`` on the alias's layer, the same for
    every call with this ``request`` (kept on it; None: read now). Raises ``HistoryNotEnabled``
    for a group without a ``group_history`` pattern."""
    memo = None
    if request is not None:
        memo = request.__dict__.setdefault("_wsgi_channels_positions", {}).setdefault(alias, {})
    return position_of(alias_settings(alias).layer_url, group, memo)


def channels_position(request: Any, group: str, *, alias: str = DEFAULT_ALIAS) -> SafeString:
    """:func:`position` as JSON safe inside ``<script>``: ``positions: {"chat": {% channels_position "chat" %}}``.

    Call it in the view *before* reading the data the page renders: the template tag then renders
    that position, so the page's socket is replayed everything published after the read.
    """
    return mark_safe(position_json(position(request, group, alias=alias)))
