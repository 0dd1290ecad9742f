"""Group history and presence on Redis beyond the shared suites: the epoch follows the server.

The conformance suites (``test_layer_history.py``, ``test_layer_presence.py``,
``test_history_epoch.py``) run on ``redis``, ``redis3``, ``sentinel`` and ``cluster`` through
``feature_backends``; here are the rules only a Redis has: a restart (empty, or from its
append-only file, which may miss the last writes) and a failover (Sentinel, Cluster) start new streams, a Redis
down surfaces as ``LayerUnavailable``, the history is encrypted like the queues, and the sidecars'
copies arrive in offset order whatever the publishers (one Redis, shards, encrypted, Cluster).
"""
from __future__ import annotations

import time

import pytest
import redis

from servers import RedisServer
from wsgi_channels import exceptions as exc
from wsgi_channels.layers import from_url
from wsgi_channels.layers.features import PRESENCE_KEY
from wsgi_channels.presence import conn_id
from wsgi_channels.layers.names import new_process_prefix
from wsgi_channels.layers.features import NOTICE_KEY, STAMP_KEY

pytestmark = pytest.mark.timeout(120)

Q = "group_history=chat.*:size=10:ttl=300&group_presence=room.*:ttl=5"


def _position_after_restart(layer, group):
    try:
        return layer.group_position(group)
    except exc.LayerUnavailable:  # a pooled connection that died with the server: the next call reconnects
        return layer.group_position(group)


def test_a_restart_from_the_append_only_file_starts_a_new_stream(made):
    """The server kept the messages (appendfsync always), yet it is another server process: what an
    AOF restart may have lost is not knowable, so the stream is a new one."""
    server = RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]).start()
    try:
        layer = made(server.url)
        for i in range(3):
            layer.send_group("chat.aof", {"text": str(i)})
        before = layer.group_position("chat.aof")
        assert before.offset == 3
        server.restart(sig=15)  # SIGTERM: the data is on disk
        client = redis.Redis(port=server.port)
        assert client.exists(b"wsgi_channels:h:{chat.aof}")  # the old stream came back from the file
        client.close()
        after = _position_after_restart(layer, "chat.aof")
        assert after.epoch != before.epoch and after.offset == 0
        assert layer.group_history("chat.aof", 0).messages == []
        layer.send_group("chat.aof", {"text": "new"})
        assert layer.group_history("chat.aof", 0) == (after.epoch, 1, [(1, {"text": "new"})])
    finally:
        server.stop()


@pytest.mark.parametrize("sig", [15, 9])
def test_trusting_persistence_keeps_the_stream_across_aof_restarts(made, sig):
    """``history_trust_persistence``: with ``appendfsync always`` every acknowledged append is on disk,
    so a restart (SIGTERM, or SIGKILL) that kept the stream keeps its epoch; FLUSHALL still starts a
    new one, and so does a layer without the option."""
    server = RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]).start()
    try:
        layer = made(server.url + "?history_trust_persistence=1")
        for i in range(3):
            layer.send_group("chat.trust", {"text": str(i)})
        before = layer.group_position("chat.trust")
        server.restart(sig=sig)
        after = _position_after_restart(layer, "chat.trust")
        assert after == before and after.offset == 3
        assert [m["text"] for _, m in layer.group_history("chat.trust", 0).messages] == ["0", "1", "2"]
        layer.send_group("chat.trust", {"text": "3"})
        assert layer.group_position("chat.trust") == (before.epoch, 4)
        server.restart(sig=sig)  # again: the meta now names the previous restart's run
        assert _position_after_restart(layer, "chat.trust") == (before.epoch, 4)
        redis.Redis(port=server.port).flushall()
        flushed = layer.group_position("chat.trust")
        assert flushed.epoch != before.epoch and flushed.offset == 0
        layer.send_group("chat.trust", {"text": "x"})
        server.restart(sig=sig)
        untrusting = made(server.url)  # the default: another run of the server is another stream
        assert untrusting.group_position("chat.trust").epoch not in (before.epoch, flushed.epoch)
    finally:
        server.stop()


