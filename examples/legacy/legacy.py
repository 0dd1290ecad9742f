"""A legacy WSGI app, unmodified, served entirely through the sidecar's HTTP mode and workers.

What it shows:

- ``guestbook`` below is a plain PEP 3333 function that knows nothing of
  wsgi_channels (it stands for the app you will never rewrite);
- the sidecar (``--http layer``) turns every HTTP request into an ``http.request``
  message; workers run it through ``WsgiConsumer(guestbook)``;
- a WebSocket endpoint (``/ws/echo/``) lives on the same port, handled by an
  ordinary consumer in the same routing;
- the single-machine layer (``ipc://``): no Redis, several worker processes.

Run it (``main()`` does exactly this and stops everything on Ctrl+C)::

    cd examples/legacy
    export WSGI_CHANNELS_LAYER=ipc:///tmp/legacy-channels.db
    wsgi-channels sidecar --http layer --bind 127.0.0.1:8000 &
    wsgi-channels worker legacy:routing &
    wsgi-channels worker legacy:routing &

then open http://127.0.0.1:8000/.
"""
from __future__ import annotations

import html
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from urllib.parse import parse_qs

from wsgi_channels import WsgiConsumer, route

HERE = os.path.dirname(os.path.abspath(__file__))

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Guestbook</title></head>
<body><h1>Guestbook</h1>
<form method="post"><input name="name" placeholder="Your name" required> <button>Sign</button></form>
<ul id="entries">{entries}</ul>
<h2>Echo over a WebSocket on the same port</h2>
<input id="say" placeholder="type and press Enter"> <span id="echo"></span>
<script type="module">
import {{ connect }} from "/_wsgi_channels/static/channels.js";
const socket = connect("/ws/echo/");
window.echoSocket = socket;
socket.on("json", (m) => {{ document.getElementById("echo").textContent = m.echo; }});
document.getElementById("say").addEventListener("change", (e) => socket.sendJSON({{ text: e.target.value }}));
</script></body></html>
"""


def _db() -> sqlite3.Connection:
    path = os.environ.get("GUESTBOOK_DB") or os.path.join(HERE, "guestbook.db")
    db = sqlite3.connect(path, timeout=10)
    db.execute("CREATE TABLE IF NOT EXISTS entries (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    return db


def guestbook(environ, start_response):  # type: ignore[no-untyped-def]
    """A plain WSGI app: GET / lists signatures, POST / adds one (form field ``name``)."""
    method = environ["REQUEST_METHOD"]
    path = environ.get("PATH_INFO") or "/"
    if path != "/":
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found\n"]
    db = _db()
    try:
        if method == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            form = parse_qs(environ["wsgi.input"].read(length).decode("utf-8", "replace"))
            name = (form.get("name") or [""])[0].strip()[:100]
            if not name:
                start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
                return [b"a name is needed\n"]
            with db:
                db.execute("INSERT INTO entries (name) VALUES (?)", (name,))
            start_response("303 See Other", [("Location", "/"), ("Content-Length", "0")])
            return [b""]
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD, POST")])
            return [b""]
        rows = db.execute("SELECT name FROM entries ORDER BY id").fetchall()
    finally:
        db.close()
    body = PAGE.format(entries="".join(f"<li>{html.escape(r[0])}</li>" for r in rows)).encode()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


def echo(message) -> None:  # type: ignore[no-untyped-def]
    """Answer each text frame with ``{"echo": <its text, upper-cased>}``."""
    text = message.get("text")
    try:
        text = json.loads(text).get("text", "") if text else ""
    except (ValueError, AttributeError):
        pass
    message.reply_channel.send({"text": json.dumps({"echo": str(text).upper()})})


#: The sidecar's HTTP requests go to the unmodified app; /ws/echo/ frames to ``echo``.
routing = [
    route("http.request", WsgiConsumer(guestbook)),
    route("websocket.receive", echo, path=r"^/ws/echo/$"),
]


def main(argv: list[str] | None = None) -> int:
    """Start a sidecar (HTTP mode) and two workers on an ``ipc://`` layer; Ctrl+C stops them."""
    args = list(sys.argv[1:] if argv is None else argv)
    bind = args[args.index("--bind") + 1] if "--bind" in args else "127.0.0.1:8000"
    layer = os.environ.get("WSGI_CHANNELS_LAYER") or f"ipc://{tempfile.mkdtemp(prefix='legacy-')}/channels.db"
    env = dict(os.environ, WSGI_CHANNELS_LAYER=layer,
               PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "wsgi_channels"]
    procs = [subprocess.Popen(cmd + ["sidecar", "--http", "layer", "--bind", bind], env=env, cwd=HERE)]
    procs += [subprocess.Popen(cmd + ["worker", "legacy:routing", "--threads", "4"], env=env, cwd=HERE)
              for _ in range(2)]
    print(f"legacy guestbook: open http://{bind}/ (layer {layer}); Ctrl+C stops", flush=True)
    stop = False

    def on_signal(signum, frame):  # type: ignore[no-untyped-def]
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stop and all(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    return max((p.returncode or 0) for p in procs) if not stop else 0


if __name__ == "__main__":
    sys.exit(main())
