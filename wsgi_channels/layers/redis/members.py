"""The members of the Redis layer's hash ring: a server, a Sentinel-watched service, or a Redis Cluster.

The ring (:mod:`..hashring`) maps a name to a member by the member's ``identity``; the member
maps it to the *vshard* whose keys hold it:

:class:`ServerMember`
    one standalone server, or the primary of a Sentinel service: one vshard, the
    :class:`~.connection.Shard` itself (keys ``P:kind:{name}``, as ever).
:class:`ClusterMember`
    a Redis Cluster: one vshard per hash-tag bucket (:class:`~.cluster.ClusterBucket`), each
    routed to the primary that serves its slot (keys ``P:kind:{TAG}name``). How many buckets,
    and their tags, the Cluster records (:mod:`.cluster_tags`): the member learns them with
    its first call that needs a bucket, and makes its buckets then.

A plain ``redis://`` URL may point at a Cluster node (managed services hand out one
endpoint): its member learns it with its first connection (``CLUSTER INFO``, in the same
round trip as the ``TIME`` every connection sends) and from then on stands for a
``ClusterMember`` seeded with that node.

``identity`` never depends on what a member turns out to be, so every process agrees on the
ring: ``host:port/db`` for a server (as before), ``sentinel:NAME/db@sentinels`` and
``cluster:seeds`` otherwise. Every process must be given the same URLs.
:func:`member_for_url` makes the member a URL names.
"""
from __future__ import annotations

import fnmatch
import re
import threading
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

from ... import exceptions as exc
from .cluster import ClusterBucket, ClusterTopology, make_topology
from .connection import Shard, fork_generation
from .sentinel import SentinelLocator
from .slots import bucket_of
from .urls import is_topology_url, parse_topology_url

__all__ = ["ServerMember", "ClusterMember", "member_for_url", "DEFAULT_COLOCATE"]

#: Channels matching one entry's globs share the bucket of the entry's first glob, so the worker's
#: default channel set is one blocking pop on one node (plain names only; never ``!`` or ``?``).
DEFAULT_COLOCATE = (("http.*", "websocket.*"),)


class ServerMember:
    """One Redis server (or the primary of a Sentinel service) of the ring: one vshard; or, when the
    server turns out to be a Cluster node, the Cluster it belongs to (``as_cluster`` builds it)."""

    def __init__(self, shard: Shard, identity: str | None = None,
                 as_cluster: Callable[[Shard], Any] | None = None) -> None:
        self.shard = shard
        self.identity = identity or shard.identity
        self._as_cluster = as_cluster
        self._cluster: Any = None
        #: Whether it is known what this member is (a URL that may name a Cluster node: not yet).
        self.resolved = as_cluster is None
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def _resolve(self) -> Any:
        """The ClusterMember this server belongs to, or None (it is a standalone server)."""
        if not self.resolved:
            with self._lock:
                if not self.resolved:
                    if self.shard.probe_cluster():
                        self._cluster = self._as_cluster(self.shard)  # type: ignore[misc]
                        for callback in self._callbacks:
                            self._cluster.on_change(callback)
                    self.resolved = True
        return self._cluster

    def vshard_for(self, name: str) -> Any:
        if self.resolved and self._cluster is None:
            return self.shard
        cluster = self._resolve()
        return self.shard if cluster is None else cluster.vshard_for(name)

    def vshards(self) -> list:
        cluster = self._resolve()
        return [self.shard] if cluster is None else cluster.vshards()

    def nodes(self) -> list[Shard]:
        """Every primary this member's keys may live on (flush and statistics visit each)."""
        cluster = self._resolve()
        return [self.shard] if cluster is None else cluster.nodes()

    @property
    def epoch(self) -> int:
        """Bumped by every failover this process followed."""
        return self.shard.epoch if self._cluster is None else self._cluster.epoch

    def on_change(self, callback: Callable[[], None]) -> None:
        self.shard.on_move(callback)
        self._callbacks.append(callback)
        if self._cluster is not None:
            self._cluster.on_change(callback)

    def flushed(self) -> None:
        """After a flush (see :meth:`ClusterMember.flushed`)."""
        if self._cluster is not None:
            self._cluster.flushed()

    def failed_over(self) -> None:
        """After a failover (see :meth:`ClusterMember.failed_over`)."""
        if self._cluster is not None:
            self._cluster.failed_over()

    def close(self) -> None:
        self.shard.close()
        if self.shard.locator is not None:
            self.shard.locator.close()
        if self._cluster is not None:
            self._cluster.close()