def test_trusting_persistence_still_changes_the_epoch_without_the_data(fresh_redis, made):
    """An empty restart (no persistence) and a server without its append-only file on never keep a stream."""
    layer = made(fresh_redis.url + "?history_trust_persistence=1")
    layer.send_group("chat.empty", {"text": "x"})
    first = layer.group_position("chat.empty")
    fresh_redis.restart()
    second = _position_after_restart(layer, "chat.empty")
    assert second.epoch != first.epoch and second.offset == 0
    rdb = RedisServer(extra_args=["--save", "3600 1"]).start()  # snapshots only: a restart may lose the tail
    try:
        layer = made(rdb.url + "?history_trust_persistence=1")
        layer.send_group("chat.rdb", {"text": "x"})
        before = layer.group_position("chat.rdb")
        redis.Redis(port=rdb.port).save()
        rdb.restart(sig=15)
        client = redis.Redis(port=rdb.port)
        assert client.exists(b"wsgi_channels:hm:{chat.rdb}")  # the meta came back from the snapshot
        client.close()
        after = _position_after_restart(layer, "chat.rdb")
        assert after.epoch != before.epoch and after.offset == 0
    finally:
        rdb.stop()


def test_trusting_persistence_still_changes_the_epoch_on_a_promoted_replica(made):
    """A replica promoted to primary (a failover behind one address) holds the stream's meta, copied by
    asynchronous replication that may have lost its tail: even trusting persistence, a new stream."""
    args = ["--appendonly", "yes", "--appendfsync", "always"]
    primary = RedisServer(extra_args=args).start()
    replica = RedisServer(extra_args=args + ["--replicaof", "127.0.0.1", str(primary.port)]).start()
    try:
        layer = made(primary.url + "?history_trust_persistence=1")
        for i in range(3):
            layer.send_group("chat.promo", {"text": str(i)})
        before = layer.group_position("chat.promo")
        client = redis.Redis(port=replica.port)
        deadline = time.monotonic() + 10
        while not client.exists(b"wsgi_channels:hm:{chat.promo}"):
            assert time.monotonic() < deadline, "the replica never got the stream"
            time.sleep(0.05)
        primary.kill()
        client.replicaof("NO", "ONE")
        client.close()
        promoted = made(replica.url + "?history_trust_persistence=1")
        after = promoted.group_position("chat.promo")
        assert after.epoch != before.epoch and after.offset == 0
    finally:
        replica.stop()
        primary.stop()


def _wait_replicated(replica: redis.Redis, key: bytes, expected: bytes | None = None) -> None:
    deadline = time.monotonic() + 15
    while True:
        info = replica.info("replication")
        value = replica.get(key) if info.get("master_link_status") == "up" else None
        if value is not None and (expected is None or value.startswith(expected)):
            return
        assert time.monotonic() < deadline, f"replication never caught up: {info}"
        time.sleep(0.05)


def test_a_primary_demoted_and_promoted_again_with_older_data_starts_a_new_stream(made):
    """The same server process (same run_id, same connections) becomes a replica of a server that
    missed its last messages, takes that older data, and is promoted again: the stream it holds
    now ends before offsets its clients saw, so it must be another epoch (its replication id
    changed), never the same epoch going on from an older offset."""
    first = RedisServer().start()
    second = RedisServer().start()
    a, b = redis.Redis(port=first.port), redis.Redis(port=second.port)
    meta = b"wsgi_channels:hm:{chat.twice}"
    try:
        b.replicaof("127.0.0.1", first.port)
        layer = made(first.url)
        for i in range(5):
            layer.send_group("chat.twice", {"text": str(i)})
        seen = layer.group_position("chat.twice")
        assert seen.offset == 5
        _wait_replicated(b, meta, f"{seen.epoch} 5 ".encode())
        b.replicaof("NO", "ONE")  # promoted with offsets 1-5
        for i in range(5, 7):
            layer.send_group("chat.twice", {"text": str(i)})  # 6 and 7, on the old primary only
        assert layer.group_position("chat.twice") == (seen.epoch, 7)
        a.replicaof("127.0.0.1", second.port)  # demoted: takes the promoted server's data (1-5)
        _wait_replicated(a, meta, f"{seen.epoch} 5 ".encode())
        a.replicaof("NO", "ONE")  # and promoted again; the layer's connection lived through it all
        after = layer.group_position("chat.twice")
        assert after.epoch != seen.epoch and after.offset == 0
        layer.send_group("chat.twice", {"text": "next"})
        epoch, top, messages = layer.group_history("chat.twice", 0)
        assert (epoch, top) == (after.epoch, 1) and [m["text"] for _, m in messages] == ["next"]
    finally:
        a.close()
        b.close()
        second.stop()
        first.stop()


