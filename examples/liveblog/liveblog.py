"""Live blog: a Flask + SQLite app where publishing a post updates every open page at once.

What it shows:

- a Flask app using ``wsgi_channels.adapters.flask.Channels``, unchanged in shape:
  the view saves the post, commits, then ``channels.group_send("liveblog", ...)``;
- WebSocket consumers registered with ``@channels.consumer`` that join and leave the
  ``liveblog`` group;
- the page using the shipped browser client (``/_wsgi_channels/static/channels.js``);
- group history and resume: the ``liveblog`` group keeps its last 500 posts for an hour
  (``WSGI_CHANNELS_OPTIONS``), the view renders the group's position
  (``channels.position(GROUP)``, read *before* the posts) into the page, and the client resumes
  from it: a post published between rendering and connecting, or while the sidecar restarts
  or the network is down, still reaches the page, once. When the client says it cannot
  recover (``resume`` with ``recovered: false``), the page reloads the posts from ``GET /posts``.

Run it in one process (app + sidecar + worker, in-memory layer)::

    cd examples/liveblog
    python liveblog.py                # = wsgi-channels runserver liveblog:app --routing liveblog:routing

Or in production shape, beside gunicorn (see README.md and docs/deployment.md)::

    export WSGI_CHANNELS_LAYER=redis://127.0.0.1:6379/0   # unset: this user's ipc:// store, on one machine
    gunicorn -w 4 liveblog:app                       # the pages and POST /posts, port 8000
    wsgi-channels sidecar --bind 127.0.0.1:8001      # WebSockets (nginx sends /ws/ here)
    wsgi-channels worker liveblog:routing            # the consumers

With no nginx, the sidecar is another origin: set ``WSGI_CHANNELS_SIDECAR_URL=http://127.0.0.1:8001``
and the same ``WSGI_CHANNELS_TOKEN_SECRET`` for gunicorn and the sidecar, and the page opens
``channels.url("/ws/liveblog/")``: the sidecar's URL with a signed connect token.

Settings come from the environment: ``LIVEBLOG_DB`` (SQLite file, default
``liveblog.db`` beside this file), ``LIVEBLOG_WS_URL`` (where pages open the
WebSocket, overriding ``channels.url``; by default ``/ws/liveblog/`` on the page's own
origin), ``WSGI_CHANNELS_LAYER``, ``WSGI_CHANNELS_SIDECAR_URL`` and ``WSGI_CHANNELS_TOKEN_SECRET``.
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
import time

from flask import Flask, abort, g, jsonify, redirect, render_template_string, request

from wsgi_channels.adapters.flask import Channels, routing_for
from wsgi_channels.layers import supports_group_features
from wsgi_channels.settings import default_layer_url

HERE = os.path.dirname(os.path.abspath(__file__))
GROUP = "liveblog"
WS_PATH = "/ws/liveblog/"
#: The layer options: the group keeps its last 500 messages for an hour, for resume.
LAYER_OPTIONS = {"group_history": f"{GROUP}:size=500:ttl=3600"}


def history_options() -> dict:
    """:data:`LAYER_OPTIONS` where the app's layer keeps group history (memory://, ipc://), else
    none: the page then connects without a position, as before history existed."""
    return dict(LAYER_OPTIONS) if supports_group_features(default_layer_url()) else {}

channels = Channels()

STYLE = """
:root { color-scheme: light dark; --accent: #2563eb; --muted: #6b7280; --line: #d1d5db; }
@media (prefers-color-scheme: dark) { :root { --line: #374151; --muted: #9ca3af; } }
* { box-sizing: border-box; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 42rem;
       margin: 2rem auto; padding: 0 1rem; }
header { display: flex; align-items: baseline; justify-content: space-between; gap: 1rem; }
h1 { font-size: 1.6rem; margin: 0 0 1rem; }
form { display: grid; grid-template-columns: 1fr 2fr auto; gap: .5rem; margin: 0 0 1.5rem; }
@media (max-width: 30rem) { form { grid-template-columns: 1fr; } }
input { min-width: 0; font: inherit; padding: .45rem .6rem; border: 1px solid var(--line); border-radius: .4rem;
        background: transparent; color: inherit; }
input:focus { outline: 2px solid var(--accent); outline-offset: 1px; }
button { font: inherit; padding: .45rem .9rem; border: 0; border-radius: .4rem; background: var(--accent);
         color: #fff; cursor: pointer; }
#status { font-size: .85rem; color: var(--muted); }
#status::before { content: "\\25CF"; margin-right: .4rem; color: #d97706; }
#status[data-state="open"]::before { color: #16a34a; }
#status[data-state="stopped"]::before { color: #dc2626; }
article { border-top: 1px solid var(--line); padding: .75rem 0; }
article h2 { font-size: 1.15rem; margin: 0 0 .25rem; overflow-wrap: anywhere; }
article p { margin: 0; color: var(--muted); overflow-wrap: anywhere; }
"""

#: The page, a Jinja template (``render_template_string``): ``channels_position`` is the adapter's helper.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Live blog</title>
<style>{{ style|safe }}</style></head>
<body>
<header><h1>Live blog</h1><p id="status" data-state="connecting">connecting…</p></header>
<form method="post" action="posts">
  <input name="title" placeholder="Title" required aria-label="Title">
  <input name="body" placeholder="Text" aria-label="Text">
  <button>Publish</button>
</form>
<section id="posts">
{%- for post in posts %}<article id="post-{{ post.id }}"><h2>{{ post.title }}</h2><p>{{ post.body }}</p></article>{% endfor -%}
</section>
<script type="module">
import { connect } from {{ client_js|tojson }};
const status = document.getElementById("status");
const posts = document.getElementById("posts");
// Resumes from the position the posts above were read at: nothing published since is lost.
const socket = connect({{ ws_url|tojson }}, {
  positions: {% if history %}{ {{ group|tojson }}: {{ channels_position(group) }} }{% else %}null{% endif %},
});
window.liveblogSocket = socket;
window.liveblogReceived = [];  // ids of the posts the socket delivered, in order (the tests read it)
function show(state, text) { status.dataset.state = state; status.textContent = text; }
function add(post) {
  if (document.getElementById(`post-${post.id}`)) return;
  const article = document.createElement("article");
  article.id = `post-${post.id}`;
  const h = document.createElement("h2");
  h.textContent = post.title;
  const p = document.createElement("p");
  p.textContent = post.body;
  article.append(h, p);
  posts.prepend(article);
}
socket.on("open", () => show("open", "live"));
socket.on("reconnecting", (d) => show("reconnecting", `reconnecting (attempt ${d.attempt})…`));
socket.on("stop", (d) => show("stopped", `stopped (${d.code})`));
socket.on("json", (post) => { window.liveblogReceived.push(post.id); add(post); });
// Posts missed while away that the group's history no longer has: read them from the app.
socket.on("resume", async ({ recovered }) => {
  if (recovered) return;
  const response = await fetch({{ posts_url|tojson }}, { headers: { Accept: "application/json" } });
  if (response.ok) for (const post of await response.json()) add(post);
});
</script>
</body></html>
"""


def get_db() -> sqlite3.Connection:
    """One connection per request (closed at teardown), like any Flask + sqlite3 app."""
    if "db" not in g:
        path = os.environ.get("LIVEBLOG_DB") or os.path.join(HERE, "liveblog.db")
        g.db = sqlite3.connect(path, timeout=10)
        g.db.row_factory = sqlite3.Row
        g.db.execute("PRAGMA journal_mode=WAL")
        g.db.execute("CREATE TABLE IF NOT EXISTS posts (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                     "title TEXT NOT NULL, body TEXT NOT NULL, created REAL NOT NULL)")
    return g.db


def create_app(layer_options: dict | None = None) -> Flask:
    """The app; ``layer_options`` replace :data:`LAYER_OPTIONS` (the demo serves two apps on one layer)."""
    app = Flask(__name__)
    app.config["LIVEBLOG_WS_URL"] = os.environ.get("LIVEBLOG_WS_URL", "")
    app.config["WSGI_CHANNELS_OPTIONS"] = history_options() if layer_options is None else dict(layer_options)
    channels.init_app(app)

    @app.teardown_appcontext
    def close_db(exc):  # type: ignore[no-untyped-def]
        db = g.pop("db", None)
        if db is not None:
            db.close()

    @app.get("/")
    def index():  # type: ignore[no-untyped-def]
        history = "group_history" in app.config["WSGI_CHANNELS_OPTIONS"]
        if history:
            channels.position(GROUP)  # first: the template renders this position, read before the posts
        rows = get_db().execute("SELECT id, title, body FROM posts ORDER BY id DESC LIMIT 50").fetchall()
        return render_template_string(
            PAGE, posts=rows, style=STYLE, group=GROUP, history=history, posts_url=request.script_root + "/posts",
            client_js=request.script_root + "/_wsgi_channels/static/channels.js",
            ws_url=app.config["LIVEBLOG_WS_URL"] or channels.url(WS_PATH))

    @app.post("/posts")
    def publish():  # type: ignore[no-untyped-def]
        data = request.get_json(silent=True) or request.form
        title = (data.get("title") or "").strip()
        body = (data.get("body") or "").strip()
        if not title:
            abort(400, "a post needs a title")
        db = get_db()
        cur = db.execute("INSERT INTO posts (title, body, created) VALUES (?, ?, ?)", (title, body, time.time()))
        db.commit()
        post = {"id": cur.lastrowid, "title": title, "body": body}
        # After the commit: every open page gets the post, whichever gunicorn worker served this request.
        channels.group_send(GROUP, {"text": json.dumps(post)})
        if request.is_json:
            return jsonify(post), 201
        return redirect(request.script_root + "/", code=303)

    @app.get("/posts")
    def list_posts():  # type: ignore[no-untyped-def]
        rows = get_db().execute("SELECT id, title, body FROM posts ORDER BY id").fetchall()
        return jsonify([dict(r) for r in rows])

    return app


@channels.consumer("websocket.connect", path=rf"^{WS_PATH}$")
def ws_connect(message) -> None:  # type: ignore[no-untyped-def]
    channels.group(GROUP).add(message.reply_channel)
    message.reply_channel.send({"accept": True})


@channels.consumer("websocket.disconnect", path=rf"^{WS_PATH}$")
def ws_disconnect(message) -> None:  # type: ignore[no-untyped-def]
    channels.group(GROUP).discard(message.reply_channel)


app = create_app()
#: What ``wsgi-channels worker liveblog:routing`` runs.
routing = routing_for(app)


def main(argv: list[str] | None = None) -> int:
    """Run the demo in one process: ``wsgi-channels runserver liveblog:app --routing liveblog:routing``."""
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ["PYTHONPATH"] = HERE + os.pathsep + os.environ.get("PYTHONPATH", "")
    os.chdir(HERE)
    os.execv(sys.executable, [sys.executable, "-m", "wsgi_channels", "runserver", "liveblog:app",
                              "--routing", "liveblog:routing", *args])
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
