"""Benchmark 3: WebSocket echo round trip through the sidecar, Redis and a real worker consumer.

One client sends a message, waits for the echo, and repeats (``--messages`` times
after a warm-up); each round trip crosses sidecar -> Redis -> worker (the echo
consumer of ``benchmarks/echo_routing.py``) -> Redis -> sidecar. As a floor, the
same client also times a Redis ``PING`` round trip from this process.

    python benchmarks/sidecar_echo.py [--messages 2000] [--size 64]

Target (issue 5): p50 under 1 ms (Channels 1.x measured 11-14 ms; quoted, not run
here). The machine is shared and noisy.
"""
from __future__ import annotations

import argparse
import time

import redis
import websocket

from _sidecar_stack import Stack, percentile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--size", type=int, default=64, help="bytes of text per message")
    args = parser.parse_args()
    stack = Stack().start()
    try:
        ws = websocket.create_connection(f"ws://127.0.0.1:{stack.port}/echo", timeout=10)
        ws.sock.setsockopt(6, 1, 1)  # TCP_NODELAY on the client too
        payload = "e" * args.size
        samples = []
        for i in range(args.warmup + args.messages):
            t = time.perf_counter()
            ws.send(payload)
            got = ws.recv()
            if i >= args.warmup:
                samples.append(time.perf_counter() - t)
            assert got == payload
        ws.close()
        r = redis.Redis.from_url(stack.url)
        pings = []
        for _ in range(args.messages):
            t = time.perf_counter()
            r.ping()
            pings.append(time.perf_counter() - t)
        print(f"\nWebSocket echo through sidecar + Redis + worker ({args.messages} round trips, "
              f"{args.size}-byte text; machine shared and noisy)")
        print(f"{'':<40}{'p50 (ms)':>10}{'p90 (ms)':>10}{'p99 (ms)':>10}")
        for name, values in (("wsgi_channels echo round trip", samples), ("Redis PING from a client (floor)", pings)):
            print(f"{name:<40}{1000 * percentile(values, 0.5):>10.3f}{1000 * percentile(values, 0.9):>10.3f}"
                  f"{1000 * percentile(values, 0.99):>10.3f}")
        print(f"{'Channels 1.x (quoted)':<40}{'11-14':>10}")
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())