def test_trusting_persistence_is_refused_where_failovers_are_expected():
    for url in ("redis+sentinel://127.0.0.1:1/mymaster?history_trust_persistence=1",
                "redis+cluster://127.0.0.1:1?history_trust_persistence=1"):
        with pytest.raises(exc.ConfigurationError, match="covers restarts of one Redis server"):
            from_url(url)
    with pytest.raises(exc.ConfigurationError, match="history_trust_persistence must be 1 or 0"):
        from_url("redis://127.0.0.1:1/0?history_trust_persistence=maybe")


def test_an_empty_restart_and_flushall_start_new_streams(fresh_redis, made):
    layer = made(fresh_redis.url)
    layer.send_group("chat.r", {"text": "x"})
    first = layer.group_position("chat.r")
    fresh_redis.restart()
    second = _position_after_restart(layer, "chat.r")
    assert second.epoch != first.epoch and second.offset == 0
    layer.send_group("chat.r", {"text": "y"})
    redis.Redis(port=fresh_redis.port).flushall()
    third = layer.group_position("chat.r")
    assert third.epoch not in (first.epoch, second.epoch) and third.offset == 0


def test_redis_down_is_layer_unavailable(fresh_redis, made):
    layer = made(fresh_redis.url)
    prefix = new_process_prefix("sidecar")
    layer.group_add("room.down", prefix + "a", presence={"user": "u"})
    fresh_redis.kill()
    calls = [lambda: layer.send_group("chat.down", {"text": "x"}), lambda: layer.group_position("chat.down"),
             lambda: layer.group_history("chat.down", 0), lambda: layer.group_presence("room.down"),
             lambda: layer.group_presence_stats("room.down"), lambda: layer.presence_refresh(prefix, ["room.down"]),
             lambda: layer.presence_sweep(), lambda: layer.presence_remove("room.down", prefix, ["x"]),
             lambda: layer.group_add("room.down", prefix + "b", presence={"user": "v"}),
             lambda: layer.group_discard("room.down", prefix + "a")]
    for call in calls:
        with pytest.raises(exc.LayerUnavailable):
            call()


def test_history_and_notices_are_encrypted_at_rest(fresh_redis, made):
    layer = made(fresh_redis.url, symmetric_encryption_keys=["secret"])
    prefix = new_process_prefix("sidecar")
    layer.group_add("chat.enc", prefix + "a")
    layer.send_group("chat.enc", {"text": "confidential"})
    client = redis.Redis(port=fresh_redis.port)
    stored = b"".join(client.lrange(b"wsgi_channels:h:{chat.enc}", 0, -1))
    queued = b"".join(client.lrange(f"wsgi_channels:q:{{{prefix}}}".encode(), 0, -1))
    client.close()
    assert b"confidential" not in stored and b"confidential" not in queued and b"chat.enc" not in queued
    epoch = layer.group_position("chat.enc").epoch
    assert layer.group_history("chat.enc", 0).messages == [(1, {"text": "confidential"})]
    got = [m for _, m in layer.receive_batch([prefix], 10)]
    # the notice is sealed whole (no script can complete it): the position read just before the join
    assert got[0] == {NOTICE_KEY: {"g": "chat.enc", "a": True, "h": [epoch, 0], "p": None}}
    assert got[1] == {"text": "confidential", STAMP_KEY: ["chat.enc", epoch, 1]}


