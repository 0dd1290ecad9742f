"""Shared fixtures: real Redis servers on free ports, and a layer for every backend.

``redis_cluster`` / ``redis_sentinel`` (session) and ``fresh_redis_cluster`` /
``fresh_redis_sentinel`` (one test's own, for kills and failovers) are a Redis Cluster
and a Sentinel set (:mod:`redis_topology`).

``layer_url`` / ``layer`` are parametrised over every backend that must pass
the contract: memory, the single-machine layer, one Redis (7, Debian 12's), three Redis
shards, one Redis 6.0 (Debian 11's, fetched by ``.ci/fetch-redis6``), the primary of a
Sentinel set (``redis+sentinel://``, the session's ``redis_sentinel``) and a Redis Cluster of
three primaries (``redis+cluster://``, the session's ``redis_cluster``).
"""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
# An illegal sidecar connection state transition raises (it is only logged in production); the
# sidecars the tests start inherit it.
os.environ.setdefault("WSGI_CHANNELS_STRICT_STATES", "1")

# The suite's own default layer stays the in-memory one (the default before it became the user's
# ipc:// store): tests never share a store with each other, with other runs on the machine, or with
# a developer's running stack. Tests of the default itself unset it and move the store.
os.environ.setdefault("WSGI_CHANNELS_LAYER", "memory://")

from redis_topology import RedisClusterSet, RedisSentinelSet  # noqa: E402
from servers import RedisServer, find_redis6_server  # noqa: E402

BACKENDS = ["memory", "ipc", "redis", "redis3", "redis6", "sentinel", "cluster"]


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis6_server():
    server = RedisServer(binary=find_redis6_server()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_shards():
    servers = [RedisServer().start() for _ in range(3)]
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture
def fresh_redis():
    """A Redis of this test's own, for tests that kill or restart it."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster():
    """A Redis Cluster (3 primaries, 1 replica each) shared by the session. Tests leave its nodes
    running as they found them; a test that kills or fails over a node takes ``fresh_redis_cluster``."""
    cluster = RedisClusterSet().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def fresh_redis_cluster():
    """A Redis Cluster of this test's own, for tests that kill, restart or fail over its nodes."""
    cluster = RedisClusterSet().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel():
    """A primary, two replicas and three sentinels shared by the session (nodes left running)."""
    sentinel = RedisSentinelSet().start()
    yield sentinel
    sentinel.stop()


@pytest.fixture
def fresh_redis_sentinel():
    """A Sentinel set of this test's own, for tests that kill, restart or fail over its nodes."""
    sentinel = RedisSentinelSet().start()
    yield sentinel
    sentinel.stop()


@pytest.fixture
def layer_url_for(request, tmp_path):
    """``layer_url_for("redis")`` -> a URL for that backend, with servers from session fixtures."""

    def make(kind: str) -> str:
        if kind == "memory":
            return "memory://"
        if kind == "ipc":
            return f"ipc://{tmp_path / 'channels.db'}"
        if kind == "redis":
            return request.getfixturevalue("redis_server").url
        if kind == "redis6":
            return request.getfixturevalue("redis6_server").url
        if kind == "redis3":
            return ",".join(s.url for s in request.getfixturevalue("redis_shards"))
        if kind == "sentinel":
            return request.getfixturevalue("redis_sentinel").url
        if kind == "cluster":
            return request.getfixturevalue("redis_cluster").url
        raise ValueError(kind)

    return make


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def layer_url(backend, layer_url_for):
    return layer_url_for(backend)


@pytest.fixture
def made(request):
    """``made(url, **options)``: a layer on ``url`` (a URL, or a list of them for shards) with the
    test module's ``Q`` (its feature patterns, if it sets one) added to the query of a URL; closed
    after the test, flushed first when the module sets ``FLUSH_AFTER = True``."""
    from wsgi_channels.layers import from_url

    query = getattr(request.module, "Q", "")
    flush = getattr(request.module, "FLUSH_AFTER", False)
    layers = []

    def make(url, **options):
        if query and isinstance(url, str):
            url += ("&" if "?" in url else "?") + query
        layer = from_url(url, **options)
        layers.append(layer)
        return layer

    yield make
    for layer in layers:
        try:
            if flush:
                layer.flush()
        finally:
            layer.close()


@pytest.fixture
def make_layer(layer_url):
    """Build layers on the parametrised backend with given options; all are flushed and closed after."""
    from wsgi_channels.layers import from_url

    made = []

    def make(**options):
        layer = from_url(layer_url, **options)
        if not made:
            layer.flush()
        made.append(layer)
        return layer

    yield make
    for layer in made:
        try:
            layer.flush()
        finally:
            layer.close()


@pytest.fixture
def layer(make_layer):
    return make_layer()
