"""Settings of the django_liveblog example: plain Django plus ``wsgi_channels.adapters.django``."""
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJLIVE_SECRET_KEY", "django-insecure-example-only-change-me")
DEBUG = os.environ.get("DJLIVE_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "wsgi_channels.adapters.django",
    "blog",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

ROOT_URLCONF = "djlive.urls"
WSGI_APPLICATION = "djlive.wsgi.application"
TEMPLATES: list = []

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJLIVE_DB") or str(BASE_DIR / "djlive.db"),
        "OPTIONS": {"timeout": 10},
    }
}

LOGIN_URL = "/login/"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# wsgi_channels: the layer every process shares (gunicorn, the sidecar, the workers).
WSGI_CHANNELS = {
    "default": {
        "LAYER": os.environ.get("WSGI_CHANNELS_LAYER") or "memory://",
        "ROUTING": "blog.consumers:routing",
    }
}
