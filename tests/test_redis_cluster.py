"""The Redis layer on a Redis Cluster (``redis+cluster://``, or ``redis://`` to one node), on a real
Cluster of three primaries with a replica each.

The contract suite and asgiref's conformance suite run on it too (backend ``cluster``);
failovers under traffic are in ``test_redis_failover.py``, the static slot checks in
``test_slot_check.py``. Here: the URLs, a live slot migration under traffic (``ASK``,
``TRYAGAIN``, ``MOVED`` and sharded pub/sub subscriptions ended by the server, all handled
inside the layer), flush and statistics on every primary, a group spread over every
primary, a Cluster in a hash ring with a standalone server, and what a Cluster older than
7.0 gets.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import redis

from redis_topology import RedisClusterSet
from servers import find_redis6_server
from wsgi_channels import exceptions as exc
from wsgi_channels.layers import from_url
from wsgi_channels.layers.redis.slots import tag_table

pytestmark = pytest.mark.timeout(120)


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsgi_channels", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


RECORD_SUFFIX = ":cluster_tags:{cluster_tags}"


def primaries_keys(cluster) -> int:
    """Keys on the primaries, but the records of the buckets' tags (which flush keeps)."""
    return sum(1 for n in cluster.primaries() for k in n.client().scan_iter(count=1000)
               if not k.endswith(RECORD_SUFFIX))


def test_cluster_url_through_from_url_the_layer_flag_and_the_environment(redis_cluster):
    url = redis_cluster.url
    layer = from_url(url)
    layer.flush()
    assert cli("send", "cluster.cli", '{"via": "flag"}', "--layer", url).returncode == 0
    assert cli("send", "cluster.cli", '{"via": "env"}', env={"WSGI_CHANNELS_LAYER": url}).returncode == 0
    one_node = f"redis://127.0.0.1:{redis_cluster.nodes[-1].port}/0"  # detected as a Cluster node
    assert cli("send", "cluster.cli", '{"via": "one node"}', "--layer", one_node).returncode == 0
    assert [layer.receive(["cluster.cli"])[1]["via"] for _ in range(3)] == ["flag", "env", "one node"]
    done = cli("stats", "--layer", one_node)
    assert done.returncode == 0 and json.loads(done.stdout)["global"]["messages_pending"] == 0
    # The queue's key carries its bucket's tag (one bucket per primary by default), and lives on the
    # primary that serves that slot.
    bucket = layer._shard_of("cluster.cli")
    assert bucket.key("q", "cluster.cli").startswith(b"wsgi_channels:q:{") and len(layer._shards) == 3
    assert redis_cluster.primary_for_key(bucket.key("q", "cluster.cli")).port == bucket.node().address[1]
    layer.close()


def test_a_cluster_has_only_database_0(redis_cluster):
    node = redis_cluster.nodes[0]
    with pytest.raises(exc.ConfigurationError, match="has only database 0, and this URL asks for database 2"):
        from_url(f"redis+cluster://127.0.0.1:{node.port}/2")
    layer = from_url(f"redis://127.0.0.1:{node.port}/2")  # only the server can tell it is a Cluster node
    with pytest.raises(exc.ConfigurationError, match="is a Redis Cluster node, and a Redis Cluster has only database 0"):
        layer.send("db.two", {})
    layer.close()


def test_a_standalone_server_in_a_cluster_url_is_refused(redis_server):
    layer = from_url(f"redis+cluster://127.0.0.1:{redis_server.port}/")
    with pytest.raises(exc.ConfigurationError, match="not a Redis Cluster node"):
        layer.send("not.a.cluster", {})
    layer.close()


def test_a_cluster_older_than_7_is_refused_with_what_it_can_do(tmp_path):
    """Sharded pub/sub, BLMPOP and scripts that declare their slot need Redis 7.0 on a Cluster; an older
    Cluster (here Redis 6.0, the binary the redis6 backend runs) is refused at the first call, naming
    what works with it."""
    old = RedisClusterSet(primaries=3, replicas=0, binary=find_redis6_server()).start()
    try:
        layer = from_url(old.url)
        with pytest.raises(exc.ConfigurationError, match=r"runs Redis 6\.0.*needs Redis 7\.0.*behind Sentinel"):
            layer.send("too.old", {})
        layer.close()
    finally:
        old.stop()