def test_a_sentinel_failover_starts_a_new_stream(fresh_redis_sentinel, made):
    sentinels = fresh_redis_sentinel
    layer = made(sentinels.url)
    for i in range(3):
        layer.send_group("chat.fo", {"text": str(i)})
    before = layer.group_position("chat.fo")
    old = sentinels.primary()
    sentinels.failover()
    sentinels.wait_failover(old, timeout=10.0)
    deadline = time.monotonic() + 15
    while True:
        try:
            after = layer.group_position("chat.fo")
            if after.epoch != before.epoch:
                break
        except exc.LayerUnavailable:
            pass
        assert time.monotonic() < deadline, "the stream kept its epoch across a failover"
        time.sleep(0.1)
    # the replica had every message (a switch-over loses nothing), but it is another server: a new stream
    assert after.offset == 0


@pytest.mark.parametrize("kind", ["redis", "redis3", "encrypted", "cluster"])
def test_sidecars_get_the_stamped_copies_in_offset_order(kind, layer_url_for, made):
    """Concurrent publishers never make a sidecar see offset n + 1 before n: on one Redis the offset,
    the kept message and every copy are one script; on shards (or encrypted) each server queues the
    stamped copies in offset order."""
    import threading

    url = layer_url_for(kind if kind in ("redis3", "cluster") else "redis")
    options = {"symmetric_encryption_keys": ["secret"]} if kind == "encrypted" else {}
    reader = made(url, prefix=f"order{kind}", **options)
    prefixes = [new_process_prefix("sidecar") for _ in range(6)]
    for prefix in prefixes:
        reader.group_add("chat.order", prefix + "a")
    reader.group_add("chat.order", "plain.member")
    publishers = [made(url, prefix=f"order{kind}", **options) for _ in range(4)]
    barrier = threading.Barrier(4)

    def publish(layer, who):
        barrier.wait(10)
        for i in range(100):
            layer.send_group("chat.order", {"text": f"{who}:{i}"})

    threads = [threading.Thread(target=publish, args=(layer, w)) for w, layer in enumerate(publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        for prefix in prefixes:
            got = []
            while True:
                batch = reader.receive_batch([prefix], 1000)
                if not batch:
                    break
                got += [m for _, m in batch if STAMP_KEY in m]
            assert [m[STAMP_KEY][2] for m in got] == list(range(1, 401)), prefix
        history = reader.group_history("chat.order", 0, limit=400).messages
        assert [(o, m["text"]) for o, m in history] == [(m[STAMP_KEY][2], m["text"]) for m in got][-10:]
    finally:
        reader.flush()


def test_a_cluster_failover_starts_a_new_stream(fresh_redis_cluster, made):
    cluster = fresh_redis_cluster
    layer = made(cluster.url)
    for i in range(3):
        layer.send_group("chat.cfo", {"text": str(i)})
    before = layer.group_position("chat.cfo")
    primary = cluster.primary_for_key(layer._shard_of("chat.cfo").key("h", "chat.cfo"))
    replica = cluster.replicas_of(primary)[0]
    cluster.failover(replica)
    cluster.wait_failover(primary, timeout=15.0)
    deadline = time.monotonic() + 15
    while True:
        try:
            after = layer.group_position("chat.cfo")
            if after.epoch != before.epoch:
                break
        except exc.LayerUnavailable:
            pass
        assert time.monotonic() < deadline, "the stream kept its epoch across a failover"
        time.sleep(0.1)
    assert after.offset == 0
    layer.send_group("chat.cfo", {"text": "after"})
    assert layer.group_history("chat.cfo", 0) == (after.epoch, 1, [(1, {"text": "after"})])


def test_history_and_presence_with_wait_replicas(redis_sentinel, made):
    layer = made(redis_sentinel.url, wait_replicas=1, wait_replicas_timeout=1.0, prefix="waiting")
    prefix = new_process_prefix("sidecar")
    try:
        layer.group_add("chat.w", prefix + "a")
        layer.group_add("room.w", prefix + "a", presence={"user": "u"})
        layer.send_group("chat.w", {"text": "replicated"})
        epoch = layer.group_position("chat.w").epoch
        got = [m for _, m in layer.receive_batch([prefix], 10)]
        assert {"text": "replicated", STAMP_KEY: ["chat.w", epoch, 1]} in got
        assert layer.group_presence_stats("room.w") == {"clients": 1, "users": 1}
        assert layer.global_statistics()["unreplicated_count"] == 0
    finally:
        layer.flush()


def test_resume_and_live_order_through_a_real_sidecar_on_shards(tmp_path, redis_shards):
    """A real sidecar and worker on three Redis shards: a reconnect gets every missed message once,
    in order, then ``recovered``; four concurrent publishers never cause a ``skipped`` gap."""
    import threading

    from test_sidecar_resume import OPTIONS, Client, ResumeStack

    class RedisStack(ResumeStack):
        def __init__(self, tmp_path) -> None:
            super().__init__(tmp_path)
            self.url = ",".join(f"{s.url}?{OPTIONS}&prefix=resume3" for s in redis_shards)
            import stack
            self.env = stack.env_for(self.url, stack.ROOT / "tests")

    rs = RedisStack(tmp_path).start()
    try:
        rs.layer.flush()
        group = "chat.redis"
        c = Client(rs.ws(f"/ws/{group}?_wsc=1"))
        rs.wait_members(group, 1)
        rs.publish(group, "a1", "a2")
        got = c.messages(2)
        (_, epoch, last) = got[-1][0]
        c.close()
        rs.wait_members(group, 0)
        rs.publish(group, *[f"b{i}" for i in range(20)])
        c = Client(rs.ws(f"/ws/{group}?_wsc_r={group}:{epoch}:{last}"))
        got = c.messages(20)
        assert [v for k, v in got if k != "control"] == [f"b{i}" for i in range(20)]
        assert c.next()[1] == {"t": "recovered", "g": group, "e": epoch, "o": last + 20, "n": 20}
        rs.wait_members(group, 1)

        def publish(who):
            from wsgi_channels.layers import from_url
            layer = from_url(rs.url)
            for i in range(50):
                layer.send_group(group, {"text": f"p{who}:{i}"})
            layer.close()

        threads = [threading.Thread(target=publish, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        got = c.messages(200, timeout=10)
        assert [k for k, _ in got if k == "control"] == [], [v for k, v in got if k == "control"]
        assert [k[2] for k, _ in got] == list(range(last + 21, last + 221))
        c.close()
        # joined and left before any message: resumed from the join frame's position
        early = "chat.early3"
        rs.publish(early, "before")
        c = Client(rs.ws(f"/ws/{early}?_wsc=1"))
        joined = c.join_frame(early)
        assert joined == {"t": "j", "g": early, "e": rs.layer.group_position(early).epoch, "o": 1}
        c.close()
        rs.wait_members(early, 0)
        rs.publish(early, *[f"e{i}" for i in range(5)])
        c = Client(rs.ws(f"/ws/{early}?_wsc_r={early}:{joined['e']}:1"))
        assert [(k[2], v) for k, v in c.messages(5)] == [(2 + i, f"e{i}") for i in range(5)]
        assert c.next()[1] == {"t": "recovered", "g": early, "e": joined["e"], "o": 6, "n": 5}
        c.close()
    finally:
        rs.layer.flush()
        rs.stop()


def _stored_values(port: int, prefix: str) -> bytes:
    """Every key name and value a layer with key prefix ``prefix`` stored, raw, concatenated."""
    client = redis.Redis(port=port)
    out = []
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            kind = client.type(key)
            out.append(key)
            if kind == b"hash":
                for field, value in client.hgetall(key).items():
                    out += [field, value]
            elif kind == b"zset":
                out += client.zrange(key, 0, -1)
            elif kind == b"set":
                out += list(client.smembers(key))
            elif kind == b"list":
                out += client.lrange(key, 0, -1)
            elif kind == b"string":
                out.append(client.get(key) or b"")
    finally:
        client.close()
    return b"\n".join(out)


def test_presence_is_encrypted_at_rest(fresh_redis, made):
    """Users and infos are stored encrypted; the scripts count users and see updates by keyed tags
    and digests, so counts, updates, removals, sweeps and reassertions work as without keys."""
    keys = ["secret"]
    layer = made(fresh_redis.url, symmetric_encryption_keys=keys, prefix="encp")
    other = made(fresh_redis.url, symmetric_encryption_keys=keys, prefix="encp")  # another process's layer
    live, dead = new_process_prefix("sidecar"), new_process_prefix("sidecar")
    layer.group_add("room.enc", live + "a", presence={"user": "alice-secret", "info": {"note": "classified-a"}})
    other.group_add("room.enc", live + "b", presence={"user": "alice-secret", "info": {"note": "classified-b"}})
    layer.group_add("room.enc", dead + "c", presence={"user": "bob-secret", "info": None})
    stored = _stored_values(fresh_redis.port, "encp")
    for secret in (b"alice-secret", b"bob-secret", b"classified"):
        assert secret not in stored
    assert b"\xa5alice" not in stored and b"note" not in stored  # not even msgpack's view of them
    # an unkeyed digest of a guessed user is not stored either (the tags are keyed)
    plain = made(fresh_redis.url, prefix="encp")
    assert plain._entry("alice-secret", b"\x81\xa1i\xc0")[0] not in stored
    entries = other.group_presence("room.enc")
    assert {k: (v["user"], v["info"]) for k, v in entries.items()} == {
        conn_id(live + "a"): ("alice-secret", {"note": "classified-a"}),
        conn_id(live + "b"): ("alice-secret", {"note": "classified-b"}),
        conn_id(dead + "c"): ("bob-secret", None)}
    assert layer.group_presence_stats("room.enc") == {"clients": 3, "users": 2}
    drain_from = [live, dead]
    while layer.receive_batch(drain_from, 1000):
        pass
    # the same entry again (encrypted anew: another ciphertext) is no change; a new info is one
    other.group_add("room.enc", live + "a", presence={"user": "alice-secret", "info": {"note": "classified-a"}})
    assert [m for _, m in layer.receive_batch([live], 100) if PRESENCE_KEY in m] == []
    other.group_add("room.enc", live + "a", presence={"user": "carol-secret", "info": 2})
    got = [m[PRESENCE_KEY] for _, m in layer.receive_batch([live], 100) if PRESENCE_KEY in m]
    assert got[0]["ev"] == [["j", conn_id(live + "a"), "carol-secret", 2, int(entries[conn_id(live + "a")]["since"] * 1000)]]
    assert layer.group_presence_stats("room.enc") == {"clients": 3, "users": 3}
    assert b"carol-secret" not in _stored_values(fresh_redis.port, "encp")
    layer.group_discard("room.enc", live + "b")
    assert layer.group_presence_stats("room.enc") == {"clients": 2, "users": 2}
    # the dead owner's lease passes (ttl 5): filtered at once, then swept with one leave
    deadline = time.monotonic() + 5.5
    while time.monotonic() < deadline:
        layer.presence_refresh(live, ["room.enc"])
        time.sleep(0.5)
    assert set(layer.group_presence("room.enc")) == {conn_id(live + "a")}
    assert [(c.group, c.events) for c in other.presence_sweep()] == [("room.enc", [["l", conn_id(dead + "c")]])]
    assert layer.group_presence_stats("room.enc") == {"clients": 1, "users": 1}
    change = layer.presence_reassert(dead, "room.enc", {conn_id(dead + "c"): {"user": "bob-secret", "info": [1]}})
    assert change.events[0][:4] == ["j", conn_id(dead + "c"), "bob-secret", [1]]
    assert layer.group_presence_stats("room.enc") == {"clients": 2, "users": 2}
    assert b"bob-secret" not in _stored_values(fresh_redis.port, "encp")
    # a layer without the keys cannot read the entries
    with pytest.raises(exc.ChannelsError, match="symmetric_encryption_keys this layer lacks"):
        plain.group_presence("room.enc")
    layer.flush()
