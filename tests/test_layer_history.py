"""Group history in the layer (issue 18): offsets, reads, trimming, stamps, notices, reserved keys.

Parametrised over ``feature_backends.FEATURE_BACKENDS``; adding a backend is adding it there.
The epoch rules are in ``test_history_epoch.py``, presence in ``test_layer_presence.py``.
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from feature_backends import drain, feature_backend, feature_layer, publish_concurrently, stored_groups  # noqa: F401
from wsgi_channels import Group, exceptions as exc
from wsgi_channels.layers.names import new_process_prefix
from wsgi_channels.layers.features import NOTICE_KEY, STAMP_KEY, Position

pytestmark = pytest.mark.timeout(120)

HIST = "group_history=chat.*:size=5:ttl=300&group_history=big.*:size=1000&group_presence=room.*"


def sidecar_channel(prefix=None):
    prefix = prefix or new_process_prefix("sidecar")
    return prefix, prefix + "conn1"


def test_offsets_are_contiguous_and_history_reads_them(feature_layer):
    layer = feature_layer(HIST)
    assert layer.group_position("chat.a") == Position(layer.group_position("chat.a").epoch, 0)
    epoch = layer.group_position("chat.a").epoch
    assert isinstance(epoch, str) and len(epoch) == 8
    for i in range(3):
        layer.send_group("chat.a", {"text": f"m{i}", "n": i})
    assert layer.group_position("chat.a") == (epoch, 3)
    page = layer.group_history("chat.a", 0)
    assert page == (epoch, 3, [(1, {"text": "m0", "n": 0}), (2, {"text": "m1", "n": 1}), (3, {"text": "m2", "n": 2})])
    assert layer.group_history("chat.a", 1, limit=1) == (epoch, 3, [(2, {"text": "m1", "n": 1})])
    assert layer.group_history("chat.a", 3) == (epoch, 3, [])
    # since beyond the top is allowed and returns nothing (the caller followed another stream)
    assert layer.group_history("chat.a", 99) == (epoch, 3, [])
    # the messages come back as sent: no stamp, no reserved key
    assert all(STAMP_KEY not in m for _, m in page.messages)


def test_size_trim_shows_the_gap(feature_layer):
    layer = feature_layer(HIST)
    for i in range(8):
        layer.send_group("chat.trim", {"text": str(i)})
    epoch, top, messages = layer.group_history("chat.trim", 0)
    assert top == 8
    assert [o for o, _ in messages] == [4, 5, 6, 7, 8]  # size=5: the first offset is above since + 1
    assert [m["text"] for _, m in messages] == ["3", "4", "5", "6", "7"]
    assert layer.group_history("chat.trim", 2, limit=2).messages == [(4, {"text": "3"}), (5, {"text": "4"})]


def test_ttl_trim(feature_layer):
    layer = feature_layer("group_history=short.*:size=50:ttl=0.5")
    layer.send_group("short.x", {"text": "old"})
    time.sleep(0.3)
    layer.send_group("short.x", {"text": "newer"})
    time.sleep(0.35)
    epoch, top, messages = layer.group_history("short.x", 0)
    assert top == 2 and messages == [(2, {"text": "newer"})]
    time.sleep(0.3)
    assert layer.group_history("short.x", 0) == (epoch, 2, [])  # all aged out: a gap, same stream


def test_history_arguments_are_checked(feature_layer):
    layer = feature_layer(HIST)
    for since, limit in [(-1, 10), (0, 0), (0, 10001), ("1", 10), (0, 1.5), (True, 10)]:
        with pytest.raises(ValueError):
            layer.group_history("chat.args", since, limit)
    with pytest.raises(exc.InvalidGroupName):
        layer.group_history("bad name", 0)


def test_groups_without_a_pattern_keep_nothing_and_refuse_history_calls(feature_layer):
    layer = feature_layer(HIST)
    prefix, channel = sidecar_channel()
    layer.group_add("plain", channel)
    layer.group_add("plain", "worker.chan")
    layer.send_group("plain", {"text": "hi"})
    layer.group_discard("plain", channel)
    assert stored_groups(layer) == {"history": set(), "presence": set()}
    with pytest.raises(exc.HistoryNotEnabled, match="group_history"):
        layer.group_position("plain")
    with pytest.raises(LookupError):
        layer.group_history("plain", 0)
    with pytest.raises(exc.HistoryNotEnabled):
        Group("plain", layer=layer).position()
    # the members got the message as sent: no notice before it, no stamp
    assert drain(layer, [prefix]) == [(channel, {"text": "hi"})]
    assert drain(layer, ["worker.chan"]) == [("worker.chan", {"text": "hi"})]


def test_stamp_only_on_sidecar_prefixes(feature_layer):
    layer = feature_layer(HIST)
    prefix, channel = sidecar_channel()
    worker = new_process_prefix("worker") + "x1"
    for member in (channel, "plain.member", worker):
        layer.group_add("chat.s", member)
    layer.send_group("chat.s", {"text": "hello", "n": [1, 2]})
    epoch = layer.group_position("chat.s").epoch
    got = [m for _, m in drain(layer, [prefix]) if NOTICE_KEY not in m]
    assert got == [{"text": "hello", "n": [1, 2], STAMP_KEY: ["chat.s", epoch, 1]}]
    assert drain(layer, ["plain.member"]) == [("plain.member", {"text": "hello", "n": [1, 2]})]
    assert drain(layer, [worker.split("!")[0] + "!"]) == [(worker, {"text": "hello", "n": [1, 2]})]


def test_group_send_of_the_push_api_stamps_and_keeps(feature_layer):
    layer = feature_layer(HIST)
    prefix, channel = sidecar_channel()
    group = Group("chat.push", layer=layer)
    group.add(channel)
    position = group.position()
    group.send({"text": "one"})
    group.send({"bytes": b"two"})
    assert group.position() == (position.epoch, position.offset + 2)
    assert group.history(position.offset) == (position.epoch, 2, [(1, {"text": "one"}), (2, {"bytes": b"two"})])
    frames = [m for _, m in drain(layer, [prefix]) if NOTICE_KEY not in m]
    assert [m[STAMP_KEY][2] for m in frames] == [1, 2]


def test_notices_one_per_new_membership_only_to_sidecars(feature_layer):
    layer = feature_layer(HIST)
    prefix, channel = sidecar_channel()
    layer.group_add("chat.n", channel)
    layer.group_add("chat.n", channel)  # a renewal: no second notice
    layer.group_add("chat.n", "plain.member")  # not a sidecar channel: no notice
    layer.group_add("plain.group", channel)  # not a history/presence group: no notice
    notices = [(ch, m) for ch, m in drain(layer, [prefix])]
    joined = list(layer.group_position("chat.n"))
    assert notices == [(channel, {NOTICE_KEY: {"g": "chat.n", "a": True, "h": joined, "p": None}})]
    assert drain(layer, ["plain.member"]) == []
    layer.group_discard("chat.n", channel)
    layer.group_discard("chat.n", channel)  # not a member any more: nothing
    layer.group_discard("plain.group", channel)
    assert drain(layer, [prefix]) == [(channel, {NOTICE_KEY: {"g": "chat.n", "a": False}})]
    layer.group_add("chat.n", channel)  # a new membership again
    assert drain(layer, [prefix]) == [(channel, {NOTICE_KEY: {"g": "chat.n", "a": True, "h": joined, "p": None}})]


def test_notice_comes_before_every_message_that_sees_the_membership(feature_layer):
    layer = feature_layer(HIST)
    prefix, channel = sidecar_channel()
    layer.send_group("chat.o", {"text": "before"})
    layer.group_add("chat.o", channel)
    layer.send_group("chat.o", {"text": "after"})
    got = [m for _, m in drain(layer, [prefix])]
    assert [NOTICE_KEY in m for m in got] == [True, False]
    assert got[1][STAMP_KEY][2] == 2  # the sidecar reads history after the notice: offset 1 is there
    assert layer.group_history("chat.o", 0).messages[0] == (1, {"text": "before"})


def placed_prefixes(layer, group: str) -> tuple[str, str]:
    """Two sidecar prefixes: on a Redis layer of several shards (or Cluster buckets) the first on
    the shard holding ``group``'s history and the second on another one (the notice's position
    is read in the membership's script there, from the order mark here)."""
    home = getattr(layer, "_feature_shard", None)
    if home is None or len(layer._shards) < 2:
        return new_process_prefix("sidecar"), new_process_prefix("sidecar")
    found: dict[bool, str] = {}
    while len(found) < 2:
        prefix = new_process_prefix("sidecar")
        found.setdefault(layer._shard_of(prefix) is home(group), prefix)
    return found[True], found[False]


