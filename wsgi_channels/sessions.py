"""Moved to :mod:`wsgi_channels.consumers.sessions`; this name stays importable until the imports follow.

The old name is the same module object (private names and patches included), not a copy.
"""
import sys

from .consumers import sessions as _module
from .consumers.sessions import *  # noqa: F401,F403  (for type checkers, which do not follow the swap below)

sys.modules[__name__] = _module
