"""End to end, in production shape: gunicorn (several sync workers) + the sidecar + a worker on a shared layer.

A WebSocket client connected through the sidecar receives each post published by
an HTTP POST to gunicorn, whichever gunicorn worker process served the POST. Run
on a real Redis (fixture ``redis_server``) and on the single-machine ``ipc://`` layer.
"""
from __future__ import annotations

import json

import pytest
import requests
import websocket

import stack
from stack import EXAMPLES, env_for

LIVEBLOG = EXAMPLES / "liveblog"


@pytest.fixture(params=["redis", "ipc"])
def layer_url(request, tmp_path):
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        return server.url.replace("/0", "/5")  # a database of its own on the session's Redis
    return f"ipc://{tmp_path}/channels.db"


def test_gunicorn_sync_workers_post_reaches_websocket_through_sidecar(layer_url, tmp_path):
    env = env_for(layer_url, LIVEBLOG, LIVEBLOG_DB=str(tmp_path / "blog.db"))
    procs: list = []
    try:
        web = stack.gunicorn("liveblog:app", LIVEBLOG, env, tmp_path, workers=3)
        side = stack.sidecar(env, tmp_path)
        work = stack.worker("liveblog:routing", LIVEBLOG, env, tmp_path, threads=2)
        for p in (web, side, work):
            procs.append(p.start())
        work.wait_for_log("worker serving", timeout=20)
        web.wait_for_log("Booting worker", timeout=20)
        clients = [websocket.create_connection(f"ws://127.0.0.1:{side.port}/ws/liveblog/", timeout=10)
                   for _ in range(3)]
        sent = []
        session_less = [requests.Session() for _ in range(6)]  # fresh connections spread over gunicorn workers
        for i, http in enumerate(session_less):
            r = http.post(f"http://127.0.0.1:{web.port}/posts", json={"title": f"post {i}", "body": "e2e"},
                          headers={"Connection": "close"}, timeout=10)
            assert r.status_code == 201, r.text
            sent.append(r.json())
            http.close()
        for client in clients:
            got = [json.loads(client.recv()) for _ in sent]
            assert got == sent
            client.close()
        listing = requests.get(f"http://127.0.0.1:{web.port}/posts", timeout=10).json()
        assert [p["title"] for p in listing] == [f"post {i}" for i in range(6)]
        assert web.log().count("Booting worker") >= 3, "gunicorn should run several sync workers"
        # A page opened from gunicorn points its WebSocket at /ws/liveblog/ on the same origin (nginx routes it).
        page = requests.get(f"http://127.0.0.1:{web.port}/", timeout=10)
        assert "/ws/liveblog/" in page.text and "post 5" in page.text
    finally:
        stack.stop_all(procs)
    assert "Traceback" not in work.log(), work.log()[-3000:]
