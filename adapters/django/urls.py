"""``path("", include("wsgi_channels.adapters.django.urls"))`` serves ``/_wsgi_channels/static/channels.js``."""
from django.urls import path

from . import views

urlpatterns = [
    path("_wsgi_channels/static/channels.js", views.client_js, name="wsgi_channels_client_js"),
]
