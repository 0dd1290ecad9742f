"""The configuration grammar of group history and presence, and the checks at the caller.

- ``group_history``/``group_presence``: keywords (mappings, pairs, URL items), URL query (repeated),
  errors naming the pattern and the field, the per-group answer;
- the reserved-name rule (CONTRACT.md section 5) on every backend of the contract, the sidecar's own
  keys still passing where the sidecar sends them;
- WebSocket-shaped pushes checked where they are made (issue 20, item 3);
- ``mypy --strict`` on the new modules.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from wsgi_channels import Channel, Group, exceptions as exc
from wsgi_channels.layers import from_url, parse_options
from wsgi_channels.layers.names import new_process_prefix
from wsgi_channels.layers.features import HistoryOptions, PresenceOptions, format_item, parse_history, parse_presence
from wsgi_channels.layers.memory import MemoryChannelLayer

ROOT = Path(__file__).parent.parent


# -- grammar -------------------------------------------------------------------------------------


def test_forms_of_group_history_agree():
    forms = [
        {"chat.*": {"size": 50, "ttl": 30}, "news": {}},
        [("chat.*", {"size": 50, "ttl": 30}), ("news", None)],
        "chat.*:size=50:ttl=30 news",
        ["chat.*:size=50:ttl=30", "news"],
    ]
    parsed = [[(p.pattern, o) for p, o in parse_history(f)] for f in forms]
    assert all(p == parsed[0] for p in parsed)
    assert [o for _, o in parsed[0]] == [HistoryOptions(50, 30.0, 86400.0), HistoryOptions()]
    assert parse_history({"big": {"ttl": 100000}})[0][1].meta_ttl == 100000  # at least ttl by default


def test_presence_fields_and_defaults():
    (_, opts), = parse_presence("room.*:max_members=10:join_leave=0:events_max=5:info_max_bytes=100:ttl=30")
    assert opts == PresenceOptions(10, False, 5, 100, 30.0)
    (_, opts), = parse_presence({"room.*": {}})
    assert opts == PresenceOptions(1000, True, 100, 2048, 60.0) and opts.pattern == "room.*"


@pytest.mark.parametrize("spec, words", [
    ({"chat.*": {"sise": 5}}, ["'chat.*'", "sise", "size"]),
    ({"chat.*": {"size": 0}}, ["size=0", "1 to 10000"]),
    ({"chat.*": {"size": 10001}}, ["size=10001"]),
    ({"chat.*": {"ttl": -1}}, ["ttl=-1"]),
    ({"chat.*": {"size": "many"}}, ["size='many'", "an int"]),
    ({"chat.*": {"size": True}}, ["size=True"]),
    ({"chat.*": {"ttl": 10, "meta_ttl": 5}}, ["meta_ttl=5", "ttl=10"]),
    ("chat.*:size", ["'size' is not FIELD=VALUE"]),
    (":size=5", ["no group pattern"]),
    ({3: {}}, ["glob string or a compiled regex"]),
    ({"chat.*": 5}, ["fields must be a dict"]),
])
def test_bad_history_specs_name_the_problem(spec, words):
    with pytest.raises(exc.ConfigurationError) as info:
        parse_history(spec)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("spec, words", [
    ({"room.*": {"ttl": 2}}, ["ttl=2", "at least 5"]),
    ({"room.*": {"max_members": 0}}, ["max_members"]),
    ({"room.*": {"join_leave": "maybe"}}, ["join_leave='maybe'", "boolean"]),
    ({"room.*": {"events_max": -1}}, ["events_max"]),
    ({"room.*": {"colour": 1}}, ["colour", "max_members"]),
])
def test_bad_presence_specs_name_the_problem(spec, words):
    with pytest.raises(exc.ConfigurationError) as info:
        parse_presence(spec)
    for word in words:
        assert word in str(info.value)


def test_url_query_repeats_and_keywords_win():
    options = parse_options("group_history=chat.*:size=10&capacity=5&group_history=news.*&group_presence=room.*:ttl=9")
    assert options == {"group_history": ["chat.*:size=10", "news.*"], "capacity": 5,
                       "group_presence": ["room.*:ttl=9"]}
    layer = from_url("memory://?group_history=chat.*:size=10&group_history=news.*:ttl=5&group_presence=room.*")
    assert layer.history_options("chat.x").size == 10 and layer.history_options("news.y").ttl == 5
    assert layer.history_options("room.1") is None and layer.presence_options("room.1").max_members == 1000
    assert layer.extensions == ["groups", "flush", "statistics", "history", "presence"]
    assert MemoryChannelLayer().extensions == ["groups", "flush", "statistics"]
    layer = from_url("memory://?group_history=chat.*:size=10", group_history={"other": {}})
    assert layer.history_options("chat.x") is None and layer.history_options("other") is not None


def test_first_matching_pattern_wins_and_regexes_work():
    layer = MemoryChannelLayer(group_history=[("chat.vip.*", {"size": 500}), ("chat.*", {"size": 5}),
                                              (re.compile(r"^log-\d+$"), {"size": 7})])
    assert layer.history_options("chat.vip.1").size == 500
    assert layer.history_options("chat.other").size == 5
    assert layer.history_options("log-12").size == 7 and layer.history_options("log-x") is None
    assert layer.group_features("nothing") is None


def test_format_item_round_trips():
    item = format_item("room.*", {"max_members": 50, "join_leave": False, "ttl": 30})
    assert item == "room.*:max_members=50:join_leave=0:ttl=30"
    (_, opts), = parse_presence(item)
    assert (opts.max_members, opts.join_leave, opts.ttl) == (50, False, 30.0)
    with pytest.raises(exc.ConfigurationError):
        format_item("a:b", {})


def test_a_backend_without_the_feature_refuses_the_option(monkeypatch):
    monkeypatch.setattr(MemoryChannelLayer, "features_supported", frozenset({"history"}))
    with pytest.raises(exc.ConfigurationError, match="group_presence"):
        MemoryChannelLayer(group_presence={"room.*": {}})
    MemoryChannelLayer(group_history={"chat.*": {}})


# -- reserved keys, on every backend of the contract ------------------------------------------------


@pytest.mark.parametrize("key", ["__wsc_h", "__wsc_n", "__wsc_p", "__wsc_anything", "__asgi_channel__", "__asgi_"])
def test_every_backend_refuses_reserved_keys(layer, key):
    with pytest.raises(exc.InvalidMessage, match=re.escape(repr(key))):
        layer.send("test.reserved", {"text": "x", key: 1})
    with pytest.raises(exc.InvalidMessage, match="reserved"):
        layer.send_group("grp", {key: 1})
    assert isinstance(layer.send_many([("test.reserved", {key: 1})])[0], exc.InvalidMessage)
    layer.send("test.reserved", {"_private": 1, "__dunder__": 2, "__wsc": 3, "x__wsc_": 4})  # not reserved
    assert layer.receive(["test.reserved"])[1] == {"_private": 1, "__dunder__": 2, "__wsc": 3, "x__wsc_": 4}


def test_every_backend_lets_the_sidecar_keys_through_send(layer):
    """The sidecar's ``http.request`` (``__wsc_flow``) and ``websocket.connect`` (``__wsc_token``)."""
    flow = {"channel": "http.response.credit?abc", "window": 1024, "timeout": 5.0}
    layer.send("http.request", {"path": "/", "__wsc_flow": flow})
    assert layer.send_many([("websocket.connect", {"path": "/", "__wsc_token": {"sub": "1"}})]) == [None]
    assert layer.receive(["http.request"])[1]["__wsc_flow"] == flow
    assert layer.receive(["websocket.connect"])[1]["__wsc_token"] == {"sub": "1"}


