"""Redis-specific behaviour of the Redis layer, on real redis-server processes.

The shared contract is in ``test_layer_contract.py``; this file checks what only
Redis has: round trips per call (counted with MONITOR), the hash ring, keys left
behind (counted with SCAN), key prefixes and hash tags, restarts, encryption,
another process sending, fork safety, and gevent.
"""
from __future__ import annotations

import signal
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import redis

from wsgi_channels import exceptions as exc
from wsgi_channels.layers import from_url
from wsgi_channels.layers.hashring import HashRing
from wsgi_channels.layers.redis import RedisChannelLayer

pytestmark = pytest.mark.timeout(90)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def client_for(server) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, protocol=2)


def keys_of(server, pattern: str = "*") -> list[str]:
    return sorted(k.decode() for k in client_for(server).scan_iter(match=pattern, count=1000))


def sending_later(layer, channel: str, messages: list, delay: float = 0.3) -> threading.Thread:
    """A started thread that sends ``messages`` to ``channel`` after ``delay`` seconds."""
    def run() -> None:
        time.sleep(delay)
        for message in messages:
            layer.send(channel, message)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


class Monitor:
    """Every command a Redis server receives from clients (not from inside scripts), via MONITOR."""

    def __init__(self, server) -> None:
        self.port = server.port
        self.lines: list[str] = []
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sock.sendall(b"MONITOR\r\n")
        self.file = self.sock.makefile("rb")
        assert self.file.readline().strip() == b"+OK"
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.marker = f"end-of-monitor-{id(self)}"

    def _read(self) -> None:
        for raw in self.file:
            line = raw.decode(errors="replace").strip()
            self.lines.append(line)
            if self.marker in line:
                return

    def stop(self) -> list[str]:
        """Client commands seen (names only, upper case), excluding the marker."""
        r = redis.Redis(host="127.0.0.1", port=self.port, protocol=2)
        r.echo(self.marker)
        r.close()
        self.thread.join(10)
        self.sock.close()
        commands = []
        for line in self.lines:
            if self.marker in line or "lua]" in line:
                continue
            m = re.match(r'^\+?[\d.]+ \[\d+ [^\]]+\] "([^"]+)"', line)
            if m:
                commands.append(m.group(1).upper())
        return commands


# -- the hash ring --------------------------------------------------------------------------------


def test_ring_adding_a_fourth_shard_moves_about_a_quarter():
    names = [f"chat.room{i}" for i in range(6000)] + [f"sidecar.{i}!" for i in range(6000)] + \
            [f"http.response?{i:08x}" for i in range(6000)] + [f"group-{i}" for i in range(6000)]
    three = HashRing(["10.0.0.1:6379/0", "10.0.0.2:6379/0", "10.0.0.3:6379/0"])
    four = HashRing(["10.0.0.1:6379/0", "10.0.0.2:6379/0", "10.0.0.3:6379/0", "10.0.0.4:6379/0"])
    before = {n: three.node_for(n) for n in names}
    after = {n: four.node_for(n) for n in names}
    moved = [n for n in names if before[n] != after[n]]
    assert 0.20 <= len(moved) / len(names) <= 0.30, len(moved) / len(names)
    assert all(after[n] == 3 for n in moved), "a name moved between two of the old shards"
    shares = [sum(1 for n in names if before[n] == i) / len(names) for i in range(3)]
    assert all(0.27 <= s <= 0.40 for s in shares), shares


def test_ring_does_not_depend_on_shard_order():
    a = HashRing(["h1:1/0", "h2:1/0", "h3:1/0"])
    b = HashRing(["h3:1/0", "h1:1/0", "h2:1/0"])
    for i in range(2000):
        name = f"n{i}"
        assert a.nodes[a.node_for(name)] == b.nodes[b.node_for(name)]


def test_names_spread_over_every_shard_and_prefixes_stay_together(redis_shards, made):
    layer = made(",".join(s.url for s in redis_shards), prefix="spreadtest")
    layer.flush()
    for i in range(60):
        layer.send(f"spread.{i}", {"i": i})
        layer.send(f"proc{i % 5}!conn{i}", {"i": i})
    counts = [len(keys_of(s, "spreadtest:q:*")) for s in redis_shards]
    assert all(c > 0 for c in counts), counts
    assert sum(counts) == 65  # 60 channels + 5 prefixes: every message of one prefix on one queue
    for i in range(5):
        got = []
        while True:
            ch, msg = layer.receive([f"proc{i}!"])
            if ch is None:
                break
            got.append(msg["i"])
        assert got == [j for j in range(60) if j % 5 == i]
    layer.flush()


# -- round trips ----------------------------------------------------------------------------------


def test_one_round_trip_per_send_receive_and_group_send(fresh_redis, made):
    layer = made(fresh_redis.url)
    layer.send("warm.up", {"x": 0})  # connect and load scripts outside the count
    layer.receive(["warm.up"])
    layer.group_add("rt.group", "rt.a")
    layer.group_add("rt.group", "rt.p!c1")
    layer.group_add("rt.group", "rt.p!c2")
    layer.send_group("rt.group", {"warm": True})
    while layer.receive(["rt.a", "rt.p!"])[0]:
        pass
    mon = Monitor(fresh_redis)
    time.sleep(0.05)
    layer.send("rt.chan", {"x": 1})
    layer.send("rt.p!c1", {"x": 2})
    assert layer.receive(["rt.chan"]) == ("rt.chan", {"x": 1})
    assert layer.receive(["rt.p!"]) == ("rt.p!c1", {"x": 2})
    layer.send_group("rt.group", {"g": 1})
    commands = mon.stop()
    # one command each: a receive from one plain channel is a plain LPOP, the rest are scripts
    assert commands == ["EVALSHA", "EVALSHA", "LPOP", "EVALSHA", "EVALSHA"], commands
    # The group message for two members of one prefix is one entry; both members get it locally.
    got = sorted(layer.receive(["rt.p!"])[0] for _ in range(2))
    assert got == ["rt.p!c1", "rt.p!c2"]


