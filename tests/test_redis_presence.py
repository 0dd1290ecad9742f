"""The presence read on Redis: one script answering with msgpack fragments written with the entries.

``group_presence`` is one script per call (``PRESENCE_LIST``) that answers with each entry as
msgpack, kept beside the entry (``P:pf:{group}``) by every script that changes it, so that a
read only joins them: these tests hold it to exactly what the entries are after every kind of
change, on every kind of value, and check that a group changed by a layer from before the
fragments (which changed the entries alone) is still read right, and has its fragments made
again by the next step of this layer. The shared rules are in ``test_layer_presence.py``;
encryption at rest in ``test_redis_history.py``.
"""
from __future__ import annotations

import time

import pytest
import redis

from wsgi_channels import exceptions as exc
from wsgi_channels.layers import from_url
from wsgi_channels.layers.names import new_process_prefix
from wsgi_channels.presence import conn_id

pytestmark = pytest.mark.timeout(120)

Q = "group_presence=room.*:ttl=5:max_members=5000"
FLUSH_AFTER = True  # the shared `made` fixture (conftest) flushes its layers


def _stored(url: str, group: str, prefix: str) -> dict[str, tuple[str | None, object, float]]:
    """``{conn_id: (user, info, since)}`` as the entries are in Redis (read with redis-py, the
    since from the entry's text), for a layer without encryption."""
    import msgpack

    client = redis.Redis.from_url(url)
    try:
        out = {}
        for key in client.scan_iter(match=f"{prefix}:pe:*".encode()):
            for cid, value in client.hgetall(key).items():
                _owner, since, _tag, _digest, rest = value.split(b" ", 4)
                entry = msgpack.unpackb(rest, raw=False)
                out[cid.decode()] = (entry["user"], entry["info"], float(since))
        return out
    finally:
        client.close()


def _read(layer, group):
    return {cid: (e["user"], e["info"], e["since"]) for cid, e in layer.group_presence(group).items()}


@pytest.mark.parametrize("keys", [None, ["secret"]], ids=["plain", "encrypted"])
def test_every_change_is_read_back_at_once(redis_server, made, keys):
    """Adds, updates, removals, a reassertion and a sweep, each followed by a read from this layer
    and from another (another process's): every read is the entries as they are, never a fragment
    older than its entry; values of every kind survive, ``since`` exactly."""
    options = {"symmetric_encryption_keys": keys} if keys else {}
    layer = made(redis_server.url, prefix="prd", **options)
    other = made(redis_server.url, prefix="prd", **options)
    layer.flush()
    a, b, c = (new_process_prefix("sidecar") for _ in range(3))
    long_name = "c" * 40  # a conn_id over 31 characters takes msgpack's str8 header
    infos = [None, 1, -2**63, 2.5, True, "é" * 40, b"\x00bytes", [1, [2, {"x": None}]], {"k": {"n": [b"v"]}},
             "x" * 300]
    expected = {}
    for i, info in enumerate(infos):
        layer.group_add("room.rd", f"{a if i % 2 else b}m{i}", presence={"user": f"user-{i % 3}", "info": info})
        expected[conn_id(f"{a if i % 2 else b}m{i}")] = (f"user-{i % 3}", info)
    layer.presence_reassert(c, "room.rd", {long_name: {"user": None, "info": {"long": True}}})
    expected[long_name] = (None, {"long": True})

    def check(lapsed=False):
        for reader in (layer, other):
            got = _read(reader, "room.rd")
            assert {cid: v[:2] for cid, v in got.items()} == expected
            if not keys and not lapsed:
                assert got == _stored(redis_server.url, "room.rd", "prd")
        return got

    first = check()
    layer.group_add("room.rd", f"{b}m0", presence={"user": "user-0", "info": None})  # the same: no change
    assert check() == first
    layer.group_add("room.rd", f"{b}m0", presence={"user": "renamed", "info": {"new": 1}})
    expected[conn_id(f"{b}m0")] = ("renamed", {"new": 1})
    assert check()[conn_id(f"{b}m0")][2] == first[conn_id(f"{b}m0")][2]  # an update keeps since
    layer.group_discard("room.rd", f"{a}m1")
    del expected[conn_id(f"{a}m1")]
    check()
    layer.presence_remove("room.rd", a, [conn_id(f"{a}m3")])
    del expected[conn_id(f"{a}m3")]
    check()
    # b's lease passes (ttl 5) while a and c refresh theirs: b's entries are left out at once, then swept
    deadline = time.monotonic() + 5.5
    while time.monotonic() < deadline:
        assert layer.presence_refresh(a, ["room.rd"]) == layer.presence_refresh(c, ["room.rd"]) == [True]
        time.sleep(0.5)
    expected = {cid: v for cid, v in expected.items() if cid == long_name or cid in
                {conn_id(f"{a}m{i}") for i in range(len(infos))}}
    check(lapsed=True)
    assert other.presence_sweep()
    check()
    layer.presence_reassert(b, "room.rd", {conn_id(f"{b}m0"): {"user": "back", "info": [0]}})
    expected[conn_id(f"{b}m0")] = ("back", [0])
    check()


