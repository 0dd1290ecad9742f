"""The Redis Cluster static checks of :mod:`slot_check`: the standalone codec (positive controls)
and the Cluster codec (no finding allowed).

The standalone layout was written with hash tags "from the start": a call on one queue or one
group keeps to one slot, but a group membership of a process-local channel (the group's keys
beside the prefix's index) and a receive over several channels do not, and several scripts
build keys of their own. The first tests show the checks find exactly that (so they can fail)
and pass what is right. The Cluster codec (``cluster_scripts``, the layer's Cluster buckets) is
then checked with the same functions: every script declares every key it touches, and for
10,000 random channel, prefix and group names the keys of every command the layer actually
packs (parsed back from the bytes it would send) map to one slot.
"""
from __future__ import annotations

import hiredis
import pytest
import redis

from slot_check import Finding, one_slot_violations, random_names, undeclared_keys
from wsgi_channels.layers.redis import cluster_scripts, scripts
from wsgi_channels.layers.names import non_local_name, validate_channel_name, validate_group_name
from wsgi_channels.layers.redis import RedisChannelLayer
from wsgi_channels.layers.redis.connection import NOW
from wsgi_channels.layers.redis.cluster_tags import tags_per_primary
from wsgi_channels.layers.redis.layer import _C_GROUP_ADD, _C_GROUP_DISCARD, _FANOUT_TAIL, _GROUP_ADD, _GROUP_DISCARD
from wsgi_channels.layers.redis.slots import tag_table


@pytest.fixture(scope="module")
def layer():
    layer = RedisChannelLayer("redis://127.0.0.1:9/0")  # names keys only: never connects
    yield layer
    layer.close()


#: The tags of each way a layer spreads names: 12 buckets on equal slot ranges (``cluster_tags=12``),
#: and one per primary of a Cluster that ``redis-cli --cluster create`` split in 3 (``auto``).
TAGS = {"12": tag_table(12), "auto": tags_per_primary([(0, 5460, "a"), (5461, 10922, "b"), (10923, 16383, "c")])}


def tagged_cluster_layer(tags):
    """A Cluster layer with these buckets' tags, without asking a Cluster: it names keys only, never connects."""
    layer = RedisChannelLayer("redis+cluster://127.0.0.1:9/")
    layer._members[0].topology.use_tags(tags)
    return layer


@pytest.fixture(scope="module", params=sorted(TAGS))
def any_cluster_layer(request):
    layer = tagged_cluster_layer(TAGS[request.param])
    yield layer
    layer.close()


@pytest.fixture(scope="module")
def cluster_layer():
    layer = tagged_cluster_layer(TAGS["12"])
    yield layer
    layer.close()


def todays_calls(layer) -> dict:
    """The KEYS of every script and multi-key command of the standalone layout, by the layer's own code."""
    shard = layer._members[0].shard  # the standalone layout's keys, without asking the server what it is

    def q(qname):
        return layer._queue_keys(qname, shard)

    return {
        "SEND to a channel": lambda n: q(n.channel),
        "SEND to a reply channel": lambda n: q(non_local_name(n.reply)),
        "SEND to a process-local channel": lambda n: q(non_local_name(n.local)),
        "STATS of a prefix": lambda n: q(n.prefix),
        "READ_DONE": lambda n: (layer._key("q", n.prefix), layer._key("u", n.prefix)),
        "EVICT": lambda n: (layer._key("m", n.prefix),),
        "MEMBERS": lambda n: layer._group_keys(n.group)[:2],
        "FANOUT": lambda n: layer._group_keys(n.group),
        "GROUP_ADD of a plain channel": lambda n: layer._group_keys(n.group),
        "GROUP_ADD of a process-local channel": lambda n: layer._group_keys(n.group) + (layer._key("m", n.prefix),),
        "RECEIVE over a channel list": lambda n: [layer._key("q", c) for c in n.receive],
    }


def test_names_are_valid_contract_names():
    for names in random_names(2000):
        for channel in (names.channel, names.local):
            validate_channel_name(channel)
        validate_channel_name(names.reply, receive=True)
        validate_channel_name(names.prefix, receive=True)
        validate_group_name(names.group)
        assert non_local_name(names.local) == names.prefix and 1 <= len(names.receive) <= 5


def test_one_slot_check_passes_single_queue_and_single_group_calls(layer):
    calls = todays_calls(layer)
    violations = one_slot_violations(calls)
    passing = set(calls) - set(violations)
    assert passing == {"SEND to a channel", "SEND to a reply channel", "SEND to a process-local channel",
                       "STATS of a prefix", "READ_DONE", "EVICT", "MEMBERS", "FANOUT", "GROUP_ADD of a plain channel"}


