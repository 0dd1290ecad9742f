"""The Django app config: registers the system checks."""
from __future__ import annotations

from django.apps import AppConfig


class WsgiChannelsConfig(AppConfig):
    name = "wsgi_channels.adapters.django"
    label = "wsgi_channels"
    verbose_name = "wsgi_channels"
    default = True

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the checks)