class ClusterMember:
    """A Redis Cluster in the layer's ring: its buckets (made once the Cluster's record of their tags
    is read, :meth:`ClusterTopology.settle`) and their topology."""

    def __init__(self, topology: ClusterTopology, identity: str, key_prefix: str,
                 colocate: Sequence[Sequence[str]] = DEFAULT_COLOCATE) -> None:
        self.topology = topology
        self.identity = identity
        self._p = key_prefix
        self._globs = []
        for entry in colocate or ():
            globs = [entry] if isinstance(entry, str) else list(entry)
            if globs:
                self._globs.append((re.compile("|".join(fnmatch.translate(g) for g in globs)), globs[0]))
        #: The buckets, in tag order: empty until the tags are known.
        self.buckets: list[ClusterBucket] = []
        self.count = 0
        self._colocate: list[tuple[Any, int]] = []
        self._index: dict[str, int] = {}
        self._lock = threading.Lock()
        self._generation = fork_generation()

    def _settle(self) -> list[ClusterBucket]:
        """Learn the buckets' tags (one question to the Cluster, the first time) and make the buckets,
        once: every caller gets the same bucket objects (the layer's caches are keyed by them)."""
        tags = self.topology.settle()
        if self._generation != fork_generation():  # a lock held by another thread at the fork stays held
            self._generation, self._lock = fork_generation(), threading.Lock()
        with self._lock:
            if not self.buckets:
                count = len(tags)
                self._colocate = [(pattern, bucket_of(glob, count)) for pattern, glob in self._globs]
                self._index = {}
                self.count = count
                # Last: a thread that sees the buckets sees the count and the colocation.
                self.buckets = [ClusterBucket(self.topology, i, self._p) for i in range(count)]
        return self.buckets

    def bucket_index(self, name: str) -> int:
        index = self._index.get(name)
        if index is None:
            index = -1
            if "!" not in name and "?" not in name:
                index = next((i for pattern, i in self._colocate if pattern.match(name)), -1)
            if index < 0:
                index = bucket_of(name, self.count)
            if len(self._index) >= 100_000:
                self._index.clear()
            self._index[name] = index
        return index

    def vshard_for(self, name: str) -> ClusterBucket:
        buckets = self.buckets or self._settle()
        return buckets[self.bucket_index(name)]

    def vshards(self) -> list:
        return list(self.buckets or self._settle())

    def nodes(self) -> list[Shard]:
        return self.topology.primary_shards()

    @property
    def epoch(self) -> int:
        return self.topology.epoch

    def on_change(self, callback: Callable[[], None]) -> None:
        self.topology.on_change(callback)

    def flushed(self) -> None:
        """After a flush: a layer given an explicit count other than the recorded one records it
        (a rebalance); the record is otherwise kept."""
        if not self.buckets:
            self.topology.rebalance()

    def failed_over(self) -> None:
        """After a failover: the record is written again where it went missing."""
        self.topology.reassert()

    def close(self) -> None:
        self.topology.close()


def member_for_url(url: str, options: dict[str, Any], timeouts: tuple[float, float], prefix: str,
                   cluster_tags: int | str, colocate: Sequence[Sequence[str]]) -> Any:
    """The ring member for one URL: a server (maybe a Cluster node), a Sentinel service or a Cluster.

    ``options``: redis-py connection keywords; ``timeouts``: (socket, connect) seconds, for the
    sentinels too; ``prefix``: the layer's key prefix with its ``:``; ``cluster_tags`` and
    ``colocate``: the layer's options of the same names, for a Cluster.
    """
    if not is_topology_url(url):
        parts = urlsplit(url)

        def node_url(host: str, port: int) -> str:
            userinfo = parts.netloc.rpartition("@")[0]
            hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            return urlunsplit(parts._replace(netloc=(userinfo + "@" if userinfo else "") + hostport))

        def as_cluster(shard: Shard) -> ClusterMember:
            if shard.connection_kwargs.get("db", 0):
                raise exc.ConfigurationError(
                    f"{shard.label} is a Redis Cluster node, and a Redis Cluster has only database 0: "
                    f"use /0 in the URL (or a redis+cluster:// URL)")
            topology = make_topology([shard.address], node_url, options, prefix, cluster_tags, shard)
            return ClusterMember(topology, shard.identity, prefix, colocate)

        return ServerMember(Shard(url, options, prefix, probe=True), as_cluster=as_cluster)
    parsed = parse_topology_url(url)
    if parsed.kind == "sentinel":
        locator = SentinelLocator(parsed, timeouts[0], timeouts[1], {**dict(parsed.options), **options})
        # The address is the sentinels' to tell: a placeholder until the first connection asks them.
        shard = Shard(parsed.node_url(f"primary-of-{parsed.service_name}", 6379), options, prefix,
                      locator=locator)
        sentinels = ",".join(f"{h}:{p}" for h, p in sorted(parsed.nodes))
        return ServerMember(shard, f"sentinel:{parsed.service_name}/{parsed.db}@{sentinels}")
    topology = make_topology(parsed.nodes, parsed.node_url, options, prefix, cluster_tags)
    identity = "cluster:" + ",".join(f"{h}:{p}" for h, p in sorted(parsed.nodes))
    return ClusterMember(topology, identity, prefix, colocate)
