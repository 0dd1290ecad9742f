"""Template tags: ``{% load wsgi_channels %}``.

``{% channels_url "/ws/news/" %}`` renders the URL a page opens for a WebSocket
path (see :func:`wsgi_channels.adapters.django.connect.channels_url`): the
sidecar's URL with a signed connect token when ``SIDECAR_URL`` is set, else the
path. It reads ``request`` from the context (the ``request`` context processor)
for the page's origin and the user. Keyword arguments: ``user_id``, ``groups``
(comma-separated or a list), ``max_age``, ``alias``. In a script, quote it with
``json_script`` or ``escapejs``::

    connect("{% channels_url '/ws/news/' as url %}{{ url|escapejs }}")

``{% channels_position "chat.lobby" %}`` renders the history position of a group as
JSON for ``channels.js``'s ``positions`` (``positions: {"chat.lobby": {% channels_position
"chat.lobby" %}}``), the same position the view read with
:func:`~wsgi_channels.adapters.django.connect.channels_position` for this request (call it
there before reading the page's data). Keyword argument: ``alias``.
"""
from __future__ import annotations

from typing import Any

from django import template

from ..connect import _FROM_REQUEST
from ..connect import channels_position as _channels_position
from ..connect import channels_url as _channels_url

register = template.Library()


@register.simple_tag(takes_context=True)
def channels_url(context: Any, path: str, user_id: Any = _FROM_REQUEST, groups: Any = None,
                 max_age: Any = None, alias: str = "default") -> str:
    if isinstance(groups, str):
        groups = [g.strip() for g in groups.split(",") if g.strip()]
    return _channels_url(context.get("request"), str(path), user_id=user_id, groups=groups,
                         max_age=float(max_age) if max_age is not None else None, alias=alias)


@register.simple_tag(takes_context=True)
def channels_position(context: Any, group: str, alias: str = "default") -> Any:
    return _channels_position(context.get("request"), str(group), alias=alias)
