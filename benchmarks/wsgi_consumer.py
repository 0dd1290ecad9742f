"""What the channel layer adds to a WSGI request: Flask through Redis + one worker, beside Flask in-process.

Starts a throwaway ``redis-server`` and one real worker process
(``wsgi-channels worker apps.flask_app:routing``), then, for the same Flask
view (``GET /``, 16 bytes):

- ``direct``: the app called in-process with a ready environ (what a WSGI
  server costs at the very least);
- ``layer, 1 client``: a client sends ``http.request`` to Redis and waits for
  the ``http.response`` (send + worker receive + app + reply send + client
  receive), one request at a time: the per-request latency;
- ``layer, N clients``: N client threads at once, for requests per second;
- the worker process's CPU time per request, which the noise of a shared
  machine disturbs less than wall-clock figures;
- ``redis-py PING``: one bare Redis round trip, for scale (a request through
  the layer takes four: send, worker receive, reply send, client receive).

Prints requests/s, p50 and p99 per row, and the per-request overhead (layer
p50 minus direct p50; the target is under 0.5 ms). Run it on a quiet machine:
the figures on a shared one are noisy, compare ratios from the same run.

    python benchmarks/wsgi_consumer.py [--requests 3000] [--clients 8] [--threads 4]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, "tests")
sys.path.insert(0, TESTS)
sys.path.insert(0, ROOT)

from _sidecar_stack import cpu_seconds, percentile  # noqa: E402
from servers import RedisServer, ServerProcess  # noqa: E402


def direct(n: int) -> list[float]:
    from werkzeug.test import EnvironBuilder

    from apps.flask_app import app

    base = EnvironBuilder(path="/", base_url="http://testserver").get_environ()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        environ = dict(base)
        out = []
        result = app(environ, lambda s, h, e=None: out.append(s))
        body = b"".join(result)
        getattr(result, "close", lambda: None)()
        times.append(time.perf_counter() - t0)
        assert out[0].startswith("200") and body
    return times


def one_request(layer, message: dict, reply: str) -> None:
    layer.send("http.request", dict(message, reply_channel=reply))
    while True:
        channel, m = layer.receive([reply], block=True, timeout=5)
        if channel is None:
            raise RuntimeError("no response within 5 s: is the worker running?")
        if not m.get("more_content"):
            assert m.get("status", 200) == 200
            return


def through_layer(url: str, n: int, clients: int) -> tuple[list[float], float]:
    from wsgi_channels.layers import from_url
    from wsgi_channels.protocol.translation import build_request_message

    layer = from_url(url)
    message = dict(build_request_message(reply_channel="x", method="GET", target=b"/", http_version="1.1",
                                         headers=[(b"host", b"testserver")], client=["127.0.0.1", 1],
                                         server=["testserver", 80]))
    for _ in range(50):  # warm-up: connections, scripts, the app's first request
        one_request(layer, message, layer.new_channel("http.response.bench?"))
    times: list[float] = []
    lock = threading.Lock()
    per_client = n // clients

    def client() -> None:
        mine = []
        for _ in range(per_client):
            reply = layer.new_channel("http.response.bench?")
            t0 = time.perf_counter()
            one_request(layer, message, reply)
            mine.append(time.perf_counter() - t0)
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    layer.close()
    return times, wall


def redis_ping(url: str, n: int) -> list[float]:
    """One bare redis-py round trip, for scale: a layer request needs about four plus two wake-ups."""
    import redis

    client = redis.Redis.from_url(url)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.ping()
        times.append(time.perf_counter() - t0)
    client.close()
    return times


def row(name: str, times: list[float], wall: float) -> str:
    return (f"{name:<28} {len(times) / wall:>10.0f} {percentile(times, 0.5) * 1000:>9.3f} "
            f"{percentile(times, 0.99) * 1000:>9.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4, help="worker threads for the N-client run")
    args = parser.parse_args()

    redis = RedisServer().start()
    env = {**os.environ, "PYTHONPATH": TESTS}
    env.pop("WSGI_CHANNELS_LAYER", None)
    log_dir = redis.dir
    workers = []
    try:
        results = []
        t0 = time.perf_counter()
        d = direct(args.requests)
        results.append(row("direct (in-process)", d, time.perf_counter() - t0))
        t0 = time.perf_counter()
        ping = redis_ping(redis.url, args.requests)
        results.append(row("redis-py PING (for scale)", ping, time.perf_counter() - t0))
        for threads, clients in ((1, 1), (args.threads, args.clients)):
            worker = ServerProcess([sys.executable, "-m", "wsgi_channels", "worker", "apps.flask_app:routing",
                                    "--layer", redis.url, "--threads", str(threads), "--log-level", "warning"],
                                   os.path.join(log_dir, f"worker-{threads}.log"), env=env, cwd=TESTS).start()
            workers.append(worker)
            time.sleep(1.0)
            cpu0 = cpu_seconds(worker.proc.pid)
            times, wall = through_layer(redis.url, args.requests, clients)
            cpu = (cpu_seconds(worker.proc.pid) - cpu0) / (len(times) + 50)
            results.append(row(f"layer, {clients} client(s), {threads} thr", times, wall)
                           + f"   worker CPU {cpu * 1e6:.0f} us/request")
            if clients == 1:
                single = times
            worker.stop()
        print(f"\nFlask GET / (16 bytes), {args.requests} requests, Redis {redis.url}, one worker process\n")
        print(f"{'':<28} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9}")
        for line in results:
            print(line)
        overhead = percentile(single, 0.5) - percentile(d, 0.5)
        print(f"\nper-request overhead of the layer at p50: {overhead * 1000:.3f} ms (target < 0.5 ms); "
              f"mean {(statistics.mean(single) - statistics.mean(d)) * 1000:.3f} ms")
        print("(shared, noisy machine: compare ratios within one run)")
    finally:
        for w in workers:
            w.stop()
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
