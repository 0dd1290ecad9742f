"""End to end: a real ``wsgi-channels sidecar`` process, a real worker process, a real Redis, real clients."""
from __future__ import annotations

import hashlib
import os
import signal
import sys
import time

import pytest
import requests
import websocket

from servers import RedisServer, ServerProcess, free_port, wait_for_port
from wsgi_channels.layers import from_url

pytestmark = pytest.mark.timeout(90)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tests") + os.pathsep + os.environ.get("PYTHONPATH", ""))


class Stack:
    """Sidecar + worker on one layer URL."""

    def __init__(self, tmp_path, url: str, *sidecar_flags: str) -> None:
        self.url = url
        self.port = free_port()
        cli = [sys.executable, "-m", "wsgi_channels"]
        self.worker = ServerProcess(cli + ["worker", "sidecar_routing:routing", "--layer", url, "--threads", "4"],
                                    str(tmp_path / "worker.log"), env=ENV, cwd=ROOT)
        self.sidecar = ServerProcess(cli + ["sidecar", "--bind", f"127.0.0.1:{self.port}", "--layer", url,
                                            "--http", "layer", *sidecar_flags],
                                     str(tmp_path / "sidecar.log"), env=ENV, cwd=ROOT)

    def start(self) -> "Stack":
        self.worker.start()
        self.sidecar.start()
        wait_for_port(self.port, proc=self.sidecar.proc, log=self.sidecar.log_path)
        # The worker is ready when a WebSocket is accepted.
        deadline = time.monotonic() + 15
        while True:
            try:
                websocket.create_connection(self.ws("/ready"), timeout=5).close()
                break
            except (websocket.WebSocketException, OSError):
                if time.monotonic() > deadline:
                    raise AssertionError("worker never answered:\n" + self.worker.log()[-3000:])
                time.sleep(0.2)
        return self

    def stop(self) -> None:
        self.sidecar.stop()
        self.worker.stop()

    def ws(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def read_disconnects(layer, n, timeout=10.0, prefix="/"):
    """Up to ``n`` disconnects reported for paths starting with ``prefix`` (others are skipped)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        channel, message = layer.receive(["test.disconnects"], block=True, timeout=0.5)
        if channel is not None and message["path"].startswith(prefix):
            got.append(message)
    return got


@pytest.fixture
def stack(tmp_path, redis_server):
    layer = from_url(redis_server.url)
    layer.flush()
    s = Stack(tmp_path, redis_server.url).start()
    yield s, layer
    s.stop()
    layer.flush()
    layer.close()


def test_websocket_round_trips_through_worker_and_redis(stack):
    s, layer = stack
    ws = websocket.create_connection(s.ws("/chat"), timeout=5)
    ws.send("hello")
    assert ws.recv() == "hello"
    ws.send_binary(b"\x00\xfe")
    assert ws.recv() == b"\x00\xfe"
    ws.close(status=4001)
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        websocket.create_connection(s.ws("/reject"), timeout=5)
    assert e.value.status_code == 403
    got = {d["path"]: d for d in read_disconnects(layer, 3)}  # with the readiness probe's
    assert got["/chat"]["code"] == 4001 and got["/chat"]["order"] == 3
    assert "/reject" in got


def test_flask_app_in_http_mode(stack):
    s, _ = stack
    with requests.Session() as session:
        r = session.get(s.http("/hello?name=sidecar"), timeout=10)
        assert r.status_code == 200 and r.json()["hello"] == "sidecar"
        data = os.urandom(1_500_000)  # over the inline limit: travels on body_channel
        r = session.post(s.http("/upload"), files={"file": ("blob.bin", data)}, data={"field": "v"}, timeout=20)
        assert r.status_code == 200, r.text
        assert r.json() == {"name": "blob.bin", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                            "field": "v"}
        r = session.get(s.http("/stream"), stream=True, timeout=10)
        assert b"".join(r.iter_content(None)) == b"".join(f"part {i}\n".encode() for i in range(5))
        assert session.get(s.http("/missing"), timeout=10).status_code == 404


def test_drain_sends_disconnects(stack):
    s, layer = stack
    sockets = [websocket.create_connection(s.ws(f"/drain{i}"), timeout=5) for i in range(3)]
    for ws in sockets:
        ws.send("x")
        assert ws.recv() == "x"
    s.sidecar.send_signal(signal.SIGTERM)
    for ws in sockets:
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(data[:2], "big") == 1001
        ws.close()
    s.sidecar.proc.wait(15)
    assert s.sidecar.proc.returncode == 0
    got = read_disconnects(layer, 3, prefix="/drain")
    assert sorted(d["path"] for d in got) == ["/drain0", "/drain1", "/drain2"]
    assert {d["code"] for d in got} == {1001} and {d["order"] for d in got} == {2}


def test_layer_outage_and_recovery(tmp_path):
    # Redis keeps its data across the restart (append-only file), as a production Redis does:
    # this is an outage, not a loss of state, so open sockets must stay up through it.
    fresh_redis = RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]).start()
    s = Stack(tmp_path, fresh_redis.url, "--connect-timeout", "2").start()
    try:
        ws = websocket.create_connection(s.ws("/before"), timeout=5)
        ws.send("a")
        assert ws.recv() == "a"
        fresh_redis.stop()
        time.sleep(1.5)
        # New connections are refused while the layer is down ...
        with pytest.raises(websocket.WebSocketBadStatusException) as e:
            websocket.create_connection(s.ws("/during"), timeout=5)
        assert e.value.status_code == 503
        assert requests.get(s.http("/_health"), timeout=5).status_code == 503
        # ... and the open socket stays up.
        ws.ping(b"still")
        fresh_redis.start()
        deadline = time.monotonic() + 20
        while requests.get(s.http("/_health"), timeout=5).status_code != 200:
            assert time.monotonic() < deadline, s.sidecar.log()[-3000:]
            time.sleep(0.2)
        deadline = time.monotonic() + 20
        while True:
            try:
                after = websocket.create_connection(s.ws("/after"), timeout=5)
                break
            except websocket.WebSocketBadStatusException:
                assert time.monotonic() < deadline
                time.sleep(0.3)
        after.send("b")
        assert after.recv() == "b"
        ws.send("c")
        assert ws.recv() == "c"
        ws.close()
        after.close()
        assert "channel layer is back" in s.sidecar.log()
    finally:
        s.stop()
        fresh_redis.stop()


def test_concurrent_keep_alive_requests_all_answered(stack):
    """Many keep-alive connections at once: every request is answered (a response that arrives
    before its sender learns the send succeeded must not leave the next request unsent)."""
    import threading

    s, _ = stack
    failures: list = []

    def client() -> None:
        with requests.Session() as session:
            for i in range(40):
                try:
                    r = session.get(s.http(f"/hello?name=c{i}"), timeout=5)
                    if r.status_code != 200 or r.json()["hello"] != f"c{i}":
                        failures.append((r.status_code, r.text[:100]))
                except requests.RequestException as e:
                    failures.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures[:5]


def test_full_request_channel_over_redis_answers_503_at_once(tmp_path, redis_server):
    """Over Redis the sidecar does not wait for a whole request's send (it goes back to reading):
    a send refused because ``http.request`` is full must still answer 503 on that connection,
    at once and closing it, and the next request on a new connection is served once there is room."""
    url = redis_server.url + "?capacity=2"
    layer = from_url(url)
    layer.flush()
    port = free_port()
    sidecar = ServerProcess([sys.executable, "-m", "wsgi_channels", "sidecar", "--bind", f"127.0.0.1:{port}",
                             "--layer", url, "--http", "layer", "--http-timeout", "5"],
                            str(tmp_path / "sidecar.log"), env=ENV, cwd=ROOT).start()
    try:
        wait_for_port(port, proc=sidecar.proc, log=sidecar.log_path)
        for i in range(2):  # fill the channel: nobody consumes it
            layer.send("http.request", {"filler": i})
        started = time.monotonic()
        r = requests.get(f"http://127.0.0.1:{port}/full", timeout=10)
        assert r.status_code == 503 and "too many requests waiting" in r.text, (r.status_code, r.text)
        assert r.headers.get("connection") == "close"
        assert time.monotonic() - started < 2, "503 must not wait for the HTTP timeout"
        assert layer.receive(["http.request"])[1] == {"filler": 0}  # nothing lost, room for one
        worker = ServerProcess([sys.executable, "-m", "wsgi_channels", "worker", "sidecar_routing:routing",
                                "--layer", url, "--only-channels", "http.request"],
                               str(tmp_path / "worker.log"), env=ENV, cwd=ROOT)
        layer.receive(["http.request"])  # the second filler, so the worker never sees one
        worker.start()
        try:
            ok = requests.get(f"http://127.0.0.1:{port}/hello?name=after", timeout=10)
            assert ok.status_code == 200 and ok.json()["hello"] == "after"
        finally:
            worker.stop()
    finally:
        sidecar.stop()
