"""Benchmarks 2 and 4: one group message from a plain process to thousands of sockets.

2. ``layer.send_group("x", ...)`` from this process (no web server involved) to
   ``--count`` WebSockets (default 10,000) joined to group ``x`` on one sidecar,
   through Redis: per round, how long until every client has it, p50/p99 of the
   per-client latency, and messages lost.
3. (with ``--peer``, default on) the same broadcast to ``--peer-count`` sockets
   (default 2,000) on our sidecar and on python-socketio (Flask-SocketIO's engine,
   gevent, Redis message queue, emitted by ``RedisManager(write_only=True)`` from
   this process), same run, same clients code: ratio of delivery times.

Latency is measured by the clients (time of arrival minus the send time stamped in
the message, same machine clock) and includes the client processes' own work on a
2-core machine shared with others: compare ratios, not absolute numbers.

    python benchmarks/sidecar_broadcast.py [--count 10000] [--rounds 5] [--peer-count 2000] [--no-peer] [--deflate]
                                           [--json PATH]

``--deflate``: our clients offer permessage-deflate, as browsers do, and the table
also shows the sidecar's memory per socket before the first broadcast and after the
last (a server that keeps a compressor per socket grows by about 256 KiB a socket).
A 1 KB payload is used then, so the broadcast is compressed rather than sent plain.

Targets (issue 5): none lost; p99 under 200 ms at 10,000 sockets.

``--json PATH`` also writes every round of each table (times in milliseconds, as printed)
and the machine to PATH (``benchmarks/_results.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from _sidecar_stack import (ENV, HERE, ROOT, Clients, RedisServer, ServerProcess, Stack, free_port, percentile,
                            raise_nofile, rss_bytes, wait_for_port)

import _results


def run_rounds(send, clients: list[Clients], expected: int, rounds: int, gap: float) -> list[dict]:
    for seq in range(rounds):
        send({"seq": seq, "t": time.time()})
        time.sleep(gap)
    time.sleep(1.0)
    merged: dict = {}
    for c in clients:
        for seq, values in c.report()["latencies"].items():
            merged.setdefault(int(seq), []).extend(values)
    rows = []
    for seq in range(rounds):
        values = merged.get(seq, [])
        rows.append({"round": seq, "delivered": len(values), "lost": expected - len(values),
                     "all_ms": 1000 * max(values) if values else float("nan"),
                     "p50_ms": 1000 * percentile(values, 0.5), "p99_ms": 1000 * percentile(values, 0.99)})
    return rows


def open_clients(url: str, count: int, processes: int, join: str, protocol: str = "ws",
                 deflate: bool = False) -> tuple[list, int]:
    per = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
    clients = [Clients(url, n, join=join, protocol=protocol, deflate=deflate) for n in per if n]
    ok = 0
    for c in clients:
        a, _failed = c.wait_ready()
        ok += a
    return clients, ok


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'round':>6}{'delivered':>11}{'lost':>7}{'all have it (ms)':>18}{'p50 (ms)':>10}{'p99 (ms)':>10}")
    for r in rows:
        print(f"{r['round']:>6}{r['delivered']:>11}{r['lost']:>7}{r['all_ms']:>18.1f}{r['p50_ms']:>10.1f}"
              f"{r['p99_ms']:>10.1f}")


def median(values: list[float]) -> float:
    return percentile(values, 0.5)


def ours(count: int, processes: int, rounds: int, gap: float, deflate: bool = False) -> list[dict]:
    from wsgi_channels.layers import from_url

    stack = Stack(sidecar_flags=("--max-connections", str(count + 1000))).start()
    clients: list[Clients] = []
    try:
        base = rss_bytes(stack.sidecar_pid)
        clients, ok = open_clients(f"ws://127.0.0.1:{stack.port}/", count, processes, join="x", deflate=deflate)
        layer = from_url(stack.url)
        members = len(layer.group_channels("x"))
        print(f"ours: {ok} sockets open{' (deflate offered)' if deflate else ''}, {members} in group x", flush=True)
        before = rss_bytes(stack.sidecar_pid)
        padding = {"pad": "news of the day " * 64} if deflate else {}  # ~1 KB: worth compressing
        rows = run_rounds(lambda m: layer.send_group("x", {"text": json.dumps({**m, **padding})}), clients, count,
                          rounds, gap)
        after = rss_bytes(stack.sidecar_pid)
        print(f"sidecar RSS per socket: {(before - base) / max(ok, 1) / 1024:.1f} KiB open, "
              f"{(after - base) / max(ok, 1) / 1024:.1f} KiB after {rounds} broadcasts "
              f"(RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB)", flush=True)
        layer.close()
        return rows
    finally:
        for c in clients:
            c.quit()
        stack.stop()


def socketio_peer(count: int, processes: int, rounds: int, gap: float) -> list[dict]:
    import socketio

    redis = RedisServer().start()
    port = free_port()
    server = ServerProcess([sys.executable, os.path.join(HERE, "_socketio_server.py"), str(port), redis.url],
                           os.path.join(redis.dir, "socketio.log"), env=ENV, cwd=ROOT).start()
    clients: list[Clients] = []
    try:
        wait_for_port(port, proc=server.proc, log=server.log_path)
        clients, ok = open_clients(f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", count,
                                   processes, join="", protocol="socketio")
        print(f"python-socketio: {ok} sockets open", flush=True)
        emitter = socketio.RedisManager(redis.url, write_only=True)
        return run_rounds(lambda m: emitter.emit("bcast", m), clients, count, rounds, gap)
    finally:
        for c in clients:
            c.quit()
        server.stop()
        redis.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gap", type=float, default=2.0, help="seconds between broadcasts")
    parser.add_argument("--peer-count", type=int, default=2000)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--deflate", action="store_true", help="our clients offer permessage-deflate")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args()
    settings = {k: getattr(args, k) for k in ("count", "processes", "rounds", "gap", "peer_count", "deflate")}
    raise_nofile()
    rows = ours(args.count, args.processes, args.rounds, args.gap, args.deflate)
    print_rows(f"Group send from a plain process to {args.count} WebSockets on one sidecar (Redis layer)", rows)
    print(f"targets: 0 lost, p99 < 200 ms; worst round here: lost {max(r['lost'] for r in rows)}, "
          f"p99 {max(r['p99_ms'] for r in rows):.1f} ms")
    if args.no_peer:
        _results.write(args.json, "sidecar_broadcast", {**settings, "ours": rows}, peers=("python-socketio",))
        return 0
    ours_small = ours(args.peer_count, args.processes, args.rounds, args.gap)
    peer = socketio_peer(args.peer_count, args.processes, args.rounds, args.gap)
    print_rows(f"wsgi_channels sidecar, {args.peer_count} sockets", ours_small)
    print_rows(f"python-socketio (gevent + RedisManager), {args.peer_count} sockets", peer)
    a = median([r["all_ms"] for r in ours_small])
    b = median([r["all_ms"] for r in peer])
    print(f"\nmedian time until every client has the message: ours {a:.1f} ms, python-socketio {b:.1f} ms "
          f"(python-socketio / ours = {b / a:.2f}x); lost: ours {sum(r['lost'] for r in ours_small)}, "
          f"python-socketio {sum(r['lost'] for r in peer)}")
    _results.write(args.json, "sidecar_broadcast", {**settings, "ours": rows, "ours_peer_count": ours_small,
                                                    "python_socketio_peer_count": peer},
                   peers=("python-socketio", "gevent"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
