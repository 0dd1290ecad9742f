"""The Redis layer behind Sentinel (``redis+sentinel://``), on a real Sentinel set.

The contract suite and asgiref's conformance suite run on it too (backend ``sentinel``);
failovers under traffic are in ``test_redis_failover.py``. Here: the URL through every front
door, finding the primary (and only a primary), following a switch-over actively (a blocked
pop and a doorbell on the old primary would otherwise wait there, since it stays up and
silent), and ``wait_replicas``.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from failover_kit import cut_off_replicas
from wsgi_channels import exceptions as exc
from wsgi_channels.layers import from_url

pytestmark = pytest.mark.timeout(120)


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsgi_channels", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_sentinel_url_through_from_url_the_layer_flag_and_the_environment(redis_sentinel):
    url = redis_sentinel.url
    layer = from_url(url)
    layer.flush()
    done = cli("send", "sentinel.cli", '{"via": "flag"}', "--layer", url)
    assert done.returncode == 0, done.stderr
    done = cli("send", "sentinel.cli", '{"via": "env"}', env={"WSGI_CHANNELS_LAYER": url})
    assert done.returncode == 0, done.stderr
    assert layer.receive(["sentinel.cli"]) == ("sentinel.cli", {"via": "flag"})
    assert layer.receive(["sentinel.cli"]) == ("sentinel.cli", {"via": "env"})
    done = cli("stats", "--layer", url)
    assert done.returncode == 0 and "messages_pending" in json.loads(done.stdout)["global"]
    # It went to the primary the sentinels name.
    assert layer._shards[0].address == ("127.0.0.1", redis_sentinel.primary().port)
    layer.close()


def test_sentinel_urls_that_cannot_work_say_why(redis_sentinel):
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in redis_sentinel.sentinels)
    with pytest.raises(exc.ConfigurationError, match="service name is missing"):
        from_url(f"redis+sentinel://{hosts}/")
    with pytest.raises(exc.ConfigurationError, match="unknown Redis layer URL option.*bogus"):
        from_url(f"redis+sentinel://{hosts}/mymaster?bogus=1")
    layer = from_url(f"redis+sentinel://{hosts}/nosuchservice")
    with pytest.raises(exc.LayerUnavailable, match="named a primary for 'nosuchservice'.*No such master"):
        layer.send("x.y", {})
    layer.close()


def test_sentinel_options_and_a_database(redis_sentinel):
    layer = from_url(redis_sentinel.url.replace("/mymaster/0", "/mymaster/3") + "?capacity=2&expiry=7")
    assert (layer.capacity, layer.expiry) == (2, 7.0)
    layer.flush()
    layer.send("db.three", {"n": 1})
    primary = redis_sentinel.primary()
    with primary.client() as c:
        c.execute_command("SELECT", 3)
        assert c.exists("wsgi_channels:q:{db.three}") == 1
    layer.flush()
    layer.close()


def test_a_connection_that_reaches_a_replica_goes_to_the_primary(redis_sentinel):
    """Every connection checks ``ROLE`` (with its ``TIME``): pointed at a replica (a sentinel lagging
    behind a failover would do that), the layer asks the sentinels again and uses the primary."""
    layer = from_url(redis_sentinel.url)
    layer.flush()
    shard = layer._shards[0]
    primary = redis_sentinel.primary()
    replica = redis_sentinel.replicas()[0]
    layer.send("role.check", {"n": 1})
    shard.move("127.0.0.1", replica.port)
    assert shard.address == ("127.0.0.1", replica.port)
    time.sleep(0.15)  # past the rediscovery interval
    layer.send("role.check", {"n": 2})
    assert shard.address == ("127.0.0.1", primary.port)
    assert [layer.receive(["role.check"])[1] for _ in range(2)] == [{"n": 1}, {"n": 2}]
    layer.close()


@pytest.mark.parametrize("channels", [["moved.plain"], ["moved.plain", "moved.proc!"]], ids=["blpop", "doorbell"])
def test_a_switchover_moves_blocked_receives_and_doorbells_at_once(fresh_redis_sentinel, channels):
    """After ``SENTINEL FAILOVER`` the old primary stays up as a primary for seconds, keeps a blocked
    ``BLPOP`` blocked and its pub/sub silent. A receive blocked there must go on with the new primary
    at once: a message sent there arrives long before the receive's own step (4 s) would end."""
    sentinel = fresh_redis_sentinel
    url = sentinel.url
    receiver, sender = from_url(url), from_url(url)
    receiver.flush()
    receiver.receive(channels)  # connected
    got: list = []

    def receive() -> None:
        got.append(receiver.receive(channels, block=True, timeout=12))
        got.append(time.monotonic())

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    time.sleep(0.5)  # blocked on the old primary
    old = sentinel.primary()
    sentinel.failover()
    sentinel.wait_failover(old)
    deadline = time.monotonic() + 5
    while sender._shards[0].address[1] == old.port and time.monotonic() < deadline:
        time.sleep(0.01)
    sent_at = time.monotonic()
    sender.send("moved.plain", {"after": True})
    thread.join(15)
    assert got and got[0] == ("moved.plain", {"after": True})
    assert got[1] - sent_at < 1.5, f"the receive stayed on the old primary for {got[1] - sent_at:.2f}s"
    assert receiver._shards[0].address == sender._shards[0].address != ("127.0.0.1", old.port)
    receiver.close()
    sender.close()


