"""Smoke tests of every example, run as real processes the way its README says."""
from __future__ import annotations

import ast
import json
import re

import pytest
import requests
import websocket

import stack
from stack import EXAMPLES, env_for

SCRIPTS = {
    "liveblog": EXAMPLES / "liveblog" / "liveblog.py",
    "chat": EXAMPLES / "chat" / "chat.py",
    "legacy": EXAMPLES / "legacy" / "legacy.py",
    "demo": EXAMPLES / "demo.py",
    "django_liveblog": EXAMPLES / "django_liveblog" / "manage.py",
}


@pytest.fixture
def procs():
    started: list = []
    yield started
    stack.stop_all(started)


def ws(port: int, path: str, **kwargs) -> websocket.WebSocket:
    return websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=10, **kwargs)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_example_has_a_docstring_a_main_and_a_readme(name):
    source = SCRIPTS[name].read_text()
    tree = ast.parse(source)
    assert ast.get_docstring(tree), f"{name}: no module docstring"
    assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), f"{name}: no main()"
    readme = (SCRIPTS[name].parent / "README.md") if name != "demo" else (EXAMPLES / "README.md")
    assert readme.is_file(), f"{name}: no README.md"
    assert "```" in readme.read_text(), f"{name}: README gives no commands"


def test_liveblog_runserver_pushes_a_post_to_open_sockets(procs, tmp_path):
    server = stack.runserver(SCRIPTS["liveblog"], tmp_path, env_for(None, LIVEBLOG_DB=str(tmp_path / "blog.db")))
    procs.append(server.start())
    server.wait_for_log("serving liveblog:app on http://127.0.0.1:")
    a, b = ws(server.port, "/ws/liveblog/"), ws(server.port, "/ws/liveblog/")
    page = requests.get(f"http://127.0.0.1:{server.port}/", timeout=10)
    assert page.status_code == 200 and "/_wsgi_channels/static/channels.js" in page.text
    js = requests.get(f"http://127.0.0.1:{server.port}/_wsgi_channels/static/channels.js", timeout=10)
    assert js.status_code == 200 and "export function connect" in js.text
    r = requests.post(f"http://127.0.0.1:{server.port}/posts", json={"title": "Hello", "body": "world"}, timeout=10)
    assert r.status_code == 201, r.text
    for sock in (a, b):  # raw WebSocket clients (no _wsc=1) see the post exactly as before
        assert json.loads(sock.recv()) == {"id": r.json()["id"], "title": "Hello", "body": "world"}
    # The page renders the group's position after the post: its socket resumes from offset 1.
    assert re.search(r'"liveblog": \{"epoch":"[\w-]+","offset":1\}', page_after := requests.get(
        f"http://127.0.0.1:{server.port}/", timeout=10).text), page_after[-1500:]
    assert requests.post(f"http://127.0.0.1:{server.port}/posts", json={"title": ""}, timeout=10).status_code == 400
    a.close()
    b.close()


def test_chat_rooms_nicknames_and_join_leave_notices(procs, tmp_path):
    server = stack.runserver(SCRIPTS["chat"], tmp_path, env_for(None))
    procs.append(server.start())
    server.wait_for_log("serving chat:app")
    port = server.port
    # A nickname set through the page's form lives in the Pyramid session cookie.
    session = requests.Session()
    r = session.post(f"http://127.0.0.1:{port}/chat/lobby/nick", data={"nick": "ann"}, timeout=10)
    assert r.status_code == 200 and 'value="ann"' in r.text
    cookie = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
    ann = ws(port, "/ws/chat/lobby/", cookie=cookie)
    assert json.loads(ann.recv()) == {"type": "notice", "text": "ann joined"}
    ben = ws(port, "/ws/chat/lobby/?nick=ben")
    other_room = ws(port, "/ws/chat/kitchen/?nick=cy")
    assert json.loads(ann.recv()) == {"type": "notice", "text": "ben joined"}
    assert json.loads(ben.recv()) == {"type": "notice", "text": "ben joined"}
    ben.send(json.dumps({"text": "hi ann"}))
    assert json.loads(ann.recv()) == {"type": "message", "nick": "ben", "text": "hi ann"}
    assert json.loads(ben.recv()) == {"type": "message", "nick": "ben", "text": "hi ann"}
    r = requests.post(f"http://127.0.0.1:{port}/chat/lobby/announce", data="tea time", timeout=10)
    assert r.status_code == 200
    assert json.loads(ann.recv()) == {"type": "notice", "text": "announcement: tea time"}
    ben.close()
    assert json.loads(ann.recv()) == {"type": "notice", "text": "ben left"}
    # Other rooms heard nothing but their own join.
    assert json.loads(other_room.recv()) == {"type": "notice", "text": "cy joined"}
    other_room.settimeout(0.3)
    with pytest.raises(websocket.WebSocketTimeoutException):
        other_room.recv()
    # No nickname: the handshake is refused.
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ws(port, "/ws/chat/lobby/")
    assert refused.value.status_code == 403
    ann.close()
    other_room.close()
    session.close()


