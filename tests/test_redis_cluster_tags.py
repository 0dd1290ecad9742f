"""How many hash-tag buckets a Redis Cluster's names spread over (``cluster_tags``), on a real Cluster.

``cluster_tags="auto"`` (the default) puts one bucket on each primary; the first layer on a
Cluster records the tags in the Cluster and every later one uses the record, whatever it was
given; an explicit count that differs is refused; ``flush()`` keeps the record (the flush of
a layer given another count records it: a rebalance). Each test takes a key prefix of its
own, so its own record, on the session's Cluster (``redis_cluster``, 3 primaries).
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import time

import pytest

from wsgi_channels import exceptions as exc
from wsgi_channels.layers import from_url
from wsgi_channels.layers.redis.cluster_tags import record_key, tags_per_primary
from wsgi_channels.layers.redis.slots import tag_slot, tag_table

pytestmark = pytest.mark.timeout(120)

_prefixes = itertools.count()


def fresh_prefix() -> str:
    return f"ct{time.monotonic_ns() % 10**9}-{next(_prefixes)}"


@pytest.fixture
def prefix(redis_cluster):
    """A key prefix of this test's own, its keys removed after it (the record stays, as flush keeps it)."""
    name = fresh_prefix()
    yield name
    layer = from_url(redis_cluster.url + f"?prefix={name}")
    layer.flush()
    layer.close()


def record(cluster, prefix: str) -> str | None:
    key = record_key(prefix + ":")
    return cluster.primary_for_key(key).client().get(key)


def owner_ports(cluster, tags) -> list[int]:
    return [cluster.primary_for_key("{%s}" % t).port for t in tags]


def test_auto_is_the_default_and_puts_one_bucket_on_each_primary(redis_cluster, prefix):
    layer = from_url(redis_cluster.url + f"?prefix={prefix}")
    assert record(redis_cluster, prefix) is None  # nothing asked before the first call
    layer.send("auto.one", {"n": 1})
    tags = [b.tag for b in layer._shards]
    assert len(tags) == 3
    assert sorted(owner_ports(redis_cluster, tags)) == sorted(p.port for p in redis_cluster.primaries())
    assert record(redis_cluster, prefix) == " ".join(["3", *tags])
    assert layer.receive(["auto.one"]) == ("auto.one", {"n": 1})
    layer.close()
    explicit = from_url(redis_cluster.url + f"?prefix={prefix}&cluster_tags=AUTO")  # the URL form, any case
    explicit.send("auto.one", {"n": 2})
    assert [b.tag for b in explicit._shards] == tags
    explicit.flush()
    explicit.close()


def test_a_plain_url_to_one_node_takes_auto_too(redis_cluster, prefix):
    one_node = from_url(f"redis://127.0.0.1:{redis_cluster.nodes[-1].port}/0?prefix={prefix}")
    one_node.send("auto.node", {"n": 1})
    assert len(one_node._shards) == 3 and record(redis_cluster, prefix).startswith("3 ")
    seeds = from_url(redis_cluster.url + f"?prefix={prefix}")
    assert seeds.receive(["auto.node"]) == ("auto.node", {"n": 1})
    for layer in (one_node, seeds):
        layer.flush()
        layer.close()


_CHILD = """
import json, sys
from wsgi_channels.layers import from_url
layer = from_url(sys.argv[1])
sys.stdin.readline()  # started together: every child asks at once
layer.send("agree." + sys.argv[2], {"from": sys.argv[2]})
print(json.dumps([b.tag for b in layer._shards]), flush=True)
"""


def test_processes_started_together_agree(redis_cluster, prefix):
    url = redis_cluster.url + f"?prefix={prefix}"
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, url, str(i)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True) for i in range(4)]
    time.sleep(1.0)  # every child imported and made its layer
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    seen = [json.loads(child.communicate(timeout=60)[0]) for child in children]
    assert all(child.returncode == 0 for child in children)
    assert all(tags == seen[0] for tags in seen) and len(seen[0]) == 3
    assert record(redis_cluster, prefix) == " ".join(["3", *seen[0]])
    layer = from_url(url)  # and their keys are the ones this process finds
    assert sorted(layer.receive([f"agree.{i}"])[1]["from"] for i in range(4)) == ["0", "1", "2", "3"]
    layer.flush()
    layer.close()


def test_two_layers_in_one_process_agree_and_share_messages(redis_cluster, prefix):
    a = from_url(redis_cluster.url + f"?prefix={prefix}")
    b = from_url(redis_cluster.url + f"?prefix={prefix}")
    a.group_add("agree", "agree.a")
    b.group_add("agree", "agree.b")
    b.send_group("agree", {"g": 1})
    assert a.receive(["agree.a"]) == ("agree.a", {"g": 1}) and a.receive(["agree.b"]) == ("agree.b", {"g": 1})
    assert [v.tag for v in a._shards] == [v.tag for v in b._shards]
    a.flush()
    a.close()
    b.close()


