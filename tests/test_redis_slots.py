"""The slot-balanced hash-tag table of :mod:`wsgi_channels.layers.redis.slots`.

Key names on a Redis Cluster depend on this table, so its values are pinned here: a
change to the search would move every key of every deployment.
"""
from __future__ import annotations

import collections
import random

import pytest
from redis.crc import key_slot

from wsgi_channels import exceptions as exc
from wsgi_channels.layers.redis import slots as redis_slots
from wsgi_channels.layers.redis.slots import SLOTS, bucket_of, tag_of, tag_slot, tag_table


def test_pinned_values():
    assert redis_slots.DEFAULT_TAG_COUNT == 12
    assert tag_table(48)[:8] == ("8gt", "8yc", "g3n", "8c4", "mws", "og", "4ba", "pt6")
    assert tag_table(12) == ("18e", "5nw", "7gz", "1mo", "h85", "72p", "f0s", "7l1", "hft", "fey", "b3k", "506")
    assert tag_table(3) == ("54h", "fjl", "1x3")
    assert tag_table(1) == ("7ho",)
    assert tag_table(16384)[:3] == ("1bz", "emj", "7lw")
    assert tag_table()[bucket_of("http.request")] == tag_of("http.request")
    assert [bucket_of(n, 48) for n in ("http.request", "sidecar.abc!", "chat")] == [21, 8, 41]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 12, 48, 1000, 16384])
def test_each_tag_sits_in_the_middle_of_its_range(count):
    table = tag_table(count)
    assert len(table) == count and len(set(table)) == count
    for i, tag in enumerate(table):
        slot = tag_slot(tag)
        lo, hi = -(-i * SLOTS // count), -(-(i + 1) * SLOTS // count) - 1  # the slots s with s*count//SLOTS == i
        assert lo <= slot <= hi and slot == (lo + hi) // 2
        assert slot * count // SLOTS == i
        assert key_slot(f"wsgi_channels:q:{{{tag}}}anything".encode()) == slot
        assert len(tag) <= 4 and "{" not in tag and "}" not in tag


def test_a_name_goes_to_the_bucket_of_its_own_slot():
    rng = random.Random(17)
    for _ in range(2000):
        name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789.-_") for _ in range(rng.randint(1, 60)))
        for count in (3, 48, 16384):
            b = bucket_of(name, count)
            assert b == key_slot(name.encode()) * count // SLOTS
            assert tag_of(name, count) == tag_table(count)[b]
        assert tag_slot(tag_of(name, 16384)) == key_slot(name.encode())  # one tag per slot: the name's own


@pytest.mark.parametrize("count, primaries", [(12, 1), (12, 2), (12, 3), (12, 4), (12, 6), (12, 12),
                                               (48, 8), (48, 16), (48, 24), (15, 5), (16384, 3)])
def test_buckets_divide_evenly_over_primaries_with_equal_slot_ranges(count, primaries):
    # redis-cli --cluster create hands each primary one contiguous range of about equal size.
    starts = [round(p * SLOTS / primaries) for p in range(primaries)] + [SLOTS]
    owner = {s: p for p in range(primaries) for s in range(starts[p], starts[p + 1])}
    per_primary = collections.Counter(owner[tag_slot(t)] for t in tag_table(count))
    assert max(per_primary.values()) - min(per_primary.values()) <= (0 if count % primaries == 0 else 1)
    assert sum(per_primary.values()) == count


def test_names_spread_evenly_over_the_buckets():
    counts = collections.Counter(bucket_of(f"sidecar.{i:x}!", 48) for i in range(48_000))
    assert len(counts) == 48
    assert max(counts.values()) < 1.1 * 1000 and min(counts.values()) > 0.9 * 1000


@pytest.mark.parametrize("count", [0, -1, 16385, 2.0, True, "48", None])
def test_a_bad_count_is_a_configuration_error(count):
    with pytest.raises(exc.ConfigurationError, match="from 1 to 16384"):
        tag_table(count)