def test_chat_room_names_with_spaces_and_punctuation(procs, tmp_path):
    """Any room name but '/' is a room: the WebSocket path is percent-encoded, the group name hashed."""
    from urllib.parse import quote

    server = stack.runserver(SCRIPTS["chat"], tmp_path, env_for(None))
    procs.append(server.start())
    server.wait_for_log("serving chat:app")
    port = server.port
    room = quote("bad room! (100%) & ünïcode?", safe="")
    page = requests.get(f"http://127.0.0.1:{port}/chat/{room}/", timeout=10)
    assert page.status_code == 200 and "Room bad room! (100%) &amp; ünïcode?" in page.text
    assert f'"/ws/chat/{room}/"' in page.text  # the page opens the encoded path
    ann = ws(port, f"/ws/chat/{room}/?nick=ann")
    assert json.loads(ann.recv()) == {"type": "notice", "text": "ann joined"}
    lobby = ws(port, "/ws/chat/lobby/?nick=lou")
    assert json.loads(lobby.recv()) == {"type": "notice", "text": "lou joined"}
    ben = ws(port, f"/ws/chat/{room}/?nick=ben")
    assert json.loads(ann.recv())["text"] == "ben joined"
    ben.send(json.dumps({"text": "hello"}))
    assert json.loads(ann.recv()) == {"type": "message", "nick": "ben", "text": "hello"}
    r = requests.post(f"http://127.0.0.1:{port}/chat/{room}/announce", data="cake", timeout=10)
    assert r.status_code == 200
    assert json.loads(ann.recv())["text"] == "announcement: cake"
    lobby.settimeout(0.3)
    with pytest.raises(websocket.WebSocketTimeoutException):
        lobby.recv()  # the lobby heard nothing of that room
    assert requests.get(f"http://127.0.0.1:{port}/chat/{'x' * 51}/", timeout=10).status_code == 404
    for sock in (ann, ben, lobby):
        sock.close()


def test_demo_serves_both_apps_from_one_process(procs, tmp_path):
    server = stack.runserver(SCRIPTS["demo"], tmp_path, env_for(None, LIVEBLOG_DB=str(tmp_path / "blog.db")))
    procs.append(server.start())
    server.wait_for_log("serving demo:app")
    assert "chat at http://127.0.0.1:" in server.log()
    # One layer for both apps, with both examples' history and presence patterns.
    assert "group_history=liveblog:" in server.log() and "group_presence=chat-*" in server.log(), server.log()
    blog_page = requests.get(f"http://127.0.0.1:{server.port}/", timeout=10).text
    assert "Live blog" in blog_page and re.search(r'"liveblog": \{"epoch":"[\w-]+","offset":0\}', blog_page)
    chat_page = requests.get(f"http://127.0.0.1:{server.port}/chat/lobby/", timeout=10).text
    assert "Room lobby" in chat_page and '"/chat/-/presence/"' in chat_page
    chat = ws(server.port, "/ws/chat/lobby/?nick=dee")
    blog = ws(server.port, "/ws/liveblog/")
    assert json.loads(chat.recv())["text"] == "dee joined"
    requests.post(f"http://127.0.0.1:{server.port}/posts", json={"title": "both"}, timeout=10)
    assert json.loads(blog.recv())["title"] == "both"
    chat.close()
    blog.close()


def test_legacy_app_through_sidecar_http_mode_and_ipc_workers(procs, tmp_path):
    env = env_for(f"ipc://{tmp_path}/channels.db", GUESTBOOK_DB=str(tmp_path / "guestbook.db"))
    server = stack.runserver(SCRIPTS["legacy"], tmp_path, env)
    procs.append(server.start())
    base = f"http://127.0.0.1:{server.port}"
    server.wait_for_log("worker serving", timeout=20)
    r = requests.post(base + "/", data={"name": "Grace <admin>"}, allow_redirects=False, timeout=10)
    assert r.status_code == 303 and r.headers["location"] == "/"
    page = requests.get(base + "/", timeout=10)
    assert page.status_code == 200 and "<li>Grace &lt;admin&gt;</li>" in page.text
    assert requests.get(base + "/missing", timeout=10).status_code == 404
    sock = ws(server.port, "/ws/echo/")
    sock.send(json.dumps({"text": "same port"}))
    assert json.loads(sock.recv()) == {"echo": "SAME PORT"}
    sock.close()


