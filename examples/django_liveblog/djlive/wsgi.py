"""The WSGI app, for gunicorn (``gunicorn djlive.wsgi``) or ``wsgi-channels runserver djlive.wsgi:application``."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djlive.settings")
application = get_wsgi_application()