def test_a_later_layer_uses_the_record_even_when_given_auto(redis_cluster, prefix):
    first = from_url(redis_cluster.url + f"?prefix={prefix}&cluster_tags=5")  # an explicit count, no record: recorded
    first.send("later.x", {"n": 1})
    assert record(redis_cluster, prefix) == " ".join(["5", *tag_table(5)])
    later = from_url(redis_cluster.url + f"?prefix={prefix}")
    assert later.receive(["later.x"]) == ("later.x", {"n": 1})
    assert [v.tag for v in later._shards] == list(tag_table(5))
    same = from_url(redis_cluster.url + f"?prefix={prefix}", cluster_tags=5)  # the same count, as a keyword
    same.send("later.y", {"n": 2})
    assert later.receive(["later.y"]) == ("later.y", {"n": 2})
    for layer in (first, later, same):
        layer.close()


def test_a_conflicting_count_is_refused_at_the_first_call(redis_cluster, prefix):
    auto = from_url(redis_cluster.url + f"?prefix={prefix}")
    auto.send("conflict.x", {})
    wrong = from_url(redis_cluster.url + f"?prefix={prefix}&cluster_tags=12")
    with pytest.raises(exc.ConfigurationError) as refused:
        wrong.send("conflict.x", {})
    text = str(refused.value)
    assert "cluster_tags=12" in text and "records 3 hash-tag buckets" in text and repr(prefix) in text
    assert "use cluster_tags=auto (or 3)" in text and "call flush() on a layer with cluster_tags=12" in text
    with pytest.raises(exc.ConfigurationError, match="records 3"):  # every call, not only the first
        wrong.group_add("conflict", "conflict.x")
    assert record(redis_cluster, prefix).startswith("3 ")
    auto.flush()
    for layer in (auto, wrong):
        layer.close()


@pytest.mark.parametrize("command", [
    ["worker", "demo:routing"],
    ["sidecar", "--bind", "127.0.0.1:0"],
    ["runserver", "demo:app", "--routing", "demo:routing", "--bind", "127.0.0.1:0"],
    ["send", "chan", '{"text": "hi"}'],
], ids=lambda argv: argv[0])
def test_the_commands_stop_at_start_on_a_conflicting_count(redis_cluster, prefix, command):
    """A worker or sidecar given another count exits at start with the message, one line (exit 3), instead
    of retrying in its loop."""
    from_url(redis_cluster.url + f"?prefix={prefix}").send("conflict.cli", {})
    script = os.path.join(os.path.dirname(sys.executable), "wsgi-channels")
    examples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    env = {k: v for k, v in os.environ.items() if k != "WSGI_CHANNELS_LAYER"}
    done = subprocess.run([script, *command, "--layer", redis_cluster.url + f"?prefix={prefix}&cluster_tags=12"],
                          capture_output=True, text=True, timeout=60, cwd=examples, env=env)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "cluster_tags=12" in last and "records 3 hash-tag buckets" in last, done.stderr


def test_flush_keeps_the_record_and_a_flush_with_another_count_rebalances(redis_cluster, prefix, caplog):
    layer = from_url(redis_cluster.url + f"?prefix={prefix}")
    layer.send("flush.x", {})
    kept = record(redis_cluster, prefix)
    layer.flush()
    assert record(redis_cluster, prefix) == kept and layer.receive(["flush.x"]) == (None, None)
    from_url(redis_cluster.url + f"?prefix={prefix}").flush()  # a new auto layer's flush keeps it too
    assert record(redis_cluster, prefix) == kept
    layer.close()
    # The rebalance: a layer given another count refuses to work, but its flush records that count.
    six = from_url(redis_cluster.url + f"?prefix={prefix}&cluster_tags=6")
    with caplog.at_level(logging.WARNING, logger="wsgi_channels.layers.redis.cluster_tags"):
        six.flush()
    assert record(redis_cluster, prefix) == " ".join(["6", *tag_table(6)])
    assert "recorded 6 hash-tag buckets (cluster_tags=6) in place of 3" in caplog.text
    six.send("flush.y", {"n": 6})
    auto = from_url(redis_cluster.url + f"?prefix={prefix}")
    assert auto.receive(["flush.y"]) == ("flush.y", {"n": 6}) and len(auto._shards) == 6
    auto.flush()
    for one in (six, auto):
        one.close()


def test_a_group_send_with_auto_is_one_script_on_each_primary(redis_cluster, prefix):
    layer = from_url(redis_cluster.url + f"?prefix={prefix}")
    members = [f"spread.{i}" for i in range(60)] + [f"spread{i}.x!c" for i in range(40)]
    for m in members:
        layer.group_add("spread", m)
    owners = {layer._shard_of(m).node().address for m in members}
    assert len(owners) == 3, "the members are on every primary"
    layer.send_group("spread", {"n": 0})  # this process learns each bucket's plan
    primaries = redis_cluster.primaries()
    for node in primaries:
        node.call("CONFIG", "RESETSTAT")
    for n in range(1, 6):
        layer.send_group("spread", {"n": n})
    calls = [node.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0) for node in primaries]
    assert calls == [5, 5, 5], "one fan-out script per primary per group send"
    for m in members:
        queue = m if "!" not in m else m[:m.index("!") + 1]
        got = [layer.receive([queue]) for _ in range(6)]
        assert [message["n"] for _, message in got] == list(range(6))
    assert sorted(layer.group_channels("spread")) == sorted(members)
    layer.flush()
    layer.close()


