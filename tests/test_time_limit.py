"""The worker's time limit in one process: what a message given up sends, and what it never sends.

In-process workers over ``memory://`` and over a real ``redis-server`` (where a
response's last message goes through the batched reply sender), with consumers
that block on an event the test sets, so each case knows exactly when the
consumer would have answered. ``tests/test_faults_time_limit.py`` runs the same
through real processes and a real sidecar.
"""
from __future__ import annotations

import logging
import threading
import time

import pytest

from servers import RedisServer

from wsgi_channels import ConfigurationError, Group, route
from wsgi_channels.layers import from_url
from wsgi_channels.layers.memory import MemoryChannelLayer
from wsgi_channels.worker.timelimit import ABORT, GATEWAY_TIMEOUT, TimeLimiter
from wsgi_channels.protocol.translation import build_request_message
from wsgi_channels.worker import Worker
from wsgi_channels.consumers.wsgi import WsgiConsumer

LIMIT = 0.5


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
def layer(request, redis_server):
    if request.param == "memory":
        yield MemoryChannelLayer()
    else:
        layer = from_url(redis_server.url)
        layer.flush()
        yield layer
        layer.close()


def request_message(reply: str, path: str) -> dict:
    return dict(build_request_message(reply_channel=reply, method="GET", target=path.encode(), http_version="1.1",
                                      headers=[(b"host", b"testserver")], client=["127.0.0.1", 5000],
                                      server=["testserver", 80]))


def receive_all(layer, reply: str, seconds: float) -> list:
    """Every message on ``reply`` within ``seconds``."""
    got = []
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        channel, message = layer.receive([reply], block=True, timeout=min(remaining, 0.5))
        if channel is not None:
            got.append(message)
    return got


