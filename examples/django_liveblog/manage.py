#!/usr/bin/env python
"""Django's command-line utility for the django_liveblog example (see README.md).

Besides Django's own commands: ``runworker`` and ``runsidecar`` from
``wsgi_channels.adapters.django``.
"""
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djlive.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
