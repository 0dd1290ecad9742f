"""Group history and presence (issues 18 and 19): what they cost, and a sidecar kill-restart storm.

Sections (``all`` runs them all, but ``storm`` on ``memory://``):

``send``
    ``Group.send()`` p50/p99 to a group of 10 and of 100 members, with history (a
    ``group_history`` pattern matches the group) and without (the same layer, a group no
    pattern matches), the two interleaved send by send in the same run; members on a sidecar
    prefix (``sidecar.x!c1``, one queue for all) and on plain channels (one queue each).
    Target (issue 18): p50 with history <= 1.3x without. On the throwaway redis-server
    (``--layer redis``) also the server's own time per send script, both sides (``SLOWLOG``
    with every command logged during the timed sends: the mean of each side's script).
``memory``
    Bytes the backend holds per stored history message, measured: on ``ipc://`` the growth of
    the SQLite tables and indexes (``dbstat``), on ``memory://`` the Python heap
    (``tracemalloc``), on Redis ``INFO memory`` ``used_memory``; beside the message's own size.
``presence``
    ``group_presence()`` of 1,000 members (on 3 sidecar prefixes) p50/p99 (target: p99 < 5 ms),
    ``group_presence_stats()`` at 100, 10,000 and 100,000 members (should be flat), and the cost
    of the sidecar's lease refresh per (sidecar, group): time per group, and the commands it
    makes (Redis: ``INFO commandstats`` delta, which counts the commands run inside scripts too,
    and the script calls among them; ``ipc://``: SQL statements, BEGIN and COMMIT included).
``storm``
    ``--sockets`` opted-in WebSocket clients (``_wsc=1``, gevent, raw RFC 6455,
    ``_resume_clients.py``) on one real sidecar process with a worker (``tests/resume_app.py``)
    and the layer, a publisher sending ``--rate`` messages/s to their history group; the
    sidecar is killed with SIGKILL and started again on the same port; the clients reconnect
    with their ``_wsc_r`` positions. Per client: the time from the sidecar listening again to
    being caught up (having every message published before that moment: the first arrival of a
    message published at or after it, all earlier offsets having come), and the counts over the
    whole run (every offset exactly once, in order: duplicates, gaps, silent gaps - those no
    ``gap`` frame announced -, ``gap`` frames by reason). ``--baseline`` runs each storm again with
    clients that reconnect without positions. Target (issue 18): 10,000 sockets, 100 msg/s, caught up within 10 s.

``--layer URL``: ``ipc://PATH`` (default: a new store per section in a temporary directory),
``memory://`` (not for ``storm``: it needs processes), ``redis://...``, or ``redis`` to start a
throwaway redis-server (``$WSGI_CHANNELS_REDIS6`` if set), flushed between sections. The
script adds its own ``group_history``/``group_presence`` patterns to the URL.

    python benchmarks/history_presence.py all [--layer URL] [--json PATH]
    python benchmarks/history_presence.py storm [--sockets 1000,200 --rate 20,100]
                                        [--no-resume | --baseline] [--layer URL]

Figures from a 2-core machine shared with other work, clients on the same machine: read the
ratios and the counts; timings move with the machine's load. Nothing here asserts.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
sys.path.insert(0, os.path.dirname(HERE))

import _results  # noqa: E402
from servers import RedisServer  # noqa: E402
from wsgi_channels.channel import Group  # noqa: E402
from wsgi_channels.layers import from_url  # noqa: E402
from wsgi_channels.layers.names import new_process_prefix  # noqa: E402

FEATURES = ("group_history=hist.*:size=1000:ttl=300&group_history=mem.*:size=10000:ttl=3600"
            "&group_history=storm.*:size=5000:ttl=600"
            "&group_presence=room.*:max_members=200000:join_leave=0:ttl=60")


def with_features(url: str) -> str:
    return url + ("&" if "?" in url else "?") + FEATURES


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def us(v: float) -> str:
    return f"{v * 1e6:,.0f}"


def drain(layer, channels: list[str]) -> None:
    while layer.receive_batch(channels, limit=1000):
        pass


# -- 1. Group.send() with history on and off -----------------------------------------------------


class _ServerTimes:
    """The server's time per send script, off and on (``SLOWLOG`` logging every command while on):
    for a redis-server of our own only (it changes the server's slowlog settings)."""

    def __init__(self, url: str) -> None:
        import redis

        from wsgi_channels.layers.redis import feature_scripts, scripts

        self.client = redis.Redis.from_url(url)
        self.client.config_set("slowlog-max-len", 100_000)
        sha = lambda source: hashlib.sha1(source.encode()).hexdigest()  # noqa: E731
        self.shas = {sha(scripts.FANOUT): "off", sha(feature_scripts.FEATURE_FANOUT): "on"}

    def logging(self, on: bool) -> None:
        self.client.config_set("slowlog-log-slower-than", 0 if on else -1)

    def start(self) -> None:
        self.client.slowlog_reset()
        self.logging(True)

    def stop(self) -> dict:
        self.logging(False)
        found: dict = {"off": [], "on": []}
        for entry in self.client.slowlog_get(100_000):
            command = entry["command"]
            words = (command.decode(errors="replace") if isinstance(command, bytes) else command).split()
            if len(words) > 1 and words[0].upper() == "EVALSHA" and words[1] in self.shas:
                found[self.shas[words[1]]].append(entry["duration"] / 1e6)
        return {k: statistics.mean(v) if v else float("nan") for k, v in found.items()}


def bench_send(url: str, sends: int, own_redis: bool = False) -> dict:
    layer = from_url(url)
    times = _ServerTimes(url.split("?", 1)[0]) if own_redis else None
    rows = []
    print(f"\nGroup.send() with and without history, {sends} sends each, interleaved ({scheme(url)})")
    print(f"{'members':>8} {'kind':<16} {'off p50 us':>11} {'on p50 us':>10} {'ratio':>6} {'off p99 us':>11} "
          f"{'on p99 us':>10} {'<=1.3x':>7}" + (f" {'server off us':>14} {'server on us':>13}" if times else ""))
    for size in (10, 100):
        for kind in ("sidecar prefix", "plain channels"):
            prefix = new_process_prefix("sidecar")
            if kind == "sidecar prefix":
                members = [f"{prefix}c{i}" for i in range(size)]
                queues = [prefix]
            else:
                members = [f"bench.m{size}.{prefix[8:-1]}.{i}" for i in range(size)]
                queues = members
            on, off = Group(f"hist.{size}.{prefix[8:-1]}", layer=layer), Group(f"plain.{size}.{prefix[8:-1]}",
                                                                                  layer=layer)
            for g in (on, off):
                for m in members:
                    g.add(m)
            taken: dict = {"on": [], "off": []}
            body = {"text": "x" * 100}
            server: dict = {}
            for warm in (True, False):
                n = 20 if warm else sends
                if times is not None and not warm:
                    times.start()
                for i in range(n):
                    for label, g in (("on", on), ("off", off)) if i % 2 else (("off", off), ("on", on)):
                        t0 = time.perf_counter()
                        g.send(body)
                        dt = time.perf_counter() - t0
                        if not warm:
                            taken[label].append(dt)
                    if i % 20 == 19:
                        if times is not None and not warm:
                            times.logging(False)
                        drain(layer, queues)  # keep the queues below capacity (untimed)
                        if times is not None and not warm:
                            times.logging(True)
                if times is not None and not warm:
                    server = times.stop()
                drain(layer, queues)
            p50_on, p50_off = statistics.median(taken["on"]), statistics.median(taken["off"])
            ratio = p50_on / p50_off
            row = {"members": size, "kind": kind, "off_p50_s": p50_off, "on_p50_s": p50_on, "ratio_p50": ratio,
                   "off_p99_s": pct(taken["off"], 0.99), "on_p99_s": pct(taken["on"], 0.99),
                   "target_met": ratio <= 1.3}
            if server:
                row.update(server_off_s=server["off"], server_on_s=server["on"])
            rows.append(row)
            print(f"{size:>8} {kind:<16} {us(p50_off):>11} {us(p50_on):>10} {ratio:>5.2f}x {us(row['off_p99_s']):>11} "
                  f"{us(row['on_p99_s']):>10} {'yes' if row['target_met'] else 'NO':>7}"
                  + (f" {server['off'] * 1e6:>14.1f} {server['on'] * 1e6:>13.1f}" if server else ""))
    layer.close()
    return {"sends": sends, "rows": rows}


# -- 2. memory per stored history message ------------------------------------------------------


def _sqlite_bytes(path: str) -> int:
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return conn.execute("SELECT SUM(pgsize - unused) FROM dbstat").fetchone()[0] or 0
    finally:
        conn.close()


def _redis_used(layer) -> int:
    import redis

    client = redis.Redis.from_url(redis_url(layer))
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def bench_memory(url: str, count: int, payload: int) -> dict:
    layer = from_url(url)
    group = Group(f"mem.{new_process_prefix('x')[2:-1]}", layer=layer)
    body = {"text": "x" * payload}
    kind = scheme(url)
    group.send(body)  # makes the epoch and the tables' first pages
    if kind == "ipc":
        path = ipc_path(url)
        measure, what = (lambda: _sqlite_bytes(path)), "SQLite tables + indexes (dbstat)"
    elif kind == "memory":
        tracemalloc.start()
        measure, what = (lambda: (gc.collect(), tracemalloc.get_traced_memory()[0])[1]), "Python heap (tracemalloc)"
    else:
        measure, what = (lambda: _redis_used(layer)), "Redis INFO used_memory"
    before = measure()
    for _ in range(count):
        group.send(body)
    after = measure()
    if kind == "memory":
        tracemalloc.stop()
    epoch, top = group.position()
    from wsgi_channels.serialization import encode  # the message as the layer serialises it

    try:
        own = len(encode(body))
    except Exception:
        own = len(repr(body))
    per = (after - before) / count
    print(f"\nMemory per stored history message ({kind}: {what}), {count:,} messages of {payload} bytes of text")
    print(f"{'stored':>8} {'bytes/message':>14} {'message serialised':>19} {'overhead':>9}")
    print(f"{top - 1:>8,} {per:>14,.0f} {own:>19,} {per - own:>9,.0f}")
    layer.close()
    return {"backend": kind, "measured": what, "messages": count, "payload_bytes": payload,
            "serialised_bytes": own, "bytes_per_message": per, "stored": top - 1}


# -- 3. presence -------------------------------------------------------------------------------


def fill(layer, name: str, n: int, owners: int = 3) -> list[str]:
    prefixes = [new_process_prefix("sidecar") for _ in range(owners)]
    group = Group(name, layer=layer)
    for i in range(n):
        group.add(f"{prefixes[i % owners]}c{i}", presence={"user": f"user{i % (n // 2 or 1)}",
                                                          "info": {"name": f"N{i}"}})
        if i % 2000 == 1999:
            drain(layer, prefixes)  # membership notices to the prefixes (untimed)
    drain(layer, prefixes)
    return prefixes


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def count_commands(layer, kind: str, fn) -> tuple[int, int | None] | None:
    """``(commands, scripts)`` ``fn`` makes: on Redis every command ``INFO commandstats`` counts (those
    run inside scripts too) and the script calls among them (EVAL/EVALSHA/FCALL: one round trip
    each); on ``ipc://`` the SQL statements (BEGIN and COMMIT included) and None; None when not
    countable."""
    if kind == "ipc":
        counted = [0]
        with layer._connection() as conn:  # the pool hands this thread the same connection back
            conn.set_trace_callback(lambda _s: counted.__setitem__(0, counted[0] + 1))
        try:
            fn()
        finally:
            with layer._connection() as conn:
                conn.set_trace_callback(None)
        return counted[0], None
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(redis_url(layer))
        before = client.info("commandstats")
        fn()
        after = client.info("commandstats")
        client.close()
        delta = {k: v["calls"] - before.get(k, {}).get("calls", 0) for k, v in after.items()}
        delta["cmdstat_info"] = delta.get("cmdstat_info", 0) - 1  # the first INFO itself
        scripts = sum(v for k, v in delta.items() if k.split("_", 1)[1].split("|")[0] in ("eval", "evalsha", "fcall"))
        return (sum(delta.values()), scripts)
    return None


def bench_presence(url: str, big: int, reads: int) -> dict:
    layer = from_url(url)
    kind = scheme(url)
    tag = new_process_prefix("x")[2:-1]
    out: dict = {}
    g1000 = Group(f"room.k.{tag}", layer=layer)
    prefixes = fill(layer, g1000.name, 1000)
    got = g1000.presence()
    t = timed(g1000.presence, reads)
    out["presence_1000"] = {"entries": len(got), "p50_s": pct(t, 0.5), "p99_s": pct(t, 0.99)}
    print(f"\nPresence ({kind})")
    print(f"group_presence() of {len(got):,} members: p50 {pct(t, 0.5) * 1e3:.2f} ms, p99 {pct(t, 0.99) * 1e3:.2f} ms "
          f"(target p99 < 5 ms: {'yes' if pct(t, 0.99) < 0.005 else 'NO'})")
    t = []
    for i in range(reads):  # one entry changed (untimed) before each read: nothing kept from the last read serves
        g1000.add(f"{prefixes[0]}c0", presence={"user": "user0", "info": {"name": f"N0.{i}"}})
        if i % 50 == 49:
            drain(layer, prefixes)  # the membership notices (untimed)
        t0 = time.perf_counter()
        g1000.presence()
        t.append(time.perf_counter() - t0)
    drain(layer, prefixes)
    out["presence_1000_changed"] = {"entries": len(got), "p50_s": pct(t, 0.5), "p99_s": pct(t, 0.99)}
    print(f"  the same, one entry changed before each read: p50 {pct(t, 0.5) * 1e3:.2f} ms, "
          f"p99 {pct(t, 0.99) * 1e3:.2f} ms")
    stats = []
    print(f"{'members':>9} {'stats p50 us':>13} {'stats p99 us':>13} {'fill s':>7}  group_presence_stats()")
    for n in [s for s in (100, 10_000, 100_000) if s <= big]:
        g = Group(f"room.s{n}.{tag}", layer=layer)
        t0 = time.monotonic()
        fill(layer, g.name, n)
        filled = time.monotonic() - t0
        t = timed(g.presence_stats, reads)
        row = {"members": n, "clients": g.presence_stats()["clients"], "p50_s": pct(t, 0.5), "p99_s": pct(t, 0.99),
               "fill_s": filled}
        stats.append(row)
        print(f"{row['clients']:>9,} {us(row['p50_s']):>13} {us(row['p99_s']):>13} {filled:>7.1f}")
    out["stats"] = stats
    # refresh: one owner holding entries in 1 and in 20 groups (the sidecar refreshes all its groups at once)
    owner = prefixes[0]
    groups = [g1000.name]
    for i in range(19):
        name = f"room.r{i}.{tag}"
        Group(name, layer=layer).add(f"{owner}r{i}", presence={"user": "u"})
        groups.append(name)
    drain(layer, [owner])
    refresh = []
    print(f"{'groups':>7} {'refresh p50 us':>15} {'per group us':>13} {'commands':>9} {'per group':>10} "
          f"{'scripts':>8}  presence_refresh(owner, groups); Redis commands include those inside scripts")
    for n in (1, 20):
        t = timed(lambda: layer.presence_refresh(owner, groups[:n]), reads)
        counted = count_commands(layer, kind, lambda: layer.presence_refresh(owner, groups[:n]))
        cmds, scripts = counted if counted is not None else (None, None)
        row = {"groups": n, "p50_s": pct(t, 0.5), "per_group_s": pct(t, 0.5) / n, "commands": cmds,
               "commands_per_group": (cmds / n) if cmds is not None else None, "scripts": scripts}
        refresh.append(row)
        print(f"{n:>7} {us(row['p50_s']):>15} {us(row['per_group_s']):>13} "
              f"{cmds if cmds is not None else '-':>9} {row['commands_per_group'] or '-':>10} "
              f"{scripts if scripts is not None else '-':>8}")
    out["refresh"] = refresh
    out["refresh_unit"] = {"ipc": "SQL statements", "redis": "Redis commands"}.get(kind, "-")
    layer.close()
    return out


# -- layers ------------------------------------------------------------------------------------


def scheme(url: str) -> str:
    s = urlsplit(url).scheme
    return "redis" if s.startswith("redis") or s.startswith("rediss") else s


def ipc_path(url: str) -> str:
    return url.split("://", 1)[1].split("?", 1)[0]


_REDIS_URLS: dict = {}


def redis_url(layer) -> str:
    return _REDIS_URLS["url"]


def base_layer(spec: str | None, tmp: str) -> tuple[str, RedisServer | None]:
    if not spec:
        return f"ipc://{os.path.join(tmp, 'channels.db')}", None
    if spec == "redis":
        server = RedisServer(binary=os.environ.get("WSGI_CHANNELS_REDIS6")).start()
        _REDIS_URLS["url"] = server.url
        return server.url, server
    if scheme(spec) == "redis":
        _REDIS_URLS["url"] = spec.split("?", 1)[0]
    return spec, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("section", choices=["all", "send", "memory", "presence", "storm"])
    parser.add_argument("--layer", default=None, help="ipc://PATH (default: a temporary store), memory://, "
                                                       "redis://..., or 'redis' (a throwaway redis-server)")
    parser.add_argument("--sends", type=int, default=2000, help="send: timed sends per case and side")
    parser.add_argument("--messages", type=int, default=5000, help="memory: messages stored")
    parser.add_argument("--payload", type=int, default=100, help="memory: bytes of text per message")
    parser.add_argument("--big", type=int, default=100_000, help="presence: the largest group (100, 10000, 100000)")
    parser.add_argument("--reads", type=int, default=300, help="presence: timed reads per figure")
    parser.add_argument("--sockets", default="1000,200", help="storm: WebSocket clients (a comma list: one storm each)")
    parser.add_argument("--rate", default="20,100", help="storm: messages/s published to their group (a comma "
                                                          "list, paired with --sockets)")
    parser.add_argument("--no-resume", action="store_true", help="storm: the clients reconnect without positions "
                                                                  "(the baseline: what they miss counts as gaps)")
    parser.add_argument("--baseline", action="store_true", help="storm: also run each storm with clients that "
                                                                 "reconnect without positions, after it")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (store, logs)")
    parser.add_argument("--down", type=float, default=2.0, help="storm: seconds the sidecar stays dead")
    parser.add_argument("--after", type=float, default=15.0, help="storm: seconds of publishing after the restart")
    parser.add_argument("--client-procs", type=int, default=2, help="storm: client processes")
    parser.add_argument("--json", default=None, help="write the results to this file (benchmarks/_results.py)")
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="hist-bench-")
    url, server = base_layer(args.layer, tmp)
    print(f"layer: {url.split('?')[0]}; machine: {_results.machine()}")
    results: dict = {"layer": scheme(url)}
    try:
        from_url(with_features(url)).close()
    except Exception as e:  # a backend without history or presence yet
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"the layer {url.split('?')[0]} refused the history/presence options this script adds "
              f"({FEATURES}): {type(e).__name__}: {e}", file=sys.stderr)
        return 2

    def section(name: str) -> str:
        """The layer URL of one section: a store of its own on the default ``ipc://``, the throwaway
        Redis flushed; a layer given by URL is shared (what one section leaves, such as presence
        entries the storm's sidecar then sweeps, weighs on the next)."""
        if not args.layer:
            return with_features(f"ipc://{os.path.join(tmp, name + '.db')}")
        if server is not None:
            layer = from_url(url)
            layer.flush()
            layer.close()
        return with_features(url)

    try:
        if args.section in ("all", "send"):
            results["send"] = bench_send(section("send"), args.sends, own_redis=server is not None)
        if args.section in ("all", "memory"):
            results["memory"] = bench_memory(section("memory"), args.messages, args.payload)
        if args.section in ("all", "presence"):
            results["presence"] = bench_presence(section("presence"), args.big, args.reads)
        if args.section == "storm" or (args.section == "all" and scheme(url) != "memory"):
            if scheme(url) == "memory":
                parser.error("storm needs a layer several processes share: ipc:// or redis://")
            from _storm import run_storm

            sockets = [int(v) for v in args.sockets.split(",")]
            rates = [float(v) for v in args.rate.split(",")]
            if len(sockets) != len(rates):
                parser.error(f"--sockets has {len(sockets)} values and --rate {len(rates)}: give as many of each")
            modes = [not args.no_resume] + ([False] if args.baseline and not args.no_resume else [])
            results["storm"] = []
            for i, (n, r) in enumerate(zip(sockets, rates)):
                for mode in modes:
                    store = f"storm{i}" + ("" if mode else "-baseline")
                    results["storm"].append(run_storm(section(store), tmp, n, r, mode, args))
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    _results.write(args.json, "history_presence", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