def test_group_send_is_one_round_trip_per_shard(redis_shards, made):
    layer = made(",".join(s.url for s in redis_shards), prefix="rtshards")
    layer.flush()
    members = [f"rts.{i}" for i in range(30)]
    for m in members:
        layer.group_add("rts.group", m)
    layer.send_group("rts.group", {"warm": 1})
    monitors = [Monitor(s) for s in redis_shards]
    time.sleep(0.05)
    layer.send_group("rts.group", {"n": 1})
    for mon in monitors:
        assert mon.stop() == ["EVALSHA"]
    received = []
    while True:
        ch, msg = layer.receive(members)
        if ch is None:
            break
        received.append((ch, sorted(msg.items())))
    assert sorted(received) == sorted([(m, [("warm", 1)]) for m in members] + [(m, [("n", 1)]) for m in members])
    layer.flush()


def test_broadcast_to_one_prefix_stores_one_copy(fresh_redis, made):
    layer = made(fresh_redis.url, capacity=2, channel_capacity={"side.*!": 2})
    members = [f"side.one!c{i}" for i in range(2000)]
    for m in members:
        layer.group_add("everyone", m)
    body = {"text": "x" * 500}
    for n in range(3):  # three broadcasts: more than the prefix's capacity of 2 would allow one by one
        layer.send_group("everyone", {**body, "n": n})
        if n == 1:
            r = client_for(fresh_redis)
            assert r.llen("wsgi_channels:q:{side.one!}") == 2
            entry = r.lindex("wsgi_channels:q:{side.one!}", 0)
            assert len(entry) < 500 + 2000 * 20  # one body, not 2000
            assert layer.global_statistics()["group_drop_count"] == 0
            # FIFO per member, all members: drain the first two broadcasts
            seen = {}
            for _ in range(4000):
                ch, msg = layer.receive(["side.one!"])
                seen.setdefault(ch, []).append(msg["n"])
            assert len(seen) == 2000 and all(v == [0, 1] for v in seen.values())
    assert layer.channel_statistics("side.one!")["messages_pending"] == 2000
    got = [layer.receive(["side.one!"]) for _ in range(2000)]
    assert sorted(c for c, _ in got) == sorted(members)
    assert {m["n"] for _, m in got} == {2}
    assert layer.receive(["side.one!"]) == (None, None)


# -- keys: none left behind, prefixes, hash tags ----------------------------------------------------


KEY_RE = re.compile(r"^(?P<prefix>[^{}]+):(?P<kind>q|u|m|g|gc|gp|s):\{(?P<tag>[^{}]+)\}$")


def test_no_keys_left_after_messages_are_received_or_expire(fresh_redis, made):
    layer = made(fresh_redis.url, expiry=1)
    layer.send("left.plain", {"x": 1})
    layer.send("left.p!a", {"x": 1})
    reply = layer.new_channel("left.reply?")
    layer.send(reply, {"x": 1})
    assert len(keys_of(fresh_redis)) == 3
    assert layer.receive(["left.plain"])[0] == "left.plain"
    assert layer.receive(["left.p!"])[0] == "left.p!a"
    assert layer.receive([reply])[0] == reply
    assert keys_of(fresh_redis) == []
    # groups: keys live while members do, and go with the last discard
    layer.group_add("left.g", "left.plain")
    layer.group_add("left.g", "left.p!a")
    layer.send_group("left.g", {"g": 1})
    assert layer.receive(["left.plain"])[0] == "left.plain"
    assert layer.receive(["left.p!"])[0] == "left.p!a"
    layer.group_discard("left.g", "left.plain")
    layer.group_discard("left.g", "left.p!a")
    assert keys_of(fresh_redis) == []
    # unread messages and sessions vanish with their TTLs
    layer.send("left.unread", {"x": 1})
    layer.send("left.q!b", {"x": 1})
    layer.send(layer.new_channel("left.r?"), {"x": 1})
    layer.session_set("left-session", b"v", ttl=0.5)
    assert len(keys_of(fresh_redis)) == 4
    time.sleep(1.3)
    assert keys_of(fresh_redis) == []


def test_expired_group_members_and_dead_prefixes_leave_no_keys(fresh_redis, made):
    layer = made(fresh_redis.url, expiry=0.5, group_expiry=1)
    layer.group_add("gone.g", "gone.p!a")
    layer.group_add("gone.g", "gone.plain")
    layer.send_group("gone.g", {"x": 1})
    time.sleep(1.3)
    # membership expired and messages expired unread: group ops clean up lazily, TTLs do the rest
    assert layer.group_channels("gone.g") == []
    time.sleep(0.2)
    assert keys_of(fresh_redis) == []


def test_slow_reader_only_loses_the_members_whose_message_expired(fresh_redis, made):
    layer = made(fresh_redis.url, expiry=1)
    layer.group_add("slow.g", "slow.p!a")
    layer.group_add("slow.h", "slow.p!a")
    layer.group_add("slow.g", "slow.p!b")
    layer.send("slow.p!a", {"only": "a"})
    time.sleep(0.6)
    layer.send("slow.p!b", {"fresh": True})
    time.sleep(0.6)  # the reader is alive but comes too late for a's message, in time for b's
    assert layer.receive(["slow.p!"]) == ("slow.p!b", {"fresh": True})
    assert layer.group_channels("slow.g") == ["slow.p!b"]
    assert layer.group_channels("slow.h") == []


def test_keys_carry_hash_tags_and_prefix(fresh_redis, made):
    layer = made(fresh_redis.url, prefix="tagged")
    layer.group_add("tag.g", "tag.p!a")
    layer.group_add("tag.g", "tag.chan")
    layer.send_group("tag.g", {"x": 1})
    layer.send("tag.other", {"x": 1})
    layer.session_set("sess", b"x", ttl=60)
    found = {}
    for key in keys_of(fresh_redis):
        m = KEY_RE.match(key)
        assert m, key
        assert m.group("prefix") == "tagged"
        found.setdefault(m.group("kind"), set()).add(m.group("tag"))
    assert found["q"] == {"tag.p!", "tag.chan", "tag.other"}
    assert found["u"] == found["m"] == {"tag.p!"}  # a prefix's keys share its tag (one Cluster slot)
    assert found["g"] == found["gc"] == found["gp"] == {"tag.g"}  # the fan-out plan beside its group
    assert found["s"] == {"sess"}


