"""Django integration without Channels or ASGI: add ``"wsgi_channels.adapters.django"`` to ``INSTALLED_APPS``.

Settings, shaped like ``CACHES``::

    WSGI_CHANNELS = {
        "default": {
            "LAYER": "redis://localhost:6379/0",        # default: $WSGI_CHANNELS_LAYER, else ipc://
            "ROUTING": "myproject.routing:routes",      # what `manage.py runworker` runs
            "OPTIONS": {"capacity": 500},               # layer constructor keywords
            "ALLOWED_ORIGINS": ["https://example.com"], # passed to `manage.py runsidecar`
            "SIDECAR_URL": "http://127.0.0.1:8001",     # only when the sidecar is on another origin
            "TOKEN_SECRET": "...",                      # default: SECRET_KEY
            "PRESENCE_AUTHORIZE": "myproject.presence:may_see",  # who may read the presence view
        }
    }

Group history and presence are layer options: ``"OPTIONS": {"group_history": {"chat.*": {"size":
100, "ttl": 300}}, "group_presence": {"room.*": {"max_members": 1000}}}``, folded into the layer
URL that ``manage.py runworker``/``runsidecar`` pass on.

Push from anywhere (views, signals, Celery tasks)::

    from wsgi_channels.adapters.django import group_send
    group_send("liveblog", {"text": "..."})                  # now
    group_send("liveblog", {"text": "..."}, on_commit=True)  # after the current transaction commits

Consumers: decorate with :func:`django_consumer` (database connections handled as in a
request cycle; ``message.session`` and ``message.user`` from the handshake's session
cookie through the configured session engine and ``django.contrib.auth``), or
:func:`login_required` to refuse anonymous connections.

Pages: ``{% load wsgi_channels %}{% channels_url "/ws/news/" %}`` renders the URL to open (the
sidecar's, with a signed connect token, when ``SIDECAR_URL`` is set; else the path), and
``channels_url(request, path)`` does the same in Python; ``{% channels_position "chat" %}`` /
``channels_position(request, "chat")`` a history group's position for ``channels.js``'s
``positions``. Add ``path("", include("wsgi_channels.adapters.django.urls"))`` to serve the
browser client at ``/_wsgi_channels/static/channels.js`` (``manage.py check`` says so when it
is missing) and the presence view at ``/_wsgi_channels/presence/<group>``.

Management commands: ``manage.py runworker`` and ``manage.py runsidecar``; ``manage.py
check`` validates the settings (ids ``wsgi_channels.E001``...).

Django itself is imported only inside this adapter.
"""
from __future__ import annotations

from .connect import channels_position, channels_url
from .consumers import django_consumer, login_required
from .push import channel_send, get_layer_url, group, group_send

__all__ = ["channels_url", "channels_position", "django_consumer", "login_required", "group_send", "channel_send",
           "group", "get_layer_url"]