def _calls(client) -> dict:
    return {k: v["calls"] for k, v in client.info("commandstats").items()}


def _delta(before: dict, after: dict, *names: str) -> int:
    return sum(after.get(f"cmdstat_{n}", 0) - before.get(f"cmdstat_{n}", 0) for n in names)


def test_a_thousand_members_in_one_script_call_that_only_joins_fragments(fresh_redis, made):
    """A read of 1,000 members is one command (one round trip), which reads the fragments
    (``HVALS``), not the entries (``HGETALL``): ``INFO commandstats`` (of a server of its own: no
    other test's commands counted)."""
    redis_server = fresh_redis
    layer = made(redis_server.url, prefix="prk")
    layer.flush()
    owners = [new_process_prefix("sidecar") for _ in range(3)]
    for j, owner in enumerate(owners):
        layer.presence_reassert(owner, "room.k", {f"o{j}-{i}": {"user": f"u{i}", "info": {"name": f"N{i}"}}
                                                  for i in range(334 if j == 0 else 333)})
    layer.group_presence("room.k")  # the script loaded (a server that never ran it answers NOSCRIPT first)
    client = redis.Redis.from_url(redis_server.url)
    try:
        before = _calls(client)
        for _ in range(5):
            entries = layer.group_presence("room.k")
            assert len(entries) == 1000 and entries["o1-7"]["info"] == {"name": "N7"}
        after = _calls(client)
        assert _delta(before, after, "eval", "evalsha") == 5
        assert _delta(before, after, "hvals") == 5 and _delta(before, after, "hgetall") == 0
    finally:
        client.close()


def test_a_group_changed_by_a_layer_before_the_fragments_is_read_right_then_mended(redis_server, made):
    """A layer from before ``pf`` changes an entry and the change number alone (as its scripts
    did): reads make the fragments from the entries meanwhile; the next step of this layer (a
    refresh here) makes ``pf`` again, and reads join fragments again."""
    import msgpack

    layer = made(redis_server.url, prefix="pro")
    layer.flush()
    owner = new_process_prefix("sidecar")
    for i in range(3):
        layer.group_add("room.o", f"{owner}m{i}", presence={"user": f"u{i}", "info": {"n": i}})
    client = redis.Redis.from_url(redis_server.url)
    try:
        (pe,) = client.keys("pro:pe:*")
        (pm,) = client.keys("pro:pm:*")
        (pf,) = client.keys("pro:pf:*")
        cid = conn_id(f"{owner}m1")
        fields = client.hget(pe, cid).split(b" ", 4)
        rest = msgpack.packb({"info": {"n": "changed"}, "user": "u1"})
        client.hset(pe, cid, b" ".join(fields[:4] + [rest]))  # the old layer's update: pe and v, not pf
        client.hincrby(pm, "v", 1)
        before = _calls(client)
        assert _read(layer, "room.o")[cid][:2] == ("u1", {"n": "changed"})
        client.hdel(pe, conn_id(f"{owner}m2"))  # an old removal (the counts are its business)
        client.hincrby(pm, "v", 1)
        got = _read(layer, "room.o")
        assert set(got) == {conn_id(f"{owner}m0"), cid} and got[cid][:2] == ("u1", {"n": "changed"})
        middle = _calls(client)
        assert _delta(before, middle, "hgetall") == 2 and _delta(before, middle, "hvals") == 0
        assert client.hlen(pf) == 3  # not mended by a read (reads write nothing)
        assert layer.presence_refresh(owner, ["room.o"]) == [True]
        assert client.hlen(pf) == 2
        assert _read(layer, "room.o") == got
        after = _calls(client)
        assert _delta(middle, after, "hvals") == 1
    finally:
        client.close()


def test_an_unkeyed_layer_refuses_encrypted_entries_and_a_keyed_one_clear_ones(redis_server, made):
    """A reader whose keys do not match the entries' gets the error, not entries made of
    fragments it cannot read."""
    keyed = made(redis_server.url, prefix="prx", symmetric_encryption_keys=["k"])
    plain = made(redis_server.url, prefix="prx")
    keyed.group_add("room.x", new_process_prefix("sidecar") + "a", presence={"user": "u"})
    assert len(keyed.group_presence("room.x")) == 1
    with pytest.raises(exc.ChannelsError, match="symmetric_encryption_keys this layer lacks"):
        plain.group_presence("room.x")
    assert len(keyed.group_presence("room.x")) == 1
    plain.group_add("room.y", new_process_prefix("sidecar") + "a", presence={"user": "u"})
    assert len(plain.group_presence("room.y")) == 1
    with pytest.raises(exc.ChannelsError, match="could not be decoded"):
        keyed.group_presence("room.y")