def test_one_slot_check_finds_todays_cross_slot_calls(layer):
    violations = one_slot_violations(todays_calls(layer))
    assert set(violations) == {"GROUP_ADD of a process-local channel", "RECEIVE over a channel list"}
    failed, first, by_slot = violations["GROUP_ADD of a process-local channel"]
    assert failed > 9_900  # two tags: one slot only by chance (1 in 16384)
    assert len(by_slot) == 2
    assert sorted(len(keys) for keys in by_slot.values()) == [1, 3]  # the prefix's index apart from g, gc, gp
    assert layer._key("m", first.prefix) in [k for keys in by_slot.values() for k in keys]
    failed, first, by_slot = violations["RECEIVE over a channel list"]
    assert 0 < failed < 10_000  # a one-channel list keeps to its slot
    assert len(first.receive) > 1


def test_one_slot_check_counts_every_sample():
    calls = {"always two slots": lambda n: (b"{a}x", b"{b}x"), "one slot": lambda n: (b"{a}x", b"y{a}")}
    violations = one_slot_violations(calls, count=500)
    assert list(violations) == ["always two slots"] and violations["always two slots"][0] == 500


# -- Lua ----------------------------------------------------------------------------------------


def test_scan_passes_scripts_that_take_their_keys_from_KEYS():
    assert undeclared_keys(scripts.READ_DONE) == []
    assert undeclared_keys(scripts.GROUP_DISCARD) == []
    source = """
    local q, u = KEYS[1], KEYS[2]
    local function drop(queue, flag)
      redis.call('DEL', queue, flag)
    end
    for i, key in ipairs(KEYS) do redis.call('LPOP', key) end
    if redis.call('EXISTS', q) == 0 then drop(q, u) end
    redis.call('SPUBLISH', KEYS[1], '')
    return redis.call('TIME')
    """
    assert undeclared_keys(source) == []


def test_scan_finds_keys_a_script_builds():
    source = """
    local q = KEYS[1]
    local u = q .. ':u'
    local function drop(queue) redis.call('DEL', queue) end
    redis.call('RPUSH', q, ARGV[1])
    redis.call('SET', u, 1)
    drop(KEYS[1])
    drop('P:' .. ARGV[2])
    redis.call('PUBLISH', q, '')
    """
    found = undeclared_keys(source)
    assert [(f.line, f.command, f.key) for f in found] == [(4, "DEL", "queue"), (6, "SET", "u"), (9, "PUBLISH", "")]
    assert "SPUBLISH" in found[-1].reason


def test_scan_finds_todays_built_keys():
    def keys(source: str) -> set:
        return {(f.command, f.key) for f in undeclared_keys(source)}

    assert ("EXISTS", "u") in keys(scripts.RECEIVE_MANY)  # u = P .. 'u' .. rest
    assert ("PUBLISH", "") in keys(scripts.SEND)
    assert ("RPUSH", "q") in keys(scripts.FANOUT)  # a member's queue, in another slot than the group
    assert ("EXISTS", "q") in keys(scripts.MEMBERS)  # a member prefix's queue
    assert ("ZREM", "C.tag_key(P, 'g', g)") in keys(scripts.EVICT)  # leaving a group, from the prefix's slot
    assert ("GET", "ref") in keys(scripts.STATS)  # a P:t: key named in an entry (ref = string.sub(v, ...))
    assert all(isinstance(f, Finding) and f.line > 0 for f in undeclared_keys(scripts.FANOUT))


def test_redis_itself_refuses_what_the_scan_reports(redis_cluster):
    """A ``#!lua`` script may touch only its declared slot on a Redis 7 cluster: the server check the
    codec will rely on at run time agrees with the static scan."""
    key = "slot-check:{a}q"
    node = redis_cluster.primary_for_key(key)
    other = next(f"slot-check:{{{t}}}u" for t in "bcdefghijklmnop"
                 if redis_cluster.primary_for_key(f"{{{t}}}") is node)  # another slot on the same node
    built = "#!lua\nlocal q = KEYS[1]\nredis.call('SET', q, 1)\nreturn redis.call('SET', ARGV[1], 1)\n"
    declared = "#!lua\nlocal q = KEYS[1]\nredis.call('SET', q, 1)\nreturn redis.call('SPUBLISH', q, '')\n"
    assert [f.key for f in undeclared_keys(built)] == ["ARGV[1]"]
    assert undeclared_keys(declared) == []
    with node.client() as c:
        with pytest.raises(redis.ResponseError, match="do not hash to the same slot"):
            c.eval(built, 1, key, other)
        assert c.eval(declared, 1, key) == 0
        c.delete(key)


# -- the Cluster codec ---------------------------------------------------------------------------


