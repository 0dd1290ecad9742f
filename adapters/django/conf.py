"""``settings.WSGI_CHANNELS`` -> a layer URL, a routing, options and origins, per alias.

The checks and the defaults are :class:`~wsgi_channels.settings.AppSettings`'s, shared with the
Flask and Pyramid adapters; this module only reads Django's shape (``CACHES``-like aliases).

The system checks (:mod:`.checks`) and everything else read settings through
:func:`alias_settings`, so a bad setting reads the same everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...exceptions import ConfigurationError
from ...settings import AppSettings, SettingNames

DEFAULT_ALIAS = "default"
KNOWN_KEYS = {"LAYER", "ROUTING", "OPTIONS", "ALLOWED_ORIGINS", "SIDECAR_URL", "TOKEN_SECRET", "PRESENCE_AUTHORIZE"}


@dataclass
class AliasSettings(AppSettings):
    """One alias's checked settings (:class:`~wsgi_channels.settings.AppSettings`): ``layer_url``
    has ``OPTIONS`` folded in; ``token_secret`` defaults to ``settings.SECRET_KEY`` when a
    ``SIDECAR_URL`` needs one."""

    alias: str = DEFAULT_ALIAS


def _names(alias: str) -> SettingNames:
    where = f"WSGI_CHANNELS[{alias!r}]"
    return SettingNames(*(f"{where}[{key!r}]" for key in ("LAYER", "OPTIONS", "ROUTING", "ALLOWED_ORIGINS",
                                                          "SIDECAR_URL", "TOKEN_SECRET", "PRESENCE_AUTHORIZE")))


def raw_settings() -> dict:
    from django.conf import settings

    value = getattr(settings, "WSGI_CHANNELS", None)
    if value is None:
        return {DEFAULT_ALIAS: {}}
    return value


def alias_settings(alias: str = DEFAULT_ALIAS) -> AliasSettings:
    """Validated settings for ``alias``; raises :class:`ConfigurationError` naming the bad key."""
    settings = raw_settings()
    if not isinstance(settings, dict):
        raise ConfigurationError(f"WSGI_CHANNELS must be a dict of aliases like CACHES, got {type(settings).__name__}")
    if alias not in settings:
        if alias == DEFAULT_ALIAS:
            entry: Any = {}
        else:
            raise ConfigurationError(f"WSGI_CHANNELS has no alias {alias!r} (aliases: {', '.join(settings) or 'none'})")
    else:
        entry = settings[alias]
    where = f"WSGI_CHANNELS[{alias!r}]"
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where} must be a dict with LAYER, ROUTING, OPTIONS, got {type(entry).__name__}")
    unknown = sorted(set(entry) - KNOWN_KEYS)
    if unknown:
        raise ConfigurationError(f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_KEYS))}")
    routing = entry.get("ROUTING")
    if routing is not None and not isinstance(routing, str):
        raise ConfigurationError(f"{where}['ROUTING'] must be a dotted path string like 'myproject.routing:routes'")
    origins = entry.get("ALLOWED_ORIGINS") or []
    if isinstance(origins, str):
        raise ConfigurationError(f"{where}['ALLOWED_ORIGINS'] must be a list of origins like 'https://example.com'")
    token_secret = entry.get("TOKEN_SECRET") or ""
    if not isinstance(token_secret, str):
        raise ConfigurationError(f"{where}['TOKEN_SECRET'] must be a string (default: settings.SECRET_KEY)")
    if entry.get("SIDECAR_URL") and not token_secret:
        from django.conf import settings as django_settings

        token_secret = getattr(django_settings, "SECRET_KEY", "") or ""
    return AliasSettings.parse(_names(alias), layer=entry.get("LAYER"), options=entry.get("OPTIONS"), routing=routing,
                               allowed_origins=origins, sidecar_url=entry.get("SIDECAR_URL"),
                               token_secret=token_secret, presence_authorize=entry.get("PRESENCE_AUTHORIZE"),
                               alias=alias)
