"""A small Pyramid app: cookies, redirect, upload, unicode path, root_path via request.application_url."""
from __future__ import annotations

import hashlib
import json

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPFound
from pyramid.response import Response

from wsgi_channels import route
from wsgi_channels.consumers.wsgi import WsgiConsumer


def home(request):
    return Response("hello from pyramid")


def cookies(request):
    resp = Response("cookies")
    resp.set_cookie("p", "1")
    resp.set_cookie("q", "2")
    return resp


def go(request):
    return HTTPFound(location=request.route_url("home"))


def upload(request):
    data = request.body
    return Response(json.dumps({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}))


def name(request):
    return Response(json.dumps({"name": request.matchdict["name"], "path": request.path,
                                "script_name": request.script_name, "url": request.url}))


def make_app():
    with Configurator() as config:
        config.add_route("home", "/")
        config.add_view(home, route_name="home")
        config.add_route("cookies", "/cookies")
        config.add_view(cookies, route_name="cookies")
        config.add_route("go", "/go")
        config.add_view(go, route_name="go")
        config.add_route("upload", "/upload")
        config.add_view(upload, route_name="upload", request_method="POST")
        config.add_route("name", "/name/{name}")
        config.add_view(name, route_name="name")
        return config.make_wsgi_app()


app = make_app()
routing = [route("http.request", WsgiConsumer(app))]
