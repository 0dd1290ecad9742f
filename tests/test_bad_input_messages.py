"""Bad messages from the application side: the sidecar refuses them clearly and lives on.

The test acts as the application on a real Redis, facing a real sidecar process:
malformed ``websocket.send`` replies are logged and dropped (the socket stays usable),
malformed ``http.response`` messages become 502, bad names, non-serialisable and
oversized messages fail in the sender with errors naming the problem. Property tests
(hypothesis) check that the validators and name rules only ever raise their documented
errors, whatever they are given.
"""
from __future__ import annotations

import threading

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

import faultkit as fk
import stack
from servers import RedisServer
from wsgi_channels.exceptions import InvalidChannelName, InvalidGroupName, InvalidMessage, MessageTooLarge
from wsgi_channels.layers import from_url
from wsgi_channels.layers.names import validate_channel_name, validate_group_name
from wsgi_channels.serialization import validate_message
from wsgi_channels.protocol.translation import (InvalidRequest, build_request_message, validate_response_message,
                                       validate_websocket_send)


@pytest.fixture(scope="module")
def app_side(tmp_path_factory):
    """(sidecar process, layer the test uses as the app)."""
    server = RedisServer().start()
    log_dir = tmp_path_factory.mktemp("bad-messages")
    side = stack.sidecar(stack.env_for(server.url), log_dir, None, "--http", "layer", "--http-timeout", "5",
                         "--ping-interval", "0").start()
    layer = from_url(server.url)
    yield side, layer
    layer.close()
    alive = side.running
    side.stop()
    server.stop()
    assert alive, side.log()[-3000:]
    assert "Traceback" not in side.log(), side.log()[-4000:]


def open_socket(side, layer, path="/bad"):
    c = fk.RawClient(side.port)
    c.send(fk.handshake_request(path))
    channel, m = layer.receive(["websocket.connect"], block=True, timeout=10)
    assert channel == "websocket.connect"
    return c, m["reply_channel"]


BAD_SENDS = [
    {"text": 5}, {"bytes": "not bytes"}, {"text": "a", "bytes": b"b"}, {"unknown": 1}, {"close": "yes"},
    {"close": 99999}, {"close": 1005}, {"accept": "maybe"}, {}, {"text": None, "bytes": None},
    {"text": "x", "close": "soon"},
]


def test_malformed_websocket_send_messages_are_dropped_and_the_socket_lives(app_side):
    side, layer = app_side
    c, reply = open_socket(side, layer)
    layer.send(reply, {"accept": True})
    assert c.read_head()[0] == 101
    for bad in BAD_SENDS:
        layer.send(reply, bad)
    layer.send(reply, {"text": "still open"})
    assert c.read_frame() == (fk.OP_TEXT, b"still open")
    c.send(fk.close_frame(1000))
    assert c.read_until_close()[0] == 1000
    c.close()
    log = side.log()
    assert log.count("bad message for WebSocket") >= len(BAD_SENDS) - 1, log[-3000:]


def test_unoffered_subprotocol_is_not_sent_to_the_client(app_side):
    side, layer = app_side
    c, reply = open_socket(side, layer)
    layer.send(reply, {"accept": True, "subprotocol": "not-offered"})
    status, headers, _ = c.read_head()
    assert status == 101 and "sec-websocket-protocol" not in headers
    c.close()


BAD_RESPONSES = [
    {"status": "200"}, {"status": 99}, {"status": 200, "headers": "x"}, {"status": 200, "headers": [[b"bad name", b"v"]]},
    {"status": 200, "headers": [[b"x-a", b"a\r\nInjected: 1"]]}, {"status": 200, "content": "str"},
    {"status": 200, "unknown": 1}, {"content": b"no status"}, {"status": 200, "more_content": "no"},
]


@pytest.mark.parametrize("bad", BAD_RESPONSES, ids=[str(i) for i in range(len(BAD_RESPONSES))])
def test_malformed_http_response_gives_502(app_side, bad):
    side, layer = app_side
    result: dict = {}

    def get() -> None:
        r = requests.get(f"http://127.0.0.1:{side.port}/page", timeout=10)
        result.update(status=r.status_code, text=r.text, headers=dict(r.headers))

    t = threading.Thread(target=get)
    t.start()
    channel, m = layer.receive(["http.request"], block=True, timeout=10)
    assert channel == "http.request"
    layer.send(m["reply_channel"], bad)
    t.join(15)
    assert result["status"] == 502, result
    assert "Injected" not in result["headers"]
    assert "Traceback" not in result["text"]


