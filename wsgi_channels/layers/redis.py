"""The Redis layer (``redis://``, ``rediss://``): every process of every machine, one or many shards.

Each operation is one Lua script (:mod:`._redis_scripts`), so one round trip:
``send`` checks capacity and queues the body inline; ``receive`` pops the first
live entry of the channels asked for on a shard (from one plain channel, a plain
``LPOP`` does that); ``send_group`` runs one fan-out
script on each shard (concurrently), which queues one copy per plain member and
one per process prefix naming all of that prefix's members. This process then
hands out one ``(channel, message)`` per member from that single copy.
``receive_batch`` pops up to N entries per shard in one script, for readers of
busy channels (the worker, the sidecar's ``prefix!`` loop).

Several shards are spread by a consistent-hash ring with virtual nodes
(:mod:`.hashring`): a channel by its name, a process-local channel by its
``prefix!``, a session key by the key. A group's memberships live beside each
member's queue, so a group send needs no member list on the wire and a channel
whose messages expire unread is evicted from its groups inside the same scripts.

A blocking ``receive`` is woken by pub/sub (:mod:`._redis_wakeup`) when a queue it
watches on any shard gets a message, so it wakes within milliseconds no matter
which shard the message lands on, and only the scripts ever pop.

Connections (:mod:`._redis_conn`) are made lazily per process (gunicorn forks
after import), never retried behind the caller's back (a resent ``send`` could
deliver twice), and a failure raises
:class:`~wsgi_channels.exceptions.LayerUnavailable`; the next call connects
afresh, so a Redis restart needs no process restart.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
import time
from typing import Any, Iterable, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgpack
from redis.backoff import NoBackoff
from redis.retry import Retry

from .. import exceptions as exc
from ..serialization import encode
from . import _redis_conn
from . import _redis_scripts as scripts
from ._redis_conn import Script, Shard, bulk, run_everywhere
from ._redis_copies import CopyBuffer, GroupMessage
from .base import BaseChannelLayer, non_local_name, validate_channel_name, validate_group_name
from .hashring import HashRing

__all__ = ["RedisChannelLayer"]

log = logging.getLogger(__name__)

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.\-:]{1,100}$")
_CACHE_LIMIT = 10_000
#: Layer keywords a URL's query string may set (``symmetric_encryption_keys`` separated by commas).
_URL_OPTIONS = frozenset({"expiry", "group_expiry", "capacity", "max_message_size", "process_capacity",
                          "prefix", "socket_timeout", "socket_connect_timeout", "ring_replicas",
                          "symmetric_encryption_keys"})
#: redis-py connection options a URL may carry (TLS files and checks, user name, client name, ...).
_CONNECTION_URL_OPTIONS = frozenset({
    "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_cert_reqs",
    "ssl_check_hostname", "ssl_min_version", "ssl_include_verify_flags", "ssl_exclude_verify_flags",
    "username", "client_name", "socket_keepalive", "socket_read_size", "health_check_interval",
    "max_connections", "db",
})
#: A comma starts a new URL only where a scheme follows (commas may appear inside a query value).
_URL_SEPARATOR = re.compile(r",(?=\s*rediss?://)", re.I)

_SEND = Script(scripts.SEND)
_RECEIVE = Script(scripts.RECEIVE)
_RECEIVE_MANY = Script(scripts.RECEIVE_MANY)
_FANOUT = Script(scripts.FANOUT)
_MEMBERS = Script(scripts.MEMBERS)
_GROUP_ADD = Script(scripts.GROUP_ADD)
_GROUP_DISCARD = Script(scripts.GROUP_DISCARD)
_EVICT = Script(scripts.EVICT)
_STATS = Script(scripts.STATS)

#: The last argument of a hot command: now on the server's clock in ms (13 digits until 2286).
_NOW = b"$13\r\n%d\r\n"


def _fernet(keys: Any) -> Any:
    if not keys:
        return None
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError:
        raise exc.ConfigurationError(
            "symmetric_encryption_keys needs the 'cryptography' package: pip install 'wsgi_channels[crypto]'"
        ) from None
    if isinstance(keys, (str, bytes)):
        raise exc.ConfigurationError("symmetric_encryption_keys must be a list of keys (the first encrypts)")
    fernets = []
    for key in keys:
        raw = key.encode() if isinstance(key, str) else bytes(key)
        if not raw:
            raise exc.ConfigurationError("symmetric_encryption_keys contains an empty key")
        # Any secret string becomes a valid Fernet key through SHA-256.
        fernets.append(Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest())))
    return MultiFernet(fernets)


def _split_urls(url_or_list: Any) -> list[str]:
    urls = _URL_SEPARATOR.split(url_or_list) if isinstance(url_or_list, str) else list(url_or_list)
    urls = [u.strip() for u in urls if isinstance(u, str) and u.strip()]
    if not urls:
        raise exc.ConfigurationError(f"no Redis URL given: {url_or_list!r}")
    for u in urls:
        _check_url(u)
    return urls


def _check_url(url: str) -> None:
    """Refuse a Redis URL whose host, port or database number cannot be used, naming the part."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number or out of range
    except ValueError as e:
        raise exc.ConfigurationError(f"invalid Redis URL {url!r}: {e}") from None
    if parts.scheme.lower() not in ("redis", "rediss"):
        raise exc.ConfigurationError(f"{url!r} is not a redis:// or rediss:// URL")
    if not parts.hostname:
        raise exc.ConfigurationError(f"invalid Redis URL {url!r}: no host (redis://HOST:PORT/DB)")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise exc.ConfigurationError(f"invalid Redis URL {url!r}: the database {db!r} is not a number")
    del port


