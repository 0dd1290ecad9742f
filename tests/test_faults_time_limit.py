"""The worker's time limit on real processes: consumers stuck, the worker still serving.

A real ``redis-server``, a real sidecar in HTTP mode, a real worker process running
``stuck_app:routing`` with ``--time-limit``, and real clients (``requests`` over
HTTP, raw sockets for WebSocket frames and cut responses). The sidecar's own HTTP
timeout is much longer than the worker's limit, so every 504 here comes from the
worker.
"""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
import requests

import faultkit as fk
import stack
from servers import RedisServer, free_port, wait_for_port

from wsgi_channels.exitcodes import EXIT_RESTART

TESTS = Path(__file__).parent
SIDECAR_HTTP_TIMEOUT = 60  # far above every --time-limit below


@pytest.fixture
def redis_url():
    server = RedisServer().start()
    yield server.url
    server.stop()


class TimeLimitStack:
    """Sidecar (HTTP mode) + one worker on ``stuck_app:routing`` with the given worker flags."""

    def __init__(self, redis_url: str, log_dir: Path, *worker_args: str) -> None:
        self.env = stack.env_for(redis_url, TESTS)
        self.admin = free_port()
        self.sidecar = stack.sidecar(self.env, log_dir, None, "--http", "layer", "--http-timeout",
                                     str(SIDECAR_HTTP_TIMEOUT), "--ping-interval", "0")
        self.worker = stack.Proc([stack.PY, "-m", "wsgi_channels", "worker", "stuck_app:routing",
                                  "--admin-bind", f"127.0.0.1:{self.admin}", *worker_args],
                                 log_dir / f"worker-{time.monotonic_ns()}.log", self.env, TESTS)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.sidecar.port}"

    def __enter__(self) -> "TimeLimitStack":
        try:
            self.sidecar.start()
            self.worker.start()
            self.worker.wait_for_log("worker serving", timeout=30)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        stack.stop_all([self.sidecar, self.worker])

    def metrics(self) -> dict:
        return fk.metrics(self.admin)


def timed_get(url: str, out: list, timeout: float = 40.0) -> None:
    t0 = time.monotonic()
    try:
        r = requests.get(url, timeout=timeout)
        out.append((r.status_code, time.monotonic() - t0, r.text))
    except requests.RequestException as e:
        out.append((type(e).__name__, time.monotonic() - t0, ""))


def run_stuck_http(redis_url: str, log_dir: Path, threads: int = 8, stuck: int = 12, sleep: float = 25.0,
                   limit: float = 3.0, watch: float = 8.0) -> dict:
    """``stuck`` concurrent ``/sleep?s=SLEEP`` on a ``threads``-thread worker with ``--time-limit LIMIT``,
    while one client keeps asking ``/hello`` for ``watch`` seconds."""
    with TimeLimitStack(redis_url, log_dir, "--threads", str(threads), "--time-limit", str(limit)) as st:
        assert requests.get(st.base + "/hello", timeout=10).status_code == 200
        slow: list = []
        clients = [threading.Thread(target=timed_get, args=(f"{st.base}/sleep?s={sleep}", slow))
                   for _ in range(stuck)]
        started = time.monotonic()
        for t in clients:
            t.start()
        time.sleep(0.5)  # the sleeps are in: every thread is busy, 4 more sleeps wait in the queue
        hello: list = []
        while time.monotonic() - started < watch:
            timed_get(st.base + "/hello", hello, timeout=30)
            time.sleep(0.2)
        for t in clients:
            t.join(60)
        metrics = st.metrics()
        return {"slow": slow, "hello": hello, "log": st.worker.log(), "metrics": metrics,
                "worker_alive": st.worker.running}


def test_stuck_requests_get_504_within_the_limit_and_the_worker_keeps_serving(redis_url, tmp_path):
    """12 x /sleep?s=25 on 8 threads with a 3 s limit: every sleep gets 504 from the worker (the first
    eight within the limit plus its check interval, the four queued behind them one limit later),
    and /hello is answered all along, the first time once the stuck threads are replaced."""
    limit = 3.0
    r = run_stuck_http(redis_url, tmp_path, threads=8, stuck=12, sleep=25.0, limit=limit, watch=9.0)
    statuses = sorted(s for s, _, _ in r["slow"])
    assert statuses == [504] * 12, r["slow"]
    times = sorted(t for _, t, _ in r["slow"])
    # Generous margins for a loaded 2-core machine; the point is seconds of the limit, not 25 s of sleep.
    assert all(t < limit + 2.5 for t in times[:8]), times
    assert all(t < 2 * limit + 3.5 for t in times), times
    assert all("Gateway Timeout" in text and "Traceback" not in text for _, _, text in r["slow"])
    assert r["hello"] and all(s == 200 for s, _, _ in r["hello"]), r["hello"]
    assert max(t for _, t, _ in r["hello"]) < limit + 2.5, r["hello"]  # never waited for the 25 s sleeps
    log = r["log"]
    assert log.count("past the time limit of 3s: given up (504 sent)") == 12, log[-3000:]
    assert 'stuck_app.py", line' in log and "time.sleep(float(params.get" in log  # the stack of the stuck thread
    m = r["metrics"]
    assert m['wsgi_channels_worker_messages_timed_out_total{channel="http.request"}'] == 12
    assert m["wsgi_channels_worker_abandoned_threads"] == 12  # the sleeps still run, off to the side
    assert m["wsgi_channels_worker_time_limit_seconds"] == 3
    assert r["worker_alive"]


