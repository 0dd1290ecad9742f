"""The channel-layer contract (CONTRACT.md section 1), one suite for every backend.

Parametrised by ``conftest.BACKENDS``: memory, ipc, one Redis 7, three Redis shards, one Redis 6.0.
Bad names and messages are in ``test_layer_contract_input.py``, the batch methods (through each
backend's own implementation and the default one) in ``test_layer_contract_batches.py``.
"""
from __future__ import annotations

import re
import threading
import time
import warnings

import pytest

from wsgi_channels import exceptions as exc
from wsgi_channels.layers.names import new_process_prefix

pytestmark = pytest.mark.timeout(60)


def drain(layer, channels, block=False, timeout=None):
    out = []
    while True:
        ch, msg = layer.receive(channels, block=block, timeout=timeout)
        if ch is None:
            return out
        out.append((ch, msg))


# -- basic send and receive ------------------------------------------------------------------


def test_send_receive_round_trip(layer):
    layer.send("test.basic", {"value": 42, "text": "hi"})
    assert layer.receive(["test.basic"]) == ("test.basic", {"value": 42, "text": "hi"})
    assert layer.receive(["test.basic"]) == (None, None)


def test_receive_empty_list_and_empty_channel(layer):
    assert layer.receive([]) == (None, None)
    assert layer.receive(["nothing.here"]) == (None, None)


def test_send_copies_message(layer):
    msg = {"items": [1, 2], "inner": {"a": 1}}
    layer.send("test.copy", msg)
    msg["items"].append(3)
    msg["inner"]["a"] = 2
    msg["new"] = True
    assert layer.receive(["test.copy"])[1] == {"items": [1, 2], "inner": {"a": 1}}


def test_value_types_round_trip(layer):
    msg = {
        "none": None, "t": True, "f": False, "int": -(2**63), "big": 2**63 - 1, "float": 1.5,
        "str": "héllo ☃", "bytes": b"\x00\xffbin", "empty_b": b"", "empty_s": "",
        "list": [1, "a", b"b", None], "tuple": (1, (2, 3)), "dict": {"k": {"deep": [b"x"]}},
    }
    layer.send("test.types", msg)
    _, got = layer.receive(["test.types"])
    assert got["bytes"] == b"\x00\xffbin" and isinstance(got["bytes"], bytes)
    assert got["str"] == "héllo ☃" and isinstance(got["str"], str)
    assert isinstance(got["empty_b"], bytes) and isinstance(got["empty_s"], str)
    assert got["tuple"] == [1, [2, 3]]
    assert got["list"] == [1, "a", b"b", None]
    assert got["dict"] == {"k": {"deep": [b"x"]}}
    assert got["int"] == -(2**63) and got["big"] == 2**63 - 1
    assert got["t"] is True and got["f"] is False and got["none"] is None


@pytest.mark.parametrize("name", ["a" * 100, "x" * 150 + "!" + "y" * 40])
def test_long_names(layer, name):
    if name.endswith("!"):  # pragma: no cover - guard for the parameter list
        raise AssertionError
    layer.send(name, {"n": 1})
    receive_on = name[: name.index("!") + 1] if "!" in name else name
    assert layer.receive([receive_on]) == (name, {"n": 1})
    layer.group_add("g" * 100, name)
    assert layer.group_channels("g" * 100) == [name]


def test_fifo_single_reader_normal_query_and_bang(layer):
    reply = layer.new_channel("test.reply?")
    for i in range(20):
        layer.send("test.fifo", {"i": i})
        layer.send(reply, {"i": i})
        layer.send(f"proc.abc!{'x' if i % 2 else 'y'}{i}", {"i": i})
    assert [m["i"] for _, m in drain(layer, ["test.fifo"])] == list(range(20))
    assert [m["i"] for _, m in drain(layer, [reply])] == list(range(20))
    got = drain(layer, ["proc.abc!"])
    assert [m["i"] for _, m in got] == list(range(20))
    assert [c for c, _ in got] == [f"proc.abc!{'x' if i % 2 else 'y'}{i}" for i in range(20)]


def test_process_local_channels_return_full_name_and_hide_reserved_key(layer):
    layer.send("sidecar.P1!conn1", {"text": "a"})
    layer.send("sidecar.P1!conn2", {"text": "b"})
    layer.send("sidecar.P2!conn1", {"text": "c"})
    assert layer.receive(["sidecar.P1!"]) == ("sidecar.P1!conn1", {"text": "a"})
    assert layer.receive(["sidecar.P1!"]) == ("sidecar.P1!conn2", {"text": "b"})
    assert layer.receive(["sidecar.P1!"]) == (None, None)
    assert layer.receive(["sidecar.P2!"]) == ("sidecar.P2!conn1", {"text": "c"})


