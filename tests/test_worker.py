"""The worker: in-process threads over memory://, and real worker processes over real Redis."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from werkzeug.test import Client as WerkzeugClient

from servers import ServerProcess

from wsgi_channels import ConfigurationError, route
from wsgi_channels.exitcodes import EXIT_CONFIG
from wsgi_channels.layers import from_url
from wsgi_channels.layers.memory import MemoryChannelLayer
from wsgi_channels.protocol.translation import build_request_message, validate_response_message
from wsgi_channels.worker import Worker, select_channels

TESTS = Path(__file__).parent


# -- in-process ----------------------------------------------------------------------------

def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_select_channels():
    names = {"http.request", "websocket.connect", "websocket.receive", "chat.send"}
    assert select_channels(names) == sorted(names)
    assert select_channels(names, only=["websocket.*"]) == ["websocket.connect", "websocket.receive"]
    assert select_channels(names, exclude=["websocket.*", "http.*"]) == ["chat.send"]
    assert select_channels(names, only=["*"], exclude=["*.send"]) == ["http.request", "websocket.connect",
                                                                       "websocket.receive"]


def test_no_channels_left_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="no channels left"):
        Worker([route("chat.send", lambda m: None)], MemoryChannelLayer(), only_channels=["nothing.*"])


# The "die" consumer kills its thread on purpose (the worker restarts it); pytest would report that.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_worker_threads_serve_and_survive_errors(caplog):
    layer = MemoryChannelLayer()
    served = []

    def ok(message):
        served.append(message["n"])
        message.reply_channel.send({"n": message["n"]})

    def boom(message):
        message.reply_channel.send({"before": "error"})
        raise RuntimeError("consumer failure")

    def die(message):
        raise SystemExit("kills its thread")

    worker = Worker([route("ok", ok), route("boom", boom), route("die", die)], layer, concurrency=2)
    with caplog.at_level(logging.INFO, logger="wsgi_channels.worker"):
        worker.start()
        try:
            assert "worker serving boom, die, ok" in caplog.text
            layer.send("boom", {"reply_channel": "r.boom"})
            for n in range(20):
                layer.send("ok", {"reply_channel": "r.ok", "n": n})
            assert wait_for(lambda: len(served) == 20)
            assert layer.receive(["r.boom"], block=True, timeout=2) == ("r.boom", {"before": "error"}), \
                "sends made before the error still go out"
            assert wait_for(lambda: worker.stats["errors"] == 1)
            layer.send("die", {})
            layer.send("die", {})
            assert wait_for(lambda: sum(not t.is_alive() for t in worker._threads) == 2)
            worker.supervise_once()
            assert worker.stats["restarts"] == 2
            assert all(t.is_alive() for t in worker._threads)
            layer.send("ok", {"reply_channel": "r.ok", "n": 99})
            assert wait_for(lambda: 99 in served), "replacement threads serve"
        finally:
            assert worker.stop(grace=2)
    assert "consumer failure" in caplog.text and "died; starting a new one" in caplog.text
    assert sorted(served) == list(range(20)) + [99]


def test_stop_finishes_in_flight_within_grace():
    layer = MemoryChannelLayer()
    done = []

    def slow(message):
        time.sleep(0.5)
        done.append(1)

    worker = Worker([route("slow", slow)], layer, concurrency=1).start()
    layer.send("slow", {})
    assert wait_for(lambda: layer.global_statistics()["messages_pending"] == 0)
    t0 = time.monotonic()
    assert worker.stop(grace=5) is True
    assert done == [1] and time.monotonic() - t0 < 3


def test_stop_gives_up_after_grace(caplog):
    layer = MemoryChannelLayer()
    release = threading.Event()
    worker = Worker([route("stuck", lambda m: release.wait(10))], layer, concurrency=1).start()
    layer.send("stuck", {})
    assert wait_for(lambda: layer.global_statistics()["messages_pending"] == 0)
    with caplog.at_level(logging.WARNING):
        assert worker.stop(grace=0.2) is False
    assert "still busy after the grace period" in caplog.text
    release.set()


# -- worker processes over Redis -------------------------------------------------------------

def worker_process(tmp_path, url, routing="apps.flask_app:routing", *extra, name="worker", env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(TESTS), "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    env.pop("WSGI_CHANNELS_LAYER", None)
    args = [sys.executable, "-m", "wsgi_channels", "worker", routing, "--layer", url, *extra]
    proc = ServerProcess(args, str(tmp_path / f"{name}.log"), env=env, cwd=str(TESTS)).start()
    deadline = time.monotonic() + 20
    while "worker serving" not in proc.log():
        if not proc.running or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"worker did not start:\n{proc.log()[-3000:]}")
        time.sleep(0.05)
    return proc


class HttpOverLayer:
    """A test's side of the sidecar: send http.request, collect the response."""

    def __init__(self, url):
        self.layer = from_url(url)

    def request(self, method, target, headers=(), body=b"", timeout=10.0, overrides=None):
        reply = self.layer.new_channel("http.response.test?")
        message = dict(build_request_message(
            reply_channel=reply, method=method, target=target, http_version="1.1",
            headers=[(b"host", b"testserver"), *headers] + ([(b"content-length", str(len(body)).encode())]
                                                             if body else []),
            client=["127.0.0.1", 50000], server=["testserver", 80], body=body))
        message.update(overrides or {})
        self.layer.send("http.request", message)
        return self.response(reply, timeout)

    def response(self, reply, timeout=10.0):
        messages = []
        deadline = time.monotonic() + timeout
        while not messages or messages[-1].get("more_content"):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no complete response on {reply} within {timeout}s (got {len(messages)} parts)"
            channel, m = self.layer.receive([reply], block=True, timeout=min(1.0, remaining))
            if channel is not None:
                validate_response_message(m, first=not messages)
                messages.append(m)
        return messages[0]["status"], messages[0]["headers"], b"".join(m.get("content", b"") for m in messages)

    def close(self):
        self.layer.close()


