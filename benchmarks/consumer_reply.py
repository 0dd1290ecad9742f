"""What a consumer's reply costs on its way out: ``run_consumer`` of an echo consumer.

The consumer calls ``message.reply_channel.send(...)``: the send is queued while it runs
(``deferred_sends``) and made when it returns, as the worker does. Each row is the time per
consumer call (the best and the median of ``--repeats`` runs of ``--count`` calls: on a shared
machine the best run is the one least disturbed by others), on ``memory://`` and on a
``redis-server`` this script starts on a free port, for a small WebSocket frame and a 4 KB
message with a list.

With ``--compare DIR`` the same measurements run in child processes alternating between the
wsgi_channels of this checkout and the one in ``DIR`` (another checkout, e.g. an older commit
unpacked with ``git archive``), so both columns come from one run of a noisy machine::

    .venv/bin/python benchmarks/consumer_reply.py [--compare /tmp/before] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

MESSAGES = {
    "small frame": {"reply_channel": "", "path": "/ws/", "order": 1, "text": "hello from a client " * 5},
    "4 KB, list": {"reply_channel": "", "path": "/ws/", "order": 1,
                   "text": "x" * 3000, "items": [{"id": i, "name": f"item {i}"} for i in range(40)]},
}


def measure(url: str, count: int) -> dict[str, float]:
    """Microseconds per consumer call, by message kind, with the wsgi_channels found on sys.path."""
    from wsgi_channels.consumers.consumer import run_consumer
    from wsgi_channels.layers import from_url
    from wsgi_channels.consumers.message import Message

    layer = from_url(url, capacity=count + 10)
    reply = layer.new_channel("bench.reply?")

    def echo(message):
        content = dict(message.content)
        content.pop("reply_channel")
        message.reply_channel.send(content)

    results = {}
    for name, template in MESSAGES.items():
        content = dict(template, reply_channel=reply)
        for _ in range(50):  # warm up
            run_consumer(echo, Message(content, "websocket.receive", layer), {})
        layer.flush()
        start = time.perf_counter()
        for _ in range(count):
            run_consumer(echo, Message(content, "websocket.receive", layer), {})
        results[name] = (time.perf_counter() - start) / count * 1e6
        layer.flush()
    layer.close()
    return results


def child(path: str, url: str, count: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=path)
    code = (f"import sys, json; sys.path.insert(0, {path!r}); sys.path.insert(1, {HERE!r});"
            f"import consumer_reply as b; import wsgi_channels, os;"
            f"assert os.path.dirname(os.path.dirname(wsgi_channels.__file__)) == {path!r}, wsgi_channels.__file__;"
            f"print(json.dumps(b.measure({url!r}, {count})))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                          cwd="/")
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", metavar="DIR", help="another checkout to measure beside this one")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--count", type=int, default=5000)
    args = parser.parse_args()
    from servers import RedisServer

    redis_server = RedisServer().start()
    try:
        trees = {"this checkout": ROOT}
        if args.compare:
            trees["--compare"] = os.path.abspath(args.compare)
        layers = {"memory": "memory://", "redis": redis_server.url}
        samples: dict[tuple[str, str, str], list[float]] = {}
        for i in range(args.repeats):
            order = list(trees.items()) if i % 2 == 0 else list(reversed(trees.items()))
            for label, path in order:
                for layer_name, url in layers.items():
                    for kind, us in child(path, url, args.count).items():
                        samples.setdefault((layer_name, kind, label), []).append(us)
        labels = list(trees)
        print(f"consumer reply, us per call (best / median of {args.repeats} runs of {args.count} calls; "
              "lower is better)")
        print(f"{'layer':8} {'message':12} " + " ".join(f"{label:>22}" for label in labels)
              + ("  change (best, median)" if len(labels) == 2 else ""))
        for layer_name in layers:
            for kind in MESSAGES:
                runs = [samples[(layer_name, kind, label)] for label in labels]
                best, median = [min(r) for r in runs], [statistics.median(r) for r in runs]
                change = (f"  {(best[0] / best[1] - 1) * 100:+.0f}%, {(median[0] / median[1] - 1) * 100:+.0f}%"
                          if len(labels) == 2 else "")
                print(f"{layer_name:8} {kind:12} " + " ".join(f"{b:10.2f} / {m:9.2f}" for b, m in zip(best, median))
                      + change)
    finally:
        redis_server.stop()


if __name__ == "__main__":
    main()
