"""What history costs on Redis, and the rules its cheaper form keeps (issue 18, the send target).

A history script takes the server's ``run_id`` from its connection (learnt once per connection)
instead of asking ``INFO`` at every call, and the epoch rule stays exactly as strong: a restart
still starts a new stream, and a connection's wrong idea of the run is settled by the server.
"""
from __future__ import annotations

import time

import pytest
import redis


pytestmark = pytest.mark.timeout(120)

Q = "group_history=chat.*:size=10:ttl=300"


def _info_calls(port: int) -> int:
    """``INFO`` commands the server ran so far (in scripts too; this one is counted after it answers)."""
    client = redis.Redis(port=port)
    try:
        return int(client.info("commandstats").get("cmdstat_info", {}).get("calls", 0))
    finally:
        client.close()


def _links(layer):
    return list(layer._shards[0]._free)


def test_history_asks_info_once_per_connection(fresh_redis, made):
    """Sends, reads, positions and joins of a history group learn the run_id once per connection
    (one ``INFO`` to learn it, one in the script that went with it), not at every call; each
    script reads the replication id (``INFO replication``: it changes while a connection lives,
    when its server is demoted and promoted again), which commandstats counts as an ``INFO``."""
    layer = made(fresh_redis.url)
    before = _info_calls(fresh_redis.port)
    for i in range(30):
        layer.send_group("chat.info", {"text": str(i)})
        layer.group_position("chat.info")
        layer.group_history("chat.info", i)
        layer.group_add("chat.info", f"sidecar.cost!c{i}")
    assert len(_links(layer)) == 1
    replication = 4 * 30  # one INFO replication per history script
    assert _info_calls(fresh_redis.port) - before - 1 - replication <= 3  # the first stream, made on a meta-less key, asks too
    assert _links(layer)[0].run_id_arg.endswith(redis.Redis(port=fresh_redis.port).info("server")["run_id"]
                                                .encode() + b"\r\n")


def test_a_restart_starts_a_new_stream_with_the_run_id_cached(fresh_redis, made):
    """The connection that cached the run_id dies with the server; the next one learns the new run."""
    layer = made(fresh_redis.url, history_trust_persistence=True)
    for i in range(3):
        layer.send_group("chat.restart", {"text": str(i)})
    before = layer.group_position("chat.restart")
    old = _links(layer)[0].run_id_arg
    assert old is not None and len(old) > 10
    fresh_redis.restart()  # no persistence: an empty restart (even trusting persistence, a new stream)
    layer.send_group("chat.restart", {"text": "after"})
    after = layer.group_position("chat.restart")
    assert after.epoch != before.epoch and after.offset == 1
    assert _links(layer)[0].run_id_arg not in (None, old)
    assert layer.group_history("chat.restart", 0).messages == [(1, {"text": "after"})]


def test_a_wrong_run_id_on_a_connection_is_settled_by_the_server(fresh_redis, made):
    """A connection whose run_id is not the meta's makes the script ask the server (``INFO``): the
    meta's run is the server's, so the stream goes on; the run_id never decides alone against it."""
    layer = made(fresh_redis.url)
    layer.send_group("chat.wrong", {"text": "a"})
    before = layer.group_position("chat.wrong")
    for link in _links(layer):
        link.run_id_arg = b"$40\r\n" + b"0" * 40 + b"\r\n"
    layer.send_group("chat.wrong", {"text": "b"})
    assert layer.group_position("chat.wrong") == (before.epoch, 2)
    assert [m["text"] for _, m in layer.group_history("chat.wrong", 0).messages] == ["a", "b"]
    # a stream made by such a connection is owned by the server's real run
    layer.send_group("chat.wrong2", {"text": "a"})
    for link in _links(layer):
        link.run_id_arg = None  # learnt again: the real one
    made_by = layer.group_position("chat.wrong2")
    layer.send_group("chat.wrong2", {"text": "b"})
    assert layer.group_position("chat.wrong2") == (made_by.epoch, 2)


def _meta(port: int, group: str) -> tuple[bytes, bytes]:
    client = redis.Redis(port=port)
    try:
        key = f"wsgi_channels:hm:{{{group}}}".encode()
        kind = client.type(key)
        return kind, client.get(key) if kind == b"string" else b""
    finally:
        client.close()