@pytest.fixture
def redis_url(redis_server):
    layer = from_url(redis_server.url)
    layer.flush()
    layer.close()
    return redis_server.url


def test_worker_process_serves_flask_over_redis(tmp_path, redis_url):
    proc = worker_process(tmp_path, redis_url, "apps.flask_app:routing", "--threads", "2")
    http = HttpOverLayer(redis_url)
    try:
        serving = [line for line in proc.log().splitlines() if "worker serving" in line][0]
        assert "http.disconnect, http.request with 2 threads" in serving, serving
        assert "websocket" not in serving, "no WebSocket route: the WebSocket channels are left to others"
        # Differential: the same requests through werkzeug's client in-process.
        from apps import flask_app

        wz = WerkzeugClient(flask_app.app, use_cookies=False)
        for method, target, body in [("GET", "/", b""), ("GET", "/cookies", b""), ("GET", "/redirect", b""),
                                     ("GET", "/stream/30", b""), ("GET", "/unicode/caf%C3%A9", b""),
                                     ("PUT", "/upload", bytes(range(256)) * 100), ("GET", "/big/600000", b"")]:
            status, headers, data = http.request(method, target.encode(), body=body)
            resp = wz.open(target, method=method, data=body, base_url="http://testserver",
                           headers={"Content-Length": str(len(body))} if body else {})
            assert status == resp.status_code, target
            assert [(n.decode().lower(), v.decode()) for n, v in headers] == \
                [(k.lower(), v) for k, v in resp.headers.items()], target
            assert data == resp.get_data(), target
            resp.close()
        # Bad input, each with its documented outcome; the worker keeps serving.
        assert http.request("GET", b"/", overrides={"method": "get"})[0] == 400          # malformed message
        assert http.request("GET", b"/boom")[0] == 500                    # the app raises
        assert http.request("POST", b"/upload", headers=[(b"content-length", b"999999999")])[0] == 413
        http.layer.send("http.request", {"no": "reply channel"})          # nothing to answer
        http.layer.send("http.request", {"reply_channel": 5})             # wrong type
        status, _, data = http.request("GET", b"/")
        assert (status, data) == (200, b"hello from flask")
    finally:
        http.close()
        code = proc.stop()
    log = proc.log()
    assert code == 0, log[-3000:]
    assert "secret detail that must not leak" in log and "Traceback" in log
    assert "invalid http.request message" in log


