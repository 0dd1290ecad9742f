"""The hash tags of a Redis Cluster's buckets: chosen once, recorded in the Cluster, read by every process.

Every key the layer writes on a Cluster carries the tag of its name's bucket (:mod:`.slots`),
so every process must use the same tags, and they must stay the same while any key exists.

What a layer may be given (``cluster_tags``):

``"auto"`` (the default)
    one bucket per primary. The first layer to start on a Cluster reads the slot map and,
    for each primary (in the order of its lowest slot), takes the middle slot of its largest
    range of slots and the first tag that hashes there (the search of
    :func:`.slots.tags_for_slots`): one tag inside each primary's own slots, whether the
    slots are split evenly or not, so a group send to members on every primary costs one
    fan-out script per primary. Names still go to buckets by :func:`.slots.bucket_of` (equal
    slot ranges of the name's own slot), so they spread evenly over the buckets.
an integer ``N``
    the equal-range table of ``N`` tags (:func:`.slots.tag_table`).

**The record.** Whatever the layer was given, the tags in use are those of the record: the
key ``PREFIX:cluster_tags:{cluster_tags}`` (a fixed hash tag, so a process finds it before it
knows any bucket; one per key prefix) holds ``"N TAG1 ... TAGN"``. A layer's first call
writes its proposal with ``SET ... NX GET`` (one round trip, Redis 7): when no record exists
its own is kept, else it gets the one recorded and uses it, also when it was given ``auto``.
Two processes starting at once therefore agree (the first ``SET`` wins). The record never
expires and ``flush()`` leaves it (its name matches none of :func:`.keyspace.key_patterns`).

Adding primaries later changes nothing: the count and the tags stay (the new primaries get
buckets only when resharding moves a bucket's slot to them). To rebalance, stop every
process and call ``flush()`` on a layer given the new count (:func:`rebalance`): it empties
the prefix and records that count in place of the old one.

An explicit ``N`` that differs from the recorded count is refused at the layer's first call
(:func:`conflict`). After a failover each process writes its record again with ``NX``
(:func:`reassert`): a record acknowledged just before a primary died may not have reached
the replica that took its place.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Callable, Sequence

from ... import exceptions as exc
from .slots import AUTO, SLOTS, tag_table, tags_for_slots

__all__ = ["RECORD_TAG", "record_key", "tags_per_primary", "proposal", "encode", "decode", "settle", "conflict",
           "reassert", "rebalance"]

log = logging.getLogger(__name__)

#: The hash tag of the record's key: fixed, so every process finds the record before it knows any bucket.
RECORD_TAG = "cluster_tags"
_TAG = re.compile(r"^[0-9a-z]{1,8}\Z")

#: A slot map as :class:`~.cluster.ClusterTopology` keeps it: ``(first slot, last slot, primary's address)``.
Ranges = Sequence[tuple[int, int, Any]]
#: ``SET record value NX GET`` (or, with ``force``, without ``NX``) on the record's node: the value
#: recorded before, or None.
Exchange = Callable[[bytes, bool], Any]


def record_key(key_prefix: str) -> bytes:
    """The record's key for key prefix ``key_prefix`` (with its ``:``)."""
    return f"{key_prefix}{RECORD_TAG}:{{{RECORD_TAG}}}".encode()


