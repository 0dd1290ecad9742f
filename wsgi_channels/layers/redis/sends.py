"""The packed ``SEND`` command of each channel, made once and kept.

A send is one ``EVALSHA`` of the ``SEND`` script (:mod:`.scripts`; on a Redis Cluster bucket,
:mod:`.cluster_scripts`'), whose keys, capacity and expiries depend only on the channel: the
command up to its last argument, the entry (:func:`.entries.append_entry` adds it), is packed
once per channel and kept (:class:`SendCommands`), with the shard and the entry's head. The
one-off reply channels of HTTP requests on one ``prefix!`` share what depends only on the
prefix's queue: one lookup per request, not a name check, hash-ring walk and packing.
"""
from __future__ import annotations

from typing import Any, Callable

from . import cluster_scripts as cscripts
from . import entries
from . import scripts
from .connection import Script, bulk
from ..names import non_local_name, validate_channel_name

__all__ = ["SendCommands"]

_SEND = Script(scripts.SEND)
_C_SEND = Script(cscripts.SEND)
#: Entries of each cache before it is cleared.
_CACHE_LIMIT = 10_000


class SendCommands:
    """The send command of each channel, for one layer (which owns it).

    ``shard_of`` and ``queue_keys``: the layer's name -> vshard lookup and its queue keys;
    ``capacity_of``: its capacity rules; ``prefix``: its key prefix with its ``:``;
    ``expiry_ms`` and ``group_expiry_ms``: its expiries. :attr:`by_channel` is read directly
    on the hot path; :meth:`info` fills it.
    """

    __slots__ = ("_shard_of", "_queue_keys", "_capacity_of", "_p", "_expiry_ms", "_gexp_ms", "by_channel",
                 "_by_queue")

    def __init__(self, shard_of: Callable[[str], Any], queue_keys: Callable[[str, Any], tuple],
                 capacity_of: Callable[[str], int], prefix: str, expiry_ms: int, group_expiry_ms: int) -> None:
        self._shard_of = shard_of
        self._queue_keys = queue_keys
        self._capacity_of = capacity_of
        self._p = prefix
        self._expiry_ms = expiry_ms
        self._gexp_ms = group_expiry_ms
        #: channel -> (shard, packed command up to the entry, capacity, the entry's head, queue name, script)
        self.by_channel: dict[str, tuple] = {}
        self._by_queue: dict[str, tuple] = {}

    def info(self, channel: str) -> tuple:
        """(shard, packed command up to the entry, capacity, the entry's head, queue name, script) of
        ``channel`` (checked), cached per channel."""
        info = self.by_channel.get(channel)
        if info is None:
            validate_channel_name(channel)
            qname = non_local_name(channel)
            shard, command, capacity, script = self._queue(qname)
            info = (shard, command, capacity,
                    entries.targets_head([channel]) if qname is not channel else entries.message_head(), qname,
                    script)
            if len(self.by_channel) >= _CACHE_LIMIT:
                self.by_channel.clear()
            self.by_channel[channel] = info
        return info

    def _queue(self, qname: str) -> tuple:
        """(shard, packed command up to the entry, capacity, send script) of a queue, cached per queue."""
        info = self._by_queue.get(qname)
        if info is None:
            shard = self._shard_of(qname)
            keys = self._queue_keys(qname, shard)
            capacity = self._capacity_of(qname)
            if shard.cluster:
                script = _C_SEND
                command = b"*%d\r\n" % (len(keys) + 7) + bulk(
                    "EVALSHA", script.sha, len(keys), *keys, self._expiry_ms, capacity, self._gexp_ms)
            else:
                script = _SEND
                command = b"*%d\r\n" % (len(keys) + 8) + bulk(
                    "EVALSHA", script.sha, len(keys), *keys, self._expiry_ms, capacity, self._p, self._gexp_ms)
            info = (shard, command, capacity, script)
            if len(self._by_queue) >= _CACHE_LIMIT:
                self._by_queue.clear()
            self._by_queue[qname] = info
        return info
