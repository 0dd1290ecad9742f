"""One small app per framework serving the presence view and a page with ``channels_position``,
for ``tests/test_adapter_presence_http.py`` (under gunicorn, on the layer of ``WSGI_CHANNELS_LAYER``).

- ``apps.presence_apps:flask_app`` (and ``flask_routing``: a socket on ``/ws/`` joins ``news``;
  ``POST /post`` sends to ``chat.lobby`` and to ``news``), ``apps.presence_apps:pyramid_app``;
- Django: ``DJANGO_SETTINGS_MODULE=apps.presence_apps`` (this module is its settings and URLconf too)
  and ``apps.presence_apps:django_app``.

Each keeps history of ``chat.*`` and presence of ``room.*`` through its own options setting, and lets
a caller sending ``X-Member: yes`` read the presence of any ``room.*`` group but ``room.secret``.
``GET /page`` answers the JSON of ``channels_position("chat.lobby")``.
"""
from __future__ import annotations

OPTIONS = {"group_history": {"chat.*": {"size": 50}}, "group_presence": {"room.*": {"max_members": 100}}}


def may_see(request, group):
    return request.headers.get("X-Member") == "yes" and group != "room.secret"


# -- Flask -----------------------------------------------------------------------------------------


def _flask():
    import flask

    from wsgi_channels.adapters.flask import Channels

    app = flask.Flask("presence_flask")
    app.config.update(WSGI_CHANNELS_OPTIONS=OPTIONS, WSGI_CHANNELS_PRESENCE_AUTHORIZE=f"{__name__}:may_see")
    Channels(app)

    channels = app.extensions["wsgi_channels"].extension

    @app.get("/page")
    def page():
        return flask.render_template_string('{{ channels_position("chat.lobby") }}')

    @app.post("/post")
    def post():
        channels.group_send("chat.lobby", {"text": "kept"})  # numbered and kept (no socket follows it here)
        channels.group_send("news", {"text": "posted"})
        return "", 204

    @channels.consumer("websocket.connect", path=r"^/ws/$")
    def connect(message):
        channels.group("news").add(message.reply_channel)
        message.reply_channel.send({"accept": True})

    return app


def _flask_routing():
    import sys

    from wsgi_channels.adapters.flask import routing_for

    return routing_for(sys.modules[__name__].flask_app)  # the one app (module __getattr__ builds it once)


# -- Pyramid ---------------------------------------------------------------------------------------


def _pyramid():
    from pyramid.config import Configurator

    from wsgi_channels.settings import feature_items

    settings = {f"wsgi_channels.option.{k}": " ".join(feature_items(k, v)) for k, v in OPTIONS.items()}
    settings["wsgi_channels.presence_authorize"] = f"{__name__}:may_see"
    with Configurator(settings=settings) as config:
        config.include("wsgi_channels.adapters.pyramid")

        def page(request):
            request.response.text = request.channels_position("chat.lobby")
            return request.response

        config.add_route("page", "/page")
        config.add_view(page, route_name="page")
        return config.make_wsgi_app()


# -- Django (this module is the settings and the URLconf) -------------------------------------------

SECRET_KEY = "presence-apps"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = __name__
USE_TZ = True
INSTALLED_APPS = ["wsgi_channels.adapters.django"]
MIDDLEWARE: list[str] = []
DATABASES: dict = {}
WSGI_CHANNELS = {"default": {"OPTIONS": OPTIONS, "PRESENCE_AUTHORIZE": f"{__name__}:may_see"}}


def _django_urls():
    from django.http import HttpResponse
    from django.urls import include, path

    from wsgi_channels.adapters.django import channels_position

    def page(request):
        return HttpResponse(channels_position(request, "chat.lobby"), content_type="application/json")

    return [path("", include("wsgi_channels.adapters.django.urls")), path("page", page)]


def _django():
    import django
    from django.core.wsgi import get_wsgi_application

    django.setup()
    return get_wsgi_application()


def __getattr__(name):
    builders = {"flask_app": _flask, "pyramid_app": _pyramid, "django_app": _django, "urlpatterns": _django_urls,
                "flask_routing": _flask_routing}
    if name in builders:
        value = builders[name]()
        globals()[name] = value
        return value
    raise AttributeError(name)


# -- a bare WSGI app for `wsgi-channels runserver --group-history` ----------------------------------


def position_wsgi(environ, start_response):
    """``GET /``: ``chat.lobby``'s position as JSON (500 without a history pattern); ``POST /``: send to it."""
    import json

    from wsgi_channels import Group

    group = Group("chat.lobby")
    if environ["REQUEST_METHOD"] == "POST":
        group.send({"text": "posted"})
        start_response("204 No Content", [])
        return [b""]
    epoch, offset = group.position()
    body = json.dumps({"epoch": epoch, "offset": offset}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