def test_two_applications_share_a_redis_by_prefix(fresh_redis, made):
    app1 = made(fresh_redis.url, prefix="app1")
    app2 = made(fresh_redis.url + "?prefix=app2")
    assert app2.prefix == "app2"
    r = client_for(fresh_redis)
    r.set("unrelated", b"keep")
    r.set("app1x:q:{a}", b"keep")  # looks close to app1's keys but is not one
    app1.send("shared.name", {"app": 1})
    app2.send("shared.name", {"app": 2})
    app1.group_add("g", "shared.name")
    app2.session_set("s", b"2", ttl=60)
    app1.flush()
    assert app1.receive(["shared.name"]) == (None, None)
    assert app2.receive(["shared.name"]) == ("shared.name", {"app": 2})
    assert app2.session_get("s") == b"2"
    assert r.get("unrelated") == b"keep" and r.get("app1x:q:{a}") == b"keep"
    app2.flush()
    assert keys_of(fresh_redis) == ["app1x:q:{a}", "unrelated"]


def test_flush_uses_scan_and_clears_sessions_on_every_shard(redis_shards, made):
    layer = made([s.url for s in redis_shards], prefix="flushtest")
    for i in range(40):
        layer.session_set(f"session:{i}", b"v", ttl=60)
        layer.send(f"flush.{i}", {"i": i})
    assert all(keys_of(s, "flushtest:s:*") for s in redis_shards)  # sessions hashed over shards
    monitors = [Monitor(s) for s in redis_shards]
    layer.flush()
    for mon in monitors:
        commands = mon.stop()
        assert "KEYS" not in commands and "SCAN" in commands
    assert all(keys_of(s, "flushtest:*") == [] for s in redis_shards)
    assert layer.session_get("session:3") is None


# -- configuration ----------------------------------------------------------------------------------


def test_a_key_prefix_ending_in_a_newline_is_refused(redis_server):
    # '$' with re.match would accept it, and the prefix ends up inside every key name.
    with pytest.raises(exc.ConfigurationError, match="prefix"):
        from_url(redis_server.url, prefix="wsgi_channels\n")


def test_from_url_forms(redis_shards, made):
    urls = [s.url for s in redis_shards]
    a = made(",".join(u + "?capacity=7" for u in urls))
    b = made(urls, capacity=9)
    c = made(urls[0] + "?capacity=3&expiry=5&prefix=p1")
    assert isinstance(a, RedisChannelLayer) and len(a.hosts) == 3 and a.capacity == 7
    assert len(b.hosts) == 3 and b.capacity == 9
    assert len(c.hosts) == 1 and (c.capacity, c.expiry, c.prefix) == (3, 5.0, "p1")
    assert "?" not in c.hosts[0]
    with pytest.raises(exc.ConfigurationError, match="disagree"):
        from_url(f"{urls[0]}?capacity=1,{urls[1]}?capacity=2")
    with pytest.raises(exc.ConfigurationError, match="prefix"):
        from_url(urls[0], prefix="bad{prefix}")
    with pytest.raises(exc.ConfigurationError, match="capasity"):
        from_url(urls[0] + "?capasity=3")
    # connection options stay in the URL for redis-py; encryption keys are comma-separated
    d = made(f"{urls[0]}?client_name=bench&symmetric_encryption_keys=k1,k2&capacity=4,{urls[1]}?capacity=4")
    assert len(d.hosts) == 2 and d.capacity == 4 and d._bodies.fernet is not None
    assert "client_name=bench" in d.hosts[0] and "symmetric" not in d.hosts[0]
    d.send("url.opts", {"n": 1})
    assert d.receive(["url.opts"]) == ("url.opts", {"n": 1})
    d._shards[0].execute("PING")
    assert any(c.get("name") == "bench" for c in client_for(redis_shards[0]).client_list())
    with pytest.raises(exc.ConfigurationError, match="redis"):
        RedisChannelLayer(hosts=[urls[0], "http://x:1/"])


@pytest.mark.parametrize("url, names", [
    ("redis://127.0.0.1:notaport/0", "notaport"),
    ("redis://127.0.0.1:99999/0", "out of range"),
    ("redis://127.0.0.1:6379/abc", "database 'abc'"),
    ("redis://", "no host"),
    ("redis://[::1", "IPv6"),
    ("redis://127.0.0.1:6379/0?socket_timeout=abc", "socket_timeout"),
    ("redis://127.0.0.1:6379/0,redis://h:x/0", "'redis://h:x/0'"),
])
def test_unusable_urls_are_configuration_errors(url, names):
    """A typo in the URL is refused at once, naming the bad part (never a bare ValueError or db 0)."""
    with pytest.raises(exc.ConfigurationError, match=re.escape(names)):
        from_url(url)


def test_password_and_db_from_url(made):
    from servers import RedisServer

    server = RedisServer(password="s3cret").start()
    try:
        layer = made(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        layer.send("auth.chan", {"ok": 1})
        assert layer.receive(["auth.chan"]) == ("auth.chan", {"ok": 1})
        assert "s3cret" not in repr(layer)
        for bad in (f"redis://:wrong@127.0.0.1:{server.port}/3", f"redis://127.0.0.1:{server.port}/3"):
            with pytest.raises(exc.ConfigurationError, match="authentication") as info:
                made(bad).send("auth.chan", {"ok": 1})
            assert "s3cret" not in str(info.value) and "wrong" not in str(info.value)
    finally:
        server.stop()


# -- restarts ---------------------------------------------------------------------------------------


def test_survives_a_redis_restart(fresh_redis, made):
    layer = made(fresh_redis.url)
    layer.send("rs.chan", {"before": 1})
    assert layer.receive(["rs.chan"], block=True, timeout=1) == ("rs.chan", {"before": 1})
    fresh_redis.stop()
    for call in (lambda: layer.send("rs.chan", {"x": 1}), lambda: layer.receive(["rs.chan"]),
                 lambda: layer.receive(["rs.chan"], block=True, timeout=2),
                 lambda: layer.send_group("rs.g", {"x": 1}), lambda: layer.group_add("rs.g", "rs.chan"),
                 lambda: layer.session_get("k"), lambda: layer.flush()):
        start = time.monotonic()
        with pytest.raises(exc.LayerUnavailable) as info:
            call()
        assert time.monotonic() - start < 1.0
        assert isinstance(info.value, exc.ChannelsError) and isinstance(info.value, ConnectionError)
        assert "unavailable" in str(info.value) and str(fresh_redis.port) in str(info.value)
    fresh_redis.start()
    layer.send("rs.chan", {"after": 1})
    assert layer.receive(["rs.chan"]) == ("rs.chan", {"after": 1})

    # a blocking receive right after the restart is woken promptly (its listener reconnected)
    t = sending_later(layer, "rs.chan", [{"late": 1}])
    start = time.monotonic()
    assert layer.receive(["rs.chan"], block=True, timeout=5) == ("rs.chan", {"late": 1})
    t.join()
    assert time.monotonic() - start < 1.5


def test_blocking_receive_across_a_restart(fresh_redis, made):
    layer = made(fresh_redis.url)
    result = {}

    def waiter():
        try:
            result["got"] = layer.receive(["rs2.chan"], block=True, timeout=3)
        except exc.LayerUnavailable as e:
            result["error"] = e

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.3)
    fresh_redis.restart()
    t.join(6)
    assert not t.is_alive()
    # Either the waiter saw the outage or it finished its wait normally; it never hangs.
    assert "error" in result or result["got"] == (None, None)
    sender = made(fresh_redis.url)

    sending_later(sender, "rs2.chan", [{"n": 1}])
    assert layer.receive(["rs2.chan"], block=True, timeout=5) == ("rs2.chan", {"n": 1})