def test_wait_replicas_waits_in_the_same_round_trip_and_counts_what_was_not_replicated(fresh_redis_sentinel,
                                                                                      caplog):
    sentinel = fresh_redis_sentinel
    layer = from_url(sentinel.url + "?wait_replicas=1&wait_replicas_timeout=0.3")
    layer.flush()
    shard = layer._shards[0]
    layer.send("warm", {})  # the send script loaded
    trips, real = [], shard._roundtrip
    shard._roundtrip = lambda payload, count=None, **kw: (trips.append(count), real(payload, count, **kw))[1]
    layer.send("waited", {"n": 1})
    assert trips == [2]  # the send script and WAIT: one write, one read
    replica = sentinel.replicas()[0]
    assert replica.call("LLEN", "wsgi_channels:q:{waited}") == 1  # WAIT returned: a replica has it
    assert layer.global_statistics()["unreplicated_count"] == 0
    layer.group_add("waited.g", "waited.p!c")
    layer.send_group("waited.g", {"n": 2})
    assert layer.send_many([("waited", {"n": 3})]) == [None]
    assert layer.global_statistics()["unreplicated_count"] == 0

    cut_off_replicas(sentinel.primary(), 2)
    caplog.set_level(logging.WARNING, "wsgi_channels")
    started = time.monotonic()
    layer.send("waited", {"n": 4})
    assert time.monotonic() - started >= 0.28  # WAIT gave up after its timeout; the send still stands
    layer.send_group("waited.g", {"n": 5})
    layer.send_many([("waited", {"n": 6})])
    layer.group_add("waited.g", "waited.p!d")
    assert layer.global_statistics()["unreplicated_count"] == 4
    assert [r.getMessage() for r in caplog.records].count(next(
        r.getMessage() for r in caplog.records if "fewer than wait_replicas=1" in r.getMessage())) == 1
    assert [m["n"] for _, m in layer.receive_batch(["waited"], 10)] == [1, 3, 4, 6]
    layer.close()


def test_the_layer_tells_of_a_failover_after_replaying_recent_memberships(fresh_redis_sentinel):
    """``topology_epoch`` grows and ``on_topology_change`` callbacks run (the sidecar checks its state
    then), after the recent memberships of this process were added again."""
    sentinel = fresh_redis_sentinel
    layer = from_url(sentinel.url)
    layer.flush()
    layer.group_add("told", "told.p!c")
    calls: list = []
    layer.on_topology_change(lambda: calls.append((time.monotonic(), layer.topology_epoch,
                                                   layer.group_channels("told"))))
    assert layer.topology_epoch == 0
    old = sentinel.primary()
    sentinel.failover()
    sentinel.wait_failover(old)
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(calls) == 1 and calls[0][1] == 1 and calls[0][2] == ["told.p!c"]
    layer.close()


