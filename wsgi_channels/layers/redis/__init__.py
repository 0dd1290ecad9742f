"""The Redis layer: every process of every machine, on standalone Redis, Sentinel or a Redis Cluster.

``redis://``, ``rediss://`` (a server, or one node of a Cluster, detected), ``redis+sentinel://``,
``rediss+sentinel://``, ``redis+cluster://``, ``rediss+cluster://``; several joined into a hash ring.

===================  =========================================================================
``layer``            :class:`RedisChannelLayer`: sends, groups, sessions, statistics, flush
``receive``          ``receive`` and ``receive_batch``, and their waits (``BLPOP``, ``BLMPOP``, doorbells)
``failover``         the topology epoch and its callbacks, replayed memberships, ``wait_replicas``
``entries``          the format of one queued entry (``m``, ``t``, ``r``), for Python and the Lua, in one place
``scripts``          the Lua scripts of the standalone layout (one per operation, so one round trip)
``cluster_scripts``  the same on a Redis Cluster, every key declared, one hash-tag bucket per call
``cluster``          the Cluster's slot map, its buckets (redirects handled here), per-node pipelines
``cluster_groups``   group sends and members over a Cluster's buckets
``sentinel``         finding a Sentinel service's primary, and following its failovers
``members``          the hash ring's members: a server, a Sentinel service, a Cluster
``connection``       a fork-aware connection pool per server (it may move: a failover)
``link``             one connection, and the packing of commands
``wakeup``           pub/sub doorbells (sharded on a Cluster) that wake blocked receivers within milliseconds
``copies``           group messages for many members of one prefix, handed out one member at a time
``options``          URLs, query options and encryption keys
``urls``             parsing of Cluster and Sentinel URLs
``slots``            the Cluster's slot-balanced hash-tag table
===================  =========================================================================
"""
from __future__ import annotations

from .layer import RedisChannelLayer

__all__ = ["RedisChannelLayer"]
