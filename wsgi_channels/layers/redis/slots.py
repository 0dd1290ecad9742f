"""Hash tags for the Redis layer's keys on a Redis Cluster: a slot-balanced table, and each name's tag.

A Redis Cluster places a key by the CRC16 of its hash tag (the text between the first
``{`` and the next ``}``) in one of 16384 slots, and runs a script, a ``MULTI`` or a
multi-key blocking pop only on keys of one slot. The layer therefore groups names into
``count`` buckets, each with one tag, and every key of a bucket carries that tag: the
queues of the channels in it, their process prefixes' flags and indexes, and the group
memberships of those channels. A script then touches the keys of one bucket, so of one
slot, and a group send costs one script per bucket holding members of the group.

The tags are spread evenly over the slots: bucket ``i`` of ``count`` owns the ``i``-th of
``count`` equal slot ranges, and its tag hashes to the middle slot of that range. Cluster
creation and resharding tools hand each primary contiguous ranges of about equal size, so
the buckets, and with them the load of many channels, divide evenly over the primaries
(with ``count`` a multiple of their number, exactly; a range split across two primaries
puts its bucket wholly on one of them).

A name goes to the bucket whose range holds its own slot (the CRC16 of the name), so
names spread as evenly over the buckets as Redis spreads keys over slots, and with
``count = 16384`` each tag lands on the name's own slot.

The table is made by a fixed search (tags are base-36 numbers, the first that lands on each
wanted slot wins, :func:`tags_for_slots`), the same in every process and every version: key
names depend on it, so changing it, or ``count``, moves every key (a flush).
``tests/test_redis_slots.py`` pins known values.

The layer's default, ``cluster_tags="auto"`` (:data:`AUTO`), does not use this table: it
places one bucket on each primary of the slot map it finds, the tags chosen with the same
search, and records them in the Cluster (:mod:`.cluster_tags`); names still go to buckets by
:func:`bucket_of`.
"""
from __future__ import annotations

from functools import lru_cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from ... import exceptions as exc

__all__ = ["SLOTS", "AUTO", "DEFAULT_TAG_COUNT", "tag_table", "tags_for_slots", "bucket_of", "tag_of", "tag_slot",
           "key_slot", "check_tag_count", "parse_cluster_tags"]

SLOTS = REDIS_CLUSTER_HASH_SLOTS
#: ``cluster_tags`` of the layer by default: one bucket per primary, the count recorded in the Cluster.
AUTO = "auto"
#: The table's size where none is given (the table functions' default). A group send costs one
#: script per bucket holding members of the group (about 10 microseconds each beyond the first
#: few, measured on the test cluster), so fewer buckets make a send to members everywhere
#: cheaper, which is why the layer's default is one per primary (:data:`AUTO`). An explicit
#: count of 12 divides evenly over 1, 2, 3, 4, 6 and 12 primaries; a bigger cluster wants a
#: multiple of its primaries (48 covers 8, 16 and 24 too).
DEFAULT_TAG_COUNT = 12

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _DIGITS[r] + out
        if not n:
            return out


def check_tag_count(count: object) -> int:
    """``count`` if it is a usable number of buckets (an int from 1 to 16384), else ConfigurationError."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= SLOTS:
        raise exc.ConfigurationError(
            f"the number of Redis Cluster hash tags must be an integer from 1 to {SLOTS}, got {count!r}")
    return count


def parse_cluster_tags(value: object) -> int | str:
    """The ``cluster_tags`` option: :data:`AUTO` (the text ``auto``, any case) or a bucket count (an
    int or its digits, from a URL's query), else ConfigurationError."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if text.isdigit():
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= SLOTS:
        raise exc.ConfigurationError(
            f"the number of Redis Cluster hash tags must be an integer from 1 to {SLOTS}, or 'auto' (one per "
            f"primary, the default), got {value!r}")
    return value


def _range_start(i: int, count: int) -> int:
    """First slot of bucket ``i``'s range: the slots ``s`` with ``s * count // SLOTS == i``."""
    return -(-i * SLOTS // count)


@lru_cache(maxsize=8)
def tag_table(count: int = DEFAULT_TAG_COUNT) -> tuple[str, ...]:
    """The ``count`` tags, in bucket order: tag ``i`` hashes to the middle slot of bucket ``i``'s range.

    Deterministic: the shortest base-36 numbers, in counting order, the first to land on
    each wanted slot. Computed once per ``count`` per process (16384 tags take about
    170,000 CRC16s, a fraction of a second; 48 take a few thousand).
    """
    check_tag_count(count)
    return tags_for_slots([(_range_start(i, count) + _range_start(i + 1, count) - 1) // 2 for i in range(count)])


def tags_for_slots(slots: list[int]) -> tuple[str, ...]:
    """One tag per slot of ``slots`` (distinct slots), in that order: for each, the shortest base-36
    number, in counting order, that hashes to it. Deterministic."""
    wanted = {slot: i for i, slot in enumerate(slots)}
    if len(wanted) != len(slots) or not all(0 <= s < SLOTS for s in wanted):
        raise ValueError(f"tags_for_slots needs distinct slots from 0 to {SLOTS - 1}")
    table: list[str | None] = [None] * len(slots)
    missing = len(slots)
    n = 0
    while missing:
        tag = _base36(n)
        n += 1
        slot = key_slot(tag.encode())
        if slot in wanted:
            table[wanted.pop(slot)] = tag
            missing -= 1
    return tuple(table)  # type: ignore[arg-type]  # every entry was filled


def bucket_of(name: str, count: int = DEFAULT_TAG_COUNT) -> int:
    """The bucket of ``name``: the one whose slot range holds the name's own slot."""
    return key_slot(name.encode()) * count // SLOTS


def tag_of(name: str, count: int = DEFAULT_TAG_COUNT) -> str:
    """The hash tag of ``name``'s bucket (without braces)."""
    return tag_table(count)[key_slot(name.encode()) * count // SLOTS]


def tag_slot(tag: str) -> int:
    """The slot every key carrying ``{tag}`` lives in."""
    return key_slot(("{%s}" % tag).encode())