# -- new_channel --------------------------------------------------------------------------------


def test_new_channel_is_unguessable_and_unique(layer):
    names = {layer.new_channel("http.response?") for _ in range(200)}
    assert len(names) == 200
    for name in names:
        assert name.startswith("http.response?")
        suffix = name[len("http.response?"):]
        assert len(suffix) >= 12 and re.fullmatch(r"[A-Za-z0-9_\-.]+", suffix)
    name = names.pop()
    layer.send(name, {"ok": True})
    assert layer.receive([name]) == (name, {"ok": True})


@pytest.mark.parametrize("pattern", ["http.response!", "http.response", "bad name?", 5, "a!b?"])
def test_new_channel_rejects_non_question_patterns(layer, pattern):
    with pytest.raises(TypeError):
        layer.new_channel(pattern)


# -- capacity -----------------------------------------------------------------------------------------


def test_capacity_raises_channel_full(make_layer):
    layer = make_layer(capacity=3)
    for i in range(3):
        layer.send("cap.test", {"i": i})
    with pytest.raises(exc.ChannelFull) as info:
        layer.send("cap.test", {"i": 3})
    assert isinstance(info.value, layer.ChannelFull)
    assert layer.receive(["cap.test"])[1] == {"i": 0}
    layer.send("cap.test", {"i": 4})
    assert [m["i"] for _, m in drain(layer, ["cap.test"])] == [1, 2, 4]
    assert layer.global_statistics()["channel_full_count"] >= 1


def test_channel_capacity_globs_and_regexes_first_match_wins(make_layer):
    layer = make_layer(capacity=2, channel_capacity={
        "http.request": 5, re.compile(r"^websocket\.(send|receive)"): 1, "websocket.*": 4, "proc.*!": 3,
    })
    assert layer.get_capacity("http.request") == 5
    assert layer.get_capacity("websocket.receive") == 1
    assert layer.get_capacity("websocket.connect") == 4
    assert layer.get_capacity("other") == 2
    for i in range(5):
        layer.send("http.request", {"i": i})
    with pytest.raises(exc.ChannelFull):
        layer.send("http.request", {"i": 5})
    layer.send("websocket.receive", {"i": 0})
    with pytest.raises(exc.ChannelFull):
        layer.send("websocket.receive", {"i": 1})


def test_capacity_counts_on_bang_prefix(make_layer):
    layer = make_layer(channel_capacity={"proc.*!": 3})
    layer.send("proc.A!one", {"i": 1})
    layer.send("proc.A!two", {"i": 2})
    layer.send("proc.A!three", {"i": 3})
    with pytest.raises(exc.ChannelFull):
        layer.send("proc.A!four", {"i": 4})
    layer.send("proc.B!one", {"i": 1})  # another prefix has its own count


def test_sidecar_prefixes_default_to_process_capacity(make_layer):
    layer = make_layer(capacity=2, process_capacity=5)
    prefix = new_process_prefix("sidecar")
    assert layer.get_capacity(prefix + "conn") == 5
    for i in range(5):
        layer.send(f"{prefix}c{i}", {"i": i})
    with pytest.raises(exc.ChannelFull):
        layer.send(f"{prefix}c9", {"i": 9})


def test_other_process_prefixes_have_the_channel_capacity_counted_on_the_prefix(make_layer):
    layer = make_layer(capacity=2, process_capacity=5)  # as asgiref 1.x's test_capacity_process expects
    assert layer.get_capacity("side.X!conn") == 2
    layer.send("side.X!a", {"i": 1})
    layer.send("side.X!b", {"i": 2})
    with pytest.raises(exc.ChannelFull):
        layer.send("side.X!c", {"i": 3})


def test_group_copies_follow_the_prefix_capacity(make_layer):
    layer = make_layer(capacity=2, process_capacity=3)
    sidecar = new_process_prefix("sidecar")
    members = ["other.X!a", "other.X!b", f"{sidecar}a", f"{sidecar}b"]
    for member in members:
        layer.group_add("cap.group", member)
    for n in range(4):
        layer.send_group("cap.group", {"n": n})  # never raises ChannelFull; full prefixes skip the copy
    got = drain(layer, ["other.X!", sidecar])
    by_member = {m: [msg["n"] for ch, msg in got if ch == m] for m in members}
    assert by_member == {"other.X!a": [0, 1], "other.X!b": [0, 1], f"{sidecar}a": [0, 1, 2],
                         f"{sidecar}b": [0, 1, 2]}