def _as_old_hash(port: int, group: str) -> None:
    """Rewrite ``group``'s meta as the HASH an older version kept (fields e t r m)."""
    client = redis.Redis(port=port)
    try:
        key = f"wsgi_channels:hm:{{{group}}}".encode()
        epoch, top, run, meta_ttl = client.get(key).split(b" ")[:4]
        client.delete(key)
        client.hset(key, mapping={"e": epoch, "t": top, "r": run, "m": meta_ttl})
        client.pexpire(key, int(meta_ttl))
    finally:
        client.close()


def test_the_meta_is_one_string(fresh_redis, made):
    """``epoch top run_id/replid meta_ttl size``: one GET reads it, one SET ... PX writes it."""
    layer = made(fresh_redis.url)
    for i in range(3):
        layer.send_group("chat.meta", {"text": str(i)})
    epoch, top = layer.group_position("chat.meta")
    kind, value = _meta(fresh_redis.port, "chat.meta")
    info = redis.Redis(port=fresh_redis.port).info()
    identity = f"{info['run_id']}/{info['master_replid']}"  # the server's process and its data's history
    assert kind == b"string"
    assert value.split(b" ") == [epoch.encode(), b"3", identity.encode(), b"86400000", b"10"]
    assert 86_000_000 < redis.Redis(port=fresh_redis.port).pttl(b"wsgi_channels:hm:{chat.meta}") <= 86_400_000


@pytest.mark.parametrize("first", ["send", "position", "history", "join"])
def test_a_meta_left_as_a_hash_by_an_older_version_goes_on(fresh_redis, made, first):
    """A rolling upgrade: the stream an older version kept (its meta a HASH) is read as it is, same
    epoch and offsets, by any script that reads it first, and written back as the string."""
    layer = made(fresh_redis.url)
    for i in range(3):
        layer.send_group("chat.old", {"text": str(i)})
    before = layer.group_position("chat.old")
    _as_old_hash(fresh_redis.port, "chat.old")
    assert _meta(fresh_redis.port, "chat.old")[0] == b"hash"
    if first == "send":
        layer.send_group("chat.old", {"text": "3"})
    elif first == "position":
        assert layer.group_position("chat.old") == before
    elif first == "history":
        assert [o for o, _ in layer.group_history("chat.old", 0).messages] == [1, 2, 3]
    else:
        layer.group_add("chat.old", "sidecar.upgrade!c1")
    assert _meta(fresh_redis.port, "chat.old")[0] == b"string"
    if first != "send":
        layer.send_group("chat.old", {"text": "3"})
    assert layer.group_position("chat.old") == (before.epoch, 4)
    assert [m["text"] for _, m in layer.group_history("chat.old", 0).messages] == ["0", "1", "2", "3"]


def test_a_hash_meta_of_another_run_starts_a_new_stream(fresh_redis, made):
    """The epoch rule reads the old HASH's run_id as any meta's: another server run, a new stream."""
    layer = made(fresh_redis.url)
    layer.send_group("chat.oldrun", {"text": "x"})
    before = layer.group_position("chat.oldrun")
    _as_old_hash(fresh_redis.port, "chat.oldrun")
    redis.Redis(port=fresh_redis.port).hset(b"wsgi_channels:hm:{chat.oldrun}", "r", "f" * 40)
    after = layer.group_position("chat.oldrun")
    assert after.epoch != before.epoch and after.offset == 0
    assert layer.group_history("chat.oldrun", 0).messages == []


def _kept(port: int, group: str) -> int:
    client = redis.Redis(port=port)
    try:
        return client.llen(f"wsgi_channels:h:{{{group}}}".encode())
    finally:
        client.close()


def test_the_stream_is_trimmed_in_batches_and_reads_see_the_last_size(fresh_redis, made):
    """Trimmed to size (10) at every 16th offset: up to size + 15 kept between trims, never more than
    size read, and the position and offsets as before."""
    from wsgi_channels.layers.redis.feature_scripts import TRIM_EVERY

    assert TRIM_EVERY == 16
    layer = made(fresh_redis.url)
    for i in range(1, 26):
        layer.send_group("chat.trim", {"text": str(i)})
        assert _kept(fresh_redis.port, "chat.trim") == (i if i < 16 else 10 + i - 16)
        page = layer.group_history("chat.trim", 0, limit=300)
        assert [o for o, _ in page.messages] == list(range(max(1, i - 9), i + 1)) and page.top == i
    assert [o for o, _ in layer.group_history("chat.trim", 0, limit=3).messages] == [16, 17, 18]
    assert [o for o, _ in layer.group_history("chat.trim", 20).messages] == [21, 22, 23, 24, 25]
    assert [m["text"] for _, m in layer.group_history("chat.trim", 14).messages] == [str(i) for i in range(16, 26)]
    for i in range(500):
        layer.send_group("chat.trim", {"text": "more"})
        assert _kept(fresh_redis.port, "chat.trim") <= 10 + TRIM_EVERY - 1


