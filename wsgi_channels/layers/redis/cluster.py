"""The Redis layer on a Redis Cluster: our own slot map, per-node connections, redirects handled here.

Why not redis-py's ``RedisCluster``: measured on the test cluster, it costs 3-4 times the
layer's own per-node :class:`~.connection.Shard` on the hot path (an ``EVALSHA`` send: 294 us
against 76 us to the same node), and it resends a command after a connection error or a
timeout (its retry policy), which can deliver a send twice; the layer never resends what may
have run. So the layer keeps one :class:`~.connection.Shard` per primary and routes itself,
with redis-py's pieces where they fit (``redis.crc.key_slot``, its connections, its error
classes).

Names go to buckets (:mod:`.slots`; how many, and their tags, the Cluster records:
:mod:`.cluster_tags`); each bucket is a vshard (:class:`ClusterBucket`) whose keys all carry
its tag, so every script, ``MULTI`` and multi-key pop touches one slot. The ring's member for
a Cluster, which makes the buckets, is :class:`~.members.ClusterMember`.
:class:`ClusterTopology` knows which primary serves each bucket's slot (``CLUSTER SLOTS``,
asked of a known node: seeds first; on demand, at most every 100 ms, one question at a time),
and the buckets handle what the servers answer:

=========================  =================================================================
``MOVED slot host:port``   not run: the slot lives elsewhere; the map is patched, then read
                           again; the command goes to the new owner (at most 5 hops)
``ASK slot host:port``     not run: the slot is migrating; ``ASKING`` and the command there, once
``TRYAGAIN``               not run: the keys are split by a migration; again after 25 ms
``CLUSTERDOWN``,           not run: a failover is under way; the map is read again and the
``MASTERDOWN``             command retried for up to ``cluster_retry_budget`` (0.5 s), then
                           ``LayerUnavailable``
``READONLY``               not run: the node is a replica now; the map is read again, resent
``UNBLOCKED``              a blocking pop released by a failover: it answers as a timeout, and
                           the caller's wait goes on with the new owner
``LOADING``                ``LayerUnavailable``
connection refused         nothing was sent: the map is read again; if the bucket moved, the
                           command goes there, else ``LayerUnavailable``
connection lost after      may or may not have run: ``LayerUnavailable`` (never resent), and
the write                  the map is read again for the next call
``CROSSSLOT``              a bug of the layer's: ``ChannelsError`` naming it
=========================  =================================================================

Callers therefore only ever see ``LayerUnavailable`` (and the contract's errors), never a
``MovedError``, ``ReadOnlyError``, ``ConnectionError`` or ``CROSSSLOT``.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Callable, Sequence

from redis.crc import key_slot
from redis.exceptions import ResponseError

from ... import exceptions as exc
from . import cluster_tags
from .connection import NETWORK_ERRORS, Script, Shard, Link, fork_generation, packed
from .slots import parse_cluster_tags, tag_slot

__all__ = ["ClusterTopology", "ClusterBucket", "run_all", "make_topology"]

log = logging.getLogger(__name__)

#: Least seconds between two readings of the slot map asked for by failures.
REFRESH_INTERVAL = 0.1
#: Seconds a command refused with CLUSTERDOWN or TRYAGAIN is retried before LayerUnavailable.
RETRY_BUDGET = 0.5
_MAX_HOPS = 5
_ASKING = packed("ASKING")


def _redirect(reply: BaseException) -> tuple[str, tuple[str, int] | None]:
    """(kind, address) of an error reply that means "not run here", or ("", None)."""
    text = str(reply)
    head = text.split(" ", 1)[0]
    if head in ("MOVED", "ASK"):
        parts = text.split()
        host, _, port = parts[2].rpartition(":")
        return head, ((host or "", int(port)) if port.isdigit() else None)
    if head in ("TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY", "UNBLOCKED", "LOADING", "CROSSSLOT"):
        return head, None
    if "-READONLY" in text[:200]:  # refused inside a script
        return "READONLY", None
    return "", None


class ClusterTopology:
    """Which primary serves each bucket of one Redis Cluster (and which primaries there are).

    ``tags``, ``slots`` and ``owners`` have one entry per bucket and, last (index -1), one for
    the record of the buckets' tags (:mod:`.cluster_tags`); the buckets' come with
    :meth:`settle` (``requested``: the layer's ``cluster_tags``, ``"auto"`` or a count).
    """

    def __init__(self, seeds: Sequence[tuple[str, int]], node_url: Callable[[str, int], str],
                 options: dict[str, Any], key_prefix: str, requested: int | str,
                 retry_budget: float = RETRY_BUDGET, first: Shard | None = None) -> None:
        self.seeds = list(seeds)
        self._node_url = node_url
        self._options = options
        self._p = key_prefix
        self.requested = requested
        self.record_key = cluster_tags.record_key(key_prefix)
        self.tags: tuple[str, ...] = (cluster_tags.RECORD_TAG,)
        self.slots = [tag_slot(t) for t in self.tags]
        #: The slot map last read: (first slot, last slot, the primary's address).
        self.ranges: list[tuple[int, int, tuple[str, int]]] = []
        self.retry_budget = retry_budget
        self._nodes: dict[tuple[str, int], Shard] = {}
        if first is not None:
            first._sharded_bell = True
            first.on_bell_moved = self._bell_moved
            self._nodes[first.address] = first
        self.owners: list[Shard | None] = [None]
        self.primaries: list[tuple[str, int]] = []
        self.epoch = 0
        self._lock = threading.Lock()
        self._settle_lock = threading.Lock()
        self._refreshed = float("-inf")
        self._callbacks: list[Callable[[], None]] = []
        self._generation = fork_generation()
        self._checked = False
        self.closed = False

    def node(self, address: tuple[str, int]) -> Shard:
        """The connection pool of the node at ``address`` (made on first use)."""
        shard = self._nodes.get(address)
        if shard is None:
            shard = Shard(self._node_url(*address), self._options, self._p, sharded_bell=True)
            shard.on_bell_moved = self._bell_moved
            shard = self._nodes.setdefault(address, shard)
        return shard

    def _bell_moved(self) -> None:
        self.refresh()

    def owner(self, index: int) -> Shard:
        """The primary serving bucket ``index`` (the map is read first if it was never)."""
        shard = self.owners[index]
        if shard is None:
            self.refresh(force=True)
            shard = self.owners[index]
            if shard is None:
                raise exc.LayerUnavailable(f"no node of the Redis Cluster {self.label} serves slot "
                                           f"{self.slots[index]}; the call did not complete")
        return shard

    @property
    def label(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in (self.primaries or self.seeds))

    def on_change(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    # -- the buckets' tags (:mod:`.cluster_tags`) -------------------------------------------------

    def settle(self) -> tuple[str, ...]:
        """The buckets' tags: those the Cluster records, recorded by this process when it is the first
        (asked once, with the first call that needs a bucket; ConfigurationError on a conflict)."""
        if len(self.tags) == 1:
            self._after_fork()
            with self._settle_lock:
                if len(self.tags) == 1:
                    if not self.ranges:
                        self.refresh(force=True)
                    self.use_tags(cluster_tags.settle(self.requested, self.ranges, self._exchange,
                                                      self.record_key, self.label))
        return self.tags[:-1]

    def use_tags(self, tags: Sequence[str]) -> None:
        """Route buckets with these tags (:meth:`settle` calls it; a tool that only names keys may too)."""
        with self._lock:
            self.tags = (*tags, cluster_tags.RECORD_TAG)
            self.slots = [tag_slot(t) for t in self.tags]
            self.owners = [self._owner_of(slot) for slot in self.slots]

    def _exchange(self, value: bytes, force: bool) -> Any:
        """``SET`` the record (``NX`` unless ``force``) and ``GET`` what it held, routed as a bucket's command."""
        try:
            return ClusterBucket(self, -1, self._p).execute("SET", self.record_key, value,
                                                            *(() if force else ("NX",)), "GET")
        except ResponseError as e:  # an ACL that refuses the key, say
            raise exc.ConfigurationError(f"the Redis Cluster {self.label} refused the record of the layer's hash tags "
                                         f"({self.record_key.decode()!r}): {e}") from None

    def reassert(self) -> None:
        """Write the record again after a failover (it may have been lost with a primary)."""
        if len(self.tags) > 1:
            cluster_tags.reassert(self.tags[:-1], self._exchange, self.record_key, self.label)

    def rebalance(self) -> None:
        """After a flush: an explicit count that differs from the record replaces it."""
        cluster_tags.rebalance(self.requested, self._exchange, self.record_key, self.label)

    # -- reading the map ------------------------------------------------------------------------

    def refresh(self, force: bool = False) -> bool:
        """Read the slot map again (at most every :data:`REFRESH_INTERVAL` unless ``force``, one
        reader at a time: others wait for it); True when a bucket changed owner."""
        self._after_fork()
        asked = time.monotonic()
        if not force and asked - self._refreshed < REFRESH_INTERVAL:
            return False
        with self._lock:
            if self._refreshed >= asked or (not force and time.monotonic() - self._refreshed < REFRESH_INTERVAL):
                return False  # read by another thread meanwhile
            try:
                reply, source = self._ask()
            except exc.LayerUnavailable as e:
                if force:
                    raise
                log.debug("%s", e)
                return False
            finally:
                self._refreshed = time.monotonic()
            changed = self._apply(reply, source)
        if changed:
            self._changed()
        return changed

    def _after_fork(self) -> None:
        if self._generation != fork_generation():  # a lock held by another thread at the fork stays held
            self._generation, self._lock, self._settle_lock = fork_generation(), threading.Lock(), threading.Lock()

    def _ask(self) -> tuple[list, tuple[str, int]]:
        problems = []
        addresses = list(dict.fromkeys([*self.primaries, *self.seeds, *self._nodes]))
        for address in addresses:
            shard = self.node(address)
            try:
                if not self._checked:
                    self._check_version(shard)
                return shard.execute("CLUSTER", "SLOTS"), address
            except exc.ConfigurationError:
                raise
            except ResponseError as e:
                if "cluster support disabled" in str(e):
                    raise exc.ConfigurationError(
                        f"Redis at {address[0]}:{address[1]} is not a Redis Cluster node (cluster support "
                        "disabled): use a redis:// URL for a standalone server") from None
                problems.append(f"{address[0]}:{address[1]}: {e}")
            except exc.LayerUnavailable as e:
                problems.append(f"{address[0]}:{address[1]}: {e}")
        raise exc.LayerUnavailable(f"no node of the Redis Cluster {self.label} answered CLUSTER SLOTS "
                                   f"({'; '.join(problems)}); the call did not complete")

    def _check_version(self, shard: Shard) -> None:
        try:
            info = shard.execute("INFO", "server")
        except ResponseError:  # INFO not allowed to this user (ACL @dangerous): the scripts will tell
            self._checked = True
            return
        text = info.decode() if isinstance(info, bytes) else str(info)
        match = re.search(r"redis_version:(\d+)\.(\d+)", text)
        if match and int(match.group(1)) < 7:
            raise exc.ConfigurationError(
                f"the Redis Cluster at {shard.address[0]}:{shard.address[1]} runs Redis {match.group(1)}."
                f"{match.group(2)}: the layer needs Redis 7.0 or later on a Cluster (sharded pub/sub for "
                "wake-ups, BLMPOP, scripts that declare their slot). Redis 6.2 works standalone (redis://) "
                "and behind Sentinel (redis+sentinel://)")
        self._checked = True

    def _apply(self, reply: list, source: tuple[str, int]) -> bool:
        ranges = []
        for row in reply:
            start, end, master = int(row[0]), int(row[1]), row[2]
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            if host in ("", "?"):
                host = source[0]
            ranges.append((start, end, (host, int(master[1]))))
        self.ranges = ranges
        owners = [self._owner_of(slot) for slot in self.slots]
        self.primaries = list(dict.fromkeys(a for _, _, a in ranges))
        for address in list(self._nodes):
            if address not in self.primaries:
                self._nodes.pop(address).close()  # a node gone, demoted or only a seed: its doorbell and pool go
        return self._set_owners(owners)

    def _owner_of(self, slot: int) -> Shard | None:
        address = next((a for lo, hi, a in self.ranges if lo <= slot <= hi), None)
        return self.node(address) if address is not None else None

    def _set_owners(self, owners: list) -> bool:
        """Install a new bucket -> primary map; True (and the epoch bumped) when a bucket moved (the
        record's entry, last, is not a bucket)."""
        before = [o.address if o else None for o in self.owners[:-1]]
        had_map = any(before)
        self.owners = owners
        if [o.address if o else None for o in owners[:-1]] == before or not had_map:
            return False
        self.epoch += 1
        log.warning("Redis Cluster slots moved: buckets now on %s",
                    ", ".join(sorted({f"{o.address[0]}:{o.address[1]}" for o in owners if o})))
        for shard in list(self._nodes.values()):
            if shard._bell is not None:
                shard._bell._wake_all()  # waiters pop again, from the new owners, and register there
        return True

    def moved(self, index: int, address: tuple[str, int] | None) -> None:
        """A ``MOVED`` for bucket ``index``: patch it now, then read the whole map again."""
        changed = False
        if address is not None and address[0]:
            old = self.owners[index]
            if old is None or old.address != address:
                owners = list(self.owners)
                owners[index] = self.node(address)
                with self._lock:
                    changed = self._set_owners(owners)
        if not self.refresh() and changed:  # a refresh that changed the map has told the callbacks
            self._changed()

    def _changed(self) -> None:
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:  # pragma: no cover
                log.exception("topology change callback failed")

    def primary_shards(self) -> list[Shard]:
        """A pool for every primary (flush and statistics visit each)."""
        if not self.primaries:
            self.refresh(force=True)
        return [self.node(a) for a in self.primaries]

    def close(self) -> None:
        self.closed = True
        for shard in list(self._nodes.values()):
            shard.close()


class ClusterBucket:
    """One bucket of a Redis Cluster member: a vshard whose keys carry the bucket's tag, routed to the
    primary that serves the tag's slot, redirects handled (see the module docstring)."""

    cluster = True
    fails_over = True

    def __init__(self, topology: ClusterTopology, index: int, key_prefix: str) -> None:
        self.topology = topology
        self.index = index
        self.tag = topology.tags[index]
        self.slot = topology.slots[index]
        self._p = key_prefix
        self._tagged = f"{{{self.tag}}}"
        #: The bucket's fixed keys (cluster_scripts.BUCKET_KEYS), first in the scripts that take them.
        self.bucket_keys = tuple(self.key(kind, "") for kind in ("gl", "ge", "gc", "gp", "t", "td"))

    def key(self, kind: str, name: str) -> bytes:
        return f"{self._p}{kind}:{self._tagged}{name}".encode()

    def node(self) -> Shard:
        return self.topology.owner(self.index)

    @property
    def label(self) -> str:
        owner = self.topology.owners[self.index]
        return f"Redis Cluster bucket {{{self.tag}}} on {owner.label if owner else self.topology.label}"

    @property
    def identity(self) -> str:
        return f"{self.topology.label}#{self.tag}"

    @property
    def epoch(self) -> int:
        return self.topology.epoch

    topology_epoch = epoch

    @property
    def blmpop(self) -> bool:
        return True  # Redis 7 (checked when the map is first read)

    @blmpop.setter
    def blmpop(self, value: Any) -> None:
        pass

    def recheck(self) -> bool:
        before = self.topology.owners[self.index]
        self.topology.refresh()
        return self.topology.owners[self.index] is not before

    def now_ms(self) -> int:
        owner = self.topology.owners[self.index]
        return owner.now_ms() if owner is not None else int(time.time() * 1000)

    def bell(self) -> Any:
        return self.node().bell()

    def unavailable(self, error: BaseException, sent: bool = True) -> exc.LayerUnavailable:
        return self.node().unavailable(error, sent)

    def close(self) -> None:
        self.topology.close()

    # -- commands, routed ---------------------------------------------------------------------

    def _routed(self, run: Callable[[Shard], Any], asking: Callable[[Shard], Any], blocking: bool = False) -> Any:
        """``run(owner)``, following redirects and riding out a short failover (see the module docstring)."""
        hops = 0
        deadline: float | None = None
        ask: Shard | None = None
        while True:
            shard = self.node()
            try:
                if ask is not None:  # the slot is migrating there: ASKING, then the command, once
                    target, ask = ask, None
                    return asking(target)
                return run(shard)
            except ResponseError as e:
                kind, address = _redirect(e)
                if not kind:
                    raise
                if kind == "UNBLOCKED" and blocking:
                    self.topology.refresh()
                    return None
                if kind == "CROSSSLOT":
                    raise exc.ChannelsError(f"a command of the Redis layer touched keys of several slots ({e}): "
                                            "a bug, please report it") from None
                if kind == "LOADING":
                    raise shard.unavailable(e, sent=False) from None
                hops += 1
                if kind == "ASK" and address is not None:
                    ask = self.topology.node(address)
                elif kind == "MOVED":
                    self.topology.moved(self.index, address)
                elif kind == "READONLY":
                    self.topology.refresh(force=True)
                else:  # TRYAGAIN, CLUSTERDOWN, MASTERDOWN: wait a little, within the budget
                    now = time.monotonic()
                    deadline = deadline or now + self.topology.retry_budget
                    if now >= deadline:
                        raise shard.unavailable(ResponseError(f"{e} (a failover or a migration is under way)"),
                                                sent=False) from None
                    if kind != "TRYAGAIN":
                        self.topology.refresh()
                    time.sleep(0.025 if kind == "TRYAGAIN" else 0.05)
                    hops -= 1
                if hops > _MAX_HOPS:
                    raise shard.unavailable(ResponseError(f"{e} (redirected {hops} times)"), sent=False) from None
            except exc.LayerUnavailable as e:
                if getattr(e, "sent", True):
                    self.topology.refresh()  # for the next call: never resend what may have run
                    raise
                if not self.recheck():  # nothing was sent: go on if the bucket has a new owner
                    raise

    def call(self, script: Script, payload: bytes) -> Any:
        return self._routed(lambda s: s.call(script, payload), lambda s: _asking(s, script, payload))

    def execute_packed(self, payload: bytes, blocking: bool = False) -> Any:
        return self._routed(lambda s: s.execute_packed(payload, blocking=blocking),
                            lambda s: _asking(s, None, payload), blocking=blocking)

    def execute(self, *args: Any, now: bool = False) -> Any:
        return self._routed(lambda s: s.execute(*args, now=now), lambda s: _asking(s, None, packed(*args)))

    def script(self, script: Script, keys: Sequence[Any], args: Sequence[Any], now: bool = False) -> Any:
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        if now:
            return self._routed(lambda s: s.call(script, packed(*command, s.now_ms())),
                                lambda s: _asking(s, script, packed(*command, s.now_ms())))
        return self.call(script, packed(*command))

    def pipeline(self, payloads: Sequence[bytes], script: Script, then: bytes | None = None,
                 then_first: bool = False, tail: Sequence[bytes] = ()) -> list:
        """As :meth:`.Shard.pipeline`; commands refused with a redirect (never run) are sent again
        one by one to where they belong, a redirected ``then`` (a blocking pop) answers None."""
        replies = self._routed(lambda s: s.pipeline(payloads, script, then, then_first, tail),
                               lambda s: s.pipeline(payloads, script, then, then_first, tail),
                               blocking=then is not None)
        if replies is None:
            return [None] * (len(payloads) + len(tail) + (then is not None))
        count = len(payloads)
        at = 1 if (then is not None and then_first) else 0
        for i in range(at, at + count):
            reply = replies[i]
            if isinstance(reply, ResponseError) and _redirect(reply)[0]:
                try:
                    replies[i] = self.call(script, payloads[i - at])
                except (exc.ChannelsError, ResponseError) as e:
                    replies[i] = e
        if then is not None:
            i = 0 if then_first else len(replies) - 1
            if isinstance(replies[i], ResponseError) and _redirect(replies[i])[0]:
                self.topology.refresh()
                replies[i] = None
        return replies


def _asking(shard: Shard, script: Script | None, payload: bytes) -> Any:
    """``ASKING`` and ``payload`` on ``shard`` (the slot is migrating there), in one round trip."""
    ok, reply = shard._roundtrip(_ASKING + payload, 2)
    if isinstance(reply, ResponseError):
        if script is not None and str(reply).startswith("NOSCRIPT"):
            shard.execute("SCRIPT", "LOAD", script.source)
            ok, reply = shard._roundtrip(_ASKING + payload, 2)
        if isinstance(reply, ResponseError):
            raise reply
    return reply


def make_topology(seeds: Sequence[tuple[str, int]], node_url: Callable[[str, int], str], options: dict[str, Any],
                  key_prefix: str, tag_count: Any, first: Shard | None = None) -> ClusterTopology:
    """The topology of a Cluster reached through ``seeds``; ``tag_count``: the layer's ``cluster_tags``."""
    return ClusterTopology(seeds, node_url, options, key_prefix, parse_cluster_tags(tag_count), first=first)


def run_all(items: Sequence[tuple[Any, Script, bytes]], tail: bytes | None = None) -> list:
    """Run each ``(vshard, script, payload)`` at once: every node written (each of its payloads,
    followed by ``tail`` when given), then every reply read; one round trip of latency.

    Returns the replies in order (with ``tail``: script, tail, script, tail, ...). A reply that
    says "not run here" (a redirect, ``NOSCRIPT``) is sent again through its vshard; an error
    reply of another kind is returned in its place. Items of a node that refused the connection
    (nothing was sent) go to their vshard's new owner when the map says it moved. A network
    failure after the write raises ``LayerUnavailable`` once every other node's replies are read
    (none is resent).
    """
    per = 1 if tail is None else 2
    by_node: dict[int, tuple[Any, list[int]]] = {}
    for i, (vshard, _, _) in enumerate(items):
        node = vshard.node()
        by_node.setdefault(id(node), (node, []))[1].append(i)
    replies: list = [None] * (len(items) * per)
    links: list[tuple[Any, Link, list[int]]] = []
    error: BaseException | None = None
    refused: list[tuple[Any, int, list[int], BaseException]] = []
    try:
        for node, indexes in by_node.values():
            try:
                link = node.acquire()
            except exc.LayerUnavailable as e:
                if getattr(e, "sent", True):
                    error = error or e
                else:
                    refused.append((node, node.epoch, indexes, e))
                continue
            links.append((node, link, indexes))
        for node, link, indexes in list(links):
            data = b"".join(items[i][2] + (tail or b"") for i in indexes)
            try:
                link.write(data)
            except NETWORK_ERRORS as e:
                link.disconnect()
                links.remove((node, link, indexes))
                error = error or node.unavailable(e)
        for node, link, indexes in links:
            try:
                for i in indexes:
                    for j in range(per):
                        replies[i * per + j] = link.read()
            except NETWORK_ERRORS as e:
                link.disconnect()
                error = error or node.unavailable(e)
                continue
            node.release(link)
    except BaseException:
        for _, link, _ in links:
            link.disconnect()
        raise
    if error is not None:
        for vshard, _, _ in items:
            if vshard.fails_over:
                vshard.recheck()  # the next call asks the right node
        raise error
    for node, epoch, indexes, refusal in refused:
        for i in indexes:
            vshard, script, payload = items[i]
            if not vshard.fails_over:
                raise refusal
            vshard.recheck()
            if vshard.node() is node and node.epoch == epoch:
                raise refusal  # nothing moved (yet): the node is just down
            again = vshard.pipeline([payload], script, tail=(tail,) if tail is not None else ())
            replies[i * per:(i + 1) * per] = again
    for i, (vshard, script, payload) in enumerate(items):
        reply = replies[i * per]
        if isinstance(reply, ResponseError) and (_redirect(reply)[0] or str(reply).startswith("NOSCRIPT")):
            try:
                replies[i * per] = vshard.call(script, payload)
            except ResponseError as e:
                replies[i * per] = e
    return replies


def slot_of(key: bytes) -> int:
    return key_slot(key)
