"""The Redis Cluster and Sentinel test deployments themselves (:mod:`redis_topology`).

The layer's Cluster and Sentinel tests rely on these fixtures forming, failing over and
coming back as they say; these tests show it with plain redis-py clients, so a broken
fixture is found here rather than as a puzzling layer failure.
"""
from __future__ import annotations

import os
import socket
import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

import redis_topology
from redis_topology import RedisClusterSet, RedisSentinelSet, free_cluster_port, wait_until


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_cluster_ports_leave_room_for_the_bus():
    ports = [free_cluster_port() for _ in range(20)]
    assert len(set(ports)) == 20
    for port in ports:
        assert port <= 55535 and _bindable(port) and _bindable(port + 10000)


def test_missing_redis_cli_fails_loudly(monkeypatch):
    monkeypatch.setattr(redis_topology.shutil, "which", lambda name: None)
    monkeypatch.setattr(redis_topology.os.path, "exists", lambda path: False)
    with pytest.raises(RuntimeError, match="redis-cli is not installed.*redis-tools"):
        redis_topology.find_redis_cli()


# -- Cluster -------------------------------------------------------------------------------------


def test_cluster_forms_with_every_slot_covered(redis_cluster):
    view = redis_cluster.view()
    assert len(view.masters) == 3 and view.covered()
    assert sorted(view.replicas.values()) == sorted(view.masters)  # one replica per primary
    for node in redis_cluster.nodes:
        assert node.port <= 55535
        info = node.call("CLUSTER", "INFO")
        assert "cluster_state:ok" in info and "cluster_slots_assigned:16384" in info
        assert "cluster_known_nodes:6" in info and "cluster_size:3" in info
    assert redis_cluster.url.startswith("redis+cluster://127.0.0.1:")
    assert redis_cluster.url.count(",") == 5


def test_cluster_routes_a_key_to_its_slot_and_replicates_it(redis_cluster):
    key = "topology-test:{route}"
    owner = redis_cluster.primary_for_key(key)
    other = next(p for p in redis_cluster.primaries() if p is not owner)
    with other.client() as c, pytest.raises(redis.exceptions.MovedError) as moved:
        c.set(key, "x")
    assert str(moved.value) == f"{key_slot(key.encode())} 127.0.0.1:{owner.port}"
    with owner.client() as c:
        c.set(key, "v", px=60_000)
        assert c.execute_command("WAIT", 1, 2000) == 1
    replica = redis_cluster.replicas_of(owner)[0]
    with replica.client() as c:
        c.execute_command("READONLY")
        assert c.get(key) == "v"
    with owner.client() as c:
        c.delete(key)


def test_cluster_fails_over_a_killed_primary_and_takes_it_back(fresh_redis_cluster):
    cluster = fresh_redis_cluster
    victim = cluster.primaries()[0]
    replica = cluster.replicas_of(victim)[0]
    key = next(k for k in (f"k{i}" for i in range(1000)) if cluster.primary_for_key(k) is victim)
    with victim.client() as c:
        c.set(key, "before")
        assert c.execute_command("WAIT", 1, 2000) == 1
    started = time.monotonic()
    cluster.kill(victim)
    new = cluster.wait_failover(victim, timeout=5.0)  # cluster-node-timeout 1000 ms
    took = time.monotonic() - started
    assert new is replica and not victim.running
    assert cluster.primary_for_key(key) is replica
    with replica.client() as c:
        assert c.get(key) == "before"
    cluster.restart(victim)
    assert cluster.view().replicas[victim.port] == replica.port
    with victim.client() as c:
        c.execute_command("READONLY")
        assert wait_until(lambda: c.get(key) == "before", 5.0, "the restarted node's copy")
    print(f"kill -9 to failover: {took:.2f}s")


def test_cluster_switches_over_on_cluster_failover(fresh_redis_cluster):
    cluster = fresh_redis_cluster
    primary = cluster.primaries()[1]
    replica = cluster.replicas_of(primary)[0]
    assert cluster.failover(replica) is primary
    assert cluster.wait_failover(primary, timeout=5.0) is replica
    cluster.wait_ok(replicas=True)
    assert cluster.view().replicas[primary.port] == replica.port  # the two swapped roles
    assert primary.running


