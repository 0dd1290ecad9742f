"""``manage.py runworker``: a wsgi_channels worker on ``WSGI_CHANNELS[alias]['ROUTING']``."""
from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from .....exceptions import ConfigurationError
from ...conf import alias_settings


class Command(BaseCommand):
    help = "Run a wsgi_channels worker with the layer and routing from settings.WSGI_CHANNELS."

    def add_arguments(self, parser):
        parser.add_argument("--alias", default="default", help="WSGI_CHANNELS alias (default: default)")
        parser.add_argument("worker_args", nargs="*", help="extra options for `wsgi-channels worker` (after --)")

    def handle(self, *args, **options):
        try:
            entry = alias_settings(options["alias"])
        except ConfigurationError as e:
            raise CommandError(str(e)) from None
        if not entry.routing:
            raise CommandError(f"WSGI_CHANNELS[{options['alias']!r}]['ROUTING'] is not set: "
                               "name your routes, e.g. 'myproject.routing:routes'")
        from .....cli import main

        code = main(["worker", entry.routing, "--layer", entry.layer_url, *options["worker_args"]])
        if code:
            sys.exit(code)
