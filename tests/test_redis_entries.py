"""The Redis layer's entry format (``layers/redis/entries.py``): Python and the Lua scripts agree.

Every entry kind (``m``, ``t``, ``r``) is built in Python and read by the scripts' own Lua
helpers, and built by the Lua (the fan-out) and read by Python, on real redis-server processes:
Redis 7 and Redis 6.0.
"""
from __future__ import annotations

import re
import time

import pytest
import redis

from wsgi_channels.layers import from_url
from wsgi_channels.layers.redis import entries, scripts
from wsgi_channels.serialization import decode, encode

pytestmark = pytest.mark.timeout(60)

# What the scripts' common() helpers say about the entry in ARGV[1]; built from the real helpers.
_DESCRIBE = scripts._COMMON + r"""
local C = common()
local v = ARGV[1]
return {tostring(C.deadline(v)), string.sub(v, E_KIND_AT, E_KIND_AT), C.targets_of(v), C.count_of(v)}
"""


@pytest.fixture(params=["redis_server", "redis6_server"])
def server(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def client(server):
    client = redis.Redis(host="127.0.0.1", port=server.port, protocol=2)
    client.flushall()
    yield client
    client.flushall()
    client.close()


@pytest.fixture
def layer(server):
    layer = from_url(server.url, prefix="codec", expiry=30)
    yield layer
    layer.flush()
    layer.close()


def _deadline() -> int:
    return int(time.time() * 1000) + 30_000


def test_entries_built_in_python_are_read_by_the_lua(client):
    body = encode({"text": "x\n y", "b": b"\n \x00"})
    members = [f"codec.X!m{i}" for i in range(3)]
    key = b"codec:t:{codec.X!}:abc"
    client.set(key, " ".join(members))
    dl = _deadline()
    cases = [
        (entries.message_head(), b"m", [], 1),
        (entries.targets_head(members[:1]), b"t", members[:1], 1),
        (entries.targets_head(members), b"t", members, 3),
        (entries.reference_head(3, key), b"r", members, 3),
    ]
    for head, kind, targets, count in cases:
        entry = entries.build(dl, head, body)
        deadline, lua_kind, lua_targets, lua_count = client.eval(_DESCRIBE, 0, entry)
        assert (int(deadline), lua_kind, [t.decode() for t in lua_targets], lua_count) == (dl, kind, targets, count)
        # and Python reads back what it built
        parsed_kind, field, parsed_body = entries.parse(entry)
        assert (bytes([parsed_kind]), entries.deadline(entry), bytes(parsed_body)) == (kind, dl, body)
        if kind == b"t":
            assert entries.names(field) == targets
        elif kind == b"r":
            assert entries.reference(field) == (3, key)
        else:
            assert field is None and entries.is_message(entry) and bytes(entries.message_body(entry)) == body


def test_entries_built_in_python_are_counted_and_expired_by_the_scripts(client, layer):
    # The receive and statistics scripts read what Python queued: deadlines, kinds and counts.
    members = [f"codec.Y!m{i}" for i in range(4)]
    key = b"codec:t:{codec.Y!}:def"
    client.set(key, " ".join(members[1:]))
    body = encode({"n": 1})
    queue = "codec:q:{codec.Y!}"
    client.rpush(queue, entries.build(int(time.time() * 1000) - 1000, entries.targets_head(members[:1]), body),
                 entries.build(_deadline(), entries.targets_head(members[:2]), body),
                 entries.build(_deadline(), entries.reference_head(3, key), body))
    assert layer.channel_statistics("codec.Y!")["messages_pending"] == 2 + 3  # the expired entry dropped
    got = []
    while True:
        channel, message = layer.receive(["codec.Y!"])
        if channel is None:
            break
        got.append((channel, message))
    assert got == [(m, {"n": 1}) for m in members[:2] + members[1:]]


def test_entries_built_by_the_lua_are_read_by_python(client, layer):
    # The fan-out builds all three kinds: m for plain members, t for a few members of a prefix,
    # r for REF_MIN of them or more.
    plain = ["codec.plain1", "codec.plain2"]
    few = [f"codec.F!c{i}" for i in range(3)]
    many = [f"codec.M!c{i}" for i in range(scripts.REF_MIN)]
    for member in plain + few + many:
        layer.group_add("codec.g", member)
    message = {"text": "hello\n world", "bytes": b" \n", "n": 7}
    before = int(time.time() * 1000)
    layer.send_group("codec.g", message)
    after = int(time.time() * 1000)

    def only_entry(name: str) -> bytes:
        stored = client.lrange(f"codec:q:{{{name}}}", 0, -1)
        assert len(stored) == 1
        return stored[0]

    for name in plain:
        entry = only_entry(name)
        kind, field, body = entries.parse(entry)
        assert (kind, field, decode(body)) == (entries.MESSAGE_KIND, None, message)
        assert before + 29_000 <= entries.deadline(entry) <= after + 31_000
    kind, field, body = entries.parse(only_entry("codec.F!"))
    assert (kind, sorted(entries.names(field)), decode(body)) == (entries.TARGETS_KIND, few, message)
    kind, field, body = entries.parse(only_entry("codec.M!"))
    count, key = entries.reference(field)
    assert (kind, count, decode(body)) == (entries.REFERENCE_KIND, len(many), message)
    assert sorted(client.get(key).decode().split(" ")) == sorted(many)
    # and the layer hands each member its copy from them
    got = layer.receive_batch(["codec.F!", "codec.M!", *plain], 1000)
    assert sorted(channel for channel, _ in got) == sorted(plain + few + many)
    assert all(m == message for _, m in got)


def test_the_scripts_take_the_entry_format_from_the_codec():
    # No script spells an offset or a kind byte of the format itself: they come from entries.py.
    sources = {name: getattr(scripts, name) for name in scripts.__all__ if isinstance(getattr(scripts, name), str)}
    assert sources
    for name, source in sources.items():
        if "E_DEADLINE_END" in source or "entry" in source or "targets_of" in source:
            assert source.startswith(entries.LUA_CONSTANTS), name
        code = source.replace(entries.LUA_CONSTANTS, "")
        code = "\n".join(line.split("--")[0] for line in code.splitlines())  # comments aside
        assert not re.search(r"(?<![\w.])(13|14|15|109|114|116)(?![\w.])", code), name
        assert not re.search(r"\bdl \.\. '", code), name
