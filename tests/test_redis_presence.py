"""The presence read on Redis: one script, one msgpack answer, kept for the next reads.

``group_presence`` is one script per call (``PRESENCE_LIST``) that answers with the whole map
in one msgpack string, which the script keeps (``P:pc:{group}``) until the group's entries
change: these tests hold it to exactly what the entries are after every kind of change, on
every kind of value, and check that the kept answer stays on the primary (it is neither
replicated nor written to the append-only file). The shared rules are in
``test_layer_presence.py``; encryption at rest in ``test_redis_history.py``.
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


@pytest.fixture
def made():
    layers = []

    def make(url, **options):
        layer = from_url(url + ("&" if "?" in url else "?") + Q, **options)
        layers.append(layer)
        return layer

    yield make
    for layer in layers:
        try:
            layer.flush()
        finally:
            layer.close()


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
    and from another (another process's): every read is the entries as they are, never an older
    answer kept by the script; values of every kind survive, ``since`` exactly."""
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
        for reader in (layer, other, layer):  # the second read of each reader may be the kept answer
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


def test_a_thousand_members_in_one_script_call(redis_server, made):
    """A read of 1,000 members is one command (one round trip); the first builds the answer, the
    next ones return it while the entries are unchanged (``INFO commandstats``: the script runs
    no ``HGETALL`` then)."""
    layer = made(redis_server.url, prefix="prk")
    layer.flush()
    owners = [new_process_prefix("sidecar") for _ in range(3)]
    for j, owner in enumerate(owners):
        layer.presence_reassert(owner, "room.k", {f"o{j}-{i}": {"user": f"u{i}", "info": {"name": f"N{i}"}}
                                                  for i in range(334 if j == 0 else 333)})
    client = redis.Redis.from_url(redis_server.url)
    try:
        def calls():
            stats = client.info("commandstats")
            return {k: v["calls"] for k, v in stats.items()}

        before = calls()
        assert len(layer.group_presence("room.k")) == 1000
        middle = calls()
        for _ in range(5):
            assert len(layer.group_presence("room.k")) == 1000
        after = calls()
        scripts = [k for k in after if k.split("_", 1)[1].split("|")[0] in ("eval", "evalsha")]
        assert sum(middle[k] - before.get(k, 0) for k in scripts) == 1
        assert sum(after[k] - middle.get(k, 0) for k in scripts) == 5
        assert middle.get("cmdstat_hgetall", 0) - before.get("cmdstat_hgetall", 0) == 1
        assert after.get("cmdstat_hgetall", 0) == middle.get("cmdstat_hgetall", 0)
    finally:
        client.close()


def test_the_kept_answer_stays_on_the_primary(redis_sentinel, made):
    """The read keeps its answer on the primary only: the replicas never get it (the script does
    not propagate it, so the append-only file does not get it either: each change of a group
    would otherwise copy the whole list to every replica and to the file)."""
    layer = made(redis_sentinel.url, prefix="prr")
    owner = new_process_prefix("sidecar")
    layer.group_add("room.r", owner + "a", presence={"user": "u", "info": {"secret": "kept"}})
    assert set(layer.group_presence("room.r")) == {conn_id(owner + "a")}
    primary = redis_sentinel.primary()
    replicas = redis_sentinel.replicas()
    with primary.client() as c:
        assert c.keys("prr:pc:*"), "the read keeps its answer on the primary"
        offset = c.info("replication")["master_repl_offset"]
    for replica in replicas:
        deadline = time.monotonic() + 10
        with replica.client() as c:
            while c.info("replication").get("slave_repl_offset", 0) < offset and time.monotonic() < deadline:
                time.sleep(0.05)
            assert c.keys("prr:pe:*"), "the entries are replicated"
            assert c.keys("prr:pc:*") == []


def test_an_unkeyed_layer_still_refuses_encrypted_entries_after_a_keyed_read(redis_server, made):
    """The kept answer is per kind of reader: a layer without the keys reading after one with them
    gets the error, not the keyed layer's answer."""
    keyed = made(redis_server.url, prefix="prx", symmetric_encryption_keys=["k"])
    plain = made(redis_server.url, prefix="prx")
    keyed.group_add("room.x", new_process_prefix("sidecar") + "a", presence={"user": "u"})
    assert len(keyed.group_presence("room.x")) == 1
    with pytest.raises(exc.ChannelsError, match="symmetric_encryption_keys this layer lacks"):
        plain.group_presence("room.x")
    assert len(keyed.group_presence("room.x")) == 1


def test_a_read_at_maxmemory_answers_without_keeping_it(fresh_redis, made):
    """At ``maxmemory`` with ``noeviction`` the server refuses writes: the read still answers (it
    keeps nothing then), and keeps its answer again once there is room."""
    layer = made(fresh_redis.url, prefix="prm")
    owner = new_process_prefix("sidecar")
    layer.group_add("room.m", owner + "a", presence={"user": "u", "info": {"n": 1}})
    client = redis.Redis.from_url(fresh_redis.url)
    try:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1")
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
            client.set("prm:probe", "x")
        assert _read(layer, "room.m")[conn_id(owner + "a")][:2] == ("u", {"n": 1})
        assert client.keys("prm:pc:*") == []
        client.config_set("maxmemory", "0")
        assert _read(layer, "room.m")[conn_id(owner + "a")][:2] == ("u", {"n": 1})
        assert client.keys("prm:pc:*")
    finally:
        client.config_set("maxmemory", "0")
        client.close()
