"""Moved to :mod:`wsgi_channels.protocol.responses`; this name keeps old imports working."""
from .protocol.responses import *  # noqa: F401,F403
from .protocol.responses import __all__  # noqa: F401