def test_join_notice_carries_the_position_at_the_membership(feature_layer):
    """The notice's ``h`` is ``group_position`` at the join, and every message after it reaches
    the member (issue 18: a socket that joins and leaves before any message can resume)."""
    layer = feature_layer(HIST)
    first, second = placed_prefixes(layer, "chat.j")
    a, b = first + "conn1", second + "conn1"
    layer.group_add("chat.j", a)  # no message yet: the position makes the epoch, as group_position does
    at_a = layer.group_position("chat.j")
    assert at_a.offset == 0
    for i in range(3):
        layer.send_group("chat.j", {"text": f"m{i}"})
    at_b = layer.group_position("chat.j")
    layer.group_add("chat.j", b)
    for i in range(3, 8):
        layer.send_group("chat.j", {"text": f"m{i}"})
    for prefix, channel, at, after in ((first, a, at_a, 8), (second, b, at_b, 5)):
        got = drain(layer, [prefix])
        assert got[0] == (channel, {NOTICE_KEY: {"g": "chat.j", "a": True, "h": [at.epoch, at.offset], "p": None}})
        stamps = [m[STAMP_KEY] for _, m in got[1:]]
        assert stamps == [["chat.j", at.epoch, o] for o in range(at.offset + 1, at.offset + after + 1)]
    # a group with presence only: no position
    layer.group_add("room.j", a, presence={"user": "u"})
    notice = [m for _, m in drain(layer, [first]) if NOTICE_KEY in m][0][NOTICE_KEY]
    assert notice["h"] is False


