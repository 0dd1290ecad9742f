"""Push fan-out, end to end: an HTTP POST to gunicorn until N WebSocket clients have the message.

Stacks, same Flask view, same clients count, same run:

- ``wsgi_channels redis``: gunicorn -w 4 (sync) + sidecar + one worker, Redis layer;
- ``wsgi_channels ipc``: the same on the single-machine ``ipc://`` layer;
- ``Flask-SocketIO``: gunicorn -w 1 --threads 100 (threading mode, simple-websocket), the
  configuration its documentation requires under gunicorn (one worker, no sticky sessions
  needed only because there is one process).

For each: ``latency`` pushes one at a time and records, per client, the time from the
start of the POST to the arrival (p50, p95, max); ``burst`` fires all pushes from 4 threads
and measures deliveries per second until every client has every message.

The clients differ (websocket-client threads for ours, python-socketio clients for the
peer), so client overhead is part of each figure. The machine is shared and noisy:
compare the ratios within one run, not absolute numbers.

    python benchmarks/push_fanout.py [--clients 50] [--pushes 100] [--json PATH]

``--json PATH`` also writes each stack's figures (latencies in seconds) and the machine to
PATH (``benchmarks/_results.py``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

import requests  # noqa: E402

from servers import RedisServer, ServerProcess, free_port, wait_for_port  # noqa: E402

import _results  # noqa: E402

BIN = os.path.dirname(sys.executable)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Inbox:
    """Arrival times per message id across all clients."""

    def __init__(self) -> None:
        self.arrivals: dict[int, list[float]] = {}
        self.cond = threading.Condition()

    def got(self, text: str) -> None:
        now = time.perf_counter()
        i = int(text)
        with self.cond:
            self.arrivals.setdefault(i, []).append(now)
            self.cond.notify_all()

    def wait(self, predicate, timeout: float = 30.0) -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise RuntimeError("timed out waiting for deliveries")


def our_clients(port: int, n: int, inbox: Inbox) -> list:
    import websocket

    clients = []
    for _ in range(n):
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/bench/", timeout=30)

        def loop(ws=ws) -> None:
            try:
                while True:
                    inbox.got(ws.recv())
            except Exception:
                pass

        threading.Thread(target=loop, daemon=True).start()
        clients.append(ws)
    return clients


def peer_clients(port: int, n: int, inbox: Inbox) -> list:
    import socketio

    clients = []
    for _ in range(n):
        sio = socketio.Client(reconnection=False)
        sio.on("push", inbox.got)
        sio.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=30)
        clients.append(sio)
    return clients


def measure(push_port: int, n_clients: int, pushes: int, inbox: Inbox) -> dict:
    session = requests.Session()
    latencies: list[float] = []
    for i in range(pushes):
        t0 = time.perf_counter()
        assert session.post(f"http://127.0.0.1:{push_port}/push", data=str(i), timeout=30).status_code == 200
        inbox.wait(lambda: len(inbox.arrivals.get(i, ())) >= n_clients)
        latencies += [t - t0 for t in inbox.arrivals[i]]
    base = pushes  # burst ids follow the latency ids
    t0 = time.perf_counter()

    def fire(ids: range) -> None:
        s = requests.Session()
        for j in ids:
            s.post(f"http://127.0.0.1:{push_port}/push", data=str(base + j), timeout=30)

    threads = [threading.Thread(target=fire, args=(range(k, pushes, 4),)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    inbox.wait(lambda: all(len(inbox.arrivals.get(base + j, ())) >= n_clients for j in range(pushes)), 120)
    burst = time.perf_counter() - t0
    return {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95), "max": max(latencies),
            "deliveries/s": pushes * n_clients / burst}


def run_ours(layer: str, n_clients: int, pushes: int, workdir: str) -> dict:
    env = dict(os.environ, WSGI_CHANNELS_LAYER=layer, PYTHONPATH=HERE + os.pathsep + ROOT)
    web_port, side_port = free_port(), free_port()
    procs = [
        ServerProcess([f"{BIN}/gunicorn", "-w", "4", "-b", f"127.0.0.1:{web_port}", "fanout_apps:ours"],
                      os.path.join(workdir, "gunicorn.log"), env, HERE),
        ServerProcess([sys.executable, "-m", "wsgi_channels", "sidecar", "--bind", f"127.0.0.1:{side_port}",
                       "--log-level", "warning"], os.path.join(workdir, "sidecar.log"), env, HERE),
        ServerProcess([sys.executable, "-m", "wsgi_channels", "worker", "fanout_apps:routing", "--threads", "4"],
                      os.path.join(workdir, "worker.log"), env, HERE),
    ]
    try:
        for p in procs:
            p.start()
        wait_for_port(web_port, proc=procs[0].proc, log=procs[0].log_path)
        wait_for_port(side_port, proc=procs[1].proc, log=procs[1].log_path)
        deadline = time.monotonic() + 20
        while "worker serving" not in procs[2].log():
            if time.monotonic() > deadline or procs[2].proc.poll() is not None:
                raise RuntimeError("worker did not start:\n" + procs[2].log()[-3000:])
            time.sleep(0.05)
        inbox = Inbox()
        clients = our_clients(side_port, n_clients, inbox)
        try:
            return measure(web_port, n_clients, pushes, inbox)
        finally:
            for c in clients:
                c.close()
    finally:
        for p in reversed(procs):
            p.stop(signal.SIGTERM, timeout=10)


def run_peer(n_clients: int, pushes: int, workdir: str) -> dict:
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + ROOT)
    port = free_port()
    proc = ServerProcess([f"{BIN}/gunicorn", "-w", "1", "--threads", str(max(100, n_clients * 2)),
                          "-b", f"127.0.0.1:{port}", "fanout_apps:peer"], os.path.join(workdir, "peer.log"), env, HERE)
    try:
        proc.start()
        wait_for_port(port, proc=proc.proc, log=proc.log_path)
        inbox = Inbox()
        clients = peer_clients(port, n_clients, inbox)
        try:
            return measure(port, n_clients, pushes, inbox)
        finally:
            for c in clients:
                c.disconnect()
    finally:
        proc.stop(signal.SIGTERM, timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--pushes", type=int, default=100)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    from tabulate import tabulate

    workdir = tempfile.mkdtemp(prefix="bench-fanout-")
    redis = RedisServer().start()
    rows = []
    stacks: list[dict] = []
    try:
        for name, run in [
            ("wsgi_channels redis (gunicorn -w 4)", lambda: run_ours(redis.url, args.clients, args.pushes, workdir)),
            ("wsgi_channels ipc (gunicorn -w 4)",
             lambda: run_ours(f"ipc://{workdir}/channels.db", args.clients, args.pushes, workdir)),
            ("Flask-SocketIO (gunicorn -w 1)", lambda: run_peer(args.clients, args.pushes, workdir)),
        ]:
            try:
                r = run()
            except Exception as e:  # a failed stack is a result too: show it rather than hide it
                rows.append([name, "failed", "", "", f"{type(e).__name__}: {str(e)[:60]}"])
                stacks.append({"stack": name, "failed": f"{type(e).__name__}: {e}"})
                continue
            stacks.append({"stack": name, "p50_s": r["p50"], "p95_s": r["p95"], "max_s": r["max"],
                           "burst_deliveries_per_s": r["deliveries/s"]})
            rows.append([name, f"{r['p50'] * 1000:.1f}", f"{r['p95'] * 1000:.1f}", f"{r['max'] * 1000:.1f}",
                         f"{r['deliveries/s']:.0f}"])
    finally:
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"push fan-out: {args.clients} clients, {args.pushes} pushes (latency: POST start -> arrival)")
    print(tabulate(rows, headers=["stack", "p50 ms", "p95 ms", "max ms", "burst deliveries/s"]))
    _results.write(args.json, "push_fanout", {"clients": args.clients, "pushes": args.pushes, "stacks": stacks},
                   peers=("flask-socketio", "python-socketio", "gunicorn"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