def test_second_status_aborts_the_response_without_mixing_bodies(app_side):
    side, layer = app_side
    result: dict = {}

    def get() -> None:
        try:
            r = requests.get(f"http://127.0.0.1:{side.port}/twice", timeout=10)
            result.update(status=r.status_code, body=r.content)
        except requests.RequestException as e:
            result.update(error=type(e).__name__)

    t = threading.Thread(target=get)
    t.start()
    channel, m = layer.receive(["http.request"], block=True, timeout=10)
    layer.send(m["reply_channel"], {"status": 200, "headers": [], "content": b"first", "more_content": True})
    layer.send(m["reply_channel"], {"status": 500, "content": b"second"})
    t.join(15)
    assert "error" in result or (result["status"] == 200 and b"second" not in result["body"]), result


def test_bad_names_non_serialisable_and_oversized_messages_fail_in_the_sender(app_side):
    _, layer = app_side
    from wsgi_channels.layers.names import MAX_NAME_LENGTH

    for name in ("", "has space", "a" * (MAX_NAME_LENGTH + 1), "x?", "pre!", "ünïcode", None, 5, b"bytes"):
        with pytest.raises(InvalidChannelName) as e:
            layer.send(name, {"text": "x"})
        assert isinstance(e.value, TypeError)
    for group in ("", "has space", "g!x", "g?", None):
        with pytest.raises(InvalidGroupName):
            layer.group_add(group, "valid.channel")
    with pytest.raises(InvalidMessage, match=r"message\['payload'\]\['when'\]"):
        layer.send("valid.channel", {"payload": {"when": object()}})
    with pytest.raises(InvalidMessage):
        layer.send("valid.channel", {1: "non-str key"})
    with pytest.raises(InvalidMessage):
        layer.send("valid.channel", ["not", "a", "dict"])
    with pytest.raises(InvalidMessage):
        layer.send("valid.channel", {"__asgi_channel__": "spoof"})
    with pytest.raises(MessageTooLarge):
        layer.send("valid.channel", {"bytes": b"x" * (2 << 20)})
    with pytest.raises(MessageTooLarge):
        layer.send_group("valid.group", {"bytes": b"x" * (2 << 20)})
    assert layer.channel_statistics("valid.channel")["messages_pending"] == 0


# -- property tests: only the documented errors, whatever the input ------------------------------

anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=20)
    | st.sampled_from([object(), 1j, set(), b"\xff", "\ud800"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4),
    max_leaves=12)


@given(st.text(max_size=120) | st.binary(max_size=20) | st.integers() | st.none())
@settings(max_examples=400, deadline=None)
def test_property_name_rules_only_raise_their_own_errors(name):
    for check, error in ((validate_channel_name, InvalidChannelName), (validate_group_name, InvalidGroupName)):
        try:
            assert check(name) == name
        except error as e:
            assert isinstance(e, TypeError) and str(e)


@given(anything)
@settings(max_examples=400, deadline=None)
def test_property_message_validator_only_raises_invalid_message(message):
    try:
        validate_message(message)
    except InvalidMessage as e:
        assert str(e)


@given(st.dictionaries(st.sampled_from(["text", "bytes", "close", "accept", "subprotocol", "other"]), anything,
                       max_size=4), st.booleans())
@settings(max_examples=400, deadline=None)
def test_property_reply_validators_only_raise_invalid_message(message, first):
    for check in (validate_websocket_send, lambda m: validate_response_message(m, first=first)):
        try:
            check(message)
        except InvalidMessage as e:
            assert str(e)


TOKEN = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@given(method=st.lists(st.sampled_from(list(TOKEN)), min_size=1, max_size=10).map(bytes),
       target=st.binary(min_size=0, max_size=40),
       version=st.sampled_from(["1.0", "1.1", "2"]),
       headers=st.lists(st.tuples(st.binary(max_size=10), st.binary(max_size=20)), max_size=5))
@settings(max_examples=400, deadline=None)
def test_property_request_builder_raises_invalid_request_for_client_input(method, target, version, headers):
    """What a client controls (a method h11 accepts: any token, lower case included; the target;
    the headers) can only ever produce ``InvalidRequest`` or ``InvalidMessage``, the two errors the
    sidecar answers with 400 (a token method such as ``G.T`` is refused as ``InvalidMessage``)."""
    try:
        message = build_request_message(reply_channel="sidecar.x!1", method=method, target=target,
                                        headers=headers, http_version=version, scheme="http",
                                        client=["127.0.0.1", 1], server=["127.0.0.1", 2])
    except (InvalidRequest, InvalidMessage) as e:
        assert str(e)
    else:
        assert message["path"].startswith("/") or message["path"] == "*" or message["path"]