# -- encryption -------------------------------------------------------------------------------------


def test_symmetric_encryption_with_key_rotation(fresh_redis, made):
    old = made(fresh_redis.url, symmetric_encryption_keys=["old-secret"])
    new = made(fresh_redis.url, symmetric_encryption_keys=["new-secret", "old-secret"])
    plain = made(fresh_redis.url)
    old.send("enc.chan", {"secret": "attack at dawn"})
    raw = client_for(fresh_redis).lindex("wsgi_channels:q:{enc.chan}", 0)
    assert b"attack at dawn" not in raw
    assert new.receive(["enc.chan"]) == ("enc.chan", {"secret": "attack at dawn"})
    new.group_add("enc.g", "enc.p!a")
    new.send_group("enc.g", {"secret": "group"})
    raw = client_for(fresh_redis).lindex("wsgi_channels:q:{enc.p!}", 0)
    assert b"group" not in raw and b"enc.p!a" in raw  # names stay readable for eviction
    assert new.receive(["enc.p!"]) == ("enc.p!a", {"secret": "group"})
    new.send("enc.chan", {"n": 2})
    with pytest.raises(exc.ChannelsError, match="decrypt"):
        old.receive(["enc.chan"])  # encrypted with a key old does not have
    plain.send("enc.chan", {"n": 3})
    with pytest.raises(exc.ChannelsError):
        new.receive(["enc.chan"])
    with pytest.raises(exc.ConfigurationError, match="list"):
        RedisChannelLayer(hosts=fresh_redis.url, symmetric_encryption_keys="just-a-string")


