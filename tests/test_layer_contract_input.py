"""The channel-layer contract on bad input (CONTRACT.md section 1: names and messages), every backend.

Parametrised by ``conftest.BACKENDS``, as ``test_layer_contract.py``.
"""
from __future__ import annotations

import pytest

from wsgi_channels import exceptions as exc
from wsgi_channels.layers.names import new_process_prefix
from wsgi_channels.serialization import DEFAULT_MAX_MESSAGE_SIZE, RESERVED_KEY, encode

from test_layer_contract import drain

pytestmark = pytest.mark.timeout(60)

# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "with space", "ünïcode", "a?b?c", "a!b!c", "a" * 201, None, b"bytes", "q?"])
def test_bad_channel_names_on_send(layer, name):
    with pytest.raises(TypeError) as info:
        layer.send(name, {"x": 1})
    assert isinstance(info.value, exc.InvalidChannelName)
    assert "channel name" in str(info.value)
    layer.send("still.works", {"x": 1})
    assert layer.receive(["still.works"]) == ("still.works", {"x": 1})


def test_bad_channel_names_on_receive(layer):
    with pytest.raises(TypeError, match="process prefix"):
        layer.receive(["proc!suffix"])
    with pytest.raises(TypeError, match="'a b'"):
        layer.receive(["a b"])
    with pytest.raises(TypeError, match="list of channel names"):
        layer.receive("just.a.string")
    with pytest.raises(TypeError):
        layer.send("proc!", {"x": 1})


@pytest.mark.parametrize("name", ["", "has space", "a!b", "a?b", "x" * 201, 7])
def test_bad_group_names(layer, name):
    for call in (lambda: layer.group_add(name, "ch"), lambda: layer.group_discard(name, "ch"),
                 lambda: layer.send_group(name, {"x": 1}), lambda: layer.group_channels(name)):
        with pytest.raises(TypeError) as info:
            call()
        assert isinstance(info.value, exc.InvalidGroupName)
        assert "group name" in str(info.value)


@pytest.mark.parametrize("name", ["chan\n", "proc.P!conn\n", "proc.P!\n", "reply?abc\n"])
def test_channel_names_ending_in_a_newline_are_refused(layer, name):
    # With re.match, a pattern ending in '$' also matches before a trailing newline.
    calls = (lambda: layer.send(name, {"x": 1}), lambda: layer.group_add("nl.g", name),
             lambda: layer.group_discard("nl.g", name), lambda: layer.receive([name]),
             lambda: layer.channel_statistics(name))
    for call in calls:
        with pytest.raises(exc.InvalidChannelName, match="channel name"):
            call()


def test_group_names_ending_in_a_newline_are_refused(layer):
    calls = (lambda: layer.group_add("nl.g\n", "nl.chan"), lambda: layer.group_discard("nl.g\n", "nl.chan"),
             lambda: layer.send_group("nl.g\n", {"x": 1}), lambda: layer.group_channels("nl.g\n"))
    for call in calls:
        with pytest.raises(exc.InvalidGroupName, match="group name"):
            call()
    with pytest.raises(exc.InvalidGroupName):
        new_process_prefix("sidecar\n")


def test_a_member_name_with_a_newline_never_spoils_the_others_message(layer):
    # On Redis such a member used to be stored, and its newline broke the entry naming every
    # member of its prefix: all of them lost the message.
    for member in ("nl.P!a", "nl.P!b"):
        layer.group_add("nl.grp", member)
    with pytest.raises(exc.InvalidChannelName):
        layer.group_add("nl.grp", "nl.P!c\n")
    layer.send_group("nl.grp", {"n": 1})
    assert sorted(drain(layer, ["nl.P!"]), key=lambda item: item[0]) == [("nl.P!a", {"n": 1}), ("nl.P!b", {"n": 1})]
    assert sorted(layer.group_channels("nl.grp")) == ["nl.P!a", "nl.P!b"]


# -- messages ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("message", [None, [1, 2], "text", b"bytes", 42])
def test_non_dict_messages_rejected(layer, message):
    with pytest.raises(exc.InvalidMessage, match="must be a dict"):
        layer.send("test.bad", message)
    with pytest.raises(TypeError):
        layer.send_group("grp", message)


@pytest.mark.parametrize("message,path", [
    ({"a": {1, 2}}, "message['a']"),
    ({"headers": [[b"a", b"b"], [b"c", object()]]}, "message['headers'][1][1]"),
    ({"a": {"b": {"c": 1j}}}, "message['a']['b']['c']"),
    ({"a": {5: "int key"}}, "message['a']"),
    ({"n": 2**64}, "message['n']"),
    ({"n": 2**63}, "message['n']"),
    ({1: "x"}, "message"),
])
def test_unsupported_values_name_key_path(layer, message, path):
    with pytest.raises(TypeError) as info:
        layer.send("test.bad", message)
    assert str(info.value).startswith(path)
    layer.send("test.good", {"ok": 1})
    assert layer.receive(["test.good"]) == ("test.good", {"ok": 1})


@pytest.mark.parametrize("message,path", [
    ({"text": "\ud800"}, "message['text']: str"),
    ({"headers": [[b"x", "ok\udfff"]]}, "message['headers'][0][1]: str"),
    ({"inner": {"\udc80": 1}}, "message['inner']: key"),
])
def test_lone_surrogates_are_invalid_messages_naming_the_key_path(layer, message, path):
    calls = (lambda: layer.send("sur.chan", message), lambda: layer.send("sur.P!x", message),
             lambda: layer.send_group("sur.g", message))
    for call in calls:
        with pytest.raises(exc.InvalidMessage) as info:
            call()
        assert str(info.value).startswith(path) and "UTF-8" in str(info.value)
    layer.send("sur.chan", {"ok": "\u2603"})
    assert layer.receive(["sur.chan"]) == ("sur.chan", {"ok": "\u2603"})


def test_reserved_key_rejected(layer):
    with pytest.raises(exc.InvalidMessage, match=RESERVED_KEY):
        layer.send("test.bad", {RESERVED_KEY: "other.channel!x"})
    with pytest.raises(exc.InvalidMessage, match=RESERVED_KEY):
        layer.send_group("grp", {RESERVED_KEY: "x"})


def _sized(target: int, key: str = "b") -> dict:
    overhead = len(encode({key: b""}, None))
    msg = {key: b"x" * (target - overhead)}
    # msgpack's length prefix grows with the payload: adjust until exact.
    while len(encode(msg, None)) > target:
        msg = {key: msg[key][:-1]}
    assert len(encode(msg, None)) == target
    return msg


def test_size_limit_just_under_and_just_over(layer):
    assert layer.max_message_size == DEFAULT_MAX_MESSAGE_SIZE
    ok = _sized(DEFAULT_MAX_MESSAGE_SIZE)
    layer.send("test.size", ok)
    assert layer.receive(["test.size"])[1] == ok
    too_big = {"b": ok["b"] + b"x"}
    with pytest.raises(exc.MessageTooLarge) as info:
        layer.send("test.size", too_big)
    assert str(DEFAULT_MAX_MESSAGE_SIZE) in str(info.value)
    assert isinstance(info.value, layer.MessageTooLarge)
    layer.group_add("size.grp", "test.size")
    with pytest.raises(layer.MessageTooLarge):
        layer.send_group("size.grp", too_big)
    assert layer.receive(["test.size"]) == (None, None)


def test_configured_size_limit(make_layer):
    layer = make_layer(max_message_size=1000)
    layer.send("small", _sized(1000))
    with pytest.raises(exc.MessageTooLarge):
        layer.send("small", {"b": b"x" * 1000})
