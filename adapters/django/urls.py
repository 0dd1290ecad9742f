"""``path("", include("wsgi_channels.adapters.django.urls"))`` serves ``/_wsgi_channels/static/channels.js``
and the presence view ``/_wsgi_channels/presence/<group>`` (404 until ``PRESENCE_AUTHORIZE`` is set)."""
from django.urls import path

from . import views

urlpatterns = [
    path("_wsgi_channels/static/channels.js", views.client_js, name="wsgi_channels_client_js"),
    path("_wsgi_channels/presence/<path:group>", views.presence, name="wsgi_channels_presence"),
]
