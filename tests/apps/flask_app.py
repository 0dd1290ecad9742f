"""A Flask app exercising what a bridge can get wrong: cookies, redirects, streaming, uploads, unicode."""
from __future__ import annotations

import hashlib
import json
import time

from flask import Flask, Response, redirect, request, stream_with_context, url_for

from wsgi_channels import route
from wsgi_channels.consumers.wsgi import WsgiConsumer

app = Flask("flask_app")


@app.route("/")
def index():
    return "hello from flask"


@app.route("/cookies")
def cookies():
    resp = Response("cookies set")
    resp.set_cookie("a", "1")
    resp.set_cookie("b", "2", httponly=True, path="/x")
    return resp


@app.route("/read-cookies")
def read_cookies():
    return json.dumps(dict(sorted(request.cookies.items())))


@app.route("/redirect")
def go():
    return redirect(url_for("target", q="1"))


@app.route("/target")
def target():
    return "target " + request.args.get("q", "")


@app.route("/stream/<int:n>")
def stream(n):
    def generate():
        for i in range(n):
            yield f"line {i}\n"
    return Response(stream_with_context(generate()), mimetype="text/plain")


@app.route("/big/<int:n>")
def big(n):
    return Response(b"x" * n, mimetype="application/octet-stream")


@app.route("/upload", methods=["POST", "PUT"])
def upload():
    if request.files:
        f = request.files["file"]
        data = f.read()
        return json.dumps({"filename": f.filename, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                           "field": request.form.get("field")})
    data = request.get_data()
    return json.dumps({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})


@app.route("/form", methods=["POST"])
def form():
    return json.dumps(request.form.to_dict())


@app.route("/unicode/<name>")
def unicode_path(name):
    return f"name={name} path={request.path}"


@app.route("/where")
def where():
    return json.dumps({"script_root": request.script_root, "path": request.path, "url": request.url,
                       "url_for": url_for("where"), "args": request.args.to_dict(flat=False),
                       "remote_addr": request.remote_addr, "scheme": request.scheme})


@app.route("/headers")
def headers():
    return json.dumps({k: v for k, v in request.headers.items()})


@app.route("/boom")
def boom():
    raise RuntimeError("secret detail that must not leak")


@app.route("/slow/<float:seconds>")
def slow(seconds):
    time.sleep(seconds)
    return f"slept {seconds}"


@app.route("/json", methods=["POST"])
def echo_json():
    return {"got": request.get_json()}


consumer = WsgiConsumer(app)
routing = [route("http.request", consumer)]