def test_aged_messages_are_trimmed_in_batches_and_never_read(fresh_redis, made):
    """Aged messages go at the next 16th offset (or the next read); a read never returns them."""
    layer = made(fresh_redis.url + "?group_history=brief.*:size=100:ttl=2")
    for i in range(1, 6):
        layer.send_group("brief.age", {"text": str(i)})
    time.sleep(1.2)
    for i in range(6, 11):
        layer.send_group("brief.age", {"text": str(i)})
    time.sleep(1.2)  # 1-5 aged; 6-10 not (the list lives 2 s after the latest append)
    for i in range(11, 16):
        layer.send_group("brief.age", {"text": str(i)})
    assert _kept(fresh_redis.port, "brief.age") == 15
    layer.send_group("brief.age", {"text": "16"})
    assert _kept(fresh_redis.port, "brief.age") == 11
    assert [o for o, _ in layer.group_history("brief.age", 0).messages] == list(range(6, 17))
    time.sleep(1.0)  # 6-10 aged: a read skips (and drops) them before the next trim
    assert [o for o, _ in layer.group_history("brief.age", 3).messages] == list(range(11, 17))


@pytest.fixture(params=["redis_server", "redis6_server"])
def any_redis(request):
    return request.getfixturevalue(request.param)


def test_the_stamp_made_by_the_script_is_byte_for_byte_the_clients(any_redis):
    """The fan-out stamps a sidecar's copy in Lua (``STAMP_LUA``) exactly as ``with_keys`` does in
    Python: every map header size, epoch and offset form (Redis 7 and 6.0)."""
    from wsgi_channels.layers.features import STAMP_KEY
    from wsgi_channels.layers.redis.feature_scripts import STAMP_LUA
    from wsgi_channels.serialization import encode, with_keys

    client = redis.Redis(port=any_redis.port)
    script = client.register_script(STAMP_LUA + "\nreturn with_stamp(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]))")
    bodies = [encode({f"k{i}": i for i in range(n)}) for n in (0, 1, 14, 15, 16, 300, 65534, 65535, 65536)]
    cases = [(body, group, "AbC-_0xy", offset) for body in bodies for group, offset in
             [("g", 1), ("chat." + "x" * 26, 127), ("chat." + "y" * 27, 128), ("z" * 100, 255)]]
    cases += [(bodies[1], "chat.a", epoch, offset) for epoch in ("e", "AbC-_0xy", "x" * 16)
              for offset in (256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 3)]
    for body, group, epoch, offset in cases:
        expected = with_keys(body, {STAMP_KEY: [group, epoch, offset]})
        tail = with_keys(b"\x80", {STAMP_KEY: [group, "", 0]})[1:-2]
        assert script(args=[body, tail, epoch, offset]) == expected, (len(body), group, epoch, offset)
    client.close()


def test_a_sidecars_copy_is_the_stamped_message_byte_for_byte(fresh_redis, made):
    from wsgi_channels.layers.features import STAMP_KEY
    from wsgi_channels.layers.redis import entries
    from wsgi_channels.serialization import encode, with_keys

    layer = made(fresh_redis.url)
    prefix = "sidecar.bytes!"
    layer.group_add("chat.bytes", prefix + "a")
    layer.group_add("chat.bytes", "plain.bytes")
    client = redis.Redis(port=fresh_redis.port)
    client.delete(f"wsgi_channels:q:{{{prefix}}}".encode())  # the join notice
    messages = [{"text": "x"}, {f"k{i}": [i, b"\x00", None] for i in range(15)}, {"a": {"b": 1.5}}]
    for message in messages:
        layer.send_group("chat.bytes", message)
    epoch = layer.group_position("chat.bytes").epoch
    queued = client.lrange(f"wsgi_channels:q:{{{prefix}}}".encode(), 0, -1)
    plain = client.lrange(b"wsgi_channels:q:{plain.bytes}", 0, -1)
    for offset, (message, entry, other) in enumerate(zip(messages, queued, plain), 1):
        kind, names, body = entries.parse(entry)
        assert bytes(body) == with_keys(encode(message), {STAMP_KEY: ["chat.bytes", epoch, offset]})
        assert bytes(entries.parse(other)[2]) == encode(message)  # a plain channel's copy is not stamped
    client.close()
