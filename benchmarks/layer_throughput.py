"""Channel-layer throughput: wsgi_channels' Redis layer beside channels_redis 4.x and the physical limit.

Everything runs against one ``redis-server`` that this script starts on a free
port, in one run, so only the ratios matter (a loopback round trip on a shared
machine varies by a factor of two from minute to minute). Each figure is the
median of ``--repeats`` runs (default 3).

Contenders:

- ``wsgi_channels``: :class:`wsgi_channels.layers.redis.RedisChannelLayer`, called
  synchronously, as a WSGI view or a worker does;
- ``channels_redis`` core (``RedisChannelLayer``) and pub/sub
  (``RedisPubSubChannelLayer``): async, driven from one asyncio event loop the way
  a consumer awaits them; the ``Group.send()`` row calls them from a synchronous
  caller through ``asgiref.sync.async_to_sync``, as a Django view does;
- the limit: raw ``PING`` round trips over one socket to the same Redis (one round
  trip per send or receive, two per send-then-receive).

Rows: send, receive, send-then-receive loop (messages/s); ``Group.send()`` latency
p50/p99 from a synchronous caller; ``send_group`` to 100 members on 100 prefixes
and to 10,000 members on one prefix (deliveries/s, sent and all received); four
sender processes with two receivers on one channel (messages/s).

Run from the repository root::

    .venv/bin/pip install -e '.[benchmark]'
    .venv/bin/python benchmarks/layer_throughput.py [--quick] [--repeats N] [--json PATH]
    .venv/bin/python benchmarks/layer_throughput.py --topologies [--quick] [--repeats N] [--json PATH]

``--topologies`` prints another table instead (``benchmarks/_layer_topologies.py``): the layer
on a 3-primary Redis Cluster and behind Sentinel, beside standalone Redis with and without a
replica, with channels_redis on the same deployments (and its error on the Cluster).

``--json PATH`` also writes the rows (rates in messages or deliveries per second, latencies
in seconds), the raw round trip and the machine to PATH (``benchmarks/_results.py``).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import socket
import statistics
import sys
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from servers import RedisServer  # noqa: E402

import _results  # noqa: E402

MESSAGE = {"type": "websocket.send", "text": "hello from a view " * 5}
BIG_CAPACITY = 1_000_000
NOTES: list[str] = []  # anomalies seen during the run (duplicates), printed under the table


# -- contenders -------------------------------------------------------------------------------------


def ours(url: str, **options: Any):
    from wsgi_channels.layers.redis import RedisChannelLayer

    return RedisChannelLayer.from_url(url, capacity=BIG_CAPACITY, process_capacity=BIG_CAPACITY, **options)


def theirs_core(url: str):
    from channels_redis.core import RedisChannelLayer

    return RedisChannelLayer(hosts=[url], capacity=BIG_CAPACITY, prefix="bench-core")


def theirs_pubsub(url: str):
    from channels_redis.pubsub import RedisPubSubChannelLayer

    return RedisPubSubChannelLayer(hosts=[url], prefix="bench-pubsub")


class Async:
    """One event loop for one async layer, used like an async consumer uses it."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        async def close() -> None:
            # The pub/sub layer proxies attributes to a per-loop object: look them up inside the loop.
            if hasattr(type(self.layer), "close_pools"):
                await self.layer.close_pools()
            else:
                await self.layer.flush()

        try:
            self.run(close())
        finally:
            self.loop.close()


# -- measurements -----------------------------------------------------------------------------------


