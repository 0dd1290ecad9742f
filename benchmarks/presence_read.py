"""Reading presence on the Redis layer: ``group_presence()`` and ``group_presence_stats()`` by size.

A ``redis-server`` started by this script (or ``--url``). Each group is filled with
``presence_reassert`` (10,000 entries per owner, users shared by two entries each), then read
``--calls`` times (fewer for the largest list); the table gives the p50 and p99 of one call in
milliseconds, and the full (generation 2) collections of Python's cyclic GC during the calls.
Rows:

- ``presence()`` of 100, 1,000 and 10,000 members: one script (the entries' msgpack fragments,
  written with them), then one msgpack decoding here;
- ``presence()`` of 1,000 members with one entry changed (untimed) before each read (a change
  costs the read nothing: its fragment was written with it);
- ``presence()`` of 1,000 members, each answer kept by the caller and encoded as JSON (untimed)
  between reads, as an application's view does: the answer is alive when the next read
  allocates, so the collections it brings fall in the reads;
- ``presence()`` of 1,000 members on a layer with ``symmetric_encryption_keys`` (each entry
  decrypted here);
- ``presence()`` of 1,000 members again with the cyclic GC disabled during the calls, and with
  ``--heap`` more objects alive in the process (an application's heap: 500,000 by default).
  A call makes two objects per member (the entry and its info); every ~700 objects made start a
  young collection, and every ~100 of those a full one when the heap grew by a quarter since the
  last, whose cost grows with the heap: the p99 of a small process (this script's own heap, about
  35,000 objects) holds its full collections; a large heap has them rarely, but longer;
- ``presence_stats()`` at 100, 10,000 and 100,000 members (``HLEN`` of two hashes: O(1)).

A table, not assertions (issue 19 asks for a p99 under 5 ms at 1,000 members; a loaded machine
will miss it now and then). Run from the repository root::

    .venv/bin/python benchmarks/presence_read.py [--calls N] [--heap N] [--url redis://...]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

from servers import RedisServer  # noqa: E402
from wsgi_channels.layers import from_url  # noqa: E402
from wsgi_channels.layers.names import new_process_prefix  # noqa: E402

QUERY = "group_presence=bench.*:max_members=200000:events_max=10:ttl=600:info_max_bytes=256"
PER_OWNER = 10_000


def _fill(layer: Any, group: str, n: int) -> None:
    for start in range(0, n, PER_OWNER):
        owner = new_process_prefix("sidecar")
        entries = {f"c{group}{i:07d}": {"user": f"user-{i // 2}", "info": {"name": f"User {i // 2}", "color": "red"},
                                        "since": time.time()} for i in range(start, min(n, start + PER_OWNER))}
        layer.presence_reassert(owner, group, entries)


def _timed(calls: int, fn: Callable[[], Any], before: Callable[[], Any] = lambda: None) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, full collections) of ``calls`` calls of ``fn``, ``before`` untimed before each."""
    fn()
    times = []
    full = [0]

    def count(phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2:
            full[0] += 1

    gc.callbacks.append(count)
    try:
        for _ in range(calls):
            before()
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) * 1000)
    finally:
        gc.callbacks.remove(count)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))], full[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per row (a tenth for 10,000 members)")
    parser.add_argument("--url", help="a Redis URL to use instead of starting a server")
    parser.add_argument("--heap", type=int, default=500_000, help="objects kept alive for the application-heap row")
    args = parser.parse_args()
    server = None if args.url else RedisServer().start()
    url = args.url or server.url  # type: ignore[union-attr]
    layers = []
    gc.collect()
    print(f"objects the cyclic GC tracks in this process: {len(gc.get_objects()):,}")
    try:
        plain = from_url(f"{url}?{QUERY}", prefix="presbench")
        encrypted = from_url(f"{url}?{QUERY}", prefix="presbench", symmetric_encryption_keys=["bench-secret"])
        layers += [plain, encrypted]
        plain.flush()
        rows = []
        for n in (100, 1000, 10_000):
            _fill(plain, f"bench.p{n}", n)
            assert len(plain.group_presence(f"bench.p{n}")) == n
            rows.append((f"presence(), {n:,} members", n,
                         _timed(args.calls if n < 10_000 else max(10, args.calls // 10),
                                lambda g=f"bench.p{n}": plain.group_presence(g))))
        owner = new_process_prefix("sidecar")
        flip = [0]

        def change() -> None:  # one entry of another owner changes
            flip[0] += 1
            plain.presence_reassert(owner, "bench.p1000", {"changing": {"user": "u", "info": flip[0]}})

        change()
        rows.append(("presence(), 1,001 members, changed before each", 1001,
                     _timed(args.calls, lambda: plain.group_presence("bench.p1000"), change)))
        plain.presence_reassert(owner, "bench.p1000", {})
        kept: list[Any] = [None]  # an application's view: it keeps each answer and encodes it (untimed)
        rows.append(("presence(), 1,000 members, kept and JSON-encoded", 1000,
                     _timed(args.calls, lambda: kept.__setitem__(0, plain.group_presence("bench.p1000")),
                            lambda: json.dumps(kept[0]))))
        kept[0] = None
        _fill(encrypted, "bench.enc", 1000)
        assert len(encrypted.group_presence("bench.enc")) == 1000
        rows.append(("presence(), 1,000 members, encrypted", 1000,
                     _timed(args.calls, lambda: encrypted.group_presence("bench.enc"))))
        gc.disable()
        try:
            rows.append(("presence(), 1,000 members, gc disabled", 1000,
                         _timed(args.calls, lambda: plain.group_presence("bench.p1000"))))
        finally:
            gc.enable()
        heap = [[i] for i in range(args.heap)]  # lists: objects the cyclic GC tracks, as an app's are
        gc.collect()
        rows.append((f"presence(), 1,000 members, +{args.heap:,} objects", 1000,
                     _timed(args.calls, lambda: plain.group_presence("bench.p1000"))))
        del heap
        gc.collect()
        for n in (100, 10_000, 100_000):
            group = f"bench.s{n}"
            _fill(plain, group, n)
            assert plain.group_presence_stats(group)["clients"] == n
            rows.append((f"presence_stats(), {n:,} members", n,
                         _timed(args.calls, lambda g=group: plain.group_presence_stats(g))))
        print(f"{'call':<48} {'p50 ms':>8} {'p99 ms':>8} {'full GCs':>9}")
        for name, _, (p50, p99, full) in rows:
            print(f"{name:<48} {p50:>8.2f} {p99:>8.2f} {full:>9}")
        plain.flush()
    finally:
        for layer in layers:
            layer.close()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