def tags_per_primary(ranges: Ranges) -> tuple[str, ...]:
    """One tag per primary of the slot map ``ranges``, in the order of their lowest slots: the tag of
    the middle slot of the primary's largest range (the lowest of equal ones)."""
    best: dict[Any, tuple[int, int, int]] = {}  # primary -> (its lowest slot, -(size of its largest range), start)
    for lo, hi, primary in sorted(ranges, key=lambda r: r[0]):
        first, size, start = best.get(primary, (lo, 0, lo))
        if hi - lo + 1 > -size:
            size, start = -(hi - lo + 1), lo
        best[primary] = (first, size, start)
    if not best:
        raise exc.LayerUnavailable("the Redis Cluster's slot map is empty (no slot is served); the call did "
                                   "not complete")
    order = sorted(best.values())
    return tags_for_slots([start + (-size - 1) // 2 for _, size, start in order])


def proposal(requested: int | str, ranges: Ranges) -> tuple[str, ...]:
    """The tags a layer given ``requested`` (``"auto"`` or a count) records when none are recorded."""
    return tags_per_primary(ranges) if requested == AUTO else tag_table(int(requested))


def encode(tags: Sequence[str]) -> bytes:
    return " ".join([str(len(tags)), *tags]).encode()


def decode(raw: Any, key: bytes) -> tuple[str, ...]:
    """The tags a record holds (ConfigurationError when it is not one the layer wrote)."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    parts = text.split()
    try:
        count = int(parts[0])
    except (IndexError, ValueError):
        count = -1
    tags = tuple(parts[1:])
    if not 1 <= count <= SLOTS or len(tags) != count or len(set(tags)) != count \
            or not all(_TAG.match(t) for t in tags):
        raise exc.ConfigurationError(
            f"the Redis Cluster key {key.decode()!r} should record the layer's hash tags ('N TAG1 ... TAGN') "
            f"and holds {text[:80]!r}: delete it once every process is stopped (the next one records afresh)")
    return tags


def conflict(requested: int, tags: Sequence[str], key: bytes, where: str) -> exc.ConfigurationError:
    prefix = key.decode().rsplit(f"{RECORD_TAG}:", 1)[0].rstrip(":")
    return exc.ConfigurationError(
        f"cluster_tags={requested}, but the Redis Cluster {where} records {len(tags)} hash-tag buckets for the key "
        f"prefix {prefix!r} (key {key.decode()!r}), and key names depend on that number: use cluster_tags=auto (or "
        f"{len(tags)}) to join the processes already there, or, to move to {requested} buckets, stop every process, "
        f"call flush() on a layer with cluster_tags={requested} (it records {requested}) and start them again")


def settle(requested: int | str, ranges: Ranges, exchange: Exchange, key: bytes, where: str) -> tuple[str, ...]:
    """The tags to use: this layer's proposal when it is the first to record one, else the record's
    (a count given explicitly must match it: ConfigurationError otherwise)."""
    mine = proposal(requested, ranges)
    before = exchange(encode(mine), False)
    if before is None:
        log.info("Redis Cluster %s: recorded %d hash-tag buckets (cluster_tags=%s) under %s", where, len(mine),
                 requested, key.decode())
        return mine
    tags = decode(before, key)
    if requested != AUTO and len(tags) != requested:
        raise conflict(int(requested), tags, key, where)
    return tags


def reassert(tags: Sequence[str], exchange: Exchange, key: bytes, where: str) -> None:
    """Write the record again (``NX``) after a failover; a record that differs from ``tags`` is logged."""
    try:
        before = exchange(encode(tags), False)
    except exc.ChannelsError as e:
        log.debug("the Redis Cluster %s record was not checked after a topology change: %s", where, e)
        return
    if before is None:
        log.warning("Redis Cluster %s: the record of the hash-tag buckets (%s) was missing after a topology "
                    "change (lost with a primary); recorded again from this process", where, key.decode())
    elif tuple(before.decode(errors="replace").split()[1:]) != tuple(tags):
        log.error("Redis Cluster %s: the record %s no longer holds the hash tags this process uses (%d buckets); "
                  "restart this process", where, key.decode(), len(tags))


def rebalance(requested: int | str, exchange: Exchange, key: bytes, where: str) -> None:
    """After a flush: record ``requested`` in place of a record of another count (an explicit count
    only; ``auto`` keeps the record, whatever it holds)."""
    if requested == AUTO:
        return
    mine = tag_table(int(requested))
    before = exchange(encode(mine), False)
    if before is None or len(decode(before, key)) == requested:
        return
    exchange(encode(mine), True)
    log.warning("Redis Cluster %s: flush() recorded %d hash-tag buckets (cluster_tags=%s) in place of %d: every "
                "process still running with the old ones must be restarted", where, len(mine), requested,
                len(decode(before, key)))