# -- WebSocket-shaped pushes, checked at the caller (issue 20, item 3) --------------------------------


@pytest.mark.parametrize("bad, words", [
    ({"text": {"a": 1}}, ["message['text'] must be a str, got dict", "json.dumps"]),
    ({"text": "x", "title": "y"}, ["unknown key(s) ['title']"]),
    ({"bytes": "str"}, ["message['bytes'] must be bytes"]),
    ({"text": "a", "bytes": b"b"}, ["both 'text' and 'bytes'"]),
    ({"close": "soon"}, ["message['close']"]),
    ({"accept": "yes"}, ["message['accept'] must be a bool"]),
])
def test_group_send_in_the_websocket_shape_is_checked(bad, words):
    layer = MemoryChannelLayer()
    layer.group_add("g", "member.x")
    for immediately in (True, False):
        with pytest.raises(exc.InvalidMessage) as info:
            Group("g", layer=layer).send(bad, immediately=immediately)
        assert "Group('g').send" in str(info.value)
        for word in words:
            assert word in str(info.value)
    assert layer.receive(["member.x"]) == (None, None)


def test_group_send_of_other_shapes_is_free_unless_the_group_has_features():
    layer = MemoryChannelLayer(group_history={"chat.*": {}}, group_presence={"room.*": {}})
    layer.group_add("app.group", "member.x")
    Group("app.group", layer=layer).send({"title": "an app's own group", "n": 1})  # any shape
    assert layer.receive(["member.x"])[1] == {"title": "an app's own group", "n": 1}
    for group in ("chat.1", "room.1"):
        with pytest.raises(exc.InvalidMessage, match="unknown key.*title.*keeps history or presence"):
            Group(group, layer=layer).send({"title": "hello"})
        with pytest.raises(exc.InvalidMessage, match="does nothing"):
            Group(group, layer=layer).send({})
    Group("chat.1", layer=layer).send({"text": "fine"})
    Group("chat.1", layer=layer).send({"close": True})
    assert layer.group_position("chat.1").offset == 2