class Raw:
    """The physical limit: raw ``PING`` round trips on one TCP_NODELAY socket to the same Redis.

    Measured in chunks interleaved with the chunks of the operation being compared, so both
    see the same moments of a noisy machine.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def ping(self) -> None:
        self.sock.sendall(b"PING\r\n")
        if self.sock.recv(64) != b"+PONG\r\n":  # pragma: no cover - a PONG is 7 bytes, one segment
            raise RuntimeError("unexpected PING reply")

    def pings(self, n: int) -> None:
        for _ in range(n):
            self.ping()

    def close(self) -> None:
        self.sock.close()


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def paired(op: Callable[[int], None], n: int, raw: Raw, chunk: int = 100) -> tuple[float, float]:
    """(operations/s, raw round trips/s), measured in alternating chunks."""
    t_op = t_raw = 0.0
    done = 0
    while done < n:
        size = min(chunk, n - done)
        t0 = time.perf_counter()
        op(size)
        t1 = time.perf_counter()
        raw.pings(size)
        t2 = time.perf_counter()
        t_op += t1 - t0
        t_raw += t2 - t1
        done += size
    return rate(n, t_op), rate(n, t_raw)


def ours_send(layer, n, raw):
    layer.flush()

    def op(size):
        for _ in range(size):
            layer.send("bench.send", MESSAGE)

    return paired(op, n, raw)


def ours_receive(layer, n, raw):
    layer.flush()
    for _ in range(n):
        layer.send("bench.recv", MESSAGE)

    def op(size):
        for _ in range(size):
            if layer.receive(["bench.recv"])[0] is None:
                raise RuntimeError("wsgi_channels lost a message")

    return paired(op, n, raw)


def ours_loop(layer, n, raw):
    layer.flush()

    def op(size):
        for _ in range(size):
            layer.send("bench.loop", MESSAGE)
            if layer.receive(["bench.loop"])[0] is None:
                raise RuntimeError("wsgi_channels lost a message")

    ops, pings = paired(op, n, raw)
    return ops, pings / 2  # the limit of a loop is two round trips


def theirs_send(a: Async, n):
    async def go():
        await a.layer.flush()
        start = time.perf_counter()
        for _ in range(n):
            await a.layer.send("bench.send", MESSAGE)
        return rate(n, time.perf_counter() - start)

    return a.run(go())


def theirs_receive(a: Async, n):
    async def go():
        await a.layer.flush()
        for _ in range(n):
            await a.layer.send("bench.recv", MESSAGE)
        start = time.perf_counter()
        for _ in range(n):
            await a.layer.receive("bench.recv")
        return rate(n, time.perf_counter() - start)

    return a.run(go())


def theirs_loop(a: Async, n):
    async def go():
        channel = await a.layer.new_channel()  # pub/sub needs its subscription in place first
        start = time.perf_counter()
        for _ in range(n):
            await a.layer.send(channel, MESSAGE)
            await a.layer.receive(channel)
        return rate(n, time.perf_counter() - start)

    return a.run(go())


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def ours_group_latency(layer, n, raw):
    """Per-call latency of ``Group.send()``; each call paired with one raw round trip just before it.

    Also the time the fan-out script and ``PING`` each took inside Redis, in us per call
    (``INFO commandstats``, read with redis-py on a connection of its own, untimed).
    """
    import redis

    from wsgi_channels import Group

    layer.flush()
    for i in range(5):
        layer.group_add("bench.lat", f"lat.side!c{i}")
    group = Group("bench.lat", layer=layer)
    samples, raw_samples = [], []
    admin = redis.Redis(port=raw.port)
    admin.config_resetstat()  # from here on, EVALSHA is the fan-out script alone
    for _ in range(n):
        t0 = time.perf_counter()
        raw.ping()
        t1 = time.perf_counter()
        group.send(MESSAGE)
        t2 = time.perf_counter()
        raw_samples.append(t1 - t0)
        samples.append(t2 - t1)
    inside = admin.info("commandstats")
    admin.close()
    layer.flush()
    return (*percentiles(samples), percentiles(raw_samples)[0],
            *(inside.get(f"cmdstat_{name}", {}).get("usec_per_call", 0.0) for name in ("evalsha", "ping")))


def theirs_group_latency(make: Callable[[], Any], n, pubsub: bool):
    """``async_to_sync(layer.group_send)`` from a plain thread, as a Django view pushes."""
    from asgiref.sync import async_to_sync

    layer = make()
    setup = Async(layer)

    async def members():
        for _ in range(5):
            channel = await layer.new_channel()
            await layer.group_add("bench.lat", channel)

    if not pubsub:
        setup.run(layer.flush())
        setup.run(members())
    samples = []
    send = async_to_sync(layer.group_send)
    for _ in range(n):
        start = time.perf_counter()
        send("bench.lat", MESSAGE)
        samples.append(time.perf_counter() - start)
    if not pubsub:
        setup.run(layer.flush())
    setup.close()
    return percentiles(samples)


def ours_group_many(layer, members, prefixes, k):
    """``k`` group sends, every delivery received by its prefix's reader; deliveries/s.

    Each prefix is read as wsgi_channels' sidecar reads its own (``Sidecar._take_batch``):
    ``receive_batch`` of up to 1,000 (its default ``receive_batch`` setting) with
    ``shared=True`` (the sidecar only frames messages, so the members of one group message
    may share one dict).
    """
    start = time.perf_counter()
    for _ in range(k):
        layer.send_group("bench.many", MESSAGE)
    received = 0
    for prefix in prefixes:
        while True:
            batch = layer.receive_batch([prefix], 1000, shared=True)
            if not batch:
                break
            received += len(batch)
    elapsed = time.perf_counter() - start
    if received != k * len(members):
        raise RuntimeError(f"wsgi_channels delivered {received} of {k * len(members)}")
    return rate(received, elapsed)


def theirs_group_many(a: Async, channels, k):
    async def go():
        start = time.perf_counter()
        for _ in range(k):
            await a.layer.group_send("bench.many", MESSAGE)
        received = 0
        for _ in range(k):
            for channel in channels:
                await a.layer.receive(channel)
                received += 1
        return rate(received, time.perf_counter() - start)

    return a.run(go())


# -- four senders, two receivers ------------------------------------------------------------------------


def _proc_ours(url, role, n, ready, go, out, me):
    layer = ours(url)
    layer.receive(["bench.multi.warm"])  # connect before the start
    ready.release()
    go.wait()
    if role == "send":
        for i in range(n):
            layer.send("bench.multi", {**MESSAGE, "id": me * n + i})
        out.put(("sent", [], time.monotonic()))
        return
    got, last = [], time.monotonic()
    while True:
        ch, msg = layer.receive(["bench.multi"], block=True, timeout=10)
        if ch is None or msg.get("stop"):
            break
        got.append(msg["id"])
        last = time.monotonic()
    out.put(("received", got, last))


def _proc_theirs(url, role, n, ready, go, out, me):
    layer = theirs_core(url)
    loop = asyncio.new_event_loop()

    async def run():
        await layer.send("bench.multi.warm", {"x": 1})
        ready.release()
        while not go.is_set():
            await asyncio.sleep(0.001)
        if role == "send":
            for i in range(n):
                await layer.send("bench.multi", {**MESSAGE, "id": me * n + i})
            out.put(("sent", [], time.monotonic()))
            return
        got, last = [], time.monotonic()
        while True:
            msg = await layer.receive("bench.multi")
            if msg.get("stop"):
                break
            got.append(msg["id"])
            last = time.monotonic()
        out.put(("received", got, last))

    loop.run_until_complete(run())
    loop.run_until_complete(layer.close_pools())


def multi_process(url, n_per_sender, theirs: bool):
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    target = _proc_theirs if theirs else _proc_ours
    if theirs:
        cleaner = Async(theirs_core(url))
        cleaner.run(cleaner.layer.flush())
    else:
        cleaner = None
        ours(url).flush()
    procs = [ctx.Process(target=target, args=(url, "send", n_per_sender, ready, go, out, i)) for i in range(4)]
    procs += [ctx.Process(target=target, args=(url, "receive", 0, ready, go, out, i)) for i in range(2)]
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=60):
            raise RuntimeError("a benchmark process did not start")
    start = time.monotonic()
    go.set()
    results = [out.get(timeout=300) for _ in range(4)]  # the senders
    stop = {"stop": True}
    for _ in range(2):
        if theirs:
            cleaner.run(cleaner.layer.send("bench.multi", stop))
        else:
            ours(url).send("bench.multi", stop)
    results += [out.get(timeout=300) for _ in range(2)]
    for p in procs:
        p.join(60)
    if cleaner is not None:
        cleaner.close()
    ids = [i for kind, got, _ in results if kind == "received" for i in got]
    unique = set(ids)
    name = "channels_redis" if theirs else "wsgi_channels"
    if len(unique) != 4 * n_per_sender:
        raise RuntimeError(f"{name} lost messages: {len(unique)} of {4 * n_per_sender} arrived")
    if len(ids) != len(unique):
        NOTES.append(f"{name}, 4 senders / 2 receivers: {len(ids) - len(unique)} of {len(unique)} messages "
                     "were delivered twice")
    last = max(t for kind, _, t in results if kind == "received")
    return rate(len(unique), last - start)


# -- the run -------------------------------------------------------------------------------------------


def _settled(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` after a full collection, with everything alive so far frozen out of the
    collector: one process holds all three contenders, and a full collection walking the
    others' 10,000 channels must not land inside one contender's timing."""
    gc.collect()
    gc.freeze()
    try:
        return fn()
    finally:
        gc.unfreeze()