# -- expiry ---------------------------------------------------------------------------------------------


def test_expired_messages_are_never_delivered(make_layer):
    layer = make_layer(expiry=1)
    layer.send("exp.test", {"old": True})
    layer.send("exp.bang!a", {"old": True})
    time.sleep(1.3)
    layer.send("exp.test", {"new": True})
    assert layer.receive(["exp.test"]) == ("exp.test", {"new": True})
    assert layer.receive(["exp.test", "exp.bang!"]) == (None, None)


def test_expired_messages_free_capacity(make_layer):
    layer = make_layer(expiry=1, capacity=2)
    layer.send("exp.cap", {"i": 1})
    layer.send("exp.cap", {"i": 2})
    with pytest.raises(exc.ChannelFull):
        layer.send("exp.cap", {"i": 3})
    time.sleep(1.3)
    layer.send("exp.cap", {"i": 4})
    assert drain(layer, ["exp.cap"]) == [("exp.cap", {"i": 4})]


def test_group_expiry(make_layer):
    layer = make_layer(group_expiry=1)
    layer.group_add("gexp", "gexp.old")
    time.sleep(0.6)
    layer.group_add("gexp", "gexp.renewed")
    layer.group_add("gexp", "gexp.old")  # a repeated add renews
    time.sleep(0.6)
    assert sorted(layer.group_channels("gexp")) == ["gexp.old", "gexp.renewed"]
    time.sleep(0.6)
    assert layer.group_channels("gexp") == []
    layer.send_group("gexp", {"x": 1})
    assert layer.receive(["gexp.old", "gexp.renewed"]) == (None, None)


def test_bang_member_whose_message_expired_leaves_every_group(make_layer):
    layer = make_layer(expiry=1)
    layer.group_add("evict.a", "dead.proc!c1")
    layer.group_add("evict.b", "dead.proc!c1")
    layer.group_add("evict.a", "live.proc!c1")
    layer.send_group("evict.a", {"n": 1})
    assert layer.receive(["live.proc!"]) == ("live.proc!c1", {"n": 1})
    time.sleep(1.3)
    assert layer.receive(["dead.proc!"]) == (None, None)
    layer.send_group("evict.a", {"n": 2})  # membership checks may run lazily on a group op
    assert layer.group_channels("evict.a") == ["live.proc!c1"]
    assert layer.group_channels("evict.b") == []


# -- groups ---------------------------------------------------------------------------------------------


def test_group_add_discard_send(layer):
    layer.group_add("grp", "grp.one")
    layer.group_add("grp", "grp.one")  # idempotent
    layer.group_add("grp", "grp.two")
    layer.group_discard("grp", "grp.missing")  # no-op
    assert sorted(layer.group_channels("grp")) == ["grp.one", "grp.two"]
    layer.send_group("grp", {"hello": "all"})
    assert layer.receive(["grp.one"]) == ("grp.one", {"hello": "all"})
    assert layer.receive(["grp.two"]) == ("grp.two", {"hello": "all"})
    assert layer.receive(["grp.one", "grp.two"]) == (None, None)
    layer.group_discard("grp", "grp.one")
    layer.send_group("grp", {"second": 1})
    assert drain(layer, ["grp.one", "grp.two"]) == [("grp.two", {"second": 1})]
    layer.group_discard("grp", "grp.two")
    assert layer.group_channels("grp") == []
    layer.send_group("grp", {"nobody": 1})
    layer.send_group("never.created", {"nobody": 1})


def test_send_group_skips_full_members_and_counts_them(make_layer):
    layer = make_layer(capacity=1)
    layer.group_add("full.grp", "full.one")
    layer.group_add("full.grp", "full.two")
    layer.send("full.one", {"filler": True})
    before = layer.global_statistics()["group_drop_count"]
    layer.send_group("full.grp", {"g": 1})  # never raises ChannelFull
    assert layer.global_statistics()["group_drop_count"] == before + 1
    assert layer.receive(["full.two"]) == ("full.two", {"g": 1})
    assert drain(layer, ["full.one"]) == [("full.one", {"filler": True})]