def test_worker_sigterm_finishes_in_flight(tmp_path, redis_url):
    proc = worker_process(tmp_path, redis_url, "apps.flask_app:routing", "--threads", "1", "--grace", "10")
    http = HttpOverLayer(redis_url)
    try:
        reply = http.layer.new_channel("http.response.test?")
        message = dict(build_request_message(reply_channel=reply, method="GET", target=b"/slow/1.0",
                                             headers=[(b"host", b"t")], http_version="1.1"))
        http.layer.send("http.request", message)
        deadline = time.monotonic() + 5
        while http.layer.channel_statistics("http.request").get("messages_pending", 0) and \
                time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status, _, body = http.response(reply)
        assert (status, body) == (200, b"slept 1.0")
        proc.proc.wait(10)
        assert proc.proc.returncode == 0
        assert time.monotonic() - t0 < 5
        # Stopped receiving: a request sent now stays queued.
        http.layer.send("http.request", dict(message, reply_channel=http.layer.new_channel("x?")))
        assert http.layer.channel_statistics("http.request")["messages_pending"] == 1
    finally:
        http.close()
        proc.stop()
    assert "received SIGTERM" in proc.log()


def test_worker_survives_redis_restart(tmp_path, fresh_redis):
    url = fresh_redis.url
    proc = worker_process(tmp_path, url, "apps.flask_app:routing", "--threads", "2")
    try:
        http = HttpOverLayer(url)
        assert http.request("GET", b"/")[0] == 200
        fresh_redis.restart(down_for=1.5)
        deadline = time.monotonic() + 20
        status = None
        while status != 200 and time.monotonic() < deadline:
            try:
                status = http.request("GET", b"/", timeout=2)[0]
            except (AssertionError, ConnectionError):
                time.sleep(0.2)
        assert status == 200, proc.log()[-3000:]
        assert proc.running
        http.close()
    finally:
        code = proc.stop()
    log = proc.log()
    assert code == 0
    assert "channel layer unavailable" in log and "reachable again" in log


def test_worker_greenlets_and_channel_globs(tmp_path, redis_url):
    proc = worker_process(tmp_path, redis_url, "apps.flask_app:routing", "--greenlets", "20",
                          "--only-channels", "http.req*", name="greenlets")
    http = HttpOverLayer(redis_url)
    try:
        assert "20 greenlets" in proc.log()
        serving = [line for line in proc.log().splitlines() if "worker serving" in line][0]
        assert "serving http.request with 20 greenlets" in serving, serving
        # Concurrency: 10 slow requests at once finish in about one request's time.
        replies = []
        for _ in range(10):
            reply = http.layer.new_channel("http.response.test?")
            http.layer.send("http.request", dict(build_request_message(
                reply_channel=reply, method="GET", target=b"/slow/0.5", headers=[(b"host", b"t")],
                http_version="1.1")))
            replies.append(reply)
        t0 = time.monotonic()
        assert all(http.response(r)[0] == 200 for r in replies)
        assert time.monotonic() - t0 < 4
    finally:
        http.close()
        assert proc.stop() == 0


