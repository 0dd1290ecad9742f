"""``settings.WSGI_CHANNELS`` -> a layer URL, a routing, options and origins, per alias.

The system checks (:mod:`.checks`) and everything else read settings through
:func:`alias_settings`, so a bad setting reads the same everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from ...channel import default_layer_url
from ...exceptions import ConfigurationError
from ...layers import layer_class, parse_options

DEFAULT_ALIAS = "default"
KNOWN_KEYS = {"LAYER", "ROUTING", "OPTIONS", "ALLOWED_ORIGINS", "SIDECAR_URL", "TOKEN_SECRET"}


@dataclass
class AliasSettings:
    alias: str
    layer: str
    routing: str | None = None
    options: dict = field(default_factory=dict)
    allowed_origins: list[str] = field(default_factory=list)
    #: The sidecar's public URL when it is not on the site's origin (``{% channels_url %}`` signs tokens for it).
    sidecar_url: str = ""
    #: The connect token secret (default: ``settings.SECRET_KEY``); the sidecar's ``--token-secret``.
    token_secret: str = field(default="", repr=False)

    @property
    def layer_url(self) -> str:
        """The layer URL with ``OPTIONS`` folded into its query (one layer per URL per process)."""
        if not self.options:
            return self.layer
        return self.layer + ("&" if "?" in self.layer else "?") + urlencode(self.options)


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
    layer = entry.get("LAYER") or default_layer_url()
    if not isinstance(layer, str):
        raise ConfigurationError(f"{where}['LAYER'] must be a layer URL string, got {type(layer).__name__}")
    try:
        layer_class(layer)
    except ConfigurationError as e:
        raise ConfigurationError(f"{where}['LAYER']: {e}") from None
    options = entry.get("OPTIONS") or {}
    if not isinstance(options, dict):
        raise ConfigurationError(f"{where}['OPTIONS'] must be a dict of layer keywords, got {type(options).__name__}")
    try:
        parse_options(urlencode(options))
    except ConfigurationError as e:
        raise ConfigurationError(f"{where}['OPTIONS']: {e}") from None
    routing = entry.get("ROUTING")
    if routing is not None and not isinstance(routing, str):
        raise ConfigurationError(f"{where}['ROUTING'] must be a dotted path string like 'myproject.routing:routes'")
    origins = entry.get("ALLOWED_ORIGINS") or []
    if isinstance(origins, str) or not all(isinstance(o, str) for o in origins):
        raise ConfigurationError(f"{where}['ALLOWED_ORIGINS'] must be a list of origins like 'https://example.com'")
    from .._common import check_sidecar_url

    sidecar_url = check_sidecar_url(entry.get("SIDECAR_URL"), f"{where}['SIDECAR_URL']")
    token_secret = entry.get("TOKEN_SECRET") or ""
    if not isinstance(token_secret, str):
        raise ConfigurationError(f"{where}['TOKEN_SECRET'] must be a string (default: settings.SECRET_KEY)")
    if sidecar_url and not token_secret:
        from django.conf import settings as django_settings

        token_secret = getattr(django_settings, "SECRET_KEY", "") or ""
    return AliasSettings(alias, layer, routing, dict(options), list(origins), sidecar_url, token_secret)