def _connection_url(url: str) -> str:
    """``url`` with only the redis-py connection options in its query (checked by name)."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    unknown = sorted({k for k, _ in pairs} - _CONNECTION_URL_OPTIONS)
    if unknown:
        known = ", ".join(sorted(_URL_OPTIONS | _CONNECTION_URL_OPTIONS))
        raise exc.ConfigurationError(f"unknown Redis layer URL option(s) {', '.join(unknown)}; known: {known}")
    return urlunsplit(parts._replace(query=urlencode(pairs), fragment=""))


class _Watch:
    """One thread's doorbell registration for one channel list, kept between its receives.

    Released when the thread receives on other channels, or when the thread ends (its
    thread-local storage, and with it this object, goes away).
    """

    __slots__ = ("key", "generation", "watched", "event")

    def __init__(self, key: tuple, generation: tuple, watched: list, timeout: float) -> None:
        self.key = key
        self.generation = generation  # (fork generation, layer epoch): stale after a fork or close()
        self.watched = watched
        self.event = threading.Event()
        for bell, keys in watched:
            bell.watch(keys, self.event, timeout)

    def release(self) -> None:
        watched, self.watched = self.watched, []
        for bell, keys in watched:
            bell.unwatch(keys, self.event)

    def __del__(self) -> None:
        # The owning thread ended: never block here (a collection can run anywhere).
        for bell, keys in self.watched:
            bell.unwatch(keys, self.event, blocking=False)


class _ShardPlan:
    """The queues of one channel list that live on one shard, with their receive commands packed.

    A receive tries the queues in turn, starting one further along each time (so a busy
    channel cannot starve a quiet one); the fixed part of the command for each starting
    point is packed once. A single plain channel (not a ``prefix!``) needs no script: its
    queue holds only ``m`` entries and nothing but an expired head is ever skipped, so a
    plain ``LPOP`` (``lpop``) does the script's work, the deadline checked on our side.
    """

    __slots__ = ("shard", "names", "keys", "flags", "prefix", "lpop", "plain", "_packed")

    def __init__(self, shard: Shard, names: list[str], key: Any, prefix: str) -> None:
        self.shard = shard
        self.names = names
        self.keys = [key("q", name) for name in names]
        self.flags = [b"1" if name.endswith("!") else b"0" for name in names]
        self.prefix = prefix
        self.lpop = _redis_conn.packed("LPOP", self.keys[0]) if self.flags == [b"0"] else None
        #: Only plain channels (no ``prefix!``): a blocking wait may be one ``BLPOP`` (see _blocking_pop).
        self.plain = b"1" not in self.flags
        self._packed: dict[tuple[int, bool], tuple[bytes, list[str]]] = {}

    def _command(self, rr: int, many: bool) -> tuple[bytes, list[str]]:
        """(packed command up to its per-call arguments, names in the order tried)."""
        r = rr % len(self.names)
        got = self._packed.get((r, many))
        if got is None:
            keys, flags, names = (self.keys[r:] + self.keys[:r], self.flags[r:] + self.flags[:r],
                                  self.names[r:] + self.names[:r])
            script = _RECEIVE_MANY if many else _RECEIVE
            # EVALSHA sha numkeys keys... P flags... [most] now
            count = 4 + 2 * len(keys) + (2 if many else 1)
            got = self._packed[(r, many)] = (
                b"*%d\r\n" % count + bulk("EVALSHA", script.sha, len(keys), *keys, self.prefix, *flags), names)
        return got

    def receive(self, rr: int) -> tuple[bytes, list[str]]:
        return self._command(rr, False)

    def receive_many(self, rr: int) -> tuple[bytes, list[str]]:
        return self._command(rr, True)


class RedisChannelLayer(BaseChannelLayer):
    """Channel layer on one or more Redis servers.

    ``hosts``
        a ``redis://`` / ``rediss://`` URL, several separated by commas, or a list (shards).
    ``prefix``
        key prefix (default ``"wsgi_channels"``): two applications on one Redis use different prefixes.
        ``flush`` removes only this prefix's keys.
    ``symmetric_encryption_keys``
        list of secrets; message bodies are encrypted with the first, decrypted with any
        (rotate by putting the new key first). Needs ``cryptography``.
    ``socket_timeout`` / ``socket_connect_timeout``
        seconds (defaults 5 and 2). They bound a dead network; the one command that waits on
        the server (``BLPOP``, see :meth:`_blocking_pop`) always asks for less than
        ``socket_timeout``.
    ``connection_options``
        further keywords for redis-py connections (``ssl_ca_certs``, ``username``, ...).

    Plus the common keywords of :class:`~wsgi_channels.layers.base.BaseChannelLayer`.
    """

    #: ``receive_batch`` costs one round trip however many messages it takes, so a reader
    #: may ask for as many as it can handle every time (the worker does).
    batch_round_trips = 1

    def __init__(
        self,
        hosts: str | Sequence[str] = "redis://127.0.0.1:6379/0",
        prefix: str = "wsgi_channels",
        symmetric_encryption_keys: Sequence[str | bytes] | None = None,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float = 2.0,
        connection_options: dict[str, Any] | None = None,
        ring_replicas: int = 256,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
            raise exc.ConfigurationError(
                f"Redis key prefix {prefix!r} is invalid: use 1-100 letters, digits, '_', '.', '-' or ':'"
            )
        self.prefix = prefix
        self._p = prefix + ":"
        self._pb = self._p.encode()
        self._fernet = _fernet(symmetric_encryption_keys)
        try:
            timeouts = float(socket_timeout), float(socket_connect_timeout)
        except (TypeError, ValueError):
            raise exc.ConfigurationError(
                f"socket_timeout and socket_connect_timeout must be numbers of seconds, "
                f"not {socket_timeout!r} and {socket_connect_timeout!r}"
            ) from None
        #: The longest one BLPOP waits on the server: well inside the socket timeout.
        self._block_step = max(0.05, timeouts[0] - 1.0)
        conn_options = {
            "socket_timeout": timeouts[0],
            "socket_connect_timeout": timeouts[1],
            "socket_keepalive": True,
            "retry": Retry(NoBackoff(), 0),
            **(connection_options or {}),
            "protocol": 2,  # RESP2: pub/sub wake-ups arrive as replies, scripts' replies keep their shape
        }
        self.hosts = [_connection_url(u) for u in _split_urls(hosts)]
        try:
            self._shards = [Shard(u, conn_options) for u in self.hosts]
        except (TypeError, ValueError) as e:  # redis-py's parsing of an option's value
            raise exc.ConfigurationError(f"invalid Redis layer option in {hosts!r}: {e}") from None
        self._ring = HashRing([s.identity for s in self._shards], replicas=ring_replicas)
        self._expiry_ms = max(1, int(self.expiry * 1000))
        self._gexp_ms = max(1, int(self.group_expiry * 1000))
        self._send_cache: dict[str, tuple] = {}
        self._queue_cache: dict[str, tuple] = {}
        self._group_cache: dict[str, bytes] = {}
        self._rules_flag = b"1" if self._capacity_rules else b"0"
        self._plans: dict[tuple, list[_ShardPlan]] = {}
        self._copies = CopyBuffer()  # group messages fetched for several members of a prefix
        self._members_cache: dict[bytes, list[str]] = {}  # P:t: key -> the member names it holds
        self._rr = 0
        self._sent = 0
        self._local = threading.local()  # this thread's kept doorbell registration (_Watch)
        self._epoch = 0  # bumped by close(): registrations made before are stale

    @classmethod
    def from_url(cls, url: Any, **options: Any) -> "RedisChannelLayer":
        """Build from one URL, comma-separated URLs or a list (shards); query options apply to all."""
        from . import parse_options

        urls = _split_urls(url)
        merged: dict[str, Any] = {}
        hosts = []
        for u in urls:
            parts = urlsplit(u)
            layer_query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k in _URL_OPTIONS]
            for key, value in parse_options(urlencode(layer_query)).items():
                if key in merged and merged[key] != value:
                    raise exc.ConfigurationError(f"shard URLs disagree on option {key!r}")
                merged[key] = value
            rest = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _URL_OPTIONS]
            hosts.append(urlunsplit(parts._replace(query=urlencode(rest))))
        keys = merged.get("symmetric_encryption_keys")
        if isinstance(keys, str):
            merged["symmetric_encryption_keys"] = [k for k in keys.split(",") if k]
        return cls(hosts=hosts, **{**merged, **options})

    # -- names to shards and keys -----------------------------------------------------------

    def _shard_of(self, name: str) -> Shard:
        return self._shards[self._ring.node_for(name)]

    def _key(self, kind: str, name: str) -> bytes:
        return f"{self._p}{kind}:{{{name}}}".encode()

    def _queue_keys(self, qname: str) -> tuple:
        """Keys of the queue of a channel or a ``prefix!`` (plus flag and index keys for a prefix)."""
        if qname.endswith("!"):
            return (self._key("q", qname), self._key("u", qname), self._key("m", qname))
        return (self._key("q", qname),)

    def _send_info(self, channel: str) -> tuple:
        """(shard, packed command up to the entry, capacity, entry kind, queue name), cached per channel."""
        info = self._send_cache.get(channel)
        if info is None:
            validate_channel_name(channel)
            qname = non_local_name(channel)
            shard, command, capacity = self._queue_send_info(qname)
            info = (shard, command, capacity,
                    (b"t" + channel.encode() + b"\n") if qname is not channel else b"m", qname)
            if len(self._send_cache) >= _CACHE_LIMIT:
                self._send_cache.clear()
            self._send_cache[channel] = info
        return info

    def _queue_send_info(self, qname: str) -> tuple:
        """(shard, packed command up to the entry, capacity) of a queue, cached per queue: the
        one-off reply channels of HTTP requests on one ``prefix!`` share it (one lookup, not a
        name check, hash-ring walk and command packing per request)."""
        info = self._queue_cache.get(qname)
        if info is None:
            keys = self._queue_keys(qname)
            capacity = self.get_capacity(qname)
            command = b"*%d\r\n" % (len(keys) + 8) + bulk(
                "EVALSHA", _SEND.sha, len(keys), *keys, self._expiry_ms, capacity, self._p, self._gexp_ms)
            info = (self._shard_of(qname), command, capacity)
            if len(self._queue_cache) >= _CACHE_LIMIT:
                self._queue_cache.clear()
            self._queue_cache[qname] = info
        return info

    def _channel_in_use(self, channel: str) -> bool:
        shard, keys = self._shard_of(channel), self._queue_keys(channel)
        return bool(shard.execute("EXISTS", keys[0]))

    # -- bodies -----------------------------------------------------------------------------

    def _plaintext(self, body: bytes | memoryview) -> bytes | memoryview:
        if self._fernet is None:
            return body
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(bytes(body))
        except InvalidToken:
            raise exc.ChannelsError(
                "a message could not be decrypted: no key in symmetric_encryption_keys matches it"
            ) from None

    def _open(self, body: bytes | memoryview) -> dict:
        return self._decoded(self._plaintext(body))

    @staticmethod
    def _decoded(plain: bytes | memoryview) -> dict:
        try:
            return msgpack.unpackb(plain, raw=False, strict_map_key=True)
        except (ValueError, msgpack.UnpackException) as e:
            raise exc.ChannelsError(f"a stored message could not be decoded ({e}): "
                                    "is another application using the same key prefix?") from None

    # -- messages ---------------------------------------------------------------------------

    def _send_payload(self, channel: str, message: dict) -> tuple:
        """(shard, the packed ``EVALSHA`` of the send script, capacity) for one message."""
        info = self._send_cache.get(channel)
        if info is None:
            info = self._send_info(channel)
        shard, command, capacity, kind, _ = info
        body = encode(message, self.max_message_size)
        if self._fernet is not None:
            body = self._fernet.encrypt(body)
        # The entry: 13 digits of its deadline on the server's clock, the kind, the body.
        return shard, b"%s$%d\r\n%013d%s%s\r\n" % (
            command, 13 + len(kind) + len(body), shard.now_ms() + self._expiry_ms, kind, body), capacity

    def send(self, channel: str, message: dict) -> None:
        shard, payload, capacity = self._send_payload(channel, message)
        if shard.call(_SEND, payload) < 0:
            self._count("channel_full_count")
            raise exc.ChannelFull(f"channel {channel!r} is full ({capacity} messages waiting)")
        self._sent += 1

    def send_many(self, items: Sequence[tuple[str, dict]]) -> list[Exception | None]:
        """Send several messages with one write and one read per shard (a pipeline of ``send`` scripts).

        Returns one outcome per item, in order: ``None`` when queued, else the exception
        :meth:`send` would have raised for it alone (``ChannelFull``, ``MessageTooLarge``,
        ``LayerUnavailable``, ...); one item's failure never stops the others. Each item
        is queued at most once, in the order given for items on the same shard; for a
        reader such as the sidecar, which sends for many connections at once.
        """
        outcomes: list[Exception | None] = [None] * len(items)
        by_shard: dict[Shard, list] = {}
        for i, (channel, message) in enumerate(items):
            try:
                shard, payload, capacity = self._send_payload(channel, message)
            except Exception as e:  # a bad name or message fails its own item only
                outcomes[i] = e
                continue
            by_shard.setdefault(shard, []).append((i, channel, capacity, payload))
        for shard, entries in by_shard.items():
            try:
                replies = shard.pipeline([e[3] for e in entries], _SEND)
            except exc.LayerUnavailable as e:
                for entry in entries:
                    outcomes[entry[0]] = e
                continue
            for (i, channel, capacity, _), n in zip(entries, replies):
                if isinstance(n, Exception):
                    outcomes[i] = n
                elif n < 0:
                    self._count("channel_full_count")
                    outcomes[i] = exc.ChannelFull(f"channel {channel!r} is full ({capacity} messages waiting)")
                else:
                    self._sent += 1
        return outcomes

    def _plan(self, names: list[str]) -> list[_ShardPlan]:
        """Per shard, the queues of ``names`` on it, cached per channel list."""
        key = tuple(names)
        plan = self._plans.get(key)
        if plan is None:
            by_shard: dict[int, list] = {}
            for name in dict.fromkeys(names):
                index = self._ring.node_for(name)
                by_shard.setdefault(index, []).append(name)
            plan = [_ShardPlan(self._shards[index], shard_names, self._key, self._p)
                    for index, shard_names in by_shard.items()]
            if len(self._plans) >= 1000:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _take_buffered(self, names: Iterable[str], limit: int, shared: bool = False) -> list[tuple[str, dict]]:
        """Up to ``limit`` (channel, message) pairs from group messages already fetched for ``names``."""
        taken, expired = self._copies.take(names, limit, shared)
        for name, channels in expired:
            self._evict(name, channels)
        return taken

    def _evict(self, prefix: str, channels: list[str]) -> None:
        """Members whose buffered message expired here, unread, leave their groups."""
        try:
            self._shard_of(prefix).script(_EVICT, (self._key("m", prefix),), (self._p, *channels))
        except exc.LayerUnavailable as e:
            log.warning("could not evict %d expired channel(s) of %s from their groups: %s",
                        len(channels), prefix, e)

    def _group_message(self, name: str, entry: bytes, now_ms: int) -> GroupMessage:
        """A popped ``t`` or ``r`` entry (one message for members of prefix ``name``), decrypted
        and decoded once."""
        newline = entry.index(b"\n", 14)
        if entry[13:14] == b"r":
            space = entry.index(b" ", 14, newline)
            targets = self._named_members(name, entry[space + 1:newline], int(entry[14:space]))
        else:
            targets = entry[14:newline].decode().split(" ")
        plain = bytes(self._plaintext(memoryview(entry)[newline + 1:]))
        template = self._decoded(plain)
        deadline = time.monotonic() + (int(entry[:13]) - now_ms) / 1000.0
        return GroupMessage(targets, plain, template, deadline)

    def _named_members(self, prefix: str, key: bytes, count: int) -> list[str]:
        """The members held by a ``P:t:`` key (an ``r`` entry's), fetched once and kept.

        The key is named by the SHA1 of its content, so a kept list never goes stale; the
        fan-out keeps the key alive as long as any entry that names it.
        """
        names = self._members_cache.get(key)
        if names is None:
            data = self._shard_of(prefix).execute("GET", key)
            if data is None:
                raise exc.ChannelsError(f"the member list {key.decode()!r} of a group message for {prefix!r} "
                                        "is gone (flushed, or evicted by Redis' maxmemory policy)")
            names = data.decode().split(" ")
            if len(names) != count:
                raise exc.ChannelsError(f"the member list {key.decode()!r} names {len(names)} channels, "
                                        f"not {count}")
            if len(self._members_cache) >= 64:
                self._members_cache.clear()
            self._members_cache[key] = names
        return names

    def _deliver(self, name: str, entry: bytes, now_ms: int, shared: bool = False) -> tuple[str, dict]:
        if entry[13:14] == b"m":
            return name, self._open(memoryview(entry)[14:])
        newline = entry.index(b"\n", 14)
        if entry.find(b" ", 14, newline) < 0:  # one target: a send to a process-local channel
            return entry[14:newline].decode(), self._open(memoryview(entry)[newline + 1:])
        message = self._group_message(name, entry, now_ms)
        first = message.copies(message.targets[:1], shared)[0]
        message.pos = 1
        self._copies.add(name, message)
        # Other threads of this process waiting on this prefix can take the rest now.
        self._shard_of(name).bell().ring(self._key("q", name))
        return first

    def _try_receive(self, names: list[str], plan: list[_ShardPlan]) -> tuple[str, dict] | None:
        if self._copies:
            got = self._take_buffered(names, 1)
            if got:
                return got[0]
        self._rr += 1
        count = len(plan)
        for i in range(count):
            entry = plan[(self._rr + i) % count]
            shard = entry.shard
            if entry.lpop is not None:
                got = self._pop_plain(shard, entry.lpop)
                if got is not None:
                    return entry.names[0], self._open(memoryview(got)[14:])
                continue
            command, shard_names = entry.receive(self._rr)
            reply = shard.call(_RECEIVE, command + _NOW % shard.now_ms())
            if reply is not None:
                return self._deliver(shard_names[reply[0] - 1], reply[1], reply[2])
        return None

    @staticmethod
    def _pop_plain(shard: Shard, lpop: bytes) -> bytes | None:
        """The first live entry of a plain channel's queue (one ``LPOP``; expired ones are dropped)."""
        while True:
            entry = shard.execute_packed(lpop)
            if entry is None or int(entry[:13]) > shard.now_ms():
                return entry

    def _try_receive_batch(self, names: list[str], plan: list[_ShardPlan], limit: int,
                           shared: bool) -> list[tuple[str, dict]]:
        """Up to ``limit`` messages: buffered group copies first, then one script per shard."""
        batch: list[tuple[str, dict]] = []
        if self._copies:
            batch = self._take_buffered(names, limit, shared)
            if len(batch) >= limit:
                return batch
        self._rr += 1
        count = len(plan)
        for i in range(count):
            if len(batch) >= limit:
                break
            entry = plan[(self._rr + i) % count]
            shard = entry.shard
            command, shard_names = entry.receive_many(self._rr)
            most = b"%d" % (limit - len(batch))
            reply = shard.call(_RECEIVE_MANY, b"%s$%d\r\n%s\r\n" % (command, len(most), most)
                               + _NOW % shard.now_ms())
            if not reply:
                continue
            now_ms = reply[-1]
            buffered = False
            for j in range(0, len(reply) - 1, 2):
                name = shard_names[reply[j] - 1]
                entry_bytes = reply[j + 1]
                try:
                    if entry_bytes[13:14] != b"m" and name in self._copies:
                        # behind this prefix's earlier copies, so no member gets a later message first
                        self._copies.add(name, self._group_message(name, entry_bytes, now_ms))
                        buffered = True
                    else:
                        batch.append(self._deliver(name, entry_bytes, now_ms, shared))
                        buffered = buffered or name in self._copies
                except exc.ChannelsError as e:
                    # One unreadable entry must not cost the rest of the batch, already popped.
                    log.error("dropped an unreadable message on %s: %s", name, e)
            if buffered and len(batch) < limit:
                batch += self._take_buffered(names, limit - len(batch), shared)
        return batch

    def _resolve_plan(self, channels: Iterable[str]) -> tuple[list[str], list] | None:
        """The validated names and per-shard plan of a channel list (None when it is empty)."""
        plan = self._plans.get(tuple(channels)) if type(channels) is list else None
        if plan is not None:  # a channel list seen (and validated) before
            return channels, plan  # type: ignore[return-value]  # a list, checked just above
        names = self._receive_channels(channels)
        if not names:
            return None
        return names, self._plan(names)

    def _watch(self, names: list[str], plan: list, wait: float) -> threading.Event:
        """An event rung by every push to the queues of ``plan``, kept for this thread's next receive.

        A thread that receives on the same channels again and again (the worker, the
        sidecar's loop) keeps its doorbell registration between calls: its next wait then
        needs no second pop attempt after registering, one round trip instead of two.
        """
        key = tuple(names)
        generation = (_redis_conn.fork_generation(), self._epoch)
        watch = getattr(self._local, "watch", None)
        if watch is not None:
            if watch.key == key and watch.generation == generation:
                return watch.event
            self._local.watch = None
            if watch.generation[0] == generation[0]:
                watch.release()
            else:
                watch.watched = []  # forked: the parent's listener is abandoned here, never touched
        watch = _Watch(key, generation, [(entry.shard.bell(), entry.keys) for entry in plan], min(wait, 2.0))
        self._local.watch = watch
        return watch.event

    def _watching(self, names: list[str]) -> threading.Event | None:
        """This thread's event if it already watches exactly ``names`` (registered before any pop)."""
        watch = getattr(self._local, "watch", None)
        if watch is not None and watch.key == tuple(names) \
                and watch.generation == (_redis_conn.fork_generation(), self._epoch):
            return watch.event
        return None

    def receive(self, channels: Iterable[str], block: bool = False, timeout: float | None = None):
        if self._copies and type(channels) is list and len(channels) == 1 and channels[0] in self._copies:
            # Fast path for a process's reader on its prefix: the next member of a group message
            # fetched already (only validated names ever get a buffer).
            taken = self._take_buffered(channels, 1)
            if taken:
                return taken[0]
        resolved = self._resolve_plan(channels)
        if resolved is None:
            return None, None
        names, plan = resolved
        if block:
            wait = self._block_timeout(block, timeout)
            if len(plan) == 1 and plan[0].plain and wait > 0:
                got = self._blocking_pop(plan[0], wait)  # answers at once when a message is waiting
            else:
                got = self._await(names, plan, wait, lambda: self._try_receive(names, plan))
        else:
            got = self._try_receive(names, plan)
        return got if got is not None else (None, None)

    def receive_batch(self, channels: Iterable[str], limit: int = 100, block: bool = False,
                      timeout: float | None = None, shared: bool = False) -> list[tuple[str, dict]]:
        """Up to ``limit`` messages at once, waiting (like :meth:`receive`) only for the first.

        One round trip per shard fetches up to ``limit`` entries (a quiet queue costs one
        empty answer, a busy one is drained in the same call), and a group message for many
        members of one prefix fills the batch from its single copy, so a process reading its
        ``prefix!`` drains a broadcast to thousands of its connections in a few calls.
        ``shared``: see :meth:`BaseChannelLayer.receive_batch`; here the members of one group
        message then get one dict between them instead of a copy each.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int of at least 1, got {limit!r}")
        resolved = self._resolve_plan(channels)
        if resolved is None:
            return []
        names, plan = resolved
        wait = self._block_timeout(block, timeout) if block else 0.0
        if wait > 0 and len(plan) == 1 and plan[0].plain:
            # A backlog is taken in one round trip; an empty queue is waited on with BLPOP.
            batch = self._try_receive_batch(names, plan, limit, shared)
            if batch:
                return batch
            got = self._blocking_pop(plan[0], wait)
            return [got] if got is not None else []
        return self._await(names, plan, wait, lambda: self._try_receive_batch(names, plan, limit, shared)) or []

    def _blocking_pop(self, entry: _ShardPlan, wait: float) -> tuple[str, dict] | None:
        """The next message of plain channels on one shard, waiting up to ``wait`` seconds on the server.

        One ``BLPOP`` answers as soon as a message is pushed: no doorbell, no second pop.
        A plain channel's queue holds only ``m`` entries, so popping one outside a script
        skips nothing but an expired head, which is dropped here as the scripts drop it.
        Each ``BLPOP`` asks for less than the socket timeout (the server times it out, never
        us), and the channels' order turns each time so a busy one cannot starve the rest.
        """
        shard, keys, names = entry.shard, entry.keys, entry.names
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._rr += 1
            r = self._rr % len(keys)
            step = max(0.01, min(remaining, self._block_step))  # never 0: that would wait forever
            reply = shard.execute_packed(_redis_conn.packed("BLPOP", *keys[r:], *keys[:r], "%.3f" % step))
            if reply is None:
                continue
            key, data = reply
            if int(data[:13]) <= shard.now_ms():
                continue  # expired unread
            return names[keys.index(key)], self._open(memoryview(data)[14:])

    def _await(self, names: list[str], plan: list, wait: float, attempt: Any) -> Any:
        """``attempt()`` until it returns something, for up to ``wait`` seconds.

        Nothing is popped outside the scripts, and the doorbell is registered before the
        attempt that precedes each wait, so a push after that attempt always wakes us.
        """
        if wait <= 0:
            return attempt()
        event = self._watching(names)
        if event is not None:
            event.clear()  # registered already: a push after this pop attempt sets it again
        else:
            got = attempt()  # the common case of a waiting message needs no registration
            if got:
                return got
            event = self._watch(names, plan, wait)
            event.clear()
        deadline = time.monotonic() + wait
        while True:
            got = attempt()
            if got:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            event.wait(remaining)
            event.clear()

    # -- groups -----------------------------------------------------------------------------

    def _group_keys(self, group: str) -> tuple[bytes, bytes, bytes]:
        """The group's memberships, their capacities and its fan-out plan (one hash tag)."""
        return self._key("g", group), self._key("gc", group), self._key("gp", group)

    def group_add(self, group: str, channel: str) -> None:
        validate_group_name(group)
        validate_channel_name(channel)
        qname = non_local_name(channel)
        keys: tuple[bytes, ...] = self._group_keys(group)
        if qname is not channel:
            keys += (self._key("m", qname),)
        self._shard_of(qname).script(_GROUP_ADD, keys, (channel, self._gexp_ms, self.get_capacity(qname), group))

    def group_discard(self, group: str, channel: str) -> None:
        validate_group_name(group)
        validate_channel_name(channel)
        qname = non_local_name(channel)
        keys: tuple[bytes, ...] = self._group_keys(group)
        if qname is not channel:
            keys += (self._key("m", qname),)
        self._shard_of(qname).script(_GROUP_DISCARD, keys, (channel, group))

    def group_channels(self, group: str) -> list[str]:
        validate_group_name(group)
        payload = _redis_conn.packed("EVALSHA", _MEMBERS.sha, 2, *self._group_keys(group)[:2], self._p)
        replies = run_everywhere(self._shards, _MEMBERS, [payload] * len(self._shards))
        return [m.decode() for reply in replies for m in reply]

    def _fanout_command(self, group: str) -> bytes:
        """The fan-out script's packed command up to the body, cached per group."""
        command = self._group_cache.get(group)
        if command is None:
            validate_group_name(group)
            keys = self._group_keys(group)
            command = b"*%d\r\n" % (3 + len(keys) + 8) + bulk(
                "EVALSHA", _FANOUT.sha, len(keys), *keys, self._p, self._expiry_ms, self._gexp_ms,
                self.capacity, self.process_capacity, self._rules_flag)
            if len(self._group_cache) >= _CACHE_LIMIT:
                self._group_cache.clear()
            self._group_cache[group] = command
        return command

    def send_group(self, group: str, message: dict) -> None:
        body = encode(message, self.max_message_size)
        if self._fernet is not None:
            body = self._fernet.encrypt(body)
        command = b"%s$%d\r\n%s\r\n" % (self._fanout_command(group), len(body), body)
        # run_everywhere runs a single shard's script directly, without its concurrent path.
        dropped = sum(run_everywhere(self._shards, _FANOUT, [command + _NOW % s.now_ms() for s in self._shards]))
        if dropped:
            self._count("group_drop_count", dropped)
            log.debug("group %r: %d member(s) behind full channels skipped", group, dropped)

    # -- key-value store ------------------------------------------------------------------------

    def session_get(self, key: str) -> bytes | None:
        self._session_key(key)
        return self._shard_of(key).execute("GET", self._key("s", key))

    def session_set(self, key: str, value: bytes, ttl: float) -> None:
        self._session_key(key)
        if not isinstance(value, bytes):
            raise TypeError(f"session value must be bytes, not {type(value).__name__}")
        if ttl <= 0:
            raise ValueError(f"session ttl must be positive, got {ttl!r}")
        self._shard_of(key).execute("SET", self._key("s", key), value, "PX", max(1, int(ttl * 1000)))

    def session_delete(self, key: str) -> None:
        self._session_key(key)
        self._shard_of(key).execute("DEL", self._key("s", key))

    # -- housekeeping -----------------------------------------------------------------------

    def _scan(self, shard: Shard, patterns: Sequence[bytes]) -> Iterable[list[bytes]]:
        for pattern in patterns:
            cursor = b"0"
            while True:
                cursor, keys = shard.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
                if keys:
                    yield keys
                if cursor in (b"0", 0, "0"):
                    break

    def _patterns(self) -> list[bytes]:
        # Only this layer's key shapes: another application's prefix can never match.
        return [self._pb + b"[qumgst]:{*", self._pb + b"g[cp]:{*"]

    def flush(self) -> None:
        """Remove every key of this prefix on every shard (SCAN, never KEYS) and local buffers."""
        for shard in self._shards:
            for keys in self._scan(shard, self._patterns()):
                shard.execute("UNLINK", *keys)
        self._copies.clear()

    def global_statistics(self) -> dict[str, int]:
        """``messages_count`` counts sends made by this layer instance; ``messages_pending`` entries queued."""
        pending = 0
        for shard in self._shards:
            for keys in self._scan(shard, [self._pb + b"q:{*"]):
                for key in keys:
                    pending += shard.execute("LLEN", key)
        pending += self._copies.pending()
        return {"messages_count": self._sent, "messages_pending": pending, **self._local_statistics()}

    def channel_statistics(self, channel: str) -> dict[str, int]:
        qname = non_local_name(validate_channel_name(channel, receive=channel.endswith("!")))
        pending, head, now_ms = self._shard_of(qname).script(_STATS, self._queue_keys(qname), (self._p,))
        age = max(0.0, (now_ms - (head - self._expiry_ms)) / 1000.0) if head else 0.0
        pending += self._copies.pending(qname)
        return {"messages_pending": pending, "messages_max_age": int(age), **self._local_statistics()}

    def close(self) -> None:
        self._epoch += 1
        for shard in self._shards:
            shard.close()

    def __repr__(self) -> str:
        return f"<RedisChannelLayer hosts={[s.label for s in self._shards]} prefix={self.prefix!r}>"
