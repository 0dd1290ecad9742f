"""The demo: the live blog (Flask) and the chat rooms (Pyramid) served together by ``runserver``.

One process holds both apps, the sidecar and a worker on the in-memory layer, so
nothing else (no Redis) is needed::

    python3 -m venv .venv && .venv/bin/pip install -e '.[examples]' && .venv/bin/python examples/demo.py

Requests under ``/chat/`` and ``/ws/chat/`` go to the chat app; everything else to the
live blog. Both apps are built with the same layer options (the live blog's group history and
the chat's history and presence patterns): one process serves one layer. Options after the script name go to ``wsgi-channels runserver``
(``--bind 0.0.0.0:8000`` for instance).
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
for _sub in ("liveblog", "chat"):
    if os.path.join(HERE, _sub) not in sys.path:
        sys.path.insert(0, os.path.join(HERE, _sub))

import chat  # noqa: E402
import liveblog  # noqa: E402

from wsgi_channels.consumers.routing import AppRouting  # noqa: E402


#: One process serves one layer, so both apps get the group history and presence patterns of both.
LAYER_OPTIONS = {
    "group_history": f"{liveblog.LAYER_OPTIONS['group_history']} {chat.LAYER_OPTIONS['group_history']}",
    "group_presence": chat.LAYER_OPTIONS["group_presence"],
}
blog_app = liveblog.create_app(layer_options=LAYER_OPTIONS)
chat_app = chat.make_app(layer_options=LAYER_OPTIONS)


def app(environ, start_response):  # type: ignore[no-untyped-def]
    """The WSGI app: ``/chat/...`` is the Pyramid chat, the rest the Flask live blog."""
    target = chat_app if environ.get("PATH_INFO", "").startswith("/chat/") else blog_app
    return target(environ, start_response)


_blog_routing, _chat_routing = liveblog.routing_for(blog_app), chat.routing_for(chat_app)
#: Both apps' consumers (each routes its own WebSocket paths), on the layer both apps push to.
routing = AppRouting(_blog_routing + _chat_routing, layer_url=_blog_routing.layer_url)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    bind = "127.0.0.1:8000"
    for i, a in enumerate(args):
        if a == "--bind" and i + 1 < len(args):
            bind = args[i + 1]
        elif a.startswith("--bind="):
            bind = a.split("=", 1)[1]
    host, _, port = bind.rpartition(":")
    host = "127.0.0.1" if host in ("", "0.0.0.0") else host
    print(f"wsgi_channels demo: live blog at http://{host}:{port}/  chat at http://{host}:{port}/chat/lobby/",
          flush=True)
    env_path = os.pathsep.join([HERE, os.path.join(HERE, "liveblog"), os.path.join(HERE, "chat")])
    os.environ["PYTHONPATH"] = env_path + os.pathsep + os.environ.get("PYTHONPATH", "")
    os.chdir(HERE)
    os.execv(sys.executable, [sys.executable, "-m", "wsgi_channels", "runserver", "demo:app",
                              "--routing", "demo:routing", *args])
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
