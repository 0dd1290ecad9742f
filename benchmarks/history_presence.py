"""Group history and presence on the Redis layer: what they cost beside a plain group, one run.

A ``redis-server`` started by this script (or ``--url``); each figure is the median of
``--repeats`` rounds, the contenders of a row taking turns in each round, so they see the same
moments of a noisy machine. Rows:

- ``send_group, plain group``: ``Group.send()`` to a group without a pattern, its members one
  ``sidecar.*!`` channel and one plain channel (group sends per second);
- ``send_group, history group``: the same members, the group matching ``group_history``
  (``size=100``): one script numbers the message, keeps it and queues the copies, the sidecar's
  stamped;
- ``send_group, history group, 3 shards``: the same on three shards (the group's own shard's
  script, then the fan-out on the two others);
- ``group_history(0, 100)``: reading 100 kept messages (reads per second);
- ``group_presence_stats``: at 1000 entries (calls per second), and ``group_presence`` (the whole
  list of 1000) beside it;
- ``group_add with presence``: entries made per second (an entry, the membership with its notice,
  the change sent to the sidecars: in count mode past ``events_max``).

A table, not assertions. Run from the repository root::

    .venv/bin/python benchmarks/history_presence.py [--quick] [--repeats N] [--url redis://...]
"""
from __future__ import annotations

import argparse
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

QUERY = "group_history=hist.*:size=100:ttl=300&group_presence=room.*:max_members=2000:ttl=60"
MESSAGE = {"type": "websocket.send", "text": "hello from a view " * 5}


def _rate(n: int, fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - started)


def _layer(url: str) -> Any:
    return from_url(",".join(u + ("&" if "?" in u else "?") + QUERY for u in url.split(",")),
                    capacity=1_000_000, process_capacity=1_000_000)


def _drain(layer: Any, channels: list[str]) -> None:
    while layer.receive_batch(channels, 1000):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations (a smoke run)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--url", help="a Redis URL to use instead of starting servers (one server)")
    args = parser.parse_args()
    n = 200 if args.quick else 2000
    servers = [] if args.url else [RedisServer().start() for _ in range(3)]
    try:
        one = args.url or servers[0].url
        three = ",".join(s.url for s in servers) if servers else None
        layer = _layer(one)
        layer.flush()
        sharded = _layer(three) if three else None
        if sharded is not None:
            sharded.flush()
        prefix = new_process_prefix("sidecar")
        for target in filter(None, (layer, sharded)):
            for group in ("plain.g", "hist.g"):
                target.group_add(group, prefix + "a")
                target.group_add(group, "plain.member")
        for i in range(100):
            layer.send_group("hist.read", {"text": f"m{i}"})
        for i in range(1000):
            layer.group_add("room.big", new_process_prefix("sidecar") + "c", presence={"user": f"u{i % 300}"})

        rows: dict[str, list[float]] = {}

        def measure(name: str, count: int, fn: Callable[[], Any]) -> None:
            rows.setdefault(name, []).append(_rate(count, fn))

        adds = iter(range(10**9))
        for r in range(args.repeats):
            measure("send_group, plain group", n, lambda: layer.send_group("plain.g", MESSAGE))
            measure("send_group, history group", n, lambda: layer.send_group("hist.g", MESSAGE))
            if sharded is not None:
                measure("send_group, plain group, 3 shards", n, lambda: sharded.send_group("plain.g", MESSAGE))
                measure("send_group, history group, 3 shards", n, lambda: sharded.send_group("hist.g", MESSAGE))
            _drain(layer, [prefix, "plain.member"])
            if sharded is not None:
                _drain(sharded, [prefix, "plain.member"])
            measure("group_history(0, limit=100)", max(50, n // 10), lambda: layer.group_history("hist.read", 0, 100))
            measure("group_presence_stats, 1000 entries", n, lambda: layer.group_presence_stats("room.big"))
            measure("group_presence, 1000 entries", max(20, n // 50), lambda: layer.group_presence("room.big"))
            measure("group_add with presence", max(50, n // 10), lambda: layer.group_add(
                f"room.adds{r}", f"{prefix}x{next(adds)}", presence={"user": "u"}))
            _drain(layer, [prefix])
        width = max(len(name) for name in rows)
        print(f"{'operation':<{width}}  {'per second (median)':>20}  {'min':>10}  {'max':>10}")
        for name, values in rows.items():
            print(f"{name:<{width}}  {statistics.median(values):>20,.0f}  {min(values):>10,.0f}  {max(values):>10,.0f}")
        for target in filter(None, (layer, sharded)):
            target.flush()
            target.close()
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    main()
