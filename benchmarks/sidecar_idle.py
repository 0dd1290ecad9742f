"""Benchmark 1: many idle WebSockets on one sidecar process: memory per connection and idle CPU.

Starts Redis, one worker (accepting every handshake) and one sidecar, opens
``--count`` WebSockets from client processes (raw sockets; ``--deflate`` makes them
offer permessage-deflate as browsers do, and each socket then gets one short and one
1 KB message, so any per-socket compression state would show), then reads the sidecar's RSS (``/proc``) before and after, and its CPU
time over ``--idle`` seconds while every socket is idle (pings every
``--ping-interval`` seconds are part of idle work).

    python benchmarks/sidecar_idle.py [--count 10000] [--idle 20] [--ping-interval 20] [--deflate]

Target: under 20 KB per connection (Centrifugo, in Go, reports 27 KB by default;
quoted, not measured here). The machine is shared: figures are noisy.
"""
from __future__ import annotations

import argparse
import time

from _sidecar_stack import Clients, Stack, cpu_seconds, raise_nofile, rss_bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU measurement")
    parser.add_argument("--ping-interval", type=float, default=20.0)
    parser.add_argument("--deflate", action="store_true", help="clients offer permessage-deflate (as browsers do)")
    args = parser.parse_args()
    hard = raise_nofile()
    if args.count // args.processes + 100 > hard:
        raise SystemExit(f"open-files hard limit {hard} is too low for {args.count} sockets")
    stack = Stack(sidecar_flags=("--ping-interval", str(args.ping_interval),
                                 "--max-connections", str(args.count + 1000))).start()
    clients: list[Clients] = []
    try:
        warm = Clients(f"ws://127.0.0.1:{stack.port}/", 50)
        warm.wait_ready()
        time.sleep(1)
        base_rss = rss_bytes(stack.sidecar_pid)
        started = time.monotonic()
        per = args.count // args.processes
        join = "idle" if args.deflate else ""  # the echo consumer answers "join" with a short message
        clients = [Clients(f"ws://127.0.0.1:{stack.port}/", per, join=join, deflate=args.deflate)
                   for _ in range(args.processes)]
        ok = failed = 0
        for c in clients:
            a, b = c.wait_ready()
            ok += a
            failed += b
        connect_s = time.monotonic() - started
        if args.deflate:  # one compressed message to every socket
            from wsgi_channels.layers import from_url

            layer = from_url(stack.url)
            layer.send_group("idle", {"text": '{"seq": 0, "t": 0, "pad": "%s"}' % ("news " * 200)})
            layer.close()
        time.sleep(2)
        rss = rss_bytes(stack.sidecar_pid)
        cpu0 = cpu_seconds(stack.sidecar_pid)
        time.sleep(args.idle)
        cpu1 = cpu_seconds(stack.sidecar_pid)
        rss_after_idle = rss_bytes(stack.sidecar_pid)
        per_conn = (rss - base_rss) / max(ok, 1)
        print(f"\nIdle WebSockets on one sidecar process ({ok} open, {failed} failed, "
              f"{'deflate agreed, ' if args.deflate else ''}"
              f"opened in {connect_s:.1f}s; machine shared and noisy)")
        print(f"{'':<34}{'wsgi_channels sidecar':>24}{'Centrifugo (quoted)':>22}")
        print(f"{'RSS before / after (MiB)':<34}{f'{base_rss / 2**20:.1f} / {rss / 2**20:.1f}':>24}{'':>22}")
        print(f"{'memory per connection (KB)':<34}{per_conn / 1000:>24.1f}{'27':>22}")
        print(f"{'RSS after idle period (MiB)':<34}{rss_after_idle / 2**20:>24.1f}{'':>22}")
        print(f"{'idle CPU (% of one core)':<34}{100 * (cpu1 - cpu0) / args.idle:>24.2f}{'':>22}")
        print(f"{'ping interval (s)':<34}{args.ping_interval:>24g}{'':>22}")
        warm.quit()
        return 0
    finally:
        for c in clients:
            c.quit()
        stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())
