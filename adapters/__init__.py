"""Framework adapters, installed as ``wsgi_channels.adapters``.

Import them as ``wsgi_channels.adapters.flask``, ``wsgi_channels.adapters.pyramid``
or ``wsgi_channels.adapters.django``; each imports its framework lazily.
"""