def test_join_position_is_exact_while_messages_are_published(feature_layer):
    """Members join while two publishers send: each one gets exactly the messages after its
    notice's position (none missing, none from before it), on the group's shard and elsewhere."""
    layer = feature_layer("group_history=big.*:size=1000")
    prefixes = [p for _ in range(4) for p in placed_prefixes(layer, "big.race")]
    stop = threading.Event()
    errors: list[BaseException] = []

    def publish(who: int) -> None:
        try:
            i = 0
            while not stop.is_set() and i < 400:
                layer.send_group("big.race", {"text": f"{who}:{i}"})
                i += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for prefix in prefixes:
        time.sleep(0.01)
        layer.group_add("big.race", prefix + "c")
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors
    epoch, top = layer.group_position("big.race")
    for prefix in prefixes:
        got = [m for _, m in drain(layer, [prefix])]
        joined = got[0][NOTICE_KEY]["h"]
        assert joined[0] == epoch
        assert sorted(m[STAMP_KEY][2] for m in got[1:]) == list(range(joined[1] + 1, top + 1)), prefix


def test_notices_bypass_capacity(feature_layer):
    layer = feature_layer(HIST, process_capacity=2)
    prefix, channel = sidecar_channel()
    layer.send(channel, {"text": "a"})
    layer.send(channel, {"text": "b"})
    with pytest.raises(exc.ChannelFull):
        layer.send(channel, {"text": "c"})
    layer.group_add("chat.full", channel)
    layer.send_group("chat.full", {"text": "dropped"})  # full: skipped and counted, still kept in history
    got = [m for _, m in drain(layer, [prefix])]
    epoch = layer.group_position("chat.full").epoch
    notice = {NOTICE_KEY: {"g": "chat.full", "a": True, "h": [epoch, 0], "p": None}}
    assert got == [{"text": "a"}, {"text": "b"}, notice]
    assert layer.group_history("chat.full", 0).messages == [(1, {"text": "dropped"})]
    assert layer.global_statistics()["group_drop_count"] >= 1


@pytest.mark.parametrize("key", ["__wsc_h", "__wsc_n", "__wsc_p", "__wsc_future", "__asgi_channel__", "__asgi_x"])
def test_reserved_keys_are_refused_by_the_layer(feature_layer, key):
    layer = feature_layer(HIST)
    with pytest.raises(exc.InvalidMessage, match=key):
        layer.send("some.channel", {"text": "x", key: 1})
    with pytest.raises(exc.InvalidMessage, match=key):
        layer.send_group("chat.r", {"text": "x", key: 1})
    outcome = layer.send_many([("some.channel", {key: 1}), ("some.channel", {"ok": 1})])
    assert isinstance(outcome[0], exc.InvalidMessage) and outcome[1] is None
    assert layer.group_position("chat.r").offset == 0  # the refused message was not kept either


@pytest.mark.parametrize("key", ["__wsc_flow", "__wsc_token", "__wsc_h", "__asgi_channel__"])
def test_the_push_api_refuses_every_reserved_key(feature_layer, key):
    layer = feature_layer(HIST)
    from wsgi_channels import Channel
    with pytest.raises(exc.InvalidMessage, match=key):
        Channel("some.channel", layer=layer).send({"text": "x", key: {}})
    with pytest.raises(exc.InvalidMessage, match=key):
        Group("chat.r", layer=layer).send({"text": "x", key: {}})
    assert layer.receive(["some.channel"]) == (None, None)


def test_the_server_keys_still_pass_the_layer(feature_layer):
    """The sidecar sends ``__wsc_flow`` in ``http.request`` and ``__wsc_token`` in ``websocket.connect``."""
    layer = feature_layer(HIST)
    layer.send("http.request", {"path": "/", "__wsc_flow": {"channel": "c?x", "window": 1, "timeout": 1.0}})
    layer.send("websocket.connect", {"path": "/", "__wsc_token": {"sub": "42"}})
    assert layer.receive(["http.request"])[1]["__wsc_flow"]["window"] == 1
    assert layer.receive(["websocket.connect"])[1]["__wsc_token"] == {"sub": "42"}


def test_four_concurrent_publishers_get_contiguous_unique_offsets(feature_layer):
    query = "group_history=big.*:size=1000:ttl=300"
    layer = publish_concurrently(feature_layer, query, "big.load", publishers=4, per=250)
    epoch, top, messages = layer.group_history("big.load", 0, limit=1000)
    assert top == 1000
    assert [o for o, _ in messages] == list(range(1, 1001))
    texts = Counter(m["text"] for _, m in messages)
    assert len(texts) == 1000 and set(texts.values()) == {1}
    senders = Counter(t.split(":")[0] for t in texts)
    assert sorted(senders.values()) == [250, 250, 250, 250]
    for who in senders:  # each publisher's own messages keep their order
        mine = [int(m["text"].split(":")[1]) for _, m in messages if m["text"].startswith(who + ":")]
        assert mine == sorted(mine)
