"""System checks: ``manage.py check`` catches bad ``WSGI_CHANNELS`` settings before anything runs."""
from __future__ import annotations

from typing import Any

from django.core import checks

from ...exceptions import ConfigurationError
from .._common import import_dotted
from .conf import alias_settings, raw_settings


@checks.register("wsgi_channels")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list:
    errors: list = []
    settings = raw_settings()
    if not isinstance(settings, dict):
        return [checks.Error("WSGI_CHANNELS must be a dict of aliases, like CACHES.",
                             hint='WSGI_CHANNELS = {"default": {"LAYER": "redis://localhost:6379/0"}}',
                             id="wsgi_channels.E001")]
    for alias in settings or {"default": {}}:
        try:
            entry = alias_settings(alias)
        except ConfigurationError as e:
            errors.append(checks.Error(str(e), hint="See the WSGI_CHANNELS section of the wsgi_channels README.",
                                       id="wsgi_channels.E002"))
            continue
        if entry.routing:
            try:
                import_dotted(entry.routing, f"WSGI_CHANNELS[{alias!r}]['ROUTING']")
            except Exception as e:
                errors.append(checks.Error(f"WSGI_CHANNELS[{alias!r}]['ROUTING'] cannot be imported: {e}",
                                           hint="Give a dotted path to a list of routes, e.g. 'myproject.routing:routes'.",
                                           id="wsgi_channels.E003"))
        setting = f"WSGI_CHANNELS[{alias!r}]['PRESENCE_AUTHORIZE']"
        try:
            entry.presence_authorizer(setting)
        except Exception as e:
            errors.append(checks.Error(str(e) if setting in str(e) else f"{setting} cannot be imported: {e}",
                                       hint="Give a callable (request, group) -> bool or its dotted path, e.g. "
                                            "'myproject.presence:may_see'.", id="wsgi_channels.E005"))
    if "default" not in settings and settings:
        errors.append(checks.Error("WSGI_CHANNELS has no 'default' alias.",
                                   hint="Name one alias 'default', as with CACHES.", id="wsgi_channels.E004"))
    return errors


@checks.register("wsgi_channels", deploy=True)
def check_deploy(app_configs: Any = None, **kwargs: Any) -> list:
    """``manage.py check --deploy``: the in-memory layer cannot work across processes."""
    warnings: list = []
    settings = raw_settings()
    if not isinstance(settings, dict):
        return warnings
    for alias in settings or {"default": {}}:
        try:
            entry = alias_settings(alias)
        except ConfigurationError:
            continue  # reported by check_settings
        if entry.configured_layer.startswith("memory:"):
            warnings.append(checks.Warning(
                f"WSGI_CHANNELS[{alias!r}] uses the in-memory layer: pushes from one process never reach "
                "a worker or sidecar in another.",
                hint="Use redis://... (several machines) or ipc:///path (one machine) outside `wsgi-channels runserver`.",
                id="wsgi_channels.W001"))
    return warnings


@checks.register("wsgi_channels", checks.Tags.urls)
def check_client_js_url(app_configs: Any = None, **kwargs: Any) -> list:
    """The browser client must be reachable at ``/_wsgi_channels/static/channels.js`` on the site.

    Django serves nothing an app's URLconf does not include, and an app cannot add
    to the project's URLconf by itself: say which line to add, instead of a 404 in
    the browser's console.
    """
    from django.conf import settings
    from django.urls import Resolver404, resolve

    from .._common import CLIENT_JS_URL

    if not getattr(settings, "ROOT_URLCONF", None):
        return []
    try:
        match = resolve(CLIENT_JS_URL)
    except Resolver404:
        match = None
    except Exception:  # a URLconf that does not import is Django's own check (urls.E...) to report
        return []
    from .views import client_js

    if match is not None and match.func is client_js:
        return []
    return [checks.Warning(
        f"The browser client {CLIENT_JS_URL} is not served: no URL pattern of ROOT_URLCONF "
        f"({settings.ROOT_URLCONF}) leads to wsgi_channels' view, so pages importing it get a 404.",
        hint='Add path("", include("wsgi_channels.adapters.django.urls")) to urlpatterns in your urls.py '
             "(or serve the file another way and silence wsgi_channels.W002).",
        id="wsgi_channels.W002")]
