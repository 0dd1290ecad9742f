"""The Redis layer (``redis://``, ``rediss://``): every process of every machine, one or many shards.

Each operation is one Lua script (:mod:`.scripts`), so one round trip:
``send`` checks capacity and queues the body inline; ``receive`` pops the first
live entry of the channels asked for on a shard (from one plain channel, a plain
``LPOP`` does that); ``send_group`` runs one fan-out
script on each shard (concurrently), which queues one copy per plain member and
one per process prefix naming all of that prefix's members. This process then
hands out one ``(channel, message)`` per member from that single copy.
``receive_batch`` pops up to N entries per shard in one script, for readers of
busy channels (the worker, the sidecar's ``prefix!`` loop).

Several shards are spread by a consistent-hash ring with virtual nodes
(:mod:`..hashring`): a channel by its name, a process-local channel by its
``prefix!``, a session key by the key. A group's memberships live beside each
member's queue, so a group send needs no member list on the wire and a channel
whose messages expire unread is evicted from its groups inside the same scripts.

This module holds the layer's class, its sends and its groups; each other concern has its
own module, which the layer owns an object of or calls with explicit arguments:

- receiving, :mod:`.receive` (a mixin with declared attributes): how a blocking receive
  waits is described under ``socket_timeout`` below; :mod:`.plans` packs the receive
  commands of a channel list per shard, :mod:`.delivery` turns popped entries into
  messages (a group entry into one per member, through :mod:`.copies`);
- :mod:`.sends`: the packed ``SEND`` command of each channel, kept;
- :mod:`.bodies`: message bodies, encoded and (with keys) encrypted;
- :mod:`.sessions`: the small key-value store; :mod:`.keyspace`: ``flush`` and statistics;
- :mod:`.members` (servers, Sentinel services, Clusters: the ring's members, made from the
  URLs), :mod:`.options` (URLs, options, encryption keys), :mod:`.failover` and
  :mod:`.cluster_groups` (mixins with declared attributes).

Connections (:mod:`.connection`) are made lazily per process (gunicorn forks
after import), never retried behind the caller's back (a resent ``send`` could
deliver twice), and a failure raises
:class:`~wsgi_channels.exceptions.LayerUnavailable`; the next call connects
afresh, so a Redis restart needs no process restart.

A shard may be a Sentinel-watched service (:mod:`.sentinel`): the layer follows its
failovers (:attr:`RedisChannelLayer.topology_epoch` counts them, and
:meth:`RedisChannelLayer.on_topology_change` registers a callback). Replication is
asynchronous, so what a primary acknowledged just before it died may be missing on its
successor: each process re-adds the group memberships it changed in the last
:data:`MEMBERSHIP_REPLAY_SECONDS` after a failover, and ``wait_replicas`` makes writes
wait for replicas (``WAIT``, in the same round trip) for those who prefer latency to
that risk.
"""
from __future__ import annotations

import logging
import re
import threading
from collections import deque
from typing import Any, Callable, Iterable, Sequence

from redis.backoff import NoBackoff
from redis.retry import Retry

from ... import exceptions as exc
from . import connection, keyspace, sessions
from . import scripts
from . import cluster_scripts as cscripts
from .bodies import Bodies
from .cluster_groups import FANOUT_TAIL as _FANOUT_TAIL
from .cluster_groups import ClusterGroupsMixin
from .connection import Script, Shard, bulk, run_everywhere
from .copies import CopyBuffer
from .delivery import Delivery
from .entries import append_entry
from .failover import MEMBERSHIP_REPLAY_SECONDS, FailoverMixin
from .history import HistoryMixin
from .presence import PresenceMixin, presence_key
from .history import trust_persistence
from .members import DEFAULT_COLOCATE, ClusterMember, member_for_url
from .slots import AUTO, parse_cluster_tags
from .options import connection_url, options_from_url, split_urls
from .plans import ShardPlan
from .receive import ReceivingMixin
from .sends import SendCommands
from ..base import BaseChannelLayer
from ..hashring import HashRing
from ..names import non_local_name, validate_channel_name, validate_group_name

__all__ = ["RedisChannelLayer", "MEMBERSHIP_REPLAY_SECONDS"]

