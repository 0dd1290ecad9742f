"""Consumers: Message, deferred sends, sessions, ordering, class-based WebSocket consumers, test client."""
from __future__ import annotations

import logging
import time

import pytest

from wsgi_channels import (
    Channel,
    Group,
    JsonWebsocketConsumer,
    Message,
    WebsocketConsumer,
    WebsocketDemultiplexer,
    channel_session,
    enforce_ordering,
    route,
    route_class,
)
from wsgi_channels.consumers.consumer import flush_sends, run_consumer, send_with_retry
from wsgi_channels.layers import from_url
from wsgi_channels.layers.memory import MemoryChannelLayer
from wsgi_channels.consumers.routing import Router
from wsgi_channels.testing import Client, NoMessage

SESSION_BACKENDS = ["memory", "ipc", "redis"]


@pytest.fixture
def layer():
    return MemoryChannelLayer()


# -- Message --------------------------------------------------------------------------------

def test_message_access(layer):
    m = Message({"reply_channel": "websocket.send!x", "text": "hi"}, "websocket.receive", layer)
    assert m["text"] == "hi" and m.get("nope", 1) == 1 and "text" in m and len(m) == 2
    assert sorted(m) == ["reply_channel", "text"] and dict(m.items())["text"] == "hi"
    assert m.channel == Channel("websocket.receive") and m.channel_layer is layer
    assert m.reply_channel == Channel("websocket.send!x") and m.reply_channel.channel_layer is layer
    assert Message({}, "x", layer).reply_channel is None
    copy = m.copy()
    copy.content["text"] = "changed"
    assert m["text"] == "hi"
    assert "websocket.receive" in repr(m)


# -- deferred sends ---------------------------------------------------------------------------

def test_sends_go_out_when_consumer_finishes_even_if_it_raised(layer):
    seen_during = []

    def consumer(message):
        Channel("out", layer=layer).send({"n": 1})
        Group("g", layer=layer).send({"n": 2})
        seen_during.append(layer.receive(["out"])[0])
        raise RuntimeError("half-way")

    layer.group_add("g", "member")
    with pytest.raises(RuntimeError, match="half-way"):
        run_consumer(consumer, Message({}, "in", layer), {})
    assert seen_during == [None], "nothing is sent before the consumer ends"
    assert layer.receive(["out"]) == ("out", {"n": 1})
    assert layer.receive(["member"]) == ("member", {"n": 2})


def test_send_immediately_inside_consumer(layer):
    def consumer(message):
        Channel("out", layer=layer).send({"n": 1}, immediately=True)
        assert layer.receive(["out"]) == ("out", {"n": 1})

    run_consumer(consumer, Message({}, "in", layer), {})


def test_deferred_send_copies_and_validates(layer):
    def consumer(message):
        payload = {"v": [1]}
        Channel("out", layer=layer).send(payload)
        payload["v"].append(2)
        with pytest.raises(TypeError):
            Channel("out", layer=layer).send({"bad": {1, 2}})

    run_consumer(consumer, Message({}, "in", layer), {})
    assert layer.receive(["out"]) == ("out", {"v": [1]})


def test_retry_on_full_channel_is_bounded(caplog):
    layer = MemoryChannelLayer(capacity=1)
    layer.send("full", {"x": 1})
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert send_with_retry(layer, "full", {"x": 2}, timeout=0.2) is False
    assert 0.15 < time.monotonic() - t0 < 2
    assert "gave up sending" in caplog.text


def test_retry_succeeds_when_room_appears():
    import threading

    layer = MemoryChannelLayer(capacity=1)
    layer.send("busy", {"x": 1})
    threading.Timer(0.1, lambda: layer.receive(["busy"])).start()
    assert send_with_retry(layer, "busy", {"x": 2}, timeout=3) is True
    assert layer.receive(["busy"]) == ("busy", {"x": 2})


