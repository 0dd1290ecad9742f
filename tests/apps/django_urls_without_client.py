"""A Django URLconf that forgot ``include("wsgi_channels.adapters.django.urls")`` (check wsgi_channels.W002)."""
from django.http import HttpResponse
from django.urls import path

urlpatterns = [path("", lambda request: HttpResponse("home"))]