def test_missing_cryptography_is_a_clear_configuration_error(redis_server):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["cryptography"] = None  # as if it were not installed
        from wsgi_channels.layers import from_url
        from wsgi_channels.exceptions import ConfigurationError
        from_url({redis_server.url!r})  # fine without encryption
        try:
            from_url({redis_server.url!r}, symmetric_encryption_keys=["k"])
        except ConfigurationError as e:
            print("ERR", e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "ERR" in out.stdout and "cryptography" in out.stdout and "pip install" in out.stdout


# -- other processes ---------------------------------------------------------------------------------


def test_another_process_sends_while_we_receive(redis_shards, made):
    url = ",".join(s.url for s in redis_shards)
    layer = made(url, prefix="subproc")
    layer.flush()
    # The sender backs off on ChannelFull as a producer should: the receiver, one message per call
    # over three shards, may fall 100 messages behind on a loaded machine.
    code = textwrap.dedent(f"""
        import time
        from wsgi_channels.exceptions import ChannelFull
        from wsgi_channels.layers import from_url
        layer = from_url({url!r}, prefix="subproc")

        def send(channel, message):
            give_up = time.monotonic() + 20
            while True:
                try:
                    return layer.send(channel, message)
                except ChannelFull:
                    if time.monotonic() > give_up:
                        raise
                    time.sleep(0.01)

        time.sleep(0.3)
        for i in range(200):
            send("sub.work", {{"i": i}})
            send("sub.proc!conn" + str(i % 3), {{"i": i, "b": b"\\x00"}})
        layer.group_add("sub.g", "sub.proc!conn0")
        layer.send_group("sub.g", {{"done": True}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        work, local = [], []
        deadline = time.monotonic() + 30
        while (len(work) < 200 or len(local) < 201) and time.monotonic() < deadline:
            ch, msg = layer.receive(["sub.work", "sub.proc!"], block=True, timeout=5)
            if ch == "sub.work":
                work.append(msg["i"])
            elif ch is not None:
                local.append((ch, msg))
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert work == list(range(200))
    assert [m["i"] for _, m in local[:200]] == list(range(200))
    assert all(ch == f"sub.proc!conn{m['i'] % 3}" and m["b"] == b"\x00" for ch, m in local[:200])
    assert local[200] == ("sub.proc!conn0", {"done": True})
    layer.flush()


def test_forked_child_gets_its_own_connections(redis_server, made):
    layer = made(redis_server.url, prefix="forktest")
    shard = layer._shards[0]
    parent_id = shard.execute("CLIENT", "ID")
    layer.send("fork.chan", {"from": "parent"})
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not touch the parent's socket
        status = 1
        try:
            child_id = shard.execute("CLIENT", "ID")
            got = layer.receive(["fork.chan"], block=True, timeout=5)
            layer.send("fork.back", {"from": "child"})
            os.write(write_end, f"{child_id} {got[1]['from']}".encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    report = os.read(read_end, 100).decode()
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0
    child_id, got = report.split()
    assert int(child_id) != parent_id and got == "parent"
    assert shard.execute("CLIENT", "ID") == parent_id  # the parent's connection is intact
    assert layer.receive(["fork.back"]) == ("fork.back", {"from": "child"})
    layer.flush()


def test_receive_loop_in_a_greenlet_under_gevent(redis_shards):
    url = ",".join(s.url for s in redis_shards)
    code = textwrap.dedent(f"""
        from gevent import monkey
        monkey.patch_all()
        import time, gevent
        from wsgi_channels.layers import from_url
        layer = from_url({url!r}, prefix="geventtest")
        layer.flush()
        got, delays = [], []
        def loop():
            while len(got) < 30:
                ch, msg = layer.receive(["gv.a", "gv.b", "gv.p!"], block=True, timeout=5)
                if ch is not None:
                    got.append(ch)
                    delays.append(time.monotonic() - msg["t"])
        def ticker():  # other greenlets keep running while the loop waits
            n = 0
            while len(got) < 30:
                gevent.sleep(0.01)
                n += 1
            print("TICKS", n)
        g = [gevent.spawn(loop), gevent.spawn(ticker)]
        for i in range(30):
            gevent.sleep(0.02)
            layer.send(["gv.a", "gv.b", "gv.p!x"][i % 3], {{"t": time.monotonic()}})
        gevent.joinall(g, timeout=20)
        layer.flush()
        print("GOT", len(got), "MAXDELAY", max(delays))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    m = re.search(r"GOT (\d+) MAXDELAY ([\d.e-]+)", out.stdout)
    assert m, out.stdout + out.stderr
    assert int(m.group(1)) == 30
    assert float(m.group(2)) < 0.5, out.stdout
    assert int(re.search(r"TICKS (\d+)", out.stdout).group(1)) > 20


def test_blocking_receive_wakes_within_milliseconds_across_shards(redis_shards, made):
    layer = made([s.url for s in redis_shards], prefix="wake")
    sender = made([s.url for s in redis_shards], prefix="wake")
    names = [f"wake.{i}" for i in range(12)]
    shards_hit = {layer._ring.node_for(n) for n in names}
    assert shards_hit == {0, 1, 2}
    delays = []
    for target in names[:6]:
        def later(t=target):
            time.sleep(0.1)
            sender.send(t, {"t": time.monotonic()})

        th = threading.Thread(target=later)
        th.start()
        ch, msg = layer.receive(names, block=True, timeout=5)
        th.join()
        assert ch == target
        delays.append(time.monotonic() - msg["t"])
    assert sorted(delays)[len(delays) // 2] < 0.1, delays


# -- batches (the sidecar's reading path) -------------------------------------------------------------


def test_receive_batch_blocks_only_for_the_first_message(fresh_redis, made):
    layer = made(fresh_redis.url)
    start = time.monotonic()
    assert layer.receive_batch(["bb.chan"], 10, block=True, timeout=0.3) == []
    assert 0.25 <= time.monotonic() - start < 2

    t = sending_later(layer, "bb.chan", [{"i": i} for i in range(5)], delay=0.2)
    batch = layer.receive_batch(["bb.chan"], 10, block=True, timeout=5)
    t.join()
    rest = layer.receive_batch(["bb.chan"], 10)
    assert [m["i"] for _, m in batch + rest] == list(range(5))
    with pytest.raises(ValueError):
        layer.receive_batch(["bb.chan"], 0)
    with pytest.raises(TypeError):
        layer.receive_batch(["bad name"], 5)


@pytest.mark.parametrize("channel, name", [("bd.chan", "bd.chan"), ("bd.side!", "bd.side!c1")])
def test_a_batch_that_emptied_its_queue_then_waits_and_a_full_one_does_not(fresh_redis, made, channel, name):
    """After a batch shorter than its limit (the queue was emptied), the next blocking batch
    waits for a push (doorbell or BLPOP) and answers as soon as one comes; after a full batch
    it takes what is left at once. Plain channels and a process prefix take different paths."""
    layer = made(fresh_redis.url)
    sender = made(fresh_redis.url)
    for i in range(3):
        sender.send(name, {"i": i})
    assert [m["i"] for _, m in layer.receive_batch([channel], 2, block=True, timeout=5)] == [0, 1]
    start = time.monotonic()
    assert [m["i"] for _, m in layer.receive_batch([channel], 2, block=True, timeout=5)] == [2]
    assert time.monotonic() - start < 1, "a full batch leaves the queue to be read at once"
    start = time.monotonic()
    assert layer.receive_batch([channel], 5, block=True, timeout=0.3) == []  # drained: waits, then times out
    assert 0.25 <= time.monotonic() - start < 2

    for _ in range(3):  # drained each time: every wait must still end with the next push
        t = sending_later(sender, name, [{"i": i} for i in range(3, 6)])
        start = time.monotonic()
        got = layer.receive_batch([channel], 5, block=True, timeout=5)
        waited = time.monotonic() - start
        t.join()
        got += layer.receive_batch([channel], 5, block=True, timeout=0.3)
        assert [m["i"] for _, m in got] == [3, 4, 5] and 0.2 < waited < 2, (got, waited)
        got.clear()


@pytest.mark.parametrize("server, has_blmpop", [("fresh_redis", True), ("redis6_server", False)])
def test_batch_receive_on_plain_channels_uses_blmpop_where_redis_has_it(request, made, server, has_blmpop):
    """Redis 7: a blocking batch receive on plain channels is one BLMPOP (a backlog, or the next
    messages, whole); Redis 6.0 has none, and the same calls give the same messages another way."""
    url = request.getfixturevalue(server).url
    layer, sender = made(url), made(url)
    layer.flush()
    for i in range(5):
        sender.send("bm.chan", {"i": i})
    sender.send("bm.other", {"i": 99})
    got = layer.receive_batch(["bm.chan", "bm.other"], 3, block=True, timeout=5)
    assert layer._shards[0].blmpop is has_blmpop
    got += layer.receive_batch(["bm.chan", "bm.other"], 10, block=True, timeout=5)
    got += layer.receive_batch(["bm.chan", "bm.other"], 10, block=True, timeout=5)
    assert [m["i"] for c, m in got if c == "bm.chan"] == [0, 1, 2, 3, 4]
    assert [m["i"] for c, m in got if c == "bm.other"] == [99]
    assert len(got) == 6

    t = sending_later(sender, "bm.chan", [{"i": 5}])
    start = time.monotonic()
    assert [m["i"] for _, m in layer.receive_batch(["bm.chan"], 10, block=True, timeout=5)] == [5]
    assert 0.2 < time.monotonic() - start < 2
    t.join()
    # An expired entry is dropped, never handed out.
    short = made(url, expiry=1)
    short.send("bm.chan", {"i": "old"})
    time.sleep(1.1)
    sender.send("bm.chan", {"i": 7})
    assert [m["i"] for _, m in layer.receive_batch(["bm.chan"], 10, block=True, timeout=5)] == [7]


def test_batch_receive_falls_back_when_an_acl_forbids_blmpop(fresh_redis, made):
    admin = client_for(fresh_redis)
    admin.execute_command("ACL", "SETUSER", "noblmpop", "on", ">pw", "~*", "&*", "+@all", "-blmpop")
    url = fresh_redis.url.replace("redis://", "redis://noblmpop:pw@")
    layer = made(url)
    layer.send("acl.chan", {"i": 1})
    assert layer.receive_batch(["acl.chan"], 5, block=True, timeout=5) == [("acl.chan", {"i": 1})]
    assert layer._shards[0].blmpop is False
    t = sending_later(layer, "acl.chan", [{"i": 2}])
    assert layer.receive_batch(["acl.chan"], 5, block=True, timeout=5) == [("acl.chan", {"i": 2})]
    t.join()


def test_an_unreadable_message_does_not_cost_the_rest_of_a_batch(fresh_redis, made, caplog):
    enc = made(fresh_redis.url, symmetric_encryption_keys=["k"])
    plain = made(fresh_redis.url)
    enc.send("mixed.chan", {"n": 1})
    plain.send("mixed.chan", {"n": 2})  # not encrypted: enc cannot read it
    enc.send("mixed.chan", {"n": 3})
    with caplog.at_level("ERROR", logger="wsgi_channels.layers.redis"):
        batch = enc.receive_batch(["mixed.chan"], 10)
    assert batch == [("mixed.chan", {"n": 1}), ("mixed.chan", {"n": 3})]
    assert "unreadable" in caplog.text
    client_for(fresh_redis).rpush("wsgi_channels:q:{mixed.chan}", b"9999999999999m\xc1garbage")
    with pytest.raises(exc.ChannelsError, match="decoded"):
        plain.receive(["mixed.chan"])
    plain.send("mixed.chan", {"n": 4})
    assert plain.receive(["mixed.chan"]) == ("mixed.chan", {"n": 4})


# -- the fan-out's rarer paths --------------------------------------------------------------------------


def test_group_send_at_capacity_makes_room_from_expired_entries(fresh_redis, made):
    layer = made(fresh_redis.url, expiry=1, capacity=2, channel_capacity={"cap.p!": 2})
    layer.group_add("cap.g", "cap.plain")
    layer.group_add("cap.g", "cap.p!a")
    layer.group_add("cap.g", "cap.p!b")
    layer.send("cap.plain", {"n": 1})
    layer.send("cap.p!a", {"n": 1})
    time.sleep(0.6)
    layer.send("cap.plain", {"n": 2})
    layer.send("cap.p!b", {"n": 2})
    time.sleep(0.6)  # the first messages expired; both queues are still at capacity
    layer.send_group("cap.g", {"g": True})
    assert layer.global_statistics()["group_drop_count"] == 0
    assert drain_all(layer, ["cap.plain"]) == [("cap.plain", {"n": 2}), ("cap.plain", {"g": True})]
    # cap.p!a's message expired unread, so it left the group before the broadcast
    assert drain_all(layer, ["cap.p!"]) == [("cap.p!b", {"n": 2}), ("cap.p!b", {"g": True})]
    assert sorted(layer.group_channels("cap.g")) == ["cap.p!b", "cap.plain"]
    layer.send("cap.plain", {"n": 3})
    layer.send("cap.plain", {"n": 4})
    layer.send_group("cap.g", {"g": 2})  # now truly full: cap.plain is skipped and counted
    assert layer.global_statistics()["group_drop_count"] == 1


def test_group_send_to_a_dead_prefix_evicts_it_without_queueing(fresh_redis, made):
    layer = made(fresh_redis.url, expiry=0.5)
    layer.group_add("dead.g", "gone.p!a")
    layer.group_add("dead.h", "gone.p!a")
    layer.group_add("dead.g", "alive.chan")
    layer.send_group("dead.g", {"n": 1})
    assert layer.receive(["alive.chan"]) == ("alive.chan", {"n": 1})
    time.sleep(0.8)  # gone.p!'s message expired unread: nobody reads that prefix any more
    layer.send_group("dead.g", {"n": 2})
    assert layer.receive(["alive.chan"]) == ("alive.chan", {"n": 2})
    assert layer.group_channels("dead.g") == ["alive.chan"]
    assert layer.group_channels("dead.h") == []
    assert keys_of(fresh_redis, "wsgi_channels:q:*") == []  # nothing queued for the dead prefix


def test_large_broadcast_names_its_members_through_one_key(fresh_redis, made):
    # From REF_MIN members of one prefix, the entry names a P:t: key holding the members instead of
    # listing them, so no script copies the names per message; readers fetch them once.
    from wsgi_channels.layers.redis.scripts import REF_MIN

    sender = made(fresh_redis.url)
    reader = made(fresh_redis.url)  # another process: it has never seen the member list
    members = [f"big.side!c{i}" for i in range(REF_MIN + 44)]
    for m in members:
        sender.group_add("big.g", m)
    sender.group_add("big.g", "big.plain")
    for n in range(3):
        sender.send_group("big.g", {"n": n})
    r = client_for(fresh_redis)
    entries = r.lrange("wsgi_channels:q:{big.side!}", 0, -1)
    assert len(entries) == 3 and all(len(e) < 200 for e in entries)
    (tkey,) = keys_of(fresh_redis, "wsgi_channels:t:*")
    assert tkey.startswith("wsgi_channels:t:{big.side!}:")  # the prefix's hash tag
    assert 0 < r.pttl(tkey) <= 60_000 + 10_000
    assert reader.channel_statistics("big.side!")["messages_pending"] == 3 * len(members)
    mon = Monitor(fresh_redis)
    time.sleep(0.05)
    got = []
    while True:
        batch = reader.receive_batch(["big.side!"], 100)
        if not batch:
            break
        got += batch
    assert mon.stop().count("GET") == 1  # the member list, fetched once for the three messages
    per_member: dict = {}
    for channel, message in got:
        per_member.setdefault(channel, []).append(message["n"])
    assert sorted(per_member) == sorted(members) and all(v == [0, 1, 2] for v in per_member.values())
    assert drain_all(reader, ["big.plain"]) == [("big.plain", {"n": n}) for n in range(3)]
    # The key gone (it expires when no message names it for a while): the next broadcast remakes it.
    r.delete(tkey)
    sender.send_group("big.g", {"n": 3})
    assert keys_of(fresh_redis, "wsgi_channels:t:*") == [tkey]
    assert sorted(c for c, _ in reader.receive_batch(["big.side!"], 1000)) == sorted(members)
    # A new member makes a new list (another key); the old one is left to its TTL.
    sender.group_add("big.g", "big.side!new")
    sender.send_group("big.g", {"n": 4})
    assert len(keys_of(fresh_redis, "wsgi_channels:t:*")) == 2
    assert len(reader.receive_batch(["big.side!"], 1000)) == len(members) + 1
    sender.flush()
    assert keys_of(fresh_redis) == []


def test_large_broadcast_expired_unread_evicts_its_members(fresh_redis, made):
    from wsgi_channels.layers.redis.scripts import REF_MIN

    layer = made(fresh_redis.url, expiry=0.5)
    members = [f"lost.side!c{i}" for i in range(REF_MIN)]
    for m in members:
        layer.group_add("lost.g", m)
    layer.group_add("lost.g", "lost.plain")
    layer.send_group("lost.g", {"n": 1})
    time.sleep(0.8)  # nobody read the prefix in time: its members leave the group
    assert layer.receive(["lost.side!"]) == (None, None)
    assert layer.group_channels("lost.g") == ["lost.plain"]


def test_idle_connections_are_closed_after_a_burst(fresh_redis, made, monkeypatch):
    from wsgi_channels.layers.redis import connection

    monkeypatch.setattr(connection, "IDLE_CLOSE", 0.2)
    layer = made(fresh_redis.url)
    shard = layer._shards[0]
    links = [shard.acquire() for _ in range(12)]  # what a burst of 12 concurrent calls leaves behind
    for link in links:
        shard.release(link)
    assert shard.idle_connections() == 12
    r = client_for(fresh_redis)
    before = len(r.client_list())
    time.sleep(1.2)  # idle past IDLE_CLOSE, and the pool checks at most once a second
    layer.send("idle.chan", {"x": 1})
    assert shard.idle_connections() == 1  # the one just used stays
    assert len(r.client_list()) <= before - 11
    assert layer.receive(["idle.chan"]) == ("idle.chan", {"x": 1})


def drain_all(layer, channels):
    out = []
    while True:
        ch, msg = layer.receive(channels)
        if ch is None:
            return out
        out.append((ch, msg))


def test_a_long_outage_logs_the_lost_wakeup_listener_once(caplog):
    """The listener retries about every second while Redis is down; one warning per outage, not per try."""
    import logging

    from servers import RedisServer

    server = RedisServer().start()
    layer = from_url(server.url)
    try:
        # A process prefix is waited on through the wake-up listener (plain channels use BLPOP).
        assert layer.receive(["outage.proc!"], block=True, timeout=0.2) == (None, None)  # starts the listener
        with caplog.at_level(logging.DEBUG, logger="wsgi_channels.layers.redis.wakeup"):
            server.restart(down_for=3.0)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any("reconnected" in r.getMessage() for r in caplog.records):
                try:
                    layer.receive(["outage.proc!"], block=True, timeout=0.2)
                except exc.LayerUnavailable:
                    time.sleep(0.1)
        lost = [r for r in caplog.records if "wake-up listener lost" in r.getMessage()]
        assert len(lost) >= 3, "the listener should have retried several times during 3 s"
        assert [r.levelno for r in lost].count(logging.WARNING) == 1
        assert any("reconnected" in r.getMessage() for r in caplog.records)
    finally:
        layer.close()
        server.stop()


@pytest.mark.parametrize("server, has_blmpop", [("fresh_redis", True), ("redis6_server", False)])
def test_send_many_then_receive_sends_with_the_blocking_pop(request, made, server, has_blmpop):
    """The worker's call: a batch's replies go out with the pop that waits for its next batch (one
    round trip on Redis 7), with send_many's per-item outcomes; the replies are out at once even
    when the pop then waits."""
    url = request.getfixturevalue(server).url
    layer, sender = made(url, channel_capacity={"st.full": 1}), made(url)
    layer.flush()
    sender.send("st.full", {"n": 0})
    sender.send("st.work", {"w": 1})
    shard = layer._shards[0]
    trips, real = [], shard._roundtrip
    shard._roundtrip = lambda payload, count=None, **kw: (trips.append(count), real(payload, count, **kw))[1]
    outcomes: list = []
    items = [("st.reply1", {"r": 1}), ("st.full", {"n": 1}), ("bad name", {})]
    assert layer.send_many_then_receive(items, ["st.work"], 10, 5, outcomes) == [("st.work", {"w": 1})]
    assert outcomes[0] is None and isinstance(outcomes[1], exc.ChannelFull)
    assert isinstance(outcomes[2], exc.InvalidChannelName)
    if has_blmpop:
        assert trips == [3], "two sends and the BLMPOP: one write, one read"
    assert sender.receive(["st.reply1"]) == ("st.reply1", {"r": 1})
    assert sender.receive(["st.full"]) == ("st.full", {"n": 0}) and sender.receive(["st.full"]) == (None, None)

    # Nothing waiting: the reply is out while the pop still waits for the next message.
    seen = []
    reader = threading.Thread(target=lambda: seen.append(
        (sender.receive(["st.reply2"], block=True, timeout=5), time.monotonic())))
    reader.start()
    t = sending_later(sender, "st.work", [{"w": 2}], delay=0.5)
    start = time.monotonic()
    assert layer.send_many_then_receive([("st.reply2", {"r": 2})], ["st.work"], 10, 5, outcomes) \
        == [("st.work", {"w": 2})]
    assert outcomes == [None] and 0.4 < time.monotonic() - start < 3
    t.join()
    reader.join(10)
    assert seen[0][0] == ("st.reply2", {"r": 2}) and seen[0][1] - start < 0.4, seen
    # Nothing at all: the wait times out; the sends still went out.
    assert layer.send_many_then_receive([("st.reply3", {"r": 3})], ["st.work"], 10, 0.3, outcomes) == []
    assert sender.receive(["st.reply3"]) == ("st.reply3", {"r": 3})


def test_send_many_then_receive_over_shards(redis_shards, made):
    """Channels on several shards (no single BLMPOP): the sends, then the usual batch receive."""
    layer = made(",".join(s.url for s in redis_shards))
    layer.flush()
    names = [f"ss.chan{i}" for i in range(12)]
    assert len({layer._ring.node_for(n) for n in names}) > 1
    for i, name in enumerate(names):
        layer.send(name, {"i": i})
    outcomes: list = []
    got, replies = [], []
    while len(got) < 12 and len(replies) < 12:
        replies.append(f"ss.reply{len(replies)}")
        got += layer.send_many_then_receive([(replies[-1], {"n": len(replies)})], names, 12, 5, outcomes)
        assert outcomes == [None]
    assert sorted(m["i"] for _, m in got) == list(range(12))
    assert [layer.receive([r]) for r in replies] == [(r, {"n": n}) for n, r in enumerate(replies, 1)]


@pytest.mark.parametrize("server, has_blmpop", [("fresh_redis", True), ("redis6_server", False)])
def test_a_blocking_batch_on_a_process_prefix_keeps_what_the_receive_script_does(request, made, server,
                                                                                   has_blmpop):
    """The sidecar's loop: on Redis 7 a blocking batch on its one prefix is a BLMPOP, with the unread
    flag removed in the same round trip once the queue is empty. The flag, group messages, entries
    that expired in the queue and a prefix whose messages all expired unread behave as with the
    receive script (Redis 6.0 still uses it)."""
    url = request.getfixturevalue(server).url
    layer, sender = made(url, expiry=1), made(url, expiry=1)
    layer.flush()
    r = client_for(request.getfixturevalue(server))
    flag, members = "wsgi_channels:u:{bp.side!}", "wsgi_channels:m:{bp.side!}"
    layer.group_add("bp.g", "bp.side!a")
    layer.group_add("bp.g", "bp.side!b")
    sender.send("bp.side!a", {"n": 1})
    assert r.exists(flag), "a push to the empty queue of a prefix with members sets its unread flag"
    assert layer.receive_batch(["bp.side!"], 10, block=True, timeout=5) == [("bp.side!a", {"n": 1})]
    assert not r.exists(flag), "read: the flag is gone"

    sender.send_group("bp.g", {"g": 1})  # one entry for both members
    got = layer.receive_batch(["bp.side!"], 10, block=True, timeout=5)
    assert layer._shards[0].blmpop is has_blmpop  # the first call ran the script (see below)
    assert sorted(c for c, _ in got) == ["bp.side!a", "bp.side!b"] and all(m == {"g": 1} for _, m in got)
    assert not r.exists(flag), "read: the flag is gone"
    sender.send("bp.side!a", {"n": 1.5})
    assert layer.receive_batch(["bp.side!"], 10, block=True, timeout=5) == [("bp.side!a", {"n": 1.5})]
    assert not r.exists(flag)

    # An entry that expired in the queue is dropped when popped, and its member leaves its groups.
    sender.send("bp.side!b", {"n": "old"})
    time.sleep(0.6)
    sender.send("bp.side!a", {"n": 2})  # renews the queue's TTL, not the first entry's deadline
    time.sleep(0.5)
    assert layer.receive_batch(["bp.side!"], 10, block=True, timeout=5) == [("bp.side!a", {"n": 2})]
    assert r.hget(members, "bp.side!b") is None and r.hget(members, "bp.side!a") == b"bp.g"

    # Every message expired unread (the queue went with its TTL, the flag stayed): the next wait
    # buries the prefix, whose channels leave their groups.
    sender.send("bp.side!a", {"n": "lost"})
    time.sleep(1.2)
    assert r.exists(flag) and not r.exists("wsgi_channels:q:{bp.side!}")
    assert layer.receive_batch(["bp.side!"], 10, block=True, timeout=0.3) == []
    assert not r.exists(flag) and not r.exists(members)
    assert layer.group_channels("bp.g") == []


def test_a_push_right_after_a_blocking_pop_on_a_prefix_does_not_bury_it(fresh_redis, made):
    """A reader's BLMPOP empties its prefix's queue a moment before its READ_DONE clears the unread
    flag; a push in between finds the queue empty and the flag set, which used to mean "every message
    expired unread". The flag now holds the deadline of the message that set it, so a live reader's
    prefix keeps its memberships (this sequence buried them every time before the fix)."""
    reader, sender = made(fresh_redis.url), made(fresh_redis.url)
    members = [f"race.p!c{i}" for i in range(300)]
    for m in members:
        sender.group_add("race.g", m)
    got: list = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            got.extend(reader.receive_batch(["race.p!"], 100, block=True, timeout=0.5, shared=True))

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        time.sleep(0.3)
        for i in range(20):  # back to back: some land between a pop and its READ_DONE
            sender.send(members[i], {"single": i})
        sender.send_group("race.g", {"g": 1})
        deadline = time.monotonic() + 5
        while sum(1 for _, m in got if m.get("g") == 1) < len(members) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(10)
    assert sorted(m["single"] for _, m in got if "single" in m) == list(range(20))
    assert sorted(c for c, m in got if m.get("g") == 1) == sorted(members)
    assert len(sender.group_channels("race.g")) == len(members)


def test_a_stalled_redis_is_named_with_the_timeout_that_expired(fresh_redis):
    """Issue 20 item 4: a Redis that stops answering (here SIGSTOP) reads as the address, the timeout
    and the option that sets it, not as ``BlockingIOError: [Errno 11]`` (a kernel receive timeout)."""
    from wsgi_channels.layers import from_url

    layer = from_url(fresh_redis.url + "?socket_timeout=1")
    fresh = from_url(fresh_redis.url + "?socket_timeout=1.5")
    layer.send("stall.a", {"n": 1})  # a pooled connection, then a stall on it
    fresh_redis.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(exc.LayerUnavailable) as pooled:
            layer.send("stall.a", {"n": 2})
        with pytest.raises(exc.LayerUnavailable) as connecting:  # the kernel accepts; TIME is never answered
            fresh.receive(["stall.a"])
    finally:
        fresh_redis.send_signal(signal.SIGCONT)
    where = f"Redis at 127.0.0.1:{fresh_redis.port}"
    assert str(pooled.value).startswith(f"{where} did not answer within 1 s (option socket_timeout)"), pooled.value
    assert str(connecting.value).startswith(f"{where} did not answer within 1.5 s (option socket_timeout)")
    assert "Errno" not in str(pooled.value) + str(connecting.value)
    assert layer.receive(["stall.a"], block=True, timeout=2)[1] in ({"n": 1}, {"n": 2})  # and it goes on
    layer.close()
    fresh.close()