def test_send_group_to_one_prefix_is_not_limited_by_its_capacity(make_layer):
    layer = make_layer(capacity=5)
    members = [f"side.P!c{i}" for i in range(300)]
    for m in members:
        layer.group_add("broadcast", m)
    layer.group_add("broadcast", "side.Q!only")
    layer.send_group("broadcast", {"text": "to all"})
    layer.send_group("broadcast", {"text": "again"})
    got = drain(layer, ["side.P!"])
    assert len(got) == 600
    assert sorted(c for c, m in got if m["text"] == "to all") == sorted(members)
    assert sorted(c for c, m in got if m["text"] == "again") == sorted(members)
    # FIFO per member: each member's first message comes before its second.
    first_seen = {}
    for idx, (c, m) in enumerate(got):
        if m["text"] == "to all":
            first_seen[c] = idx
        else:
            assert first_seen[c] < idx
    assert drain(layer, ["side.Q!"]) == [("side.Q!only", {"text": "to all"}), ("side.Q!only", {"text": "again"})]
    assert layer.global_statistics()["group_drop_count"] == 0


def test_send_group_copies_message(layer):
    layer.group_add("copy.grp", "copy.one")
    msg = {"list": [1]}
    layer.send_group("copy.grp", msg)
    msg["list"].append(2)
    assert layer.receive(["copy.one"])[1] == {"list": [1]}


# -- blocking receive -----------------------------------------------------------------------------------


def test_blocking_receive_wakes_on_send(layer):
    def later():
        time.sleep(0.3)
        layer.send("block.b", {"late": True})

    t = threading.Thread(target=later)
    start = time.monotonic()
    t.start()
    got = layer.receive(["block.a", "block.b"], block=True, timeout=5)
    waited = time.monotonic() - start
    t.join()
    assert got == ("block.b", {"late": True})
    assert waited < 2.0, f"blocking receive took {waited:.2f}s to wake (should be ~0.3s)"


def test_blocking_receive_times_out(layer):
    start = time.monotonic()
    assert layer.receive(["block.none"], block=True, timeout=0.5) == (None, None)
    waited = time.monotonic() - start
    assert 0.4 <= waited < 3.0


def test_blocking_receive_across_many_channels_and_prefixes(layer):
    """Names spread over every shard: a message on any of them wakes the receiver at once."""
    names = [f"spread.{i}" for i in range(24)] + [f"spreadp{i}!" for i in range(8)]
    reply = layer.new_channel("spread.reply?")
    names.append(reply)
    for target in (names[5], names[17], "spreadp3!x", reply):
        def later(t=target):
            time.sleep(0.2)
            layer.send(t, {"to": t})

        th = threading.Thread(target=later)
        start = time.monotonic()
        th.start()
        ch, msg = layer.receive(names, block=True, timeout=5)
        waited = time.monotonic() - start
        th.join()
        assert ch == target and msg == {"to": target}
        assert waited < 2.0, f"receive over several shards waited {waited:.2f}s for {target}"


def test_busy_channel_does_not_starve_quiet_one(layer):
    for i in range(50):
        layer.send("busy.chan", {"i": i})
    layer.send("quiet.chan", {"q": True})
    seen = [layer.receive(["busy.chan", "quiet.chan"])[0] for _ in range(10)]
    assert "quiet.chan" in seen


# -- flush, statistics, extensions ----------------------------------------------------------------------


def test_flush_empties_everything(layer):
    layer.send("flush.a", {"x": 1})
    layer.send("flush.p!x", {"x": 1})
    layer.group_add("flush.g", "flush.a")
    layer.flush()
    assert layer.receive(["flush.a", "flush.p!"]) == (None, None)
    assert layer.group_channels("flush.g") == []
    layer.send("flush.a", {"after": 1})
    assert layer.receive(["flush.a"]) == ("flush.a", {"after": 1})


def test_statistics_and_extensions(layer):
    assert set(layer.extensions) >= {"groups", "flush", "statistics"}
    layer.send("stats.chan", {"x": 1})
    layer.send("stats.chan", {"x": 2})
    g = layer.global_statistics()
    assert {"messages_count", "channel_full_count", "group_drop_count"} <= set(g)
    c = layer.channel_statistics("stats.chan")
    assert c["messages_pending"] == 2
    assert "messages_max_age" in c
    drain(layer, ["stats.chan"])
    assert layer.channel_statistics("stats.chan")["messages_pending"] == 0


