"""Moved to :mod:`wsgi_channels.protocol.translation`; this name keeps old imports working."""
from .protocol.translation import *  # noqa: F401,F403
from .protocol.translation import __all__  # noqa: F401
