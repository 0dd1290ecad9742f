"""What the history and presence suites share: the backends they run on, layers configured by URL,
concurrent publishers and sweepers, and a look at what a backend stored.

A backend joins ``FEATURE_BACKENDS`` when it passes every history and presence test (never skipped,
never xfail); adding one is adding it here and an inspector to :func:`stored_groups`.
"""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

from wsgi_channels.layers import from_url

FEATURE_BACKENDS = ["memory", "ipc", "redis", "redis3", "sentinel", "cluster"]

ROOT = __file__.rsplit("/tests/", 1)[0]


def with_query(url: str, query: str) -> str:
    """``url`` (one URL or several shard URLs separated by commas) with ``query`` added to each."""
    if not query:
        return url
    parts = re.split(r",(?=\s*[A-Za-z][A-Za-z0-9+.\-]*://)", url)
    return ",".join(p + ("&" if "?" in p else "?") + query for p in parts)


@pytest.fixture(params=FEATURE_BACKENDS)
def feature_backend(request):
    return request.param


@pytest.fixture
def feature_layer(feature_backend, layer_url_for):
    """``make(query)`` -> a layer of the parametrised backend configured by the URL query ``query``
    (the same URL a child process gets as ``make.url(query)``); all flushed and closed after."""
    base = layer_url_for(feature_backend)
    made = []

    def make(query: str = "", **options: Any):
        layer = from_url(with_query(base, query), **options)
        if not made:
            layer.flush()
        made.append(layer)
        return layer

    make.url = lambda query="": with_query(base, query)  # type: ignore[attr-defined]
    make.backend = feature_backend  # type: ignore[attr-defined]
    yield make
    for layer in made:
        try:
            layer.flush()
        finally:
            layer.close()


def stored_groups(layer) -> dict[str, set[str]]:
    """The groups the backend holds history or presence state for: ``{"history": ..., "presence": ...}``."""
    kind = type(layer).__name__
    if kind == "MemoryChannelLayer":
        with layer._cond:
            return {"history": set(layer._histories), "presence": set(layer._presences)}
    if kind == "IpcChannelLayer":
        conn = sqlite3.connect(layer.path, timeout=10)
        try:
            history = {r[0] for r in conn.execute("SELECT grp FROM hist_meta UNION SELECT grp FROM hist")}
            presence = {r[0] for r in conn.execute(
                "SELECT grp FROM presence_meta UNION SELECT grp FROM presence UNION SELECT grp FROM presence_owner")}
        finally:
            conn.close()
        return {"history": history, "presence": presence}
    if kind == "RedisChannelLayer":
        return _redis_groups(layer)
    raise AssertionError(f"no inspector for {kind}: add one to feature_backends.stored_groups")


_REDIS_KINDS = {"history": ("h", "hm"), "presence": ("pe", "pu", "po", "pm", "pb")}


def _redis_groups(layer) -> dict[str, set[str]]:
    """The groups named by the hash tag of a history or presence key on any server of the layer."""
    import redis

    found: dict[str, set[str]] = {"history": set(), "presence": set()}
    for url in _redis_urls(layer):
        client = redis.Redis.from_url(url)
        try:
            for what, kinds in _REDIS_KINDS.items():
                for kind in kinds:
                    for key in client.scan_iter(match=f"{layer.prefix}:{kind}:{{*", count=1000):
                        found[what].add(_group_of(key.decode()))
        finally:
            client.close()
    return found


def _group_of(key: str) -> str:
    """The group of a key ``P:kind:{group}[:owner]``, or on a Cluster ``P:kind:{bucket}group[:owner]``."""
    tag, rest = key.split("{", 1)[1].split("}", 1)
    return tag if not rest or rest.startswith(":") else rest.split(":", 1)[0]


def _redis_urls(layer) -> list[str]:
    """A URL of every primary the layer writes to (its shards, or a Sentinel service's primary)."""
    urls = []
    for shard in layer._nodes():
        host, port = shard.address
        urls.append(f"redis://{host}:{port}/{shard.connection_kwargs.get('db', 0)}")
    return urls


def _child(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{err}"
    return out


_PUBLISHER = """
import sys, time
from wsgi_channels.layers import from_url
url, group, who, n, start = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
layer = from_url(url)
while time.time() < start:
    time.sleep(0.001)
for i in range(n):
    layer.send_group(group, {"text": f"{who}:{i}"})
layer.close()
"""


def publish_concurrently(make, query: str, group: str, publishers: int, per: int):
    """``publishers`` publishers send ``per`` messages ``{"text": "<who>:<i>"}`` each to ``group`` at
    once: threads on one layer for the in-memory backend (one process by definition), processes
    otherwise. Returns a layer to read the result with (for memory, the one they used)."""
    layer = make(query)  # made (and the store flushed) before any publisher runs
    if make.backend == "memory":
        barrier = threading.Barrier(publishers)
        errors: list[BaseException] = []

        def run(who: int) -> None:
            try:
                barrier.wait(10)
                for i in range(per):
                    layer.send_group(group, {"text": f"p{who}:{i}"})
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(w,)) for w in range(publishers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        return layer
    start = time.time() + 1.5  # every child is up and connected by then: the sends overlap
    procs = [_child(_PUBLISHER, make.url(query), group, f"p{w}", str(per), str(start)) for w in range(publishers)]
    for proc in procs:
        _finish(proc)
    return layer


_SWEEPER = """
import json, sys, time
from wsgi_channels.layers import from_url
url, start = sys.argv[1], float(sys.argv[2])
layer = from_url(url)
while time.time() < start:
    time.sleep(0.001)
removed = []
for _ in range(50):
    changes = layer.presence_sweep(limit=1000)
    removed += [e[1] for c in changes for e in c.events if e[0] == "l"]
layer.close()
print(json.dumps(removed))
"""


def sweep_concurrently(make, layer, query: str, sweepers: int) -> list[list[str]]:
    """``sweepers`` sweepers racing (threads on ``layer`` for memory, processes with their own layer
    otherwise); the conn_ids each one reports having removed."""
    if make.backend == "memory":
        barrier = threading.Barrier(sweepers)
        results: list[list[str]] = [[] for _ in range(sweepers)]

        def run(k: int) -> None:
            barrier.wait(10)
            for _ in range(50):
                for change in layer.presence_sweep(limit=1000):
                    results[k] += [e[1] for e in change.events if e[0] == "l"]

        threads = [threading.Thread(target=run, args=(k,)) for k in range(sweepers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return results
    start = time.time() + 1.5
    procs = [_child(_SWEEPER, make.url(query), str(start)) for _ in range(sweepers)]
    return [json.loads(_finish(proc)) for proc in procs]


def drain(layer, channels: list[str]) -> list[tuple[str, dict]]:
    out = []
    while True:
        got = layer.receive_batch(channels, 1000)
        if not got:
            return out
        out += got