def test_cluster_tags_option(redis_cluster):
    layer = from_url(redis_cluster.url + "?cluster_tags=5&prefix=tags5")  # a prefix of its own: its own record
    layer.flush()
    tags = {layer._shard_of(f"tags.{i}").tag for i in range(200)}
    assert tags == set(tag_table(5))
    layer.send("tags.1", {"n": 1})
    assert layer.receive(["tags.1"]) == ("tags.1", {"n": 1})
    layer.close()
    with pytest.raises(exc.ConfigurationError, match="hash tags must be an integer from 1 to 16384"):
        from_url(redis_cluster.url + "?cluster_tags=0")


def test_a_group_over_every_primary_flush_and_statistics(redis_cluster):
    layer = from_url(redis_cluster.url)
    layer.flush()
    members = [f"spread.{i}" for i in range(60)] + [f"spread{i}.x!c" for i in range(40)]
    owners = {redis_cluster.primary_for_key(layer._shard_of(m.split("!")[0] + ("!" if "!" in m else ""))
                                            .key("q", m)).port for m in members}
    assert len(owners) == 3, "the members' buckets are spread over every primary"
    for m in members:
        layer.group_add("spread", m)
    layer.send_group("spread", {"n": 1})
    assert sorted(layer.group_channels("spread")) == sorted(members)
    assert layer.global_statistics()["messages_pending"] == 100
    got = [layer.receive([m if "!" not in m else m[:m.index("!") + 1]]) for m in members]
    assert all(message == {"n": 1} for _, message in got) and {c for c, _ in got} == set(members)
    assert primaries_keys(redis_cluster) > 0
    layer.flush()
    assert primaries_keys(redis_cluster) == 0  # SCAN + UNLINK reached every primary
    assert redis_cluster.primary_for_key(b"{cluster_tags}").client().exists("wsgi_channels" + RECORD_SUFFIX)
    layer.close()


def test_a_cluster_and_a_standalone_server_in_one_ring(redis_cluster, redis_server):
    layer = from_url(f"{redis_cluster.url},{redis_server.url}")
    layer.flush()
    names = [f"ring.{i}" for i in range(40)]
    kinds = {type(layer._shard_of(n)).__name__ for n in names}
    assert kinds == {"ClusterBucket", "Shard"}
    for n in names:
        layer.group_add("ring", n)
    layer.send_group("ring", {"r": 1})
    assert all(layer.receive([n]) == (n, {"r": 1}) for n in names)
    assert layer.receive(names, block=True, timeout=0.2) == (None, None)
    layer.send(names[-1], {"r": 2})
    assert layer.receive(names, block=True, timeout=2) == (names[-1], {"r": 2})
    layer.flush()
    layer.close()