class Gate:
    """What a blocked consumer waits for; ``open()`` lets every waiter go on at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.entered = 0

    def wait(self) -> None:
        self.entered += 1
        assert self.event.wait(30), "the test never opened the gate"

    def open(self) -> None:
        self.event.set()


def blocking_app(gate: Gate):
    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/blocked":
            gate.wait()
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"the late answer"]
        if path == "/started-then-blocked":
            def body():
                yield b"first"
                yield b"second"  # the first block goes out now
                gate.wait()
                yield b"late"

            start_response("200 OK", [("Content-Type", "text/plain")])
            return body()
        if path == "/blocked-in-close":
            class Body(list):
                def close(self):
                    gate.wait()

            start_response("200 OK", [("Content-Type", "text/plain")])
            return Body([b"complete"])
        if path == "/slow-stream":
            def chunks():
                for i in range(6):
                    yield b"%d" % i
                    time.sleep(0.5)  # each pause well under the limit of the test; all of them over it

            start_response("200 OK", [("Content-Type", "text/plain")])
            return chunks()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    return app


def start_worker(layer, routing, concurrency=2, **kw) -> Worker:
    kw.setdefault("time_limit", LIMIT)
    return Worker(routing, layer, concurrency=concurrency, **kw).start()


def all_threads_serving(worker: Worker) -> bool:
    return len(worker._threads) == worker.concurrency and all(t.is_alive() for t in worker._threads)


def test_a_stuck_request_gets_504_once_and_its_late_answer_is_never_sent(layer, caplog):
    gate = Gate()
    worker = start_worker(layer, [route("http.request", WsgiConsumer(blocking_app(gate)))])
    try:
        with caplog.at_level(logging.INFO):
            t0 = time.monotonic()
            layer.send("http.request", request_message("r.a?1", "/blocked"))
            first = receive_all(layer, "r.a?1", 0.05)
            layer.send("http.request", request_message("r.b?1", "/hello"))
            answer = layer.receive(["r.b?1"], block=True, timeout=5)[1]
            assert answer["status"] == 200  # the other thread serves meanwhile
            channel, message = layer.receive(["r.a?1"], block=True, timeout=5)
            waited = time.monotonic() - t0
            assert first == [] and message == GATEWAY_TIMEOUT
            assert LIMIT <= waited < LIMIT + 2.0, waited  # checked every 50 ms; margin for a loaded machine
            assert worker.abandoned == 1 and all_threads_serving(worker)
            gate.open()  # the consumer answers now, too late
            assert receive_all(layer, "r.a?1", 1.0) == []  # no second response
            assert wait_until(lambda: worker.abandoned == 0)  # its thread exited
            layer.send("http.request", request_message("r.c?1", "/hello"))
            assert layer.receive(["r.c?1"], block=True, timeout=5)[1]["status"] == 200
    finally:
        gate.open()
        worker.stop(grace=5)
    assert worker.stats["timed_out"] == 1 and worker.timed_out_by_channel["http.request"] == 1
    assert "past the time limit of 0.5s: given up (504 sent)" in caplog.text
    assert "in wait\n    assert self.event.wait(30)" in caplog.text  # the stuck thread's stack
    assert "given up" in caplog.text and "1 of its sends were dropped" in caplog.text
    assert "stayed full" not in caplog.text  # the dropped send is not a full channel


def test_a_started_response_is_aborted(layer):
    gate = Gate()
    worker = start_worker(layer, [route("http.request", WsgiConsumer(blocking_app(gate)))])
    try:
        layer.send("http.request", request_message("r.s?1", "/started-then-blocked"))
        assert wait_until(lambda: worker.stats["timed_out"] == 1, 10)
        gate.open()  # the late blocks would be sent now
        got = receive_all(layer, "r.s?1", 1.0)
    finally:
        gate.open()
        worker.stop(grace=5)
    assert len(got) == 2, got
    assert got[0]["status"] == 200 and got[0]["content"] == b"first" and got[0]["more_content"] is True
    assert got[1] == ABORT  # nothing of the late blocks


def test_a_finished_response_is_not_answered_again_when_close_gets_stuck(layer, caplog):
    gate = Gate()
    worker = start_worker(layer, [route("http.request", WsgiConsumer(blocking_app(gate)))])
    try:
        with caplog.at_level(logging.INFO):
            layer.send("http.request", request_message("r.f?1", "/blocked-in-close"))
            got = receive_all(layer, "r.f?1", LIMIT + 1.0)
            assert wait_until(lambda: worker.stats["timed_out"] == 1)
    finally:
        gate.open()
        worker.stop(grace=5)
    assert [(m["status"], m["content"]) for m in got] == [(200, b"complete")]
    assert "given up (its response was already sent)" in caplog.text


def test_a_response_that_keeps_sending_is_not_stuck(layer):
    """3 s of streaming, a chunk every 0.5 s, under a limit of 2 s: each chunk starts the count again."""
    worker = start_worker(layer, [route("http.request", WsgiConsumer(blocking_app(Gate())))], time_limit=2.0)
    try:
        layer.send("http.request", request_message("r.p?1", "/slow-stream"))
        got = receive_all(layer, "r.p?1", 6)
    finally:
        worker.stop(grace=5)
    assert b"".join(m["content"] for m in got) == b"012345" and not got[-1]["more_content"]
    assert worker.stats["timed_out"] == 0


def test_one_thread_stuck_holding_the_receiving_role_is_replaced(layer):
    """With one thread there is no watchdog: the time limit passes the receiving role on itself."""
    gate = Gate()
    worker = start_worker(layer, [route("http.request", WsgiConsumer(blocking_app(gate)))], concurrency=1)
    try:
        layer.send("http.request", request_message("r.1?1", "/blocked"))
        layer.send("http.request", request_message("r.2?1", "/hello"))
        assert layer.receive(["r.1?1"], block=True, timeout=5)[1]["status"] == 504
        assert layer.receive(["r.2?1"], block=True, timeout=5)[1]["status"] == 200
        assert all_threads_serving(worker) and worker.abandoned == 1
    finally:
        gate.open()
        worker.stop(grace=5)


def test_websocket_messages_given_up_close_1011_and_deferred_sends_are_dropped(layer):
    gate = Gate()

    def receive(message):
        Group("room").send({"text": "before"})  # deferred: sent when the consumer returns
        gate.wait()
        message.reply_channel.send({"text": "late"})

    def disconnect(message):
        gate.wait()

    def task(message):
        gate.wait()

    routing = [route("websocket.receive", receive), route("websocket.disconnect", disconnect),
               route("jobs.run", task)]
    worker = start_worker(layer, routing, concurrency=4)
    layer.group_add("room", "member.x?1")
    try:
        layer.send("websocket.receive", {"reply_channel": "ws.a?1", "path": "/", "text": "hi", "order": 1})
        layer.send("websocket.disconnect", {"reply_channel": "ws.b?1", "path": "/", "code": 1000, "order": 1})
        layer.send("jobs.run", {"reply_channel": "ws.c?1"})
        assert wait_until(lambda: worker.stats["timed_out"] == 3, 5)
        gate.open()
        assert wait_until(lambda: worker.abandoned == 0, 5)
        a = receive_all(layer, "ws.a?1", 0.5)
        others = receive_all(layer, "ws.b?1", 0.2) + receive_all(layer, "ws.c?1", 0.2)
        room = receive_all(layer, "member.x?1", 0.2)
    finally:
        gate.open()
        worker.stop(grace=5)
    assert a == [{"close": 1011}]  # neither "late" nor anything else after it
    assert others == [] and room == []  # nothing to close for a disconnect or a task; its group send dropped


def test_no_time_limit_lets_a_message_run(layer):
    gate = Gate()
    worker = start_worker(layer, [route("http.request", WsgiConsumer(blocking_app(gate)))], time_limit=0)
    try:
        layer.send("http.request", request_message("r.n?1", "/blocked"))
        assert receive_all(layer, "r.n?1", LIMIT + 1.0) == []
        gate.open()
        assert layer.receive(["r.n?1"], block=True, timeout=5)[1]["content"] == b"the late answer"
    finally:
        gate.open()
        worker.stop(grace=5)
    assert worker._limiter is None and worker.stats["timed_out"] == 0


def test_wants_restart_once_max_abandoned_threads_are_stuck():
    layer = MemoryChannelLayer()
    gate = Gate()
    worker = start_worker(layer, [route("http.request", WsgiConsumer(blocking_app(gate)))], concurrency=2,
                          max_abandoned=2)
    try:
        layer.send("http.request", request_message("r.x?1", "/blocked"))
        assert wait_until(lambda: worker.abandoned == 1)
        assert not worker.wants_restart()
        layer.send("http.request", request_message("r.y?1", "/blocked"))
        assert wait_until(lambda: worker.abandoned == 2)
        assert worker.wants_restart()
        gate.open()
        assert wait_until(lambda: worker.abandoned == 0) and not worker.wants_restart()
    finally:
        gate.open()
        worker.stop(grace=5)


@pytest.mark.parametrize("kw, match", [({"time_limit": -1}, "time_limit"), ({"time_limit": float("nan")}, "time_limit"),
                                       ({"max_abandoned": -1}, "max_abandoned")])
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(ConfigurationError, match=match):
        Worker([route("x", lambda m: None)], MemoryChannelLayer(), **kw)
    with pytest.raises(ValueError, match="positive"):
        TimeLimiter(0, lambda slot: None)


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


# -- the command line ---------------------------------------------------------------------------

def test_the_flags_and_their_environment_variables(monkeypatch):
    from wsgi_channels.cli import build_parser
    from wsgi_channels.worker.timelimit import DEFAULT_TIME_LIMIT

    args = build_parser().parse_args(["worker", "x:y"])
    assert (args.time_limit, args.max_abandoned) == (DEFAULT_TIME_LIMIT, None) == (60.0, None)
    monkeypatch.setenv("WSGI_CHANNELS_TIME_LIMIT", "7.5")
    monkeypatch.setenv("WSGI_CHANNELS_MAX_ABANDONED", "3")
    args = build_parser().parse_args(["worker", "x:y"])
    assert (args.time_limit, args.max_abandoned) == (7.5, 3)
    args = build_parser().parse_args(["worker", "x:y", "--time-limit", "0", "--max-abandoned", "0"])
    assert (args.time_limit, args.max_abandoned) == (0.0, 0)  # an explicit flag wins


def test_bad_values_are_one_line_errors(tmp_path):
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(sys.executable), "wsgi-channels")
    layer = f"ipc://{tmp_path}/channels.db"

    def run(*argv, **env):
        full = {**os.environ, **env}
        full.pop("WSGI_CHANNELS_LAYER", None)
        return subprocess.run([script, "worker", "stuck_app:routing", "--layer", layer, *argv], capture_output=True,
                              text=True, timeout=30, env=full, cwd=os.path.dirname(__file__))

    for result, words in ((run("--time-limit", "-1"), "--time-limit"), (run("--time-limit", "inf"), "--time-limit"),
                          (run("--max-abandoned", "two"), "--max-abandoned"),
                          (run(WSGI_CHANNELS_TIME_LIMIT="soon"), "WSGI_CHANNELS_TIME_LIMIT='soon'")):
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and words in result.stderr.strip().splitlines()[-1], result.stderr
