"""Chat rooms: a Pyramid app with rooms from the URL path, nicknames and join/leave notices.

What it shows:

- ``config.include("wsgi_channels.adapters.pyramid")`` with settings under ``wsgi_channels.``;
- consumers registered with ``config.add_channel_route(...)``; the room comes from the
  WebSocket path (``/ws/chat/<room>/``, any name: ``/chat/tea%20%26%20cake!/`` is the room
  "tea & cake!"), the nickname is kept in the channel session so
  every later message of the socket knows who is talking;
- the nickname chosen on the page is remembered in the Pyramid session (signed cookie)
  and read by the WebSocket consumer from the handshake's cookies;
- ``request.channels.group_send`` from a view (``POST /chat/<room>/announce``), sent only
  after ``pyramid_tm`` commits;
- group history and resume: a room keeps its last 100 messages for 5 minutes, the page is
  rendered with the room's position (``request.channels_position``) and the client resumes
  from it after every reconnect, so no line is lost or shown twice;
- presence: the consumer adds each socket to the room with the nickname as its presence user
  (``Group(...).add(reply_channel, presence={"user": nick})``); the page lists who is in the
  room (``socket.presence(group)``, served by the presence view at ``/chat/-/presence/``, for
  visitors with a nickname) and keeps the list live from the ``join`` and ``leave`` events.

Run it in one process (app + sidecar + worker, in-memory layer)::

    cd examples/chat
    python chat.py                    # = wsgi-channels runserver chat:app --routing chat:routing

then open http://127.0.0.1:8000/chat/lobby/ in two browser windows.
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import re
import sys
from urllib.parse import quote

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPBadRequest, HTTPNotFound, HTTPSeeOther
from pyramid.response import Response
from pyramid.session import SignedCookieSessionFactory

from wsgi_channels import Group
from wsgi_channels.adapters.pyramid import reject, routing_for
from wsgi_channels.layers import supports_group_features
from wsgi_channels.settings import default_layer_url

HERE = os.path.dirname(os.path.abspath(__file__))
#: A room name is any 1-50 characters but '/': spaces and punctuation included. The page's URL
#: and the WebSocket path carry it percent-encoded; routes match the decoded path.
ROOM_PATH = r"^/ws/chat/(?P<room>[^/]{1,50})/$"
ROOM_RE = re.compile(r"^[^/]{1,50}$")
NICK_RE = re.compile(r"^[\w .-]{1,30}$")
#: Group history (resume) and presence of the rooms' groups (``chat-<hash>``).
LAYER_OPTIONS = {"group_history": "chat-*:size=100:ttl=300", "group_presence": "chat-*:max_members=1000"}


def chat_layer_options() -> dict:
    """:data:`LAYER_OPTIONS` where the app's layer keeps history and presence (memory://, ipc://),
    else none: the page then connects without a position and lists nobody."""
    return dict(LAYER_OPTIONS) if supports_group_features(default_layer_url()) else {}


#: Where the presence view answers (``/_wsgi_channels/presence/`` is the live blog's in the demo).
PRESENCE_URL = "/chat/-/presence/"

STYLE = """
:root { color-scheme: light dark; --accent: #2563eb; --muted: #6b7280; --line: #d1d5db; --bg-soft: #f3f4f6; }
@media (prefers-color-scheme: dark) { :root { --line: #374151; --bg-soft: #1f2937; --muted: #9ca3af; } }
* { box-sizing: border-box; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 42rem;
       margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin: 0 0 1rem; overflow-wrap: anywhere; }
form { display: flex; gap: .5rem; align-items: center; margin: 0 0 1rem; }
label { color: var(--muted); font-size: .9rem; }
input { flex: 1; min-width: 0; font: inherit; padding: .45rem .6rem; border: 1px solid var(--line);
        border-radius: .4rem; background: transparent; color: inherit; }
input:focus { outline: 2px solid var(--accent); outline-offset: 1px; }
button { font: inherit; padding: .45rem .9rem; border: 0; border-radius: .4rem; background: var(--accent);
         color: #fff; cursor: pointer; }
button:disabled { opacity: .5; cursor: default; }
#status { font-size: .85rem; color: var(--muted); margin: 0 0 .5rem; }
#status::before { content: "\\25CF"; margin-right: .4rem; color: #d97706; }
#status[data-state="open"]::before { color: #16a34a; }
#status[data-state="stopped"]::before, #status[data-state="no-nick"]::before { color: #dc2626; }
#log { border: 1px solid var(--line); border-radius: .5rem; height: 22rem; overflow-y: auto;
       padding: .5rem .75rem; margin: 0 0 1rem; background: var(--bg-soft); }
#log p { margin: .2rem 0; overflow-wrap: anywhere; }
#log .notice { color: var(--muted); font-style: italic; }
#log .nick { font-weight: 600; }
#hint { color: #dc2626; font-size: .85rem; min-height: 1.3em; margin: -.5rem 0 0; }
#here { font-size: .9rem; color: var(--muted); margin: 0 0 .5rem; }
#people { display: inline; list-style: none; padding: 0; margin: 0; }
#people li { display: inline; margin-right: .5rem; color: inherit; font-weight: 600; }
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Chat: {room}</title>
<style>{style}</style></head>
<body>
<h1>Room {room}</h1>
<form method="post" action="nick" id="nickform"><label for="nick">Nickname</label>
<input id="nick" name="nick" value="{nick}" required maxlength="30"> <button>Set</button></form>
<p id="status" data-state="connecting">connecting…</p>
<div id="here">In the room: <ul id="people" aria-live="polite"></ul></div>
<div id="log" aria-live="polite"></div>
<form id="say"><input id="text" autocomplete="off" placeholder="Say something" maxlength="2000">
<button>Send</button></form>
<p id="hint"></p>
<script type="module">
import {{ connect }} from "{client_js}";
const log = document.getElementById("log");
const status = document.getElementById("status");
const hint = document.getElementById("hint");
const input = document.getElementById("text");
// The server refuses sockets without a nickname; a browser only sees that as 1006, so ask first.
// It resumes from the room's position when the page was rendered, and after every reconnect.
const group = {group};
const position = {position};
const socket = {has_nick} ? connect({ws_path}, {{ positions: position && {{ [group]: position }}, presenceURL: {presence_url} }}) : null;
window.chatSocket = socket;
function show(state, text) {{ status.dataset.state = state; status.textContent = text; }}
function line(cls, nick, text) {{
  const p = document.createElement("p");
  p.className = cls;
  if (nick) {{
    const who = document.createElement("span");
    who.className = "nick";
    who.textContent = nick + ": ";
    p.append(who);
  }}
  p.append(text);
  log.append(p);
  log.scrollTop = log.scrollHeight;
}}
// The form never submits itself (that would reload the page): a message goes over the socket.
document.getElementById("say").addEventListener("submit", (e) => {{
  e.preventDefault();
  if (!socket) {{
    hint.textContent = "Choose a nickname first.";
    document.getElementById("nick").focus();
    return;
  }}
  if (input.value.trim()) socket.sendJSON({{ text: input.value }});
  input.value = "";
  hint.textContent = "";
}});
if (!socket) show("no-nick", "choose a nickname to join");
else {{
  socket.on("open", () => show("open", "connected"));
  socket.on("reconnecting", () => show("reconnecting", "reconnecting…"));
  socket.on("stop", (d) => show("stopped", `refused (${{d.code}}): set a nickname`));
  socket.on("json", (m) => {{
    if (m.type === "message") line("message", m.nick, m.text);
    else line("notice", null, m.text);
  }});
  socket.on("resume", ({{ recovered, reason }}) => {{
    if (!recovered) line("notice", null, `(some messages could not be recovered: ${{reason}})`);
  }});
  // Who is here: the list from the presence view, kept live by join and leave events. Events
  // that arrive while the list is being read are applied after it (both are idempotent).
  const members = new Map();  // connection id -> nickname
  let pending = null;  // events held while reading the list
  const people = document.getElementById("people");
  function render() {{
    const nicks = [...new Set(members.values())].sort();
    people.replaceChildren(...nicks.map((nick) => {{
      const li = document.createElement("li");
      li.textContent = nick;
      li.dataset.user = nick;
      return li;
    }}));
  }}
  function apply([kind, id, user]) {{
    if (kind === "join") members.set(id, user);
    else members.delete(id);
  }}
  let again = false;  // asked to read again while reading
  async function reload() {{
    if (pending) {{ again = true; return; }}
    pending = [];
    do {{
      again = false;
      try {{
        const now = await socket.presence(group);
        members.clear();
        for (const m of now.members) members.set(m.id, m.user);
      }} catch (e) {{
        console.warn("presence:", e.message);
      }}
      for (const event of pending) apply(event);
      pending = [];
    }} while (again);
    pending = null;
    render();
  }}
  function change(event) {{
    if (pending) pending.push(event);
    else {{ apply(event); render(); }}
  }}
  socket.on("open", reload);
  socket.on("join", (d) => {{ if (d.group === group) change(["join", d.connId, d.user]); }});
  socket.on("leave", (d) => {{ if (d.group === group) change(["leave", d.connId]); }});
  socket.on("count", (d) => {{ if (d.group === group && d.stale) reload(); }});
}}
</script>
</body></html>
"""


def group(room: str) -> Group:
    """The room's group. Group names allow only ``[a-zA-Z0-9-_.]``, so the room name is hashed."""
    return Group("chat-" + hashlib.sha256(room.encode("utf-8")).hexdigest()[:32])


def _room(request) -> str:  # type: ignore[no-untyped-def]
    room = request.matchdict["room"]
    if not ROOM_RE.match(room):
        raise HTTPNotFound("a room name is 1-50 characters, without '/'")
    return room


# -- views ------------------------------------------------------------------------------------

def room_view(request):  # type: ignore[no-untyped-def]
    room = _room(request)
    nick = request.session.get("nick", "")
    name = group(room).name
    history = request.registry.settings.get("wsgi_channels.option.group_history")
    page = PAGE.format(room=html.escape(room), nick=html.escape(nick), has_nick=json.dumps(bool(nick)),
                       group=json.dumps(name), position=request.channels_position(name) if history else "null",
                       presence_url=json.dumps(request.script_name + PRESENCE_URL),
                       style=STYLE, client_js=request.script_name + "/_wsgi_channels/static/channels.js",
                       ws_path=json.dumps(f"{request.script_name}/ws/chat/{quote(room, safe='')}/"))
    return Response(page, content_type="text/html")


def nick_view(request):  # type: ignore[no-untyped-def]
    nick = (request.POST.get("nick") or "").strip()
    if not NICK_RE.match(nick):
        raise HTTPBadRequest("a nickname is 1-30 letters, digits, spaces, '.', '-' or '_'")
    request.session["nick"] = nick
    return HTTPSeeOther(request.route_url("room", room=_room(request)))


def announce_view(request):  # type: ignore[no-untyped-def]
    """``POST /chat/<room>/announce`` with a text body: a notice to everyone in the room, after commit."""
    text = request.text.strip()[:500]
    if not text:
        raise HTTPBadRequest("empty announcement")
    request.channels.group_send(group(_room(request)).name,
                                {"text": json.dumps({"type": "notice", "text": f"announcement: {text}"})})
    return Response("sent\n", content_type="text/plain")


# -- consumers --------------------------------------------------------------------------------

def _nick(message) -> str | None:  # type: ignore[no-untyped-def]
    from urllib.parse import parse_qs

    query = message.get("query_string") or b""
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    wanted = (parse_qs(query).get("nick") or [None])[0]
    if wanted and NICK_RE.match(wanted):
        return wanted
    session = message.session
    return session.get("nick") if session is not None else None


def ws_connect(message, room):  # type: ignore[no-untyped-def]
    nick = _nick(message)
    if not nick:
        return reject(message)  # the page shows "set a nickname"
    message.channel_session["nick"] = nick
    message.channel_session["room"] = room
    if message.registry.settings.get("wsgi_channels.option.group_presence"):
        group(room).add(message.reply_channel, presence={"user": nick})  # listed with the nickname
    else:
        group(room).add(message.reply_channel)
    message.reply_channel.send({"accept": True})
    group(room).send({"text": json.dumps({"type": "notice", "text": f"{nick} joined"})})


def ws_receive(message, room):  # type: ignore[no-untyped-def]
    nick = message.channel_session.get("nick")
    if not nick:
        return
    try:
        text = str(json.loads(message.get("text") or "{}").get("text", ""))[:2000]
    except (ValueError, AttributeError):
        return  # not our JSON: ignore rather than fail
    if text:
        group(room).send({"text": json.dumps({"type": "message", "nick": nick, "text": text})})


def ws_disconnect(message, room):  # type: ignore[no-untyped-def]
    group(room).discard(message.reply_channel)
    nick = message.channel_session.get("nick")
    if nick:
        group(room).send({"text": json.dumps({"type": "notice", "text": f"{nick} left"})})


def may_see_who_is_here(request, group_name: str) -> bool:
    """Who may read a room's presence (``wsgi_channels.presence_authorize``): visitors with a nickname."""
    return bool(request.session.get("nick")) and group_name.startswith("chat-")


def make_app(settings: dict | None = None, layer_options: dict | None = None):  # type: ignore[no-untyped-def]
    """The app; ``layer_options`` replace :data:`LAYER_OPTIONS` (the demo serves two apps on one layer)."""
    settings = dict(settings or {})
    for key, value in (chat_layer_options() if layer_options is None else layer_options).items():
        settings.setdefault("wsgi_channels.option." + key, value)
    settings.setdefault("wsgi_channels.presence_authorize", may_see_who_is_here)
    settings.setdefault("wsgi_channels.presence_url", PRESENCE_URL)
    secret = settings.pop("chat.secret", None) or os.environ.get("CHAT_SECRET", "change-me-in-production")
    with Configurator(settings=settings) as config:
        config.set_session_factory(SignedCookieSessionFactory(secret, httponly=True, samesite="Lax"))
        config.include("pyramid_tm")
        config.include("wsgi_channels.adapters.pyramid")
        config.add_route("home", "/")
        config.add_view(lambda request: HTTPSeeOther(request.route_url("room", room="lobby")), route_name="home")
        config.add_route("room", "/chat/{room}/")
        config.add_view(room_view, route_name="room", request_method="GET")
        config.add_route("nick", "/chat/{room}/nick")
        config.add_view(nick_view, route_name="nick", request_method="POST")
        config.add_route("announce", "/chat/{room}/announce")
        config.add_view(announce_view, route_name="announce", request_method="POST")
        config.add_channel_route("websocket.connect", ws_connect, path=ROOM_PATH)
        config.add_channel_route("websocket.receive", ws_receive, path=ROOM_PATH)
        config.add_channel_route("websocket.disconnect", ws_disconnect, path=ROOM_PATH)
        return config.make_wsgi_app()


app = make_app()
#: What ``wsgi-channels worker chat:routing`` runs.
routing = routing_for(app)


def main(argv: list[str] | None = None) -> int:
    """Run the demo in one process: ``wsgi-channels runserver chat:app --routing chat:routing``."""
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ["PYTHONPATH"] = HERE + os.pathsep + os.environ.get("PYTHONPATH", "")
    os.chdir(HERE)
    os.execv(sys.executable, [sys.executable, "-m", "wsgi_channels", "runserver", "chat:app",
                              "--routing", "chat:routing", *args])
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
