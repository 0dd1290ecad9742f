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
        if entry.layer.startswith("memory:"):
            warnings.append(checks.Warning(
                f"WSGI_CHANNELS[{alias!r}] uses the in-memory layer: pushes from one process never reach "
                "a worker or sidecar in another.",
                hint="Use redis://... (several machines) or ipc:///path (one machine) outside `wsgi-channels runserver`.",
                id="wsgi_channels.W001"))
    return warnings