def test_one_deadline_for_a_whole_batch():
    layer = MemoryChannelLayer(capacity=1)
    layer.send("full", {"x": 0})
    outbox = [(layer, "send", "full", {"x": i}) for i in range(20)] + [(layer, "send", "free", {"ok": 1})]
    t0 = time.monotonic()
    assert flush_sends(outbox, timeout=0.3) == 20
    assert time.monotonic() - t0 < 2
    # Past the shared deadline each send is still tried once: a channel with room gets its message.
    assert layer.receive(["free"]) == ("free", {"ok": 1})


# -- channel_session ------------------------------------------------------------------------

@pytest.mark.parametrize("backend", SESSION_BACKENDS)
def test_channel_session_persists_per_reply_channel(backend, layer_url_for):
    layer = from_url(layer_url_for(backend))
    layer.flush()
    try:
        @channel_session
        def counter(message):
            message.channel_session["n"] = message.channel_session.get("n", 0) + 1
            message.reply_channel.send({"text": str(message.channel_session["n"])})

        client = Client([route("websocket.receive", counter), route("websocket.disconnect", counter)], layer)
        one, two = client.websocket("/"), client.websocket("/")
        for ws in (one, two, one, one):
            ws.send_text("x")
        assert [one.receive()["text"] for _ in range(3)] == ["1", "2", "3"]
        assert two.receive()["text"] == "1"
        one.disconnect()
        assert one.receive()["text"] == "4"
        one.send_text("again")
        assert one.receive()["text"] == "1", "the session was deleted after the disconnect consumer"
    finally:
        layer.flush()
        layer.close()


def test_channel_session_saved_when_consumer_raises_and_expires(layer):
    @channel_session(ttl=0.2)
    def consumer(message):
        message.channel_session["seen"] = True
        raise ValueError("boom")

    msg = Message({"reply_channel": "websocket.send!a"}, "websocket.receive", layer)
    with pytest.raises(ValueError):
        consumer(msg)
    assert layer.session_get("session:websocket.send!a") is not None
    time.sleep(0.3)
    assert layer.session_get("session:websocket.send!a") is None


def test_channel_session_needs_reply_channel(layer):
    with pytest.raises(ValueError, match="reply_channel"):
        channel_session(lambda m: None)(Message({}, "x", layer))


def test_channel_session_unchanged_is_not_written(layer):
    @channel_session
    def reader(message):
        return dict(message.channel_session)

    assert reader(Message({"reply_channel": "r!1"}, "x", layer)) == {}
    assert layer.session_get("session:r!1") is None


# -- enforce_ordering -----------------------------------------------------------------------

def ordered_routing(log_list):
    @enforce_ordering(timeout=0.3)
    def connect(message):
        log_list.append(("connect", message["order"]))
        message.reply_channel.send({"accept": True})

    @enforce_ordering(timeout=0.3)
    def receive(message):
        log_list.append(("receive", message["order"]))

    return [route("websocket.connect", connect), route("websocket.receive", receive)]


def run_all(client, limit=50):
    for _ in range(limit):
        if client.consume(fail_on_none=False) is None:
            return


def test_ordering_holds_early_messages_until_predecessor(layer):
    seen = []
    client = Client(ordered_routing(seen), layer)
    reply = "websocket.send!conn1"
    # receive 2 and 1 arrive before connect (0).
    client.send("websocket.receive", {"reply_channel": reply, "path": "/", "text": "b", "order": 2})
    client.send("websocket.receive", {"reply_channel": reply, "path": "/", "text": "a", "order": 1})
    client.consume(["websocket.receive"])
    client.consume(["websocket.receive"])
    assert seen == []
    client.send("websocket.connect", {"reply_channel": reply, "path": "/", "order": 0})
    run_all(client)
    assert seen == [("connect", 0), ("receive", 1), ("receive", 2)]


