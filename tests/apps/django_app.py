"""A plain Django project in one file (no Channels, no ASGI), used from subprocesses only.

``DJANGO_SETTINGS_MODULE=apps.django_app`` makes this module the settings too,
so Django is configured once per process and never inside the pytest process.
"""
from __future__ import annotations

import hashlib
import json

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = __name__
USE_TZ = True
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict = {}
DEFAULT_CHARSET = "utf-8"


def _views():
    from django.http import HttpResponse, HttpResponseRedirect, StreamingHttpResponse
    from django.views.decorators.csrf import csrf_exempt

    def home(request):
        return HttpResponse("hello from django")

    def cookies(request):
        resp = HttpResponse("cookies")
        resp.set_cookie("d1", "1")
        resp.set_cookie("d2", "2", httponly=True)
        return resp

    def go(request):
        return HttpResponseRedirect("/")

    @csrf_exempt
    def upload(request):
        if request.FILES:
            f = request.FILES["file"]
            data = f.read()
            return HttpResponse(json.dumps({"name": f.name, "size": len(data),
                                            "sha256": hashlib.sha256(data).hexdigest()}))
        data = request.body
        return HttpResponse(json.dumps({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}))

    def stream(request):
        return StreamingHttpResponse((f"chunk {i}\n" for i in range(5)), content_type="text/plain")

    def where(request, name):
        return HttpResponse(json.dumps({"name": name, "path": request.path, "path_info": request.path_info,
                                        "script_name": request.META["SCRIPT_NAME"],
                                        "uri": request.build_absolute_uri()}))

    return home, cookies, go, upload, stream, where


def _urls():
    from django.urls import path

    home, cookies, go, upload, stream, where = _views()
    return [path("", home), path("cookies", cookies), path("go", go), path("upload", upload),
            path("stream", stream), path("where/<str:name>", where)]


def __getattr__(name):
    if name == "urlpatterns":
        return _urls()
    if name == "routing":  # for `wsgi-channels worker apps.django_app:routing`
        from wsgi_channels import route
        from wsgi_channels.consumers.wsgi import WsgiConsumer

        return [route("http.request", WsgiConsumer(get_app()))]
    raise AttributeError(name)


def get_app():
    import django
    from django.core.wsgi import get_wsgi_application

    django.setup()
    return get_wsgi_application()
