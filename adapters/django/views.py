"""The browser client as a Django view (``include("wsgi_channels.adapters.django.urls")``)."""
from __future__ import annotations

from django.http import HttpResponse
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET

from .._common import client_js_bytes


@require_GET
@cache_control(public=True, max_age=300)
def client_js(request):  # type: ignore[no-untyped-def]
    return HttpResponse(client_js_bytes(), content_type="text/javascript; charset=utf-8")