# -- Sentinel ------------------------------------------------------------------------------------


def test_sentinels_report_the_primary_and_its_replicas(redis_sentinel):
    primary = redis_sentinel.primary()
    assert primary.info("replication")["role"] == "master"
    for s in redis_sentinel.sentinels:
        with s.client() as c:
            assert c.sentinel_get_master_addr_by_name("mymaster") == ("127.0.0.1", primary.port)
            assert {int(r["port"]) for r in c.sentinel_slaves("mymaster")} == \
                {n.port for n in redis_sentinel.replicas()}
            assert len(c.sentinel_sentinels("mymaster")) == 2
    with primary.client() as c:
        c.set("topology-test", "v", px=60_000)
        assert c.execute_command("WAIT", 2, 2000) == 2
    for replica in redis_sentinel.replicas():
        with replica.client() as c:
            assert c.get("topology-test") == "v"
    assert redis_sentinel.url == "redis+sentinel://" + ",".join(
        f"127.0.0.1:{s.port}" for s in redis_sentinel.sentinels) + "/mymaster/0"


class _SwitchListener:
    """The ``+switch-master`` announcements of one sentinel, collected by a thread."""

    def __init__(self, sentinel) -> None:
        self.client = sentinel.client()
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe("+switch-master")
        self.pubsub.get_message(timeout=2)  # the subscribe confirmation
        self.seen: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message and message["type"] == "message":
                self.seen.append(message["data"])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.pubsub.close()
        self.client.close()


def test_sentinels_fail_over_a_killed_primary_and_announce_it(fresh_redis_sentinel):
    sentinels = fresh_redis_sentinel
    old = sentinels.primary()
    listener = _SwitchListener(sentinels.sentinels[0])
    try:
        started = time.monotonic()
        sentinels.kill(old)
        new = sentinels.wait_failover(old, timeout=8.0)  # down-after-milliseconds 1000
        took = time.monotonic() - started
        wait_until(lambda: listener.seen, 2.0, "+switch-master on the sentinel")
    finally:
        listener.close()
    assert new is not old and new in sentinels.data
    assert listener.seen == [f"mymaster 127.0.0.1 {old.port} 127.0.0.1 {new.port}"]
    sentinels.restart(old)  # back as a replica of the new primary
    assert sentinels.primary() is new
    assert old.info("replication")["master_port"] == new.port
    print(f"kill -9 to the sentinels naming the new primary: {took:.2f}s")


def test_sentinels_follow_a_switchover(fresh_redis_sentinel):
    sentinels = fresh_redis_sentinel
    old = sentinels.primary()
    listener = _SwitchListener(sentinels.sentinels[2])
    try:
        sentinels.failover()
        new = sentinels.wait_failover(old, timeout=5.0)
        wait_until(lambda: listener.seen, 2.0, "+switch-master on the sentinel")
    finally:
        listener.close()
    assert listener.seen == [f"mymaster 127.0.0.1 {old.port} 127.0.0.1 {new.port}"]
    # The old primary is demoted by the sentinels themselves, in their own time.
    assert sentinels.wait_ready() is new
    assert old.info("replication")["role"] == "slave"


def _anonymous(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2, retry=Retry(NoBackoff(), 0))


@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
def test_passwords(kind):
    if kind == "cluster":
        deployment = RedisClusterSet(password="data-secret").start()
        nodes = deployment.nodes
    else:
        deployment = RedisSentinelSet(password="data-secret", sentinel_password="sentinel-secret").start()
        nodes = deployment.data
    try:
        for node in nodes:
            with _anonymous(node.port) as c, pytest.raises(redis.AuthenticationError):
                c.ping()
            assert node.call("PING") is True
        if kind == "sentinel":
            assert deployment.url.endswith("/mymaster/0?sentinel_password=sentinel-secret")
            for s in deployment.sentinels:
                with _anonymous(s.port) as c, pytest.raises(redis.AuthenticationError):
                    c.ping()
        else:
            assert deployment.url.startswith("redis+cluster://:data-secret@127.0.0.1:")
    finally:
        deployment.stop()
    assert not any(os.path.exists(n.dir) for n in nodes)