def sent_keys(command: bytes) -> list[bytes]:
    """The keys of a packed ``EVALSHA`` (or blocking pop), parsed back from the bytes sent."""
    reader = hiredis.Reader()
    reader.feed(command)
    args = reader.gets()
    assert args is not False, "an incomplete command"
    name = args[0].upper()
    if name == b"EVALSHA":
        return args[3:3 + int(args[2])]
    if name == b"BLPOP":
        return args[1:-1]
    if name == b"BLMPOP":
        return args[3:3 + int(args[2])]
    raise AssertionError(name)


def cluster_calls(layer) -> dict:
    """Every script call and multi-key command of the Cluster codec, as the layer packs it."""
    message = {"text": "x"}

    def send(channel):
        return sent_keys(layer._send_payload(channel, message)[1])

    def membership(script, cluster_script, args):
        def keys(group, channel):
            return layer._membership(group, channel, script, cluster_script, args)[2]
        return keys

    add = membership(_GROUP_ADD, _C_GROUP_ADD, (1000, 100))
    discard = membership(_GROUP_DISCARD, _C_GROUP_DISCARD, ())

    def fanout(n):
        # One fan-out per bucket that holds members: here, each member's own bucket with that member.
        commands = []
        for member, plain in ((n.channel, True), (non_local_name(n.reply), True), (n.prefix, False)):
            bucket = layer._shard_of(member)
            head = layer._cluster_fanout_head(bucket, n.group, b"sig", [member], 1 if plain else 0)
            commands.append(sent_keys(_FANOUT_TAIL % (head, 4, b"body", 1796606425465)))
        return commands

    def receive(n, many):
        plan = layer._plan(list(n.receive))
        for entry in plan:
            head = entry.receive_many(0)[0] + b"$1\r\n5\r\n" if many else entry.receive(0)[0]
            yield sent_keys(head + NOW % 1796606425465)

    def blocking(n):
        plan = layer._plan([c for c in n.receive if not c.endswith("!")] or [n.channel])
        return [entry.keys for entry in plan]

    def members(n):
        bucket = layer._shard_of(n.prefix)
        return bucket.bucket_keys

    def settle(n):
        bucket = layer._shard_of(n.prefix)
        return bucket.bucket_keys + (bucket.key("q", n.prefix), bucket.key("u", n.prefix), bucket.key("m", n.prefix))

    def evict(n):
        bucket = layer._shard_of(n.prefix)
        return bucket.bucket_keys + (bucket.key("m", n.prefix),)

    def read_done(n):
        bucket = layer._shard_of(n.prefix)
        return (bucket.key("q", n.prefix), bucket.key("u", n.prefix))

    return {
        "SEND to a channel": lambda n: send(n.channel),
        "SEND to a reply channel": lambda n: send(n.reply),
        "SEND to a process-local channel": lambda n: send(n.local),
        "STATS of a prefix": lambda n: layer._queue_keys(n.prefix),
        "READ_DONE": read_done,
        "EVICT": evict,
        "MEMBERS": members,
        "SETTLE": settle,
        "GROUP_ADD of a plain channel": lambda n: add(n.group, n.channel),
        "GROUP_ADD of a process-local channel": lambda n: add(n.group, n.local),
        "GROUP_DISCARD of a process-local channel": lambda n: discard(n.group, n.local),
        "session key": lambda n: (layer._shard_of(n.local).key("s", n.local),),
    }, {
        "FANOUT": fanout,
        "RECEIVE over a channel list": lambda n: receive(n, False),
        "RECEIVE_MANY over a channel list": lambda n: receive(n, True),
        "BLPOP/BLMPOP of plain channels": blocking,
    }


def test_cluster_scripts_declare_every_key_they_touch():
    for name, source in cluster_scripts.ALL.items():
        assert source.startswith("#!lua\n"), f"{name}: Redis 7 checks the declared slot only with a shebang"
        assert undeclared_keys(source) == [], (name, undeclared_keys(source))


def test_cluster_codec_keeps_every_call_to_one_slot(any_cluster_layer):
    single, multi = cluster_calls(any_cluster_layer)
    # Calls made once per sample: their keys must share one slot.
    assert one_slot_violations(single) == {}
    # Calls made once per bucket touched (a fan-out, a receive over buckets): each one on its own.
    per_call = {f"{name} #{i}": (lambda n, name=name, i=i: list(multi[name](n))[i] if i < len(list(multi[name](n)))
                                 else ()) for name in multi for i in range(3)}
    assert one_slot_violations(per_call) == {}


def test_cluster_codec_check_can_fail(cluster_layer):
    """The same check on keys taken from two different buckets' commands finds them (a positive control)."""
    def two_buckets(n):
        return (cluster_layer._send_payload(n.channel, {})[1], cluster_layer._send_payload(n.local, {})[1])

    violations = one_slot_violations({"two sends as one": lambda n: [k for c in two_buckets(n) for k in sent_keys(c)]},
                                     count=2000)
    failed, _, _ = violations["two sends as one"]
    assert failed > 2000 * 0.8  # 12 buckets: two names share one about 1 time in 12