def median_of(repeats: int, fn: Callable[[], Any]) -> Any:
    results = [_settled(fn) for _ in range(repeats)]
    if isinstance(results[0], tuple):
        return tuple(statistics.median(r[i] for r in results) for i in range(len(results[0])))
    return statistics.median(results)


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit == "us":
        return f"{value * 1e6:,.0f} us"
    return f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages (a smoke run, not for figures)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is shown")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--topologies", action="store_true",
                        help="compare standalone Redis, Sentinel and a Redis Cluster instead")
    args = parser.parse_args(argv)
    if args.topologies:
        import _layer_topologies

        result = _layer_topologies.run(max(1, args.repeats), args.quick)
        _layer_topologies.print_tables(result)
        _results.write(args.json, "layer_topologies", {
            "quick": args.quick, "repeats": result["repeats"], "deployments": result["deployments"],
            "rows": {row: {name: {"ours": v[0], "channels_redis": v[1]} for name, v in by_name.items()}
                     for row, by_name in result["rows"].items()},
            "channels_redis_errors": result["errors"], "members_spread_over_primaries": result["spread"],
        }, peers=("channels_redis", "redis"))
        return 0
    q = args.quick
    n = 1000 if q else 5000
    n_lat = 500 if q else 3000
    k100 = 5 if q else 30
    n10k = 10_000
    k10k = 1 if q else 2
    n_multi = 500 if q else 2500
    repeats = max(1, args.repeats)

    server = RedisServer().start()
    url = server.url
    rows: list[dict] = []
    try:
        layer = ours(url)
        core = Async(theirs_core(url))
        pubsub = Async(theirs_pubsub(url))
        raw = Raw(server.port)
        rtt_samples: list[float] = []

        def row(name, unit, mine, core_v, pubsub_v, limit, targets):
            rows.append(dict(name=name, unit=unit, ours=mine, core=core_v, pubsub=pubsub_v, limit=limit,
                             targets=targets))
            print(f"  measured: {name}", file=sys.stderr, flush=True)

        def with_limit(fn):
            ops, limit = median_of(repeats, fn)
            return ops, limit

        # Warm up connections and scripts on every side.
        ours_loop(layer, 50, raw)
        theirs_loop(core, 50)
        theirs_loop(pubsub, 50)

        mine, limit = with_limit(lambda: ours_send(layer, n, raw))
        rtt_samples.append(1 / limit)
        row("send (msg/s)", "", mine, median_of(repeats, lambda: theirs_send(core, n)),
            median_of(repeats, lambda: theirs_send(pubsub, n)), limit, [("core", 3.0)])
        mine, limit = with_limit(lambda: ours_receive(layer, n, raw))
        rtt_samples.append(1 / limit)
        row("receive (msg/s)", "", mine, median_of(repeats, lambda: theirs_receive(core, n)), None, limit,
            [("core", 3.0)])
        mine, limit = with_limit(lambda: ours_loop(layer, n, raw))
        rtt_samples.append(1 / (2 * limit))
        row("send-then-receive loop (msg/s)", "", mine, median_of(repeats, lambda: theirs_loop(core, n)),
            median_of(repeats, lambda: theirs_loop(pubsub, n)), limit,
            [("core", 3.0), ("pubsub", 1.0), ("limit", 0.7)])

        p50, p99, one_rtt, script_us, ping_us = median_of(repeats, lambda: ours_group_latency(layer, n_lat, raw))
        rest_us = (p50 - one_rtt) * 1e6 - (script_us - ping_us)
        NOTES.append(f"Group.send(): {(p50 - one_rtt) * 1e6:.0f} us over one round trip; inside Redis the fan-out "
                     f"script took {script_us:.1f} us per call and PING {ping_us:.1f} us (INFO commandstats), the "
                     f"other {rest_us:.0f} us is mostly the client's Python. Both run just after a wake-up, when "
                     "this machine's caches are cold (a hot loop of the same script takes about half as long).")
        rtt_samples.append(one_rtt)
        core_lat = median_of(repeats, lambda: theirs_group_latency(lambda: theirs_core(url), n_lat // 3, False))
        pubsub_lat = median_of(repeats, lambda: theirs_group_latency(lambda: theirs_pubsub(url), n_lat // 3, True))
        rows.append(dict(name="Group.send() p50, sync caller", unit="us", ours=p50, core=core_lat[0],
                         pubsub=pubsub_lat[0], limit=one_rtt, targets=[("latency", 1.3)]))
        rows.append(dict(name="Group.send() p99, sync caller", unit="us", ours=p99, core=core_lat[1],
                         pubsub=pubsub_lat[1], limit=None, targets=[]))

        # 100 members on 100 prefixes (channels_redis reads '!' channels only under its own
        # random prefix, so its 100 members are 100 plain channels: the same one queue each).
        layer.flush()
        prefixes = [f"many{i}.side!" for i in range(100)]
        for p in prefixes:
            layer.group_add("bench.many", p + "c")
        core.run(core.layer.flush())
        plain = [f"many{i}.plain" for i in range(100)]
        for c in plain:
            core.run(core.layer.group_add("bench.many", c))

        async def pubsub_members(count):
            chans = [await pubsub.layer.new_channel() for _ in range(count)]
            for c in chans:
                await pubsub.layer.group_add("bench.many", c)
            return chans

        ps100 = pubsub.run(pubsub_members(100))
        row("send_group 100 members / 100 prefixes (deliveries/s)", "",
            median_of(repeats, lambda: ours_group_many(layer, prefixes, prefixes, k100)),
            median_of(repeats, lambda: theirs_group_many(core, plain, k100)),
            median_of(repeats, lambda: theirs_group_many(pubsub, ps100, k100)), None, [("core", 4.0)])
        for c in ps100:
            pubsub.run(pubsub.layer.group_discard("bench.many", c))

        # 10,000 members on one prefix: one sidecar process holding 10,000 sockets.
        layer.flush()
        members = [f"bench.sidecar!c{i}" for i in range(n10k)]
        for m in members:
            layer.group_add("bench.many", m)
        core.run(core.layer.flush())

        async def core_members():
            chans = [await core.layer.new_channel() for _ in range(n10k)]
            for c in chans:
                await core.layer.group_add("bench.many", c)
            return chans

        core10k = core.run(core_members())
        ps10k = pubsub.run(pubsub_members(n10k))
        row(f"send_group {n10k:,} members / one prefix (deliveries/s)", "",
            median_of(repeats, lambda: ours_group_many(layer, members, ["bench.sidecar!"], k10k)),
            median_of(repeats, lambda: theirs_group_many(core, core10k, k10k)),
            median_of(repeats, lambda: theirs_group_many(pubsub, ps10k, k10k)), None, [("core", 50.0)])
        layer.flush()
        core.run(core.layer.flush())

        row("4 sender processes, 2 receivers, one channel (msg/s)", "",
            median_of(repeats, lambda: multi_process(url, n_multi, False)),
            median_of(repeats, lambda: multi_process(url, n_multi, True)), None, None, [])

        layer.close()
        core.close()
        pubsub.close()
        raw.close()
    finally:
        server.stop()

    print_table(rows, rtt_samples, q, repeats)
    _results.write(args.json, "layer_throughput", {
        "quick": q, "repeats": repeats,
        "raw_round_trip_s": {"min": min(rtt_samples), "max": max(rtt_samples)},
        "contenders": {"ours": "wsgi_channels RedisChannelLayer", "core": "channels_redis RedisChannelLayer",
                       "pubsub": "channels_redis RedisPubSubChannelLayer", "limit": "raw PING round trips"},
        "rows": [{"name": r["name"], "unit": "seconds" if r["unit"] == "us" else "per_second",
                  **{k: r[k] for k in ("ours", "core", "pubsub", "limit")}} for r in rows],
        "notes": list(NOTES),
    }, peers=("channels_redis", "redis"))
    return 0


def print_table(rows: list[dict], rtt_samples: list[float], quick: bool, repeats: int) -> None:
    print()
    print(f"Channel layers on one local Redis, median of {repeats}{' (--quick: smoke figures)' if quick else ''}.")
    print(f"Raw round trip (PING over one socket): {min(rtt_samples) * 1e6:.0f}-{max(rtt_samples) * 1e6:.0f} us "
          "across the run. The machine is shared and noisy: read the ratios.")
    print("The limit column is measured in chunks interleaved with wsgi_channels' own (Group.send(): one raw "
          "round trip just before each call), so both see the same moments.")
    print()
    header = ["", "wsgi_channels", "channels_redis core", "channels_redis pubsub", "limit",
              "vs core", "vs pubsub", "vs limit", "targets"]
    lines = [header]
    misses = []
    for r in rows:
        unit = r["unit"]
        lower_is_better = unit == "us"

        def ratio(other):
            if other is None or r["ours"] is None:
                return None
            return other / r["ours"] if lower_is_better else r["ours"] / other

        vs_core, vs_pubsub = ratio(r["core"]), ratio(r["pubsub"])
        vs_limit = None if r["limit"] is None else (r["ours"] / r["limit"])
        verdicts = []
        for kind, target in r["targets"]:
            if kind == "core":
                ok, got = vs_core is not None and vs_core >= target, f"{vs_core:.1f}x"
            elif kind == "pubsub":
                ok, got = vs_pubsub is not None and vs_pubsub >= target, f"{vs_pubsub:.2f}x"
            elif kind == "limit":
                ok, got = vs_limit >= target, f"{vs_limit:.0%}"
            else:  # latency within target x one round trip
                ok, got = vs_limit <= target, f"{vs_limit:.2f}x RTT"
            want = {"core": f">={target:g}x core", "pubsub": f">={target:g}x pubsub",
                    "limit": f">={target:.0%} of limit", "latency": f"<={target:g}x RTT"}[kind]
            verdicts.append(f"{want}: {'met' if ok else 'MISSED'}")
            if not ok:
                misses.append(f"{r['name']}: {want}, got {got}")
        lines.append([
            r["name"], fmt(r["ours"], unit), fmt(r["core"], unit), fmt(r["pubsub"], unit),
            fmt(r["limit"], unit),
            "" if vs_core is None else f"{vs_core:.1f}x",
            "" if vs_pubsub is None else f"{vs_pubsub:.2f}x",
            "" if vs_limit is None else (f"{vs_limit:.2f}x RTT" if lower_is_better else f"{vs_limit:.0%}"),
            "; ".join(verdicts),
        ])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("  ".join(str(c).ljust(w) if j == 0 else str(c).rjust(w) for j, (c, w) in enumerate(zip(line, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()
    print("Limit: messages/s at one raw round trip per send or receive, two per loop; for Group.send() "
          "the raw round trip's p50. Ratios for latency: theirs / ours (higher is better), ours / RTT.")
    print("send_group rows: wsgi_channels' readers use receive_batch(..., shared=True) as its sidecar does "
          "(members of one group message share one dict); channels_redis has no batch receive, so its readers "
          "await receive() once per delivery.")
    for note in NOTES:
        print(f"Note: {note}")
    if misses:
        print("Targets missed in this run:")
        for m in misses:
            print(f"  - {m}")
    else:
        print("Every target met in this run.")


if __name__ == "__main__":
    sys.exit(main())
