"""``python -m wsgi_channels ...`` is the ``wsgi-channels`` command."""
import sys

from .cli import main

sys.exit(main())
