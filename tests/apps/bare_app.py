"""Bare WSGI callables covering PEP 3333 corners: write(), exc_info, close(), file_wrapper, misbehaviour."""
from __future__ import annotations

import io
import sys

from wsgi_channels import route
from wsgi_channels.consumers.wsgi import WsgiConsumer

CLOSED: list[str] = []


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello ", b"world"]


def writer(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written ")
    write(b"then ")
    return [b"returned"]


class Closing:
    def __init__(self, tag, blocks):
        self.tag, self.blocks = tag, blocks

    def __iter__(self):
        for b in self.blocks:
            if isinstance(b, Exception):
                raise b
            yield b

    def close(self):
        CLOSED.append(self.tag)


def closing(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Closing(environ.get("QUERY_STRING", ""), [b"a", b"b", b"c"])


def fails_midway(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Closing("midway", [b"x" * 10, b"y" * 10, RuntimeError("mid-stream failure")])


def exc_info_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("handled")
    except ValueError:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("Retry-After", "5")],
                       sys.exc_info())
    return [b"try later"]


def file_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    data = io.BytesIO(bytes(range(256)) * 1000)
    return environ["wsgi.file_wrapper"](data, 4096)


def no_start(environ, start_response):
    return [b"forgot start_response"]


def yields_str(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ["not bytes"]


def bad_header(environ, start_response):
    start_response("200 OK", [("X-Bad", "a\r\nInjected: yes")])
    return [b""]


def echo_body(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(body)))])
    return [body]


def echo_lines(environ, start_response):
    lines = list(environ["wsgi.input"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(len(lines)).encode(), b":"] + lines


def environ_app(environ, start_response):
    import json

    keys = ["REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "CONTENT_LENGTH",
            "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "REMOTE_ADDR", "REMOTE_PORT", "HTTP_HOST",
            "HTTP_COOKIE", "HTTP_X_MULTI", "wsgi.url_scheme"]
    body = json.dumps({k: environ.get(k) for k in keys}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def content_length_lies(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"12345678"]


APPS = {name: obj for name, obj in dict(globals()).items()
        if callable(obj) and getattr(obj, "__module__", None) == __name__ and not isinstance(obj, type)}


def dispatch(environ, start_response):
    """Route by the first path segment to one of the apps above (``/hello``, ``/writer``, ...)."""
    from wsgiref.util import shift_path_info

    name = shift_path_info(environ)
    app = APPS.get(name or "")
    if app is None or app is dispatch:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such app"]
    return app(environ, start_response)


routing = [route("http.request", WsgiConsumer(dispatch))]
