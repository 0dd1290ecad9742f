"""Chat rooms: a Pyramid app with rooms from the URL path, nicknames and join/leave notices.

What it shows:

- ``config.include("wsgi_channels.adapters.pyramid")`` with settings under ``wsgi_channels.``;
- consumers registered with ``config.add_channel_route(...)``; the room comes from the
  WebSocket path (``/ws/chat/<room>/``), the nickname is kept in the channel session so
  every later message of the socket knows who is talking;
- the nickname chosen on the page is remembered in the Pyramid session (signed cookie)
  and read by the WebSocket consumer from the handshake's cookies;
- ``request.channels.group_send`` from a view (``POST /chat/<room>/announce``), sent only
  after ``pyramid_tm`` commits.

Run it in one process (app + sidecar + worker, in-memory layer)::

    cd examples/chat
    python chat.py                    # = wsgi-channels runserver chat:app --routing chat:routing

then open http://127.0.0.1:8000/chat/lobby/ in two browser windows.
"""
from __future__ import annotations

import html
import json
import os
import re
import sys

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPBadRequest, HTTPSeeOther
from pyramid.response import Response
from pyramid.session import SignedCookieSessionFactory

from wsgi_channels import Group
from wsgi_channels.adapters.pyramid import reject, routing_for

HERE = os.path.dirname(os.path.abspath(__file__))
ROOM_PATH = r"^/ws/chat/(?P<room>[A-Za-z0-9_-]{1,50})/$"
NICK_RE = re.compile(r"^[\w .-]{1,30}$")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Chat: {room}</title>
<style>body {{ font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; }}
#log {{ border: 1px solid #ccc; height: 20rem; overflow-y: auto; padding: .5rem; }}
.notice {{ color: #777; font-style: italic; }}</style></head>
<body>
<h1>Room {room}</h1>
<form method="post" action="nick" id="nickform">Nickname: <input name="nick" value="{nick}" required>
<button>Set</button></form>
<p id="status" data-state="connecting">connecting…</p>
<div id="log"></div>
<form id="say"><input id="text" autocomplete="off" placeholder="Say something"> <button>Send</button></form>
<script type="module">
import {{ connect }} from "{client_js}";
const log = document.getElementById("log");
const status = document.getElementById("status");
// The server refuses sockets without a nickname; a browser only sees that as 1006, so ask first.
const socket = {has_nick} ? connect({ws_path}) : null;
window.chatSocket = socket;
if (!socket) {{ status.dataset.state = "no-nick"; status.textContent = "choose a nickname to join"; }}
else {{
function line(cls, text) {{
  const p = document.createElement("p");
  p.className = cls;
  p.textContent = text;
  log.append(p);
  log.scrollTop = log.scrollHeight;
}}
socket.on("open", () => {{ status.dataset.state = "open"; status.textContent = "connected"; }});
socket.on("reconnecting", () => {{ status.dataset.state = "reconnecting"; status.textContent = "reconnecting…"; }});
socket.on("stop", (d) => {{ status.dataset.state = "stopped"; status.textContent = `refused (${{d.code}}): set a nickname`; }});
socket.on("json", (m) => {{
  if (m.type === "message") line("message", `${{m.nick}}: ${{m.text}}`);
  else line("notice", m.text);
}});
document.getElementById("say").addEventListener("submit", (e) => {{
  e.preventDefault();
  const input = document.getElementById("text");
  if (input.value) socket.sendJSON({{ text: input.value }});
  input.value = "";
}});
}}
</script>
</body></html>
"""


def group(room: str) -> Group:
    return Group(f"chat-{room}")


# -- views ------------------------------------------------------------------------------------

def room_view(request):  # type: ignore[no-untyped-def]
    room = request.matchdict["room"]
    nick = request.session.get("nick", "")
    page = PAGE.format(room=html.escape(room), nick=html.escape(nick), has_nick=json.dumps(bool(nick)),
                       client_js=request.script_name + "/_wsgi_channels/static/channels.js",
                       ws_path=json.dumps(f"{request.script_name}/ws/chat/{room}/"))
    return Response(page, content_type="text/html")


def nick_view(request):  # type: ignore[no-untyped-def]
    nick = (request.POST.get("nick") or "").strip()
    if not NICK_RE.match(nick):
        raise HTTPBadRequest("a nickname is 1-30 letters, digits, spaces, '.', '-' or '_'")
    request.session["nick"] = nick
    return HTTPSeeOther(request.route_url("room", room=request.matchdict["room"]))


def announce_view(request):  # type: ignore[no-untyped-def]
    """``POST /chat/<room>/announce`` with a text body: a notice to everyone in the room, after commit."""
    text = request.text.strip()[:500]
    if not text:
        raise HTTPBadRequest("empty announcement")
    request.channels.group_send(f"chat-{request.matchdict['room']}",
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


def make_app(settings: dict | None = None):  # type: ignore[no-untyped-def]
    settings = dict(settings or {})
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