def test_without_the_time_limit_sleeps_hold_every_thread(redis_url, tmp_path):
    """The same load with ``--time-limit 0``: /hello waits for the sleeps (what the limit fixes)."""
    with TimeLimitStack(redis_url, tmp_path, "--threads", "2", "--time-limit", "0") as st:
        slow: list = []
        clients = [threading.Thread(target=timed_get, args=(f"{st.base}/sleep?s=4", slow)) for _ in range(2)]
        for t in clients:
            t.start()
        time.sleep(0.5)
        hello: list = []
        timed_get(st.base + "/hello", hello)
        for t in clients:
            t.join(30)
    assert [s for s, _, _ in slow] == [200, 200]
    assert hello[0][0] == 200 and hello[0][1] > 2.5, hello  # queued behind the sleeps


def test_stuck_websocket_consumer_is_closed_1011_and_other_sockets_keep_talking(redis_url, tmp_path):
    limit = 2.0
    with TimeLimitStack(redis_url, tmp_path, "--threads", "2", "--time-limit", str(limit)) as st:
        port = st.sidecar.port
        stuck, other = fk.RawClient(port, timeout=20), fk.RawClient(port, timeout=20)
        assert stuck.handshake("/ws/a")[0] == 101 and other.handshake("/ws/b")[0] == 101
        t0 = time.monotonic()
        stuck.send(fk.frame(fk.OP_TEXT, b"hang 3600"))
        for i in range(5):  # served meanwhile by the other thread, and by the replacement after
            other.send(fk.frame(fk.OP_TEXT, b"echo %d" % i))
            assert other.read_frame() == (fk.OP_TEXT, b"echo %d" % i)
        code, data = stuck.read_until_close()
        waited = time.monotonic() - t0
        assert code == 1011 and data == [], (code, data)
        assert waited < limit + 2.5, waited
        stuck.close()
        fresh = fk.RawClient(port, timeout=20)  # the worker still has both threads: a new socket is served
        assert fresh.handshake("/ws/c")[0] == 101
        fresh.send(fk.frame(fk.OP_TEXT, b"hello"))
        assert fresh.read_frame() == (fk.OP_TEXT, b"hello")
        other.send(fk.frame(fk.OP_TEXT, b"still here"))
        assert other.read_frame() == (fk.OP_TEXT, b"still here")
        for c in (fresh, other):
            c.close()
        log = st.worker.log()
    assert "given up (WebSocket closed with 1011)" in log, log[-3000:]


