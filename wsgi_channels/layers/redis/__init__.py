"""The Redis layer (``redis://``, ``rediss://``): every process of every machine, one or many shards.

=================  ===========================================================================
``layer``          :class:`RedisChannelLayer`: sends, groups, sessions, statistics, flush
``receive``        ``receive`` and ``receive_batch``, and their waits (``BLPOP``, ``BLMPOP``, doorbells)
``entries``        the format of one queued entry (``m``, ``t``, ``r``), for Python and the Lua, in one place
``scripts``        the Lua scripts (one per operation, so one round trip) and the key layout
``connection``     a fork-aware connection pool per shard; packed commands, pipelines
``wakeup``         pub/sub doorbells that wake blocked receivers within milliseconds
``copies``         group messages for many members of one prefix, handed out one member at a time
``options``        URLs, query options and encryption keys
=================  ===========================================================================
"""
from __future__ import annotations

from .layer import RedisChannelLayer

__all__ = ["RedisChannelLayer"]
