"""The Redis layer's keys on each server, all of them at once: finding them, removing them, counting them.

``flush`` and the statistics visit every primary of every ring member (a Cluster's every
node) and find the layer's keys with ``SCAN`` (never ``KEYS``, which blocks the server),
matching only this layer's key shapes under its prefix (:func:`key_patterns`), so another
application's keys, even under a prefix that starts the same, are never touched. The key
layout itself is described in :mod:`.scripts`.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

from redis.crc import key_slot

from . import cluster_scripts as cscripts
from . import scripts
from .connection import Script
from .feature_scripts import FEATURE_KEY_KINDS

__all__ = ["key_patterns", "scan", "unlink_all", "count_queued", "queue_figures"]

_STATS = Script(scripts.STATS)
_C_STATS = Script(cscripts.STATS)


def key_patterns(pb: bytes) -> list[bytes]:
    """``SCAN`` patterns of every key shape of the layer with key prefix ``pb`` (``b"prefix:"``)."""
    # Only this layer's key shapes (standalone and Cluster): another application's prefix never matches.
    return [pb + b"[qumgst]:{*", pb + b"g[cple]:{*", pb + b"td:{*",
            *(pb + kind.encode() + b":{*" for kind in FEATURE_KEY_KINDS)]  # history and presence


def scan(shard: Any, patterns: Sequence[bytes]) -> Iterator[list[bytes]]:
    """The keys of ``shard`` matching each of ``patterns``, a ``SCAN`` page at a time."""
    for pattern in patterns:
        cursor = b"0"
        while True:
            cursor, keys = shard.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            if keys:
                yield keys
            if cursor in (b"0", 0, "0"):
                break


def unlink_all(nodes: Iterable[Any], patterns: Sequence[bytes]) -> None:
    """Remove every key matching ``patterns`` on each of ``nodes``."""
    for shard in nodes:
        for keys in scan(shard, patterns):
            by_slot: dict[int, list[bytes]] = {}
            for key in keys:  # a multi-key UNLINK stays in one slot on a Cluster
                by_slot.setdefault(key_slot(key), []).append(key)
            for same in by_slot.values():
                shard.execute("UNLINK", *same)


def count_queued(nodes: Iterable[Any], pb: bytes) -> int:
    """Entries waiting in every queue of the layer with key prefix ``pb`` on ``nodes``."""
    pending = 0
    for shard in nodes:
        for keys in scan(shard, [pb + b"q:{*"]):
            for key in keys:
                pending += shard.execute("LLEN", key)
    return pending


def queue_figures(shard: Any, keys: tuple, prefix: str, expiry_ms: int) -> tuple[int, float]:
    """``(entries waiting, seconds the oldest has waited)`` of one queue (a channel or a ``prefix!``,
    its keys as the layer's ``_queue_keys`` gives them), in one script."""
    if shard.cluster:
        pending, head, now_ms = shard.script(_C_STATS, keys, ())
    else:
        pending, head, now_ms = shard.script(_STATS, keys, (prefix,))
    age = max(0.0, (now_ms - (head - expiry_ms)) / 1000.0) if head else 0.0
    return pending, age