def test_receive_many_is_a_deprecated_alias(layer):
    layer.send("alias.chan", {"x": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert layer.receive_many(["alias.chan"]) == ("alias.chan", {"x": 1})
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)


def test_exception_classes_on_instance(layer):
    assert layer.ChannelFull is exc.ChannelFull
    assert layer.MessageTooLarge is exc.MessageTooLarge
    assert issubclass(exc.ChannelFull, exc.ChannelsError)
    assert issubclass(exc.LayerUnavailable, exc.ChannelsError)


# -- concurrency ----------------------------------------------------------------------------------------


def test_many_threads_send_and_receive_exactly_once(make_layer):
    layer = make_layer(capacity=100000)
    senders, per_sender, receivers = 6, 300, 4
    channels = ["conc.a", "conc.b", "conc.p!x", "conc.p!y"]
    received: list = []
    lock = threading.Lock()
    done = threading.Event()

    def send(n):
        for i in range(per_sender):
            layer.send(channels[i % 4], {"s": n, "i": i})

    def recv():
        local = []
        while not done.is_set() or True:
            ch, msg = layer.receive(["conc.a", "conc.b", "conc.p!"], block=True, timeout=0.5)
            if ch is None:
                if done.is_set():
                    break
                continue
            local.append((ch, msg["s"], msg["i"]))
        with lock:
            received.extend(local)

    rs = [threading.Thread(target=recv) for _ in range(receivers)]
    ss = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
    for t in rs + ss:
        t.start()
    for t in ss:
        t.join()
    done.set()
    for t in rs:
        t.join()
    assert len(received) == senders * per_sender
    assert len(set(received)) == senders * per_sender
    for ch, s, i in received:
        assert ch == channels[i % 4]


# -- key-value store (channel sessions) -----------------------------------------------------------------


def test_session_store_set_get_delete_expire(layer):
    key = "session:" + layer.new_channel("ws.reply?")
    assert layer.session_get(key) is None
    layer.session_set(key, b"\x00state", ttl=60)
    assert layer.session_get(key) == b"\x00state"
    layer.session_set(key, b"new", ttl=60)
    assert layer.session_get(key) == b"new"
    layer.session_delete(key)
    layer.session_delete(key)
    assert layer.session_get(key) is None
    layer.session_set("short", b"x", ttl=0.5)
    time.sleep(1.1)
    assert layer.session_get("short") is None
    layer.session_set("flushed", b"x", ttl=60)
    layer.flush()
    assert layer.session_get("flushed") is None
    with pytest.raises(TypeError):
        layer.session_get("")


def test_session_compare_and_set(layer):
    key = "order:" + layer.new_channel("cas.reply?")
    assert layer.session_compare_and_set(key, b"1", b"2", 60) is False and layer.session_get(key) is None
    assert layer.session_compare_and_set(key, None, b"1", 60) is True and layer.session_get(key) == b"1"
    assert layer.session_compare_and_set(key, None, b"9", 60) is False
    assert layer.session_compare_and_set(key, b"2", b"9", 60) is False and layer.session_get(key) == b"1"
    assert layer.session_compare_and_set(key, b"1", b"2", 60) is True and layer.session_get(key) == b"2"
    assert layer.session_compare_and_set(key, b"2", None, 60) is True and layer.session_get(key) is None
    layer.session_set(key, b"x", ttl=0.3)
    time.sleep(0.7)
    assert layer.session_compare_and_set(key, b"x", b"y", 60) is False  # expired counts as absent
    assert layer.session_compare_and_set(key, None, b"y", 60) is True and layer.session_get(key) == b"y"
    with pytest.raises(TypeError):
        layer.session_compare_and_set("", None, b"x", 60)
    with pytest.raises(TypeError):
        layer.session_compare_and_set(key, b"y", "not bytes", 60)
    assert layer.session_get(key) == b"y"


def test_session_compare_and_set_loses_no_update_between_clients(make_layer):
    # Clients that each read the counter and compare-and-set it one higher, at once: every
    # increment lands exactly once (separate layer instances: separate connections or processes).
    first = make_layer()
    clients = [make_layer() if first.cross_process else first for _ in range(4)]
    key = "cas.counter"
    per_client = 25

    def bump(layer):
        done = 0
        while done < per_client:
            raw = layer.session_get(key)
            if layer.session_compare_and_set(key, raw, b"%d" % (int(raw or 0) + 1), 60):
                done += 1

    threads = [threading.Thread(target=bump, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert first.session_get(key) == b"%d" % (per_client * len(clients))