def test_tags_come_from_the_real_slot_map():
    """One tag inside each primary's own slots, however the slots are split (a 4th primary added and
    rebalanced takes slices of each old one; an uneven split, where equal ranges would put two on one
    primary and none on another)."""
    grown = [(0, 1364, "d"), (1365, 5460, "a"), (5461, 6826, "d"), (6827, 10922, "b"), (10923, 12287, "d"),
             (12288, 16383, "c")]
    tags = tags_per_primary(grown)
    assert len(tags) == 4

    def owner(slot: int) -> str:
        return next(p for lo, hi, p in grown if lo <= slot <= hi)

    assert [owner(tag_slot(t)) for t in tags] == ["d", "a", "b", "c"]  # in the order of their lowest slots
    assert tag_slot(tags[0]) == 6143 and tag_slot(tags[1]) == 3412  # the middles of their largest ranges
    assert tags_per_primary(list(reversed(grown))) == tags  # the order CLUSTER SLOTS answers in does not matter
    uneven = [(0, 9999, "a"), (10000, 12999, "b"), (13000, 16383, "c")]
    in_slots = [next(p for lo, hi, p in uneven if lo <= tag_slot(t) <= hi) for t in tags_per_primary(uneven)]
    assert in_slots == ["a", "b", "c"]
    assert sorted(next(p for lo, hi, p in uneven if lo <= tag_slot(t) <= hi) for t in tag_table(3)) == ["a", "a", "c"]


def test_standalone_and_sentinel_ignore_cluster_tags(redis_server, redis_sentinel):
    for url in (redis_server.url, redis_sentinel.url):
        layer = from_url(url + "?cluster_tags=7&prefix=ctignored")
        layer.send("ignored.x", {"n": 1})
        assert layer.receive(["ignored.x"]) == ("ignored.x", {"n": 1})
        layer.flush()
        layer.close()
    with pytest.raises(exc.ConfigurationError, match="from 1 to 16384, or 'auto'"):
        from_url(redis_server.url + "?cluster_tags=many")


def test_a_record_lost_with_a_primary_is_written_again_after_the_failover(fresh_redis_cluster):
    cluster = fresh_redis_cluster
    layer = from_url(cluster.url)
    layer.send("lost.x", {})
    key = record_key("wsgi_channels:")
    holder = cluster.primary_for_key(key)
    # A channel on the primary that fails over: a call to it is how this process learns of the failover.
    channel = next(c for c in (f"lost.{i}" for i in range(100)) if layer._shard_of(c).node().address[1] == holder.port)
    kept = holder.client().get(key)
    assert kept and kept.startswith("3 ")
    holder.client().delete(key)  # as if the write had not reached the replica
    replica = cluster.replicas_of(holder)[0]
    cluster.wait_failover(cluster.failover(replica))
    epoch = layer.topology_epoch

    def followed() -> bool:
        try:
            layer.send(channel, {})  # the first call after the failover finds the new owners
        except exc.LayerUnavailable:
            pass
        return layer.topology_epoch > epoch and cluster.primary_for_key(key).client().get(key) == kept

    deadline = time.monotonic() + 10
    while not followed():
        assert time.monotonic() < deadline, "the record was not written again"
        time.sleep(0.1)
    layer.close()


@pytest.mark.parametrize("value, count", [("auto", 3), ("AUTO", 3), (4, 4), ("4", 4)])
def test_an_apps_settings_carry_cluster_tags(redis_cluster, prefix, value, count):
    """The adapters' options (Flask's WSGI_CHANNELS_OPTIONS, Pyramid's and Django's) travel in the app's
    layer URL, which every process reads."""
    from wsgi_channels.settings import AppSettings, SettingNames

    names = SettingNames("LAYER", "OPTIONS", "ROUTING", "ORIGINS", "SIDECAR", "SECRET")
    settings = AppSettings.parse(names, layer=redis_cluster.url, options={"cluster_tags": value, "prefix": prefix})
    layer = from_url(settings.layer_url)
    layer.send("settings.x", {})
    assert len(layer._shards) == count and record(redis_cluster, prefix).startswith(f"{count} ")
    layer.flush()
    layer.close()
    bad = AppSettings.parse(names, layer=redis_cluster.url, options={"cluster_tags": "most"})
    with pytest.raises(exc.ConfigurationError, match="from 1 to 16384, or 'auto'"):  # refused where the layer is made
        from_url(bad.layer_url)
