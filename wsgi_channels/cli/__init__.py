"""The ``wsgi-channels`` command (:func:`main`): one console script, one module per subcommand.

==============  =======================================================================
``main``        the parser, gevent patching, logging set-up, errors turned into one line
``worker``      ``wsgi-channels worker``
``sidecar``     ``wsgi-channels sidecar``
``runserver``   ``wsgi-channels runserver``: app, sidecar and worker in one process
``tools``       ``send``, ``group-send`` and ``stats``
==============  =======================================================================

Exit statuses are named in :mod:`wsgi_channels.exitcodes` (re-exported here).
"""
from __future__ import annotations

from ..exitcodes import EXIT_CONFIG, EXIT_OK, EXIT_RESTART, EXIT_UNAVAILABLE, EXIT_USAGE
from .main import build_parser, main, setup_logging

__all__ = ["main", "build_parser", "setup_logging", "EXIT_OK", "EXIT_USAGE", "EXIT_CONFIG", "EXIT_UNAVAILABLE",
           "EXIT_RESTART"]