def test_worker_refuses_memory_layer(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    env.pop("WSGI_CHANNELS_LAYER", None)
    # Named explicitly: with nothing named, the worker takes the user's ipc:// store (settings.py).
    proc = subprocess.run([sys.executable, "-m", "wsgi_channels", "worker", "apps.flask_app:routing",
                           "--layer", "memory://"],
                          env=env, cwd=str(TESTS), capture_output=True, text=True, timeout=30)
    assert proc.returncode == EXIT_CONFIG
    assert "the layer 'memory://' is private to one process" in proc.stderr


@pytest.mark.parametrize("args,words", [
    (["nope_module:routing", "--layer", "ipc:///tmp/x.db"], "cannot import 'nope_module'"),
    (["apps.flask_app:routing", "--layer", "bogus://x"], "unknown channel layer URL"),
    (["apps.flask_app:routing", "--layer", "{ipc}", "--only-channels", "zzz"], "no channels left"),
])
def test_worker_config_errors_exit_with_exit_config(tmp_path, args, words):
    args = [a.replace("{ipc}", f"ipc://{tmp_path / 'c.db'}") for a in args]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.run([sys.executable, "-m", "wsgi_channels", "worker", *args], env=env, cwd=str(TESTS),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert words in proc.stderr


def test_worker_process_over_ipc_with_bare_apps(tmp_path):
    url = f"ipc://{tmp_path / 'channels.db'}"
    proc = worker_process(tmp_path, url, "apps.bare_app:routing", "--threads", "2", name="ipc")
    http = HttpOverLayer(url)
    try:
        assert http.request("GET", b"/writer")[2] == b"written then returned"
        status, headers, body = http.request("GET", b"/exc_info_app")
        assert status == 503
        data = bytes(range(256)) * 1000
        assert http.request("GET", b"/file_app")[2] == data
        assert http.request("GET", b"/no_start")[0] == 500
        body = b"line\n" * 1000
        status, _, got = http.request("POST", b"/echo_body", body=body)
        assert (status, hashlib.sha256(got).hexdigest()) == (200, hashlib.sha256(body).hexdigest())
        env = json.loads(http.request("GET", b"/environ_app/x?y=1")[2])
        assert env["SCRIPT_NAME"] == "/environ_app" and env["PATH_INFO"] == "/x" and env["QUERY_STRING"] == "y=1"
    finally:
        http.close()
        assert proc.stop() == 0


# -- property: no message, however malformed, takes the worker down ----------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8)
_request_like = st.fixed_dictionaries(
    {}, optional={"reply_channel": st.just("http.response.test.reply") | _values,
                  "method": st.sampled_from(["GET", "POST", "get", ""]) | _values,
                  "path": st.sampled_from(["/", "/boom", "/unicode/é"]) | _values,
                  "http_version": st.sampled_from(["1.1", "2", "9"]) | _values,
                  "headers": st.just([[b"host", b"h"]]) | _values,
                  "body": _values, "body_channel": st.none() | _values, "query_string": _values,
                  "client": _values, "server": _values})


@settings(max_examples=150, deadline=None)
@given(content=_request_like, channel=st.sampled_from(["http.request", "websocket.connect", "websocket.receive",
                                                       "websocket.disconnect"]))
def test_property_worker_survives_any_message(content, channel):
    from apps import flask_app

    layer = MemoryChannelLayer()
    worker = Worker(flask_app.routing, layer, send_timeout=0.1)
    worker.handle(channel, content)  # never raises
    if channel == "http.request" and content.get("reply_channel") == "http.response.test.reply":
        messages = []
        while True:
            got, m = layer.receive(["http.response.test.reply"])
            if got is None:
                break
            messages.append(m)
        assert messages, "a request with a usable reply channel always gets an answer"
        assert messages[0]["status"] in (200, 400, 404, 405, 500)
        assert messages[-1]["more_content"] is False
    good = dict(build_request_message(reply_channel="http.response.test.ok", method="GET", target=b"/",
                                      headers=[(b"host", b"h")], http_version="1.1"))
    worker.handle("http.request", good)
    assert layer.receive(["http.response.test.ok"])[1]["status"] == 200


def test_worker_process_serves_plain_django_over_redis(tmp_path, redis_url):
    proc = worker_process(tmp_path, redis_url, "apps.django_app:routing", "--threads", "2", name="django",
                          env_extra={"DJANGO_SETTINGS_MODULE": "apps.django_app"})
    http = HttpOverLayer(redis_url)
    try:
        assert http.request("GET", b"/")[1:] == ([[b"Content-Type", b"text/html; charset=utf-8"]],
                                                 b"hello from django")
        status, headers, _ = http.request("GET", b"/cookies")
        assert status == 200 and [v for n, v in headers if n == b"Set-Cookie"] == [
            b"d1=1; Path=/", b"d2=2; HttpOnly; Path=/"]
        assert http.request("GET", b"/go")[:2] == (302, [[b"Content-Type", b"text/html; charset=utf-8"],
                                                         [b"Location", b"/"]])
        data = os.urandom(300_000)
        status, _, body = http.request("POST", b"/upload", headers=[(b"content-type", b"application/octet-stream")],
                                       body=data)
        assert (status, json.loads(body)) == (200, {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        assert http.request("GET", b"/stream")[2] == b"".join(b"chunk %d\n" % i for i in range(5))
        where = json.loads(http.request("GET", b"/app/where/caf%C3%A9", overrides={"root_path": "/app"})[2])
        assert where == {"name": "café", "path": "/app/where/café", "path_info": "/where/café",
                         "script_name": "/app", "uri": "http://testserver/app/where/caf%C3%A9"}
    finally:
        http.close()
        assert proc.stop() == 0
    assert "Traceback" not in proc.log()


def test_worker_process_metrics_errors_and_thread_replacement(tmp_path, redis_url):
    import requests

    from servers import free_port

    port = free_port()
    proc = worker_process(tmp_path, redis_url, "apps.worker_routing:routing", "--threads", "2",
                          "--admin-bind", f"127.0.0.1:{port}", name="metrics")
    http = HttpOverLayer(redis_url)
    try:
        assert http.request("GET", b"/")[0] == 200
        http.layer.send("test.boom", {})
        http.layer.send("test.die", {})
        http.layer.send("test.die", {})
        replies = []
        for n in range(10):  # served after both executors died and were replaced
            reply = http.layer.new_channel("test.reply?")
            http.layer.send("test.echo", {"reply_channel": reply, "n": n})
            replies.append(reply)
        for n, reply in enumerate(replies):
            channel, message = http.layer.receive([reply], block=True, timeout=10)
            assert message == {"echo": n}
        expected = ['wsgi_channels_worker_messages_total{channel="http.request"} 1.0',
                    'wsgi_channels_worker_consumer_errors_total{channel="test.boom"} 1.0',
                    'wsgi_channels_worker_messages_total{channel="test.echo"} 10.0',
                    "wsgi_channels_worker_thread_restarts_total 2.0",
                    "wsgi_channels_worker_layer_up 1.0",
                    'wsgi_channels_worker_consumer_seconds_total{channel="http.request"}']
        # A message is counted once its consumer returns, which is just after its reply is sent:
        # the last echo's count may trail its reply by a moment, so read until it shows (5 s at most).
        deadline = time.monotonic() + 5
        while True:
            metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            missing = [line for line in expected if line not in metrics]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not missing, (missing, metrics)
    finally:
        http.close()
        assert proc.stop() == 0
    log = proc.log()
    assert "consumer failure for the worker test" in log and log.count("died; starting a new one") == 2


def test_worker_start_up_check_takes_no_message(tmp_path, redis_url):
    layer = from_url(redis_url)
    reply = layer.new_channel("http.request.reply?")
    layer.send("http.request", dict(build_request_message(reply_channel=reply, method="GET", target=b"/",
                                                          headers=[(b"host", b"t")], http_version="1.1")))
    proc = worker_process(tmp_path, redis_url, "apps.flask_app:routing", "--threads", "1", name="startup")
    try:
        channel, message = layer.receive([reply], block=True, timeout=10)
        assert channel == reply and message["status"] == 200, "a request queued before start-up is served"
    finally:
        layer.close()
        assert proc.stop() == 0


def test_worker_takes_batches_from_a_backlog(redis_url):
    """With messages queued up, the receiver fetches several per round trip, never more than free executors."""
    layer = from_url(redis_url + "?capacity=1000")
    sizes = []
    real_batch = layer.receive_batch

    def counting_batch(channels, limit=100, **kw):
        got = real_batch(channels, limit=limit, **kw)
        sizes.append((limit, len(got)))
        return got

    layer.receive_batch = counting_batch
    seen, lock = [], threading.Lock()

    def consumer(message):
        with lock:
            seen.append(message["n"])

    for n in range(300):
        layer.send("batch.test", {"n": n})
    worker = Worker([route("batch.test", consumer)], layer, concurrency=4).start()
    try:
        assert wait_for(lambda: len(seen) == 300, timeout=20)
    finally:
        worker.stop(grace=2)
        layer.flush()
        layer.close()
    assert sorted(seen) == list(range(300)), "every message once"
    assert any(n > 1 for _, n in sizes), sizes
    assert all(n <= limit <= 4 for limit, n in sizes)


def _waiting_to_receive(worker, client, idle):
    """True once ``idle`` threads wait on the inbox and the leader is blocked in its BLMPOP."""
    clients = client._shards[0].execute("CLIENT", "LIST").decode().split("\n")
    return worker._scheduler.idle == idle and any(" cmd=blmpop " in f" {c} " for c in clients)


def _queue_at_once(client, paths):
    """http.request messages for ``paths``, queued in one MULTI/EXEC so one pop takes them all;
    returns their reply channels."""
    client.send("warm.up", {})  # loads the send script, which MULTI cannot do on a NOSCRIPT
    replies, sends = [], []
    for path in paths:
        replies.append(client.new_channel("http.response.test?"))
        message = build_request_message(reply_channel=replies[-1], method="GET", target=path.encode(),
                                        http_version="1.1", headers=[(b"host", b"testserver")])
        sends.append(client._send_payload("http.request", dict(message))[1])
    got = client._shards[0]._roundtrip(b"*1\r\n$5\r\nMULTI\r\n" + b"".join(sends) + b"*1\r\n$4\r\nEXEC\r\n",
                                       len(sends) + 2)
    assert got[-1] == list(range(1, len(sends) + 1)), got
    return replies


def test_a_slow_message_does_not_hold_back_the_rest_of_its_batch(redis_url):
    """A batch runs on the thread that received it; once a message has run for STEAL_AFTER, the
    watchdog sends the responses held so far and gives the rest of the batch to idle threads."""
    from wsgi_channels import WsgiConsumer
    from wsgi_channels.worker import STEAL_AFTER, WATCH_MAX

    ran = {}

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        ran[path] = threading.current_thread().name
        if path == "/slow":
            time.sleep(2.0)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [path.encode()]

    layer = from_url(redis_url)
    worker = Worker([route("http.request", WsgiConsumer(app))], layer, concurrency=4).start()
    client = from_url(redis_url)
    try:
        assert wait_for(lambda: _waiting_to_receive(worker, client, 3), timeout=10)
        paths = ("/fast1", "/slow", "/fast2")
        t0 = time.monotonic()
        replies = dict(zip(paths, _queue_at_once(client, paths)))
        arrived = {}
        for path in ("/fast1", "/fast2", "/slow"):
            channel, message = client.receive([replies[path]], block=True, timeout=10)
            assert channel == replies[path] and message["content"] == path.encode()
            arrived[path] = time.monotonic() - t0
    finally:
        worker.stop(grace=5)
        layer.flush()
        layer.close()
        client.close()
    assert ran["/fast1"] == ran["/slow"], f"one batch runs on the thread that received it: {ran}"
    assert ran["/fast2"] != ran["/slow"], f"the rest of the stuck batch went to another thread: {ran}"
    assert worker.stats["handed_out"] == 1
    bound = 0.5 + 4 * (STEAL_AFTER + WATCH_MAX)
    assert arrived["/fast1"] < bound, f"the response held while /slow ran was sent: {arrived}"
    assert arrived["/fast2"] < bound, f"/fast2 did not wait for /slow: {arrived}"
    assert arrived["/slow"] >= 2.0, arrived


def test_an_app_that_waits_on_io_gets_a_thread_per_message(redis_url):
    """Fast messages run in batches on one thread; once messages run in a batch wait on I/O (here a
    sleep), each message gets its own thread at once, so a blocking app keeps its concurrency."""
    from wsgi_channels import WsgiConsumer

    ran, lock = [], threading.Lock()

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        with lock:
            ran.append((path, threading.current_thread().name))
        if path.startswith("/io"):
            time.sleep(0.05)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [path.encode()]

    def threads_of(prefix):
        return [name for path, name in ran if path.startswith(prefix)]

    layer = from_url(redis_url)
    worker = Worker([route("http.request", WsgiConsumer(app))], layer, concurrency=4).start()
    client = from_url(redis_url)
    try:
        assert wait_for(lambda: _waiting_to_receive(worker, client, 3), timeout=10)
        for reply in _queue_at_once(client, [f"/fast{i}" for i in range(4)]):
            assert client.receive([reply], block=True, timeout=10)[0] == reply
        assert len(set(threads_of("/fast"))) == 1, f"fast messages ran as one batch on one thread: {ran}"
        for n in (1, 2):  # two batches whose first message waits 50 ms: the worker now runs messages in parallel
            assert wait_for(lambda: _waiting_to_receive(worker, client, 3), timeout=10)
            for reply in _queue_at_once(client, [f"/io{n}", f"/after-io{n}"]):
                assert client.receive([reply], block=True, timeout=10)[0] == reply
        handed_out = worker.stats["handed_out"]
        assert wait_for(lambda: _waiting_to_receive(worker, client, 3), timeout=10)
        for reply in _queue_at_once(client, [f"/io-par{i}" for i in range(4)]):
            assert client.receive([reply], block=True, timeout=10)[0] == reply
    finally:
        worker.stop(grace=5)
        layer.flush()
        layer.close()
        client.close()
    assert len(set(threads_of("/io-par"))) == 4, f"each I/O message got a thread of its own: {ran}"
    assert worker.stats["handed_out"] == handed_out, "no batch was needed to be taken over"


# -- group history and presence: the flags, and the user of presence entries ---------------------------

def _ask(layer, channel, content, timeout=10.0):
    reply = layer.new_channel("test.reply?")
    layer.send(channel, {**content, "reply_channel": reply})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, message = layer.receive([reply], block=True, timeout=0.5)
        if got is not None:
            return message
    raise AssertionError(f"no answer on {channel}")


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_worker_adds_presence_with_the_messages_user_and_its_feature_flags(tmp_path, how):
    """``--group-presence``/``WSGI_CHANNELS_GROUP_PRESENCE`` reach the worker's layer, and a consumer that adds a
    presence entry without a user gets the user of the message it consumes (here the connect token's ``sub``)."""
    from wsgi_channels.presence import conn_id

    url = f"ipc://{tmp_path / 'channels.db'}"
    flags = ["--group-presence", "room.*:max_members=10", "--group-history", "chat.*:size=5"]
    env = {}
    if how == "environment":
        flags, env = [], {"WSGI_CHANNELS_GROUP_PRESENCE": "room.*:max_members=10",
                          "WSGI_CHANNELS_GROUP_HISTORY": "chat.*:size=5"}
    proc = worker_process(tmp_path, url, "apps.presence_routing:routing", *flags, name=how, env_extra=env)
    layer = from_url(url + "?group_presence=room.*:max_members=10&group_history=chat.*:size=5")
    try:
        member, anonymous = layer.new_channel("test.member?"), layer.new_channel("test.anon?")
        assert _ask(layer, "test.join", {"group": "room.1", "member": member, "__wsc_token": {"sub": "u7"}}) \
            == {"done": True}
        assert _ask(layer, "test.join", {"group": "room.1", "member": anonymous}) == {"done": True}
        members = layer.group_presence("room.1")
        assert {cid: (e["user"], e["info"]) for cid, e in members.items()} == {
            conn_id(member): ("u7", {"via": "worker"}), conn_id(anonymous): (None, {"via": "worker"})}
        layer.send_group("chat.lobby", {"text": "kept"})
        assert _ask(layer, "test.position", {"group": "chat.lobby"}) == {
            "epoch": layer.group_position("chat.lobby").epoch, "offset": 1}
        assert _ask(layer, "test.position", {"group": "news"}) == {"error": "HistoryNotEnabled"}
    finally:
        layer.close()
        assert proc.stop() == 0
