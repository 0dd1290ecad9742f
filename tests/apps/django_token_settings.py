"""Django settings whose sidecar is on another origin: ``manage.py runsidecar`` must share SECRET_KEY."""
import os

SECRET_KEY = "django-site-secret"
INSTALLED_APPS = ["wsgi_channels.adapters.django"]
DATABASES: dict = {}
USE_TZ = True
WSGI_CHANNELS = {"default": {"LAYER": os.environ["TOKEN_TEST_LAYER"], "SIDECAR_URL": "http://127.0.0.1:8001"}}