def _django_login(base: str) -> requests.Session:
    s = requests.Session()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', s.get(base + "/login/", timeout=10).text).group(1)
    r = s.post(base + "/login/", data={"username": "demo", "password": "demo", "csrfmiddlewaretoken": token},
               headers={"Referer": base + "/login/"}, timeout=10)
    assert r.status_code == 200 and "Logged in as demo" in r.text, r.text[:500]
    return s


def test_django_liveblog_login_required_and_push_after_commit(procs, tmp_path):
    """gunicorn (2 sync workers) + `manage.py runsidecar` + `manage.py runworker` on the ipc:// layer."""
    project = EXAMPLES / "django_liveblog"
    env = env_for(f"ipc://{tmp_path}/channels.db", project, DJLIVE_DB=str(tmp_path / "dj.db"),
                  DJANGO_SETTINGS_MODULE="djlive.settings", DJANGO_SUPERUSER_PASSWORD="demo")
    manage = [stack.PY, "manage.py"]
    out = stack.run(manage + ["check"], project, env)
    assert "no issues" in out
    stack.run(manage + ["migrate", "-v0"], project, env)
    stack.run(manage + ["createsuperuser", "--noinput", "--username", "demo", "--email", "demo@example.com"],
              project, env)
    web = stack.gunicorn("djlive.wsgi", project, env, tmp_path, workers=2)
    side_port = stack.free_port()
    side = stack.Proc(manage + ["runsidecar", "--bind", f"127.0.0.1:{side_port}"], tmp_path / "dj-sidecar.log", env,
                      project, side_port)
    work = stack.Proc(manage + ["runworker", "--", "--threads", "2"], tmp_path / "dj-worker.log", env, project)
    for p in (web, side, work):
        procs.append(p.start())
    work.wait_for_log("worker serving", timeout=20)
    base = f"http://127.0.0.1:{web.port}"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ws(side_port, "/ws/posts/")
    assert refused.value.status_code == 403, "anonymous users must not connect"
    s = _django_login(base)
    cookie = "; ".join(f"{k}={v}" for k, v in s.cookies.items())
    sock = ws(side_port, "/ws/posts/", cookie=cookie)
    assert json.loads(sock.recv()) == {"hello": "demo"}
    r = s.post(base + "/posts/", json={"title": "From Django"},
               headers={"X-CSRFToken": s.cookies["csrftoken"], "Referer": base + "/"}, timeout=10)
    assert r.status_code == 201, r.text[:500]
    assert json.loads(sock.recv()) == {"id": r.json()["id"], "title": "From Django", "body": ""}
    sock.close()


def test_deployment_gunicorn_conf_is_valid(tmp_path):
    out = stack.run([stack.BIN / "gunicorn", "-c", stack.ROOT / "docs" / "gunicorn.conf.py", "--check-config",
                     "--chdir", EXAMPLES / "liveblog", "liveblog:app"], EXAMPLES / "liveblog", env_for(None))
    assert "Error" not in out
    guide = (stack.ROOT / "docs" / "deployment.md").read_text()
    for needed in ("location /ws/", "proxy_set_header Upgrade", "ipc://", "redis://", "[Service]", "Procfile",
                   "child_exit"):
        assert needed in guide, needed


def test_flask_cli_offers_channels_worker_and_sidecar(tmp_path):
    out = stack.run([stack.BIN / "flask", "--app", "liveblog", "channels", "--help"], EXAMPLES / "liveblog",
                    env_for(None, EXAMPLES / "liveblog", LIVEBLOG_DB=str(tmp_path / "b.db")))
    assert "worker" in out and "sidecar" in out


def test_runserver_reports_bad_app_and_busy_port(tmp_path):
    import socket
    import subprocess

    env = env_for(None, EXAMPLES / "liveblog", LIVEBLOG_DB=str(tmp_path / "b.db"))
    cmd = [stack.PY, "-m", "wsgi_channels", "runserver"]
    bad = subprocess.run(cmd + ["nosuchmodule:app", "--bind", f"127.0.0.1:{stack.free_port()}"], env=env,
                         cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 3 and "nosuchmodule" in bad.stderr, bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = subprocess.run(cmd + ["liveblog:app", "--routing", "liveblog:routing", "--bind", f"127.0.0.1:{port}"],
                               env=env, cwd=str(EXAMPLES / "liveblog"), capture_output=True, text=True, timeout=60)
    assert taken.returncode == 3 and "cannot listen" in taken.stderr, taken.stderr[-2000:]