log = logging.getLogger(__name__)

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.\-:]{1,100}\Z")
_CACHE_LIMIT = 10_000

_FANOUT = Script(scripts.FANOUT)
_MEMBERS = Script(scripts.MEMBERS)
_GROUP_ADD = Script(scripts.GROUP_ADD)
_GROUP_DISCARD = Script(scripts.GROUP_DISCARD)
# The same operations on a Redis Cluster bucket (every key declared, see cluster_scripts).
_C_GROUP_ADD = Script(cscripts.GROUP_ADD)
_C_GROUP_DISCARD = Script(cscripts.GROUP_DISCARD)


class RedisChannelLayer(ReceivingMixin, FailoverMixin, ClusterGroupsMixin, HistoryMixin, PresenceMixin,
                        BaseChannelLayer):
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
        seconds (defaults 5 and 2). They bound a dead network. A blocking receive waits in one
        of two ways: on plain channels of one shard, and (on Redis 7) on one process prefix,
        the server holds the command (``BLPOP``; ``BLMPOP`` for a batch on Redis 7), and each
        such wait asks for less than ``socket_timeout`` (:meth:`_blocking_steps`), so the
        server, never the socket, times it out; anything else (several shards, a prefix on
        Redis 6, channels mixed with prefixes) tries its pop script and then waits on the
        shards' doorbells (:mod:`.wakeup`): the scripts ``PUBLISH`` (``SPUBLISH`` on a
        Cluster) when a queue stops being empty, and one pub/sub listener per shard and
        process wakes the waiters within milliseconds of a push on any shard.
    ``connection_options``
        further keywords for redis-py connections (``ssl_ca_certs``, ``username``, ...).
    ``cluster_tags``
        on a Redis Cluster, the number of hash-tag buckets names are spread over: ``"auto"`` (the
        default) places one on each primary of the slot map the first layer there sees; an
        integer ``N``, ``N`` buckets on equal slot ranges. Every key's name depends on it, so
        the first layer records its choice in the Cluster and every later one uses the record
        (``auto`` too; an explicit ``N`` that differs raises ``ConfigurationError`` at the first
        call); ``flush()`` keeps the record, except that the flush of a layer given another
        ``N`` records that one (:mod:`.cluster_tags`). Ignored by standalone servers and Sentinel.
    ``cluster_colocate``
        on a Redis Cluster, lists of globs whose plain channels share one bucket (default
        ``[["http.*", "websocket.*"]]``: the worker's channels are one blocking pop on one node).
    ``wait_replicas`` / ``wait_replicas_timeout``
        with ``wait_replicas=N`` (default 0: off), every write (sends, group sends, memberships)
        is followed, in the same round trip, by ``WAIT N ms`` (``wait_replicas_timeout``
        seconds, default 0.1): it returns once N replicas have it. A send is never undone: when
        fewer replicas confirm in time, it is counted (``unreplicated_count`` in
        ``global_statistics()``) and a warning is logged once per outage.
    ``history_trust_persistence``
        keep a history stream's epoch across a restart of its server that kept the stream (for
        servers run with ``appendonly yes`` and ``appendfsync always``; see :mod:`.feature_scripts`).
        Refused with Sentinel and Cluster URLs.

    Plus the common keywords of :class:`~wsgi_channels.layers.base.BaseChannelLayer`.
    """

    #: ``receive_batch`` costs one round trip however many messages it takes, so a reader
    #: may ask for as many as it can handle every time (the worker does).
    batch_round_trips = 1
    #: ``send_many`` is one pipeline per shard.
    send_many_batches = True
    #: Group history and presence (:mod:`.history`, :mod:`.presence`).
    features_supported = frozenset({"history", "presence"})

    def __init__(
        self,
        hosts: str | Sequence[str] = "redis://127.0.0.1:6379/0",
        prefix: str = "wsgi_channels",
        symmetric_encryption_keys: Sequence[str | bytes] | None = None,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float = 2.0,
        connection_options: dict[str, Any] | None = None,
        ring_replicas: int = 256,
        wait_replicas: int = 0,
        wait_replicas_timeout: float = 0.1,
        cluster_tags: int | str = AUTO,
        cluster_colocate: Sequence[Sequence[str]] = DEFAULT_COLOCATE,
        history_trust_persistence: bool | str = False,
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
        self._bodies = Bodies(symmetric_encryption_keys)
        self._presence_key = presence_key(symmetric_encryption_keys)
        self._trust = b"1" if trust_persistence(history_trust_persistence) else b"0"
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
        self.hosts = [connection_url(u) for u in split_urls(hosts)]
        self._cluster_tags = parse_cluster_tags(cluster_tags)
        self._colocate = cluster_colocate
        try:
            self._members = [member_for_url(u, conn_options, timeouts, self._p, self._cluster_tags, self._colocate)
                             for u in self.hosts]
        except (TypeError, ValueError) as e:  # redis-py's parsing of an option's value
            raise exc.ConfigurationError(f"invalid Redis layer option in {hosts!r}: {e}") from None
        identities = [m.identity for m in self._members]
        if len(set(identities)) != len(identities):
            raise exc.ConfigurationError(f"the Redis layer URLs {self.hosts!r} name the same server twice")
        self._ring = HashRing(identities, replicas=ring_replicas)
        self._all_vshards: list | None = None
        self._wait, self._wait_for = self._wait_command(wait_replicas, wait_replicas_timeout)
        self._unreplicated = 0
        self._replication_ok = True
        #: (monotonic time, "add" or "discard", group, channel) of this process's recent membership
        #: changes (see MEMBERSHIP_REPLAY_SECONDS); None for a layer whose servers never fail over.
        if self._trust == b"1" and any(isinstance(m, ClusterMember) or m.shard.fails_over for m in self._members):
            raise exc.ConfigurationError("history_trust_persistence covers restarts of one Redis server: with "
                                         "Sentinel or a Cluster a failover may lose the tail of a stream, so "
                                         "every failover starts new streams; drop the option there")
        self._journal: deque | None = deque() if any(isinstance(m, ClusterMember) or m.shard.fails_over
                                                     or not m.resolved for m in self._members) else None
        self._topology_callbacks: list[Callable[[], None]] = []
        for member in self._members:
            member.on_change(self._topology_changed)
        self._expiry_ms = max(1, int(self.expiry * 1000))
        self._gexp_ms = max(1, int(self.group_expiry * 1000))
        self._sends = SendCommands(self._shard_of, self._queue_keys, self.get_capacity, self._p, self._expiry_ms,
                                   self._gexp_ms)
        self._group_cache: dict[str, bytes] = {}
        self._keep_cache: dict[str, tuple] = {}  # history groups' send commands (.history)
        self._rules_flag = b"1" if self._capacities else b"0"
        self._plans: dict[tuple, list[ShardPlan]] = {}
        self._copies = CopyBuffer()  # group messages fetched for several members of a prefix
        self._delivery = Delivery(self._shard_of, self._p, self._bodies, self._copies)
        self._fanout_plans: dict[tuple, tuple[bytes, bytes]] = {}  # (group, bucket) -> (sig, command head)
        self._rr = 0
        self._sent = 0
        self._local = threading.local()  # this thread's kept doorbell registration (_Watch)
        self._epoch = 0  # bumped by close(): registrations made before are stale

    @property
    def _shards(self) -> list:
        """Every vshard of every member (a member that may be a Cluster node finds out first)."""
        vshards = self._all_vshards
        if vshards is None:
            vshards = [v for m in self._members for v in m.vshards()]
            if all(getattr(m, "resolved", True) for m in self._members):
                self._all_vshards = vshards
        return vshards

    @classmethod
    def from_url(cls, url: Any, **options: Any) -> "RedisChannelLayer":
        """Build from one URL, comma-separated URLs or a list (shards); query options apply to all."""
        hosts, merged = options_from_url(url)
        return cls(hosts=hosts, **{**merged, **options})

    # -- names to shards and keys -----------------------------------------------------------

    def _shard_of(self, name: str) -> Any:
        """The vshard that holds ``name``'s keys (a Shard, for a server or a Sentinel service)."""
        return self._members[self._ring.node_for(name)].vshard_for(name)

    def _key(self, kind: str, name: str) -> bytes:
        return f"{self._p}{kind}:{{{name}}}".encode()

    def _queue_keys(self, qname: str, shard: Any = None) -> tuple:
        """Keys of the queue of a channel or a ``prefix!`` (plus flag and index keys for a prefix),
        as the send and statistics scripts take them (on a Cluster, a prefix's with the bucket's keys)."""
        shard = shard if shard is not None else self._shard_of(qname)
        key = shard.key
        if qname.endswith("!"):
            keys = (key("q", qname), key("u", qname), key("m", qname))
            return keys + shard.bucket_keys if shard.cluster else keys
        return (key("q", qname),)

    def _channel_in_use(self, channel: str) -> bool:
        shard = self._shard_of(channel)
        return bool(shard.execute("EXISTS", shard.key("q", channel)))

    # -- messages ---------------------------------------------------------------------------

    def _send_payload(self, channel: str, message: dict) -> tuple:
        """(shard, the packed ``EVALSHA`` of the send script, capacity, the script) for one message."""
        info = self._sends.by_channel.get(channel)
        if info is None:
            info = self._sends.info(channel)
        shard, command, capacity, head, _, script = info
        body = self._bodies.seal(message, self.max_message_size)
        # The entry (see entries): its deadline on the server's clock, its head, the body.
        return shard, append_entry(command, shard.now_ms() + self._expiry_ms, head, body), capacity, script

    def send(self, channel: str, message: dict) -> None:
        shard, payload, capacity, script = self._send_payload(channel, message)
        if self._wait is None:
            n = shard.call(script, payload)
        else:
            n, acked = shard.pipeline([payload], script, tail=(self._wait,))
            if isinstance(n, Exception):
                raise n
            self._replicated(acked)
        if n < 0:
            self._count("channel_full_count")
            raise exc.ChannelFull(f"channel {channel!r} is full ({capacity} messages waiting)")
        self._sent += 1

    def send_many(self, items: Sequence[tuple[str, dict]]) -> list[BaseException | None]:
        """Send several messages with one write and one read per shard (a pipeline of ``send`` scripts).

        Returns one outcome per item, in order: ``None`` when queued, else the exception
        :meth:`send` would have raised for it alone (``ChannelFull``, ``MessageTooLarge``,
        ``LayerUnavailable``, ...); one item's failure never stops the others. Each item
        is queued at most once, in the order given for items on the same shard; for a
        reader such as the sidecar, which sends for many connections at once.
        """
        outcomes, by_shard = self._prepare_sends(items)
        for shard, entries in by_shard.items():
            self._send_pipeline(shard, entries, outcomes)
        return outcomes

    def send_many_then_receive(self, items: Sequence[tuple[str, dict]], channels: Iterable[str], limit: int,
                               timeout: float, outcomes: list[BaseException | None]) -> list[tuple[str, dict]]:
        """:meth:`send_many` of ``items``, then a blocking :meth:`receive_batch` of up to ``limit``
        messages of ``channels`` (waiting up to ``timeout`` seconds for the first), in one round
        trip where it can: when the channels are plain ones on one shard of Redis 7, the sends for
        that shard are written with its ``BLMPOP``. The worker sends the responses of a batch and
        waits for its next batch this way.

        ``outcomes`` gets one entry per item, as :meth:`send_many` returns them, before anything
        can raise: when the round trip fails (``LayerUnavailable``), it tells which sends failed
        with it.
        """
        wait = self._block_timeout(True, timeout)
        outcomes[:], by_shard = self._prepare_sends(items)
        entry = self._pop_plan(channels, wait)
        combined = by_shard.pop(entry.shard, None) if entry is not None else None
        for shard, entries in by_shard.items():
            self._send_pipeline(shard, entries, outcomes)
        if not combined:
            return self.receive_batch(channels, limit, block=True, timeout=timeout)
        assert entry is not None
        pending = [combined]

        def first(pop: bytes) -> Any:
            return self._send_pipeline(entry.shard, pending.pop(), outcomes, then=pop)

        batch = self._blocking_pop_many(entry, wait, limit, first)
        if pending:  # the wait ended before its first step: the sends go alone
            self._send_pipeline(entry.shard, pending.pop(), outcomes)
        if batch is None:  # the server has no BLMPOP (the sends went out with the refused command)
            return self.receive_batch(channels, limit, block=True, timeout=timeout)
        return batch

    def _send_pipeline(self, shard: Shard, entries: list, outcomes: list[BaseException | None],
                       then: bytes | None = None) -> Any:
        """The send scripts of ``entries`` (from :meth:`_prepare_sends`) in one round trip, their
        outcomes recorded in ``outcomes``. ``then``: one more command written after them (see
        :meth:`Shard.pipeline`), whose reply is returned; a network failure is then raised too,
        once recorded for the sends."""
        tail = (self._wait,) if self._wait is not None else ()
        try:
            replies = shard.pipeline([e[3] for e in entries], entries[0][4], then=then, tail=tail)
        except exc.LayerUnavailable as e:
            for entry in entries:
                outcomes[entry[0]] = e
            if then is not None:
                raise
            return None
        self._send_outcomes(entries, replies, outcomes)
        if tail:
            self._replicated(replies[len(entries)])
        return replies[-1] if then is not None else None

    def _prepare_sends(self, items: Sequence[tuple[str, dict]]) -> tuple[list[BaseException | None], dict[Shard, list]]:
        """The outcomes of ``items`` so far (a bad name or message fails its own item only), and the
        ``(index, channel, capacity, payload, script)`` of the others, by shard."""
        outcomes: list[BaseException | None] = [None] * len(items)
        by_shard: dict[Shard, list] = {}
        for i, (channel, message) in enumerate(items):
            try:
                shard, payload, capacity, script = self._send_payload(channel, message)
            except Exception as e:
                outcomes[i] = e
                continue
            by_shard.setdefault(shard, []).append((i, channel, capacity, payload, script))
        return outcomes, by_shard

    def _send_outcomes(self, entries: list, replies: list, outcomes: list[BaseException | None]) -> None:
        """Record in ``outcomes`` what the send scripts of ``entries`` answered (``replies`` may go on
        with the reply of another command)."""
        for (i, channel, capacity, _, _), n in zip(entries, replies):
            if isinstance(n, Exception):
                outcomes[i] = n
            elif n < 0:
                self._count("channel_full_count")
                outcomes[i] = exc.ChannelFull(f"channel {channel!r} is full ({capacity} messages waiting)")
            else:
                self._sent += 1

    # -- groups -----------------------------------------------------------------------------

    def _group_keys(self, group: str) -> tuple[bytes, bytes, bytes]:
        """The group's memberships, their capacities and its fan-out plan (one hash tag)."""
        return self._key("g", group), self._key("gc", group), self._key("gp", group)

    def group_add(self, group: str, channel: str, presence: Any = None) -> None:
        validate_group_name(group)
        validate_channel_name(channel)
        features = self._features.of(group) if self._has_features else None
        if features is not None or presence is not None:
            return self._group_add_featured(group, channel, presence, features)
        self._group_add(group, channel)
        self._journal_membership("add", group, channel)

    def _membership(self, group: str, channel: str, standalone: Script, cluster: Script,
                    args: tuple) -> tuple:
        """(shard, script, keys, args) of a membership change of ``channel`` in ``group``: made in the
        member's shard (its bucket, on a Cluster), beside its queue."""
        qname = non_local_name(channel)
        shard = self._shard_of(qname)
        if shard.cluster:
            keys: tuple[bytes, ...] = shard.bucket_keys
            if qname is not channel:
                keys += (shard.key("m", qname),)
            return shard, cluster, keys, (group, channel) + args
        keys = self._group_keys(group)
        if qname is not channel:
            keys += (self._key("m", qname),)
        return shard, standalone, keys, (channel,) + args + (group,)

    def _group_add(self, group: str, channel: str) -> None:
        qname = non_local_name(channel)
        self._script_waited(*self._membership(group, channel, _GROUP_ADD, _C_GROUP_ADD,
                                              (self._gexp_ms, self.get_capacity(qname))))

    def group_discard(self, group: str, channel: str) -> None:
        validate_group_name(group)
        validate_channel_name(channel)
        features = self._features.of(group) if self._has_features else None
        if features is not None:
            return self._group_discard_featured(group, channel, features)
        self._group_discard(group, channel)
        self._journal_membership("discard", group, channel)

    def _group_discard(self, group: str, channel: str) -> None:
        self._script_waited(*self._membership(group, channel, _GROUP_DISCARD, _C_GROUP_DISCARD, ()))

    def group_channels(self, group: str) -> list[str]:
        validate_group_name(group)
        standalone = [v for v in self._shards if not v.cluster]
        found = []
        if standalone:
            payload = connection.packed("EVALSHA", _MEMBERS.sha, 2, *self._group_keys(group)[:2], self._p)
            replies = run_everywhere(standalone, _MEMBERS, [payload] * len(standalone))
            found = [m.decode() for reply in replies for m in reply]
        if len(standalone) < len(self._shards):
            found += self._cluster_group_channels([v for v in self._shards if v.cluster], group)
        return found

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
        history = self.history_options(group) if self._has_features else None
        if history is not None:
            return self._send_group_history(group, message, history)
        body = self._bodies.seal(message, self.max_message_size)
        head, size, exp = self._fanout_command(group), len(body), self._expiry_ms
        vshards = self._shards
        standalone = [v for v in vshards if not v.cluster] if self._all_cluster is not True else []
        dropped = 0
        if standalone:
            # One format per shard: the script takes the messages' deadline on that shard's clock.
            # run_everywhere runs a single shard's script directly, without its concurrent path.
            replies = run_everywhere(standalone, _FANOUT, [_FANOUT_TAIL % (head, size, body, s.now_ms() + exp)
                                                           for s in standalone], tail=self._wait)
            if self._wait is not None:
                for acked in replies[1::2]:
                    self._replicated(acked)
                replies = replies[::2]
            dropped = sum(replies)
        if len(standalone) < len(vshards):
            dropped += self._cluster_send_group([v for v in vshards if v.cluster], group, body)
        if dropped:
            self._count("group_drop_count", dropped)
            log.debug("group %r: %d member(s) behind full channels skipped", group, dropped)

    # -- key-value store (:mod:`.sessions`) -------------------------------------------------------

    def session_get(self, key: str) -> bytes | None:
        return sessions.get(self._shard_of(self._session_key(key)), key)

    def session_set(self, key: str, value: bytes, ttl: float) -> None:
        sessions.put(self._shard_of(self._session_key(key)), key, value, ttl)

    def session_delete(self, key: str) -> None:
        sessions.delete(self._shard_of(self._session_key(key)), key)

    def session_compare_and_set(self, key: str, expected: bytes | None, value: bytes | None, ttl: float) -> bool:
        self._session_key(key)
        if value is not None:
            value = self._session_value(value)
        return sessions.compare_and_set(self._shard_of(key), key, expected, value, ttl)

    # -- housekeeping (:mod:`.keyspace`) ------------------------------------------------------

    def _nodes(self) -> list[Shard]:
        """Every primary of every member, once each."""
        return list({id(n): n for m in self._members for n in m.nodes()}.values())

    def flush(self) -> None:
        """Remove every key of this prefix on every shard (SCAN, never KEYS) and local buffers."""
        keyspace.unlink_all(self._nodes(), keyspace.key_patterns(self._pb))
        for member in self._members:
            member.flushed()  # a Cluster's record of its buckets stays (or, for a rebalance, is replaced)
        self._copies.clear()

    def global_statistics(self) -> dict[str, int]:
        """``messages_count`` counts sends made by this layer instance; ``messages_pending`` entries queued;
        with ``wait_replicas``, ``unreplicated_count`` the writes fewer replicas confirmed in time."""
        pending = keyspace.count_queued(self._nodes(), self._pb) + self._copies.pending()
        extra = {"unreplicated_count": self._unreplicated} if self._wait is not None else {}
        return {"messages_count": self._sent, "messages_pending": pending, **self._local_statistics(), **extra}

    def channel_statistics(self, channel: str) -> dict[str, int]:
        qname = non_local_name(validate_channel_name(channel, receive=channel.endswith("!")))
        shard = self._shard_of(qname)
        pending, age = keyspace.queue_figures(shard, self._queue_keys(qname, shard), self._p, self._expiry_ms)
        pending += self._copies.pending(qname)
        return {"messages_pending": pending, "messages_max_age": int(age), **self._local_statistics()}

    def close(self) -> None:
        self._epoch += 1
        for member in self._members:
            member.close()

    def __repr__(self) -> str:
        return f"<RedisChannelLayer hosts={[m.identity for m in self._members]} prefix={self.prefix!r}>"
