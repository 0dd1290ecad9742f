"""``manage.py runsidecar``: the WebSocket sidecar on the layer from ``settings.WSGI_CHANNELS``.

The sidecar is a gevent server that must be monkey-patched before anything is
imported, so this command replaces the process with a fresh ``wsgi-channels
sidecar`` interpreter; it needs no Django at all.
"""
from __future__ import annotations

import os
import sys

from django.core.management.base import BaseCommand, CommandError

from .....exceptions import ConfigurationError
from ...conf import alias_settings


class Command(BaseCommand):
    help = "Run the wsgi_channels WebSocket sidecar with the layer from settings.WSGI_CHANNELS."

    def add_arguments(self, parser):
        parser.add_argument("--alias", default="default", help="WSGI_CHANNELS alias (default: default)")
        parser.add_argument("--bind", default=None, help="HOST:PORT or unix:PATH (default: the sidecar's)")
        parser.add_argument("sidecar_args", nargs="*", help="extra options for `wsgi-channels sidecar` (after --)")

    def handle(self, *args, **options):
        try:
            entry = alias_settings(options["alias"])
        except ConfigurationError as e:
            raise CommandError(str(e)) from None
        extra = (["--bind", options["bind"]] if options["bind"] else []) + options["sidecar_args"]
        try:
            # The site's token secret goes through the environment rather than argv (visible in `ps`).
            argv, env = entry.sidecar_command(sys.executable, extra)
        except ConfigurationError as e:
            raise CommandError(str(e)) from None
        os.environ.update(env)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)