def test_ordering_skips_a_lost_message_after_timeout(layer, caplog):
    seen = []
    client = Client(ordered_routing(seen), layer)
    reply = "websocket.send!conn2"
    client.send_and_consume("websocket.connect", {"reply_channel": reply, "path": "/", "order": 0})
    client.send_and_consume("websocket.receive", {"reply_channel": reply, "path": "/", "text": "c", "order": 2})
    assert seen == [("connect", 0)]
    with caplog.at_level(logging.WARNING):
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            client.consume(["websocket.receive"], fail_on_none=False)
            time.sleep(0.02)
    assert seen == [("connect", 0), ("receive", 2)]
    assert "never arrived" in caplog.text
    # The lost message turns up late: it is dropped, not run out of order.
    with caplog.at_level(logging.WARNING):
        client.send_and_consume("websocket.receive", {"reply_channel": reply, "path": "/", "text": "b", "order": 1})
    assert seen == [("connect", 0), ("receive", 2)] and "arrived after it was skipped" in caplog.text


def test_ordering_needs_order_key(layer):
    with pytest.raises(ValueError, match="order"):
        enforce_ordering(lambda m: None)(Message({"reply_channel": "r!x"}, "websocket.receive", layer))


# -- class-based consumers -----------------------------------------------------------------

class Chat(WebsocketConsumer):
    def connection_groups(self, **kwargs):
        return ["room-" + kwargs["room"]]

    def connect(self, message, **kwargs):
        if kwargs["room"] == "private":
            self.close()
        else:
            self.accept(subprotocol="chat.v1" if "chat.v1" in message.get("subprotocols", []) else None)

    def receive(self, text=None, bytes=None, **kwargs):
        if text == "bye":
            self.send(text="see you", close=True)
        elif text is not None:
            self.group_send("room-" + kwargs["room"], text=f"{kwargs['room']}: {text}")
        else:
            self.send(bytes=bytes[::-1])


class JsonEcho(JsonWebsocketConsumer):
    strict_ordering = True

    def receive(self, content=None, **kwargs):
        self.send({"echo": content})


class Counter(JsonWebsocketConsumer):
    channel_session = True

    def receive(self, content=None, **kwargs):
        self.message.channel_session["n"] = self.message.channel_session.get("n", 0) + 1
        self.send({"stream_count": self.message.channel_session["n"]})


class Demux(WebsocketDemultiplexer):
    consumers = {"echo": JsonWebsocketConsumer, "count": Counter}


@pytest.fixture
def ws_client():
    # Group.send inside consumers without a layer uses the default (memory://) layer: use that instance.
    return Client([
        route_class(Chat, path=r"^/chat/(?P<room>\w+)/$"),
        route_class(JsonEcho, path=r"^/json/$"),
        route_class(Demux, path=r"^/demux/$"),
    ])


def test_websocket_consumer_groups_send_close(ws_client):
    a, b = ws_client.websocket("/chat/lobby/"), ws_client.websocket("/chat/lobby/", subprotocols=["chat.v1"])
    assert a.connect()
    assert b.connect()
    assert len(Group("room-lobby").channels()) == 2
    a.send_text("hello")
    assert a.receive() == {"text": "lobby: hello"} and b.receive() == {"text": "lobby: hello"}
    a.send_bytes(b"abc")
    assert a.receive() == {"bytes": b"cba"}
    b.send_text("bye")
    assert b.receive() == {"text": "see you", "close": True}
    b.disconnect()
    assert Group("room-lobby").channels() == [a.reply_channel]


def test_websocket_consumer_rejects(ws_client):
    ws = ws_client.websocket("/chat/private/")
    assert ws.connect() is False


def test_accept_reply_carries_subprotocol(ws_client):
    ws = ws_client.websocket("/chat/x/", subprotocols=["chat.v1"])
    ws._send("websocket.connect", {"subprotocols": ["chat.v1"], "headers": []})
    assert ws.receive() == {"accept": True, "subprotocol": "chat.v1"}


def test_json_consumer_and_bad_frames(ws_client, caplog):
    ws = ws_client.websocket("/json/")
    assert ws.connect()
    ws.send_json({"a": [1, "two"]})
    assert ws.receive_json() == {"echo": {"a": [1, "two"]}}
    with caplog.at_level(logging.WARNING):
        ws.send_text("{not json")
    assert ws.receive() == {"close": 1007} and "non-JSON" in caplog.text