def test_a_started_response_that_gets_stuck_is_cut_so_the_client_can_tell(redis_url, tmp_path):
    limit = 2.0
    with TimeLimitStack(redis_url, tmp_path, "--threads", "2", "--time-limit", str(limit)) as st:
        client = fk.RawClient(st.sidecar.port, timeout=20)
        t0 = time.monotonic()
        client.send(b"GET /stream-then-hang?s=3600 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = client.read_head()
        assert status == 200 and headers.get("transfer-encoding") == "chunked", headers
        assert client.eof(timeout=limit + 5), "the connection stayed open"
        waited = time.monotonic() - t0
        body = client.buf
        client.close()
        # The first block arrived, the response never ended: no last chunk, so no client mistakes it
        # for a complete response.
        assert b"first block" in body and not body.endswith(b"0\r\n\r\n"), body
        assert waited < limit + 3, waited
        assert requests.get(st.base + "/hello", timeout=10).status_code == 200
        log = st.worker.log()
        side = st.sidecar.log()
    assert "given up (its started response aborted)" in log, log[-3000:]
    assert "aborted by the worker" in side and "bad http.response" not in side, side[-3000:]


def test_an_app_that_fails_mid_stream_has_its_response_cut_at_once(redis_url, tmp_path):
    """No time limit involved: the app raises after its response started. The consumer sends
    ``{"abort": True}`` and the sidecar closes the client's connection at once, not after its
    HTTP timeout (60 s here)."""
    with TimeLimitStack(redis_url, tmp_path, "--threads", "2") as st:
        client = fk.RawClient(st.sidecar.port, timeout=20)
        t0 = time.monotonic()
        client.send(b"GET /stream-then-fail HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = client.read_head()
        assert status == 200 and headers.get("transfer-encoding") == "chunked", headers
        assert client.eof(timeout=10), "the connection stayed open"
        waited = time.monotonic() - t0
        body = client.buf
        client.close()
        assert b"first block" in body and not body.endswith(b"0\r\n\r\n"), body
        assert waited < 10, waited
        assert requests.get(st.base + "/hello", timeout=10).status_code == 200
        log = st.worker.log()
        side = st.sidecar.log()
    assert "the app failed mid-stream" in log and "abandoned after it started" in log, log[-3000:]
    assert "aborted by the worker" in side and "bad http.response" not in side, side[-3000:]


def test_too_many_stuck_threads_restart_the_worker_after_it_drains(redis_url, tmp_path):
    """``--max-abandoned 2``: two threads stuck for good stop the worker, which first finishes a
    streamed response in flight (it keeps sending: never stuck), then exits with status 75."""
    limit = 2.5  # five times the stream's pauses: a loaded machine must not make the stream look stuck
    with TimeLimitStack(redis_url, tmp_path, "--threads", "3", "--time-limit", str(limit), "--max-abandoned", "2",
                        "--grace", "20") as st:
        stream: list = []
        stuck: list = []
        streamer = threading.Thread(target=timed_get, args=(f"{st.base}/stream?n=12&every=0.5", stream))
        streamer.start()
        time.sleep(0.3)
        hangers = [threading.Thread(target=timed_get, args=(f"{st.base}/sleep?s=3600", stuck)) for _ in range(2)]
        for t in hangers:
            t.start()
        for t in hangers:
            t.join(30)
        streamer.join(30)
        assert st.worker.proc is not None
        code = st.worker.proc.wait(30)
        exited = time.monotonic()
        log = st.worker.log()
    assert [s for s, _, _ in stuck] == [504, 504], stuck
    assert stream and stream[0][0] == 200, stream
    assert stream[0][2] == "".join(f"chunk {i}\n" for i in range(12))  # 6 s of streaming, 0.5 s apart
    assert code == EXIT_RESTART == 75, log[-3000:]
    assert "exit status 75" in log
    assert log.index("exit status 75") < log.index("worker stopped")
    assert exited  # the process ended by itself: no signal was sent to it


def test_greenlets_stuck_greenlet_is_given_up_and_the_worker_keeps_serving(redis_url, tmp_path):
    """Under ``--greenlets`` nothing is killed (a greenlet inside a redis-py command must not be): the
    stuck greenlet is left to finish, its client answered, and a new greenlet takes its place."""
    limit = 2.0
    with TimeLimitStack(redis_url, tmp_path, "--greenlets", "4", "--time-limit", str(limit)) as st:
        slow: list = []
        clients = [threading.Thread(target=timed_get, args=(f"{st.base}/sleep?s=3600", slow)) for _ in range(6)]
        for t in clients:
            t.start()
        time.sleep(0.5)
        hello: list = []
        timed_get(st.base + "/hello", hello)
        for t in clients:
            t.join(30)
        m = st.metrics()
        log = st.worker.log()
    assert [s for s, _, _ in slow] == [504] * 6, slow
    assert hello[0][0] == 200 and hello[0][1] < limit + 2.5, hello
    assert m['wsgi_channels_worker_messages_timed_out_total{channel="http.request"}'] == 6
    assert 'stuck_app.py", line' in log  # the greenlet's own stack
    assert "greenlets" in log


def test_no_server_announces_its_version(redis_url, tmp_path):
    """The worker's and the sidecar's metrics endpoints, and the sidecar itself, name no versions."""
    sidecar_admin = free_port()
    with TimeLimitStack(redis_url, tmp_path, "--threads", "1") as st:
        side_admin = stack.sidecar(st.env, tmp_path, None, "--admin-bind", f"127.0.0.1:{sidecar_admin}")
        side_admin.start()
        try:
            wait_for_port(sidecar_admin, proc=side_admin.proc, log=side_admin.log_path)  # may bind after the main port
            answers = {
                "worker /metrics": requests.get(f"http://127.0.0.1:{st.admin}/metrics", timeout=10),
                "worker 404": requests.get(f"http://127.0.0.1:{st.admin}/nothing", timeout=10),
                "sidecar /metrics": requests.get(f"http://127.0.0.1:{sidecar_admin}/metrics", timeout=10),
                "sidecar app": requests.get(st.base + "/hello", timeout=10),
            }
            raw = fk.RawClient(st.admin)  # a request wsgiref refuses itself (its own error page)
            raw.send(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")  # 414
            status, headers, _ = raw.read_head()
            raw.close()
        finally:
            side_admin.stop()
    servers = {name: r.headers.get("Server", "") for name, r in answers.items()}
    servers["worker error page"] = headers.get("server", "")
    assert status == 414
    assert servers["worker /metrics"] == servers["worker 404"] == servers["worker error page"] \
        == "wsgi-channels-worker", servers
    for name, value in servers.items():
        assert "Python" not in value and "/" not in value and "WSGIServer" not in value, (name, value)
