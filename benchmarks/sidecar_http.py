"""Benchmark 5: HTTP through the sidecar, Redis and one worker to a Flask app, beside gunicorn.

Same Flask app (``benchmarks/echo_routing.py``: ``GET /`` and ``GET /json``), same
number of processes (two), keep-alive on both sides, load from ``wrk`` (Debian's
package: ``apt-get install wrk``):

- ``wsgi_channels``: ``wsgi-channels sidecar --http layer`` + one ``wsgi-channels worker``
  (``--threads`` executors), Redis in between;
- ``gunicorn``: ``gunicorn -w 2 -k gthread --threads 4 --keep-alive 5`` serving the app directly
  (the sync worker closes every connection, so it is not the keep-alive baseline).

    python benchmarks/sidecar_http.py [--duration 10] [--connections 20] [--path /json]

Targets (issue 5): at least 70% of gunicorn's throughput, p50 within 1 ms of it. The
machine has 2 cores shared with other work: compare the ratios within one run.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

from _sidecar_stack import ENV, ROOT, ServerProcess, Stack, free_port, wait_for_port

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, duration: float, connections: int, threads: int) -> dict:
    exe = shutil.which("wrk")
    if exe is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    out = subprocess.run([exe, f"-t{threads}", f"-c{connections}", f"-d{int(duration)}s", "--latency", url],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": pct("50"), "p99": pct("99"), "non2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": sock_err.group(1) if sock_err else "", "raw": out}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--worker-threads", type=int, default=4)
    parser.add_argument("--path", default="/json")
    args = parser.parse_args()

    results = {}
    stack = Stack(threads=args.worker_threads, sidecar_flags=("--http", "layer")).start()
    try:
        url = f"http://127.0.0.1:{stack.port}{args.path}"
        wrk(url, 2, args.connections, args.wrk_threads)  # warm-up
        results["wsgi_channels (sidecar + worker)"] = wrk(url, args.duration, args.connections, args.wrk_threads)
    finally:
        stack.stop()

    port = free_port()
    gunicorn = ServerProcess([os.path.join(os.path.dirname(sys.executable), "gunicorn"), "-w", "2", "-k", "gthread",
                              "--threads", "4", "--keep-alive", "5", "-b", f"127.0.0.1:{port}", "--log-level",
                              "warning", "benchmarks.echo_routing:app"],
                             os.path.join(stack.dir + "-gunicorn.log"), env=ENV, cwd=ROOT).start()
    try:
        wait_for_port(port, proc=gunicorn.proc, log=gunicorn.log_path)
        url = f"http://127.0.0.1:{port}{args.path}"
        wrk(url, 2, args.connections, args.wrk_threads)
        results["gunicorn gthread -w 2 (direct)"] = wrk(url, args.duration, args.connections, args.wrk_threads)
    finally:
        gunicorn.stop()
        try:
            os.unlink(stack.dir + "-gunicorn.log")
        except OSError:
            pass

    print(f"\nHTTP GET {args.path}: wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration:g}s, keep-alive, "
          "two server processes each side (machine shared and noisy)")
    print(f"{'':<36}{'req/s':>10}{'p50 (ms)':>10}{'p99 (ms)':>10}{'non-2xx':>9}  socket errors")
    for name, r in results.items():
        print(f"{name:<36}{r['rps']:>10.0f}{r['p50']:>10.2f}{r['p99']:>10.2f}{r['non2xx']:>9}  {r['socket_errors']}")
    ours, peer = results["wsgi_channels (sidecar + worker)"], results["gunicorn gthread -w 2 (direct)"]
    print(f"throughput ratio ours/gunicorn: {ours['rps'] / peer['rps']:.0%} (target >= 70%); "
          f"p50 difference: {ours['p50'] - peer['p50']:+.2f} ms (target <= +1 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
