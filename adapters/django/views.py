"""The browser client and the presence view as Django views (``include("wsgi_channels.adapters.django.urls")``)."""
from __future__ import annotations

from django.http import HttpResponse
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET

from .._common import client_js_bytes, presence_answer
from .conf import DEFAULT_ALIAS, alias_settings


@require_GET
@cache_control(public=True, max_age=300)
def client_js(request):  # type: ignore[no-untyped-def]
    return HttpResponse(client_js_bytes(), content_type="text/javascript; charset=utf-8")


@require_GET
def presence(request, group, alias=DEFAULT_ALIAS):  # type: ignore[no-untyped-def]
    """Who is in ``group``, for ``channels.js``'s ``presence(group)``: 404 unless
    ``WSGI_CHANNELS[alias]["PRESENCE_AUTHORIZE"]`` names ``(request, group) -> bool`` (403 when
    false); JSON ``{group, clients, users, members: [{id, user, info, since}]}``, never cached
    (see :func:`wsgi_channels.adapters._common.presence_answer`)."""
    entry = alias_settings(alias)
    authorize = entry.presence_authorizer(f"WSGI_CHANNELS[{alias!r}]['PRESENCE_AUTHORIZE']")
    answer = presence_answer(entry.layer_url, authorize, request, group)
    response = HttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers:
        response[name] = value
    return response
