"""A WebSocket handshake whose path no route takes is refused, logged and counted (issue 20).

It used to get a 101: the client showed "connected" and nothing ever arrived (a mistyped path,
a room name outside the route's pattern, two apps' workers on one layer). Over a real sidecar
and a real worker process: the path routed by pattern is accepted, one outside the pattern or
mistyped gets 403, the worker's log names the path and the routes it tried, and the worker's
``unrouted`` counter (``/metrics``) counts them; ``--accept-unrouted`` accepts them instead.
"""
from __future__ import annotations

import textwrap
import time
from urllib.parse import quote

import pytest
import requests
import websocket

import stack
from servers import free_port

pytestmark = pytest.mark.timeout(120)

ROUTING = r'''
from wsgi_channels import route


def connect(message, room):
    message.reply_channel.send({"accept": True})


def receive(message, room):
    message.reply_channel.send({"text": room + ": " + message["text"]})


routing = [
    route("websocket.connect", connect, path=r"^/chat/(?P<room>[a-z]+)/$"),
    route("websocket.receive", receive, path=r"^/chat/(?P<room>[a-z]+)/$"),
]
'''


@pytest.fixture
def procs():
    started: list = []
    yield started
    stack.stop_all(started)


def _status(port: int, path: str) -> int:
    """The handshake's HTTP status: 101 when accepted."""
    try:
        sock = websocket.create_connection(f"ws://127.0.0.1:{port}{quote(path)}", timeout=10)
    except websocket.WebSocketBadStatusException as e:
        return e.status_code
    sock.close()
    return 101


def _metric(port: int, name: str, expected: float, timeout: float = 5.0) -> str:
    """The /metrics text once it shows ``name expected`` (a count follows the reply by a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        if f"{name} {expected}" in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


@pytest.mark.parametrize("accept_unrouted", [False, True], ids=["default", "accept-unrouted"])
def test_a_handshake_no_route_takes_is_refused_logged_and_counted(procs, tmp_path, accept_unrouted):
    (tmp_path / "rooms_routing.py").write_text(textwrap.dedent(ROUTING))
    env = stack.env_for(f"ipc://{tmp_path}/channels.db", tmp_path)
    admin = free_port()
    extra = ["--admin-bind", f"127.0.0.1:{admin}"] + (["--accept-unrouted"] if accept_unrouted else [])
    work = stack.Proc([stack.PY, "-m", "wsgi_channels", "worker", "rooms_routing:routing", "--threads", "2", *extra],
                      tmp_path / "worker.log", env, tmp_path)
    side = stack.sidecar(env, tmp_path)
    procs.extend([work.start(), side.start()])
    work.wait_for_log("worker serving", timeout=20)

    sock = websocket.create_connection(f"ws://127.0.0.1:{side.port}/chat/lobby/", timeout=10)
    sock.send("hello")
    assert sock.recv() == "lobby: hello"
    sock.close()

    unrouted = ("/chat/bad room!/", "/chta/lobby/")  # outside the room pattern; a typo
    for path in unrouted:
        assert _status(side.port, path) == (101 if accept_unrouted else 403), path
    assert _status(side.port, "/chat/bad room!/") == (101 if accept_unrouted else 403), "refused every time"

    metrics = _metric(admin, "wsgi_channels_worker_unrouted_total", 3.0)
    assert "wsgi_channels_worker_unrouted_total 3.0" in metrics, metrics
    log = work.log()
    for path in unrouted:
        line = next((ln for ln in log.splitlines() if repr(path) in ln), "")
        if accept_unrouted:
            assert "accepted although no route takes it" in line, log
        else:
            assert "WARNING" in line and "refused (the server answers 403)" in line, log
            assert r"websocket.connect routes: path=^/chat/(?P<room>[a-z]+)/$" in line, line
            assert "--accept-unrouted" in line, line
    assert log.count(repr("/chat/bad room!/")) == 1, "one line per path and minute, however often it comes"
