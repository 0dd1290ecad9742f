"""The exit statuses of the ``wsgi-channels`` commands, named.

A neutral module: the worker, the sidecar, the command line and the Flask and
Django commands all return these, and none of them needs the others to know
them. Process supervisors (systemd, Kubernetes, supervisord) read them.
"""
from __future__ import annotations

__all__ = ["EXIT_OK", "EXIT_USAGE", "EXIT_CONFIG", "EXIT_UNAVAILABLE", "EXIT_RESTART"]

EXIT_OK = 0
#: A command line that does not parse (argparse's own status), or a bad ``WSGI_CHANNELS_*`` value.
EXIT_USAGE = 2
#: A start-up failure caused by configuration (bad URL, bad routing, unusable file).
EXIT_CONFIG = 3
#: The layer could not be reached at start-up.
EXIT_UNAVAILABLE = 4
#: The worker stopped itself, after finishing its messages in flight, because too many of its
#: threads were stuck in messages past the time limit (``--max-abandoned``): a supervisor
#: (systemd ``Restart=on-failure``, Kubernetes, supervisord) starts a fresh process. 75 is
#: ``EX_TEMPFAIL`` of sysexits.h: a temporary failure, try again.
EXIT_RESTART = 75