def test_demultiplexer_routes_streams(ws_client, caplog):
    ws = ws_client.websocket("/demux/")
    assert ws.connect()
    assert ws.receive(fail_on_none=False) is None, "one accept only"
    ws.send_json({"stream": "count", "payload": {}})
    ws.send_json({"stream": "count", "payload": {}})
    assert ws.receive_json() == {"stream": "count", "payload": {"stream_count": 1}}
    assert ws.receive_json() == {"stream": "count", "payload": {"stream_count": 2}}
    ws.send_json({"stream": "echo", "payload": "hi"})
    assert ws.receive(fail_on_none=False) is None, "the base JSON consumer ignores frames"
    with caplog.at_level(logging.WARNING):
        ws.send_json({"stream": "nope", "payload": 1})
        ws.send_json(["not", "an", "object"])
    assert "no consumer for stream 'nope'" in caplog.text and "is not" in caplog.text


def test_demultiplexer_group_send(ws_client):
    Demux.group_send("everyone", "echo", {"x": 1})  # no members: nothing happens, nothing raised
    ws = ws_client.websocket("/demux/")
    ws.connect()
    Group("everyone").add(ws.reply_channel)
    Demux.group_send("everyone", "echo", {"x": 1})
    assert ws.receive_json() == {"stream": "echo", "payload": {"x": 1}}


# -- defaults and the test client ---------------------------------------------------------

def test_defaults_when_nothing_matches(layer):
    # Issue 20: a handshake no route takes is refused by default (it used to be accepted, and
    # nothing ever arrived on it); a websocket.receive route taking the path still accepts it.
    routing = [route("websocket.receive", lambda m: None, path="^/only/")]
    client = Client(routing, layer)
    assert client.websocket("/elsewhere/").connect() is False, "no route takes /elsewhere/: refused"
    assert client.websocket("/only/").connect(), "a websocket.receive route takes /only/: accepted"
    client = Client(Router(routing, accept_unrouted=True), layer)
    ws = client.websocket("/elsewhere/")
    assert ws.connect(), "websocket.connect is accepted with accept_unrouted"
    ws.send_text("ignored")
    assert ws.receive(fail_on_none=False) is None
    ws.disconnect()
    assert client.http("GET", "/")[0] == 404


def test_client_errors_are_clear(layer):
    client = Client([route("x", lambda m: None)], layer)
    with pytest.raises(NoMessage, match="no message waiting"):
        client.consume()
    with pytest.raises(NoMessage, match="nothing on"):
        client.receive("y")
    assert client.consume(fail_on_none=False) is None


def test_readme_consumers_example_runs(tmp_path):
    """The README's "Consumers and the worker" example is a program: run it and check its output."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Consumers and the worker"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "chat.py").write_text(code)
    proc = subprocess.run([sys.executable, "chat.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "b'hello')" in proc.stdout and "{'room': 'lobby', 'said': 'hi'}" in proc.stdout


def test_ordering_under_a_threaded_worker_over_redis(redis_server):
    """Four executor threads, messages of one connection: consumers still run in order."""
    import random
    import threading

    from wsgi_channels.worker import Worker

    layer = from_url(redis_server.url)
    layer.flush()
    seen, lock = [], threading.Lock()

    @enforce_ordering(timeout=0.5)
    def receive(message):
        time.sleep(random.uniform(0, 0.004))
        with lock:
            seen.append(message["order"])

    worker = Worker([route("websocket.receive", receive)], layer, concurrency=4).start()
    try:
        reply = "websocket.send!ordered"
        layer.session_set("order:" + reply, b"1", 60)  # connect (order 0) already ran
        for order in range(1, 41):
            layer.send("websocket.receive", {"reply_channel": reply, "path": "/", "text": "x", "order": order})
        deadline = time.monotonic() + 20
        while len(seen) < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        worker.stop(grace=2)
        layer.flush()
        layer.close()
    assert seen == list(range(1, 41))