def test_reply_channel_of_a_sidecar_is_checked():
    from wsgi_channels import Message

    layer = MemoryChannelLayer()
    reply = new_process_prefix("sidecar") + "conn"
    message = Message({"reply_channel": reply, "path": "/ws/", "text": "hi", "order": 1}, "websocket.receive", layer)
    for bad, words in [({"text": {"a": 1}}, ["must be a str"]), ({"title": "x"}, ["WebSocket send", "'title'"]),
                       ({"text": "x", "extra": 1}, ["unknown key(s) ['extra']"])]:
        with pytest.raises(exc.InvalidMessage) as info:
            message.reply_channel.send(bad)
        assert reply in str(info.value)
        for word in words:
            assert word in str(info.value)
    message.reply_channel.send({"text": "ok"})
    message.reply_channel.send({"accept": True})
    message.reply_channel.send({"status": 200, "headers": [], "content": b"x"})  # an HTTP response passes
    message.reply_channel.send({})  # an HTTP response's empty last chunk
    message.reply_channel.send({"content": b"", "more_content": False, "abort": True})
    assert len(layer.receive_batch([reply.split("!")[0] + "!"], 10)) == 5
    # a channel not behind a sidecar carries any shape (an app's own reply channels)
    Channel("app.reply?x1", layer=layer).send({"title": "fine", "text": {"a": 1}})


def test_consumers_see_the_error_where_they_make_it():
    """Inside a consumer the sends are queued (deferred_sends): the error comes at the send call,
    not when the queue is flushed after the consumer returned (nor from the sidecar's log)."""
    from wsgi_channels import Message
    from wsgi_channels.channel import deferred_sends

    layer = MemoryChannelLayer()
    reply = new_process_prefix("sidecar") + "conn"
    message = Message({"reply_channel": reply, "path": "/"}, "websocket.connect", layer)
    seen = []
    with deferred_sends() as outbox:
        message.reply_channel.send({"text": "first"})
        try:
            Group("room", layer=layer).send({"text": {"not": "json"}})
        except exc.InvalidMessage as e:
            seen.append(str(e))
        message.reply_channel.send({"text": "second"})
        queued = list(outbox)
    assert len(seen) == 1 and "message['text'] must be a str" in seen[0]
    assert [(kind, name) for _, kind, name, _ in queued] == [("send", reply), ("send", reply)]


# -- typing ------------------------------------------------------------------------------------------


def test_new_modules_are_strictly_typed():
    cache = Path(tempfile.gettempdir()) / "wsgi_channels-mypy-cache-features"
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), "--strict", "--follow-imports=silent",
                           "wsgi_channels/layers/features.py", "wsgi_channels/layers/_memory_features.py",
                           "wsgi_channels/presence.py", "wsgi_channels/layers/base.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_check_push_is_what_the_push_api_checks():
    """For code that queues pushes and sends them later through the layer (after-commit buffers)."""
    from wsgi_channels.channel import check_push

    layer = MemoryChannelLayer(group_history={"chat.*": {}})
    reply = new_process_prefix("sidecar") + "c"
    for kind, name, bad in [("send_group", "g", {"text": {"a": 1}}), ("send_group", "chat.1", {"title": 1}),
                            ("send", reply, {"title": 1}), ("send", "x", {"__wsc_token": {}}),
                            ("send_group", "g", {"text": "x", "__wsc_n": 1})]:
        with pytest.raises(exc.InvalidMessage):
            check_push(layer, kind, name, bad)
    check_push(layer, "send_group", "g", {"title": 1})
    check_push(layer, "send", "app.channel", {"text": {"a": 1}})


def test_presence_add_on_a_layer_without_the_feature_says_so(layer):
    """Every backend, those without presence too: PresenceNotEnabled, not a TypeError of its group_add."""
    with pytest.raises(exc.PresenceNotEnabled, match="room.1"):
        Group("room.1", layer=layer).add("some.member", presence={"user": "u"})
    assert Group("room.1", layer=layer).channels() == []