def test_a_forked_child_follows_a_switchover(fresh_redis_sentinel):
    """gunicorn forks after import: a child of a process that already used the layer (the primary
    located, the monitor running in the parent) must follow the next failover on its own."""
    sentinel = fresh_redis_sentinel
    layer = from_url(sentinel.url)
    layer.flush()
    layer.send("forked", {"n": 0})
    assert layer.receive(["forked"]) == ("forked", {"n": 0})
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a blocking receive across the switch-over, then the answer on the pipe
        code = 1
        try:
            deadline = time.monotonic() + 15
            got = (None, None)
            while got[0] is None and time.monotonic() < deadline:
                got = layer.receive(["forked"], block=True, timeout=2)
            os.write(write_end, json.dumps([got[1], layer.topology_epoch, time.monotonic()]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    old = sentinel.primary()
    time.sleep(0.5)
    sentinel.failover()
    new = sentinel.wait_failover(old)
    sender = from_url(sentinel.url)
    deadline = time.monotonic() + 5
    while sender._shards[0].address[1] != new.port and time.monotonic() < deadline:
        sender._shards[0].recheck()
        time.sleep(0.05)
    sent_at = time.monotonic()
    sender.send("forked", {"n": 1})
    _, status = os.waitpid(pid, 0)
    answer = json.loads(os.read(read_end, 1000) or b"null")
    assert os.WEXITSTATUS(status) == 0 and answer[:2] == [{"n": 1}, 1], answer
    # CLOCK_MONOTONIC is one clock for every process of the machine.
    assert answer[2] - sent_at < 1.5, f"the child stayed on the old primary for {answer[2] - sent_at:.2f}s"
    sender.close()
    layer.close()


def test_redis_6_behind_sentinel_follows_a_switchover():
    """What Redis 6 gets: standalone and Sentinel work as on Redis 7 (here Redis 6.0, the binary of the
    redis6 contract backend, for the data nodes and the sentinels): a receive blocked on the old primary
    goes on with the new one at once."""
    from redis_topology import RedisSentinelSet
    from servers import find_redis6_server

    sentinel = RedisSentinelSet(binary=find_redis6_server()).start()
    try:
        assert sentinel.primary().info("server")["redis_version"].startswith("6.")
        layer, sender = from_url(sentinel.url), from_url(sentinel.url)
        layer.flush()
        layer.send("six", {"n": 1})
        assert layer.receive(["six"], block=True, timeout=2) == ("six", {"n": 1})
        got: list = []
        thread = threading.Thread(target=lambda: got.append((layer.receive(["six"], block=True, timeout=12),
                                                             time.monotonic())), daemon=True)
        thread.start()
        time.sleep(0.5)
        old = sentinel.primary()
        sentinel.failover()
        new = sentinel.wait_failover(old)
        deadline = time.monotonic() + 5
        while sender._shards[0].address[1] != new.port and time.monotonic() < deadline:
            sender._shards[0].recheck()
            time.sleep(0.05)
        sent_at = time.monotonic()
        sender.send("six", {"n": 2})
        thread.join(15)
        assert got and got[0][0] == ("six", {"n": 2}) and got[0][1] - sent_at < 1.5
        layer.close()
        sender.close()
    finally:
        sentinel.stop()


def test_a_user_without_admin_commands_still_reaches_the_primary(redis_sentinel):
    """``ROLE`` (ACL @admin) refused at connect: the layer goes on without that check."""
    for node in redis_sentinel.data:
        node.call("ACL", "SETUSER", "app", "reset", "on", ">app-secret", "~*", "&*", "+@all", "-@admin",
                  "-@dangerous")
    url = redis_sentinel.url.replace("redis+sentinel://", "redis+sentinel://app:app-secret@")
    layer = from_url(url)
    layer.flush()
    layer.send("acl.s", {"n": 1})
    assert layer.receive(["acl.s"], block=True, timeout=2) == ("acl.s", {"n": 1})
    assert layer._shards[0].address == ("127.0.0.1", redis_sentinel.primary().port)
    layer.close()