def migrate_slot(cluster, slot: int, target) -> None:
    """Move ``slot`` to ``target`` as ``redis-cli --cluster reshard`` does: IMPORTING/MIGRATING, the keys
    a few at a time (MIGRATE), then the new owner announced to every node."""
    source = cluster.primary_for_slot(slot)
    target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
    source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    while True:
        keys = source.call("CLUSTER", "GETKEYSINSLOT", slot, 2)
        if not keys:
            break
        source.call("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        time.sleep(0.05)  # traffic meets the slot half moved (ASK, TRYAGAIN)
    for node in cluster.running():
        try:
            node.call("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        except redis.ResponseError:
            pass  # a replica refuses: it learns from its primary


def test_a_slot_migration_under_traffic(fresh_redis_cluster):
    cluster = fresh_redis_cluster
    layer = from_url(cluster.url)
    reader = from_url(cluster.url)
    layer.flush()
    bucket = layer._shard_of("mig.a")
    channels = [n for n in (f"mig.{c}" for c in "abcdefghijklmnopqrstuvwxyz") if layer._shard_of(n) is bucket][:3]
    prefix = next(p for p in (f"migp{i}.x!" for i in range(500)) if layer._shard_of(p) is bucket)
    assert len(channels) == 3
    layer.group_add("mig", prefix + "c1")
    for c in channels:
        layer.group_add("mig", c)
    source = cluster.primary_for_slot(bucket.slot)
    target = next(p for p in cluster.primaries() if p is not source)
    errors: list = []
    sent: list = []
    stop = threading.Event()

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                layer.send(channels[n % 3], {"n": n})
                layer.send_group("mig", {"g": n})
                sent.append(n)
            except Exception as e:  # every kind recorded: none may occur
                errors.append(e)
            time.sleep(0.005)

    got: dict = {c: [] for c in channels + [prefix]}

    def receive() -> None:
        while not stop.is_set() or any(reader.channel_statistics(c)["messages_pending"] for c in channels):
            try:
                for channel, message in reader.receive_batch(channels + [prefix], 50, block=True, timeout=0.5):
                    got[channel if "!" not in channel else prefix].append(message)
            except Exception as e:
                errors.append(e)

    threads = [threading.Thread(target=traffic), threading.Thread(target=receive)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    migrate_slot(cluster, bucket.slot, target)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(30)
    assert errors == [], [str(e) for e in errors[:3]]
    assert cluster.primary_for_slot(bucket.slot) is target
    assert bucket.node().address == ("127.0.0.1", target.port) and layer.topology_epoch > 0
    # Every send and group send arrived once, in order per channel.
    plain = [m["n"] for c in channels for m in got[c] if "n" in m]
    assert sorted(plain) == sorted(sent)
    for c in channels:
        ns = [m["n"] for m in got[c] if "n" in m]
        assert ns == sorted(ns)
        assert [m["g"] for m in got[c] if "g" in m] == sent
    assert [m["g"] for m in got[prefix]] == sent
    # A receive blocked on several buckets (doorbells) is woken by a push after the move.
    other = next(n for n in (f"mig.other{i}" for i in range(100)) if layer._shard_of(n) is not bucket)
    woke: list = []
    waiter = threading.Thread(target=lambda: woke.append(reader.receive([channels[0], other], block=True, timeout=5)))
    waiter.start()
    time.sleep(0.3)
    started = time.monotonic()
    layer.send(channels[0], {"after": True})
    waiter.join(10)
    assert woke == [(channels[0], {"after": True})] and time.monotonic() - started < 1.5
    layer.close()
    reader.close()


def restricted_user(nodes, name: str = "app", password: str = "app-secret") -> None:
    """An application user without @admin and @dangerous (no INFO, ROLE, CLIENT UNBLOCK, CONFIG), as
    managed services hand out; ACLs are per node."""
    for node in nodes:
        node.call("ACL", "SETUSER", name, "reset", "on", f">{password}", "~*", "&*", "+@all", "-@admin",
                  "-@dangerous")


def test_a_user_without_admin_commands_still_gets_a_working_cluster(redis_cluster):
    restricted_user(redis_cluster.running())
    node = redis_cluster.nodes[0]
    with node.client() as c:
        with pytest.raises(redis.ResponseError, match="no permissions"):
            c.execute_command("AUTH", "app", "app-secret") and c.execute_command("INFO", "server")
    layer = from_url(f"redis://app:app-secret@127.0.0.1:{node.port}/0")  # detected with CLUSTER INFO
    layer.flush()
    assert type(layer._shard_of("acl.x")).__name__ == "ClusterBucket"
    for i in range(30):
        layer.group_add("acl", f"acl.{i}")
    layer.send_group("acl", {"n": 1})
    assert all(layer.receive([f"acl.{i}"]) == (f"acl.{i}", {"n": 1}) for i in range(30))
    layer.flush()
    layer.close()
