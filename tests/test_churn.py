"""Connect/disconnect churn: 10,000 WebSocket handshake+close cycles leak nothing.

A real sidecar and worker on a real Redis; 50 raw-socket clients at a time each
open a WebSocket (the consumer joins it to a group), close it (the consumer
leaves the group), and start again. Measured before and after (after a warm-up,
so first-use allocations do not count): the sidecar's file descriptors, RSS,
greenlets, tracked connections and routes, its open-connection gauges, the
group's members and the Redis key count. ``benchmarks/reliability.py`` runs the
same with 100,000 cycles.
"""
from __future__ import annotations

import faultkit as fk
from wsgi_channels.layers import from_url

CYCLES = 10_000
WARMUP = 1_000


def measure(stack, redis_url: str, group: str) -> dict:
    pid = stack.sidecar.proc.pid
    m = stack.metrics()
    layer = from_url(redis_url)
    try:
        members = len(layer.group_channels(group))
    finally:
        layer.close()
    sockets = fk.tcp_sockets(pid)
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    redis_conns = sum(1 for _, remote in sockets if remote == redis_port)
    return {
        "fds": fk.fd_count(pid),
        "redis_connections": redis_conns,
        "fds_not_redis": fk.fd_count(pid) - redis_conns,
        "client_sockets": sum(1 for local, remote in sockets if local == stack.port and remote),
        "rss_kb": fk.rss_kb(pid),
        "greenlets": m.get("wsgi_channels_sidecar_greenlets"),
        "connections": m.get("wsgi_channels_sidecar_tracked_connections"),
        "open_ws": m['wsgi_channels_sidecar_open_connections{kind="websocket"}'],
        "open_http": m['wsgi_channels_sidecar_open_connections{kind="http"}'],
        "members": members,
        "redis_keys": fk.redis_keys(redis_url),
    }


def settle(stack, redis_url: str, group: str, baseline: dict | None = None) -> dict:
    """Measure once lingering closes and in-flight disconnects are done (bounded wait)."""
    state: dict = {}

    def quiet() -> bool:
        state.update(measure(stack, redis_url, group))
        if state["members"] or state["open_ws"]:
            return False
        return state["client_sockets"] == 0 and (baseline is None
                                                 or state["fds_not_redis"] <= baseline["fds_not_redis"])

    try:
        fk.wait_until(quiet, timeout=15, interval=0.25, what="a quiet sidecar")
    except AssertionError:
        pass  # the assertions below say what did not settle
    return dict(state)


def run_churn(redis_url: str, log_dir, cycles: int, warmup: int = WARMUP, concurrency: int = 50) -> dict:
    """The scenario (also run by benchmarks/reliability.py): figures before/after and the outcomes."""
    group = "churn"
    with fk.Stack(redis_url, log_dir, threads=8) as stack:
        warm = fk.churn(stack.port, warmup, concurrency, path=f"/ws/{group}")
        before = settle(stack, redis_url, group)
        outcome = fk.churn(stack.port, cycles, concurrency, path=f"/ws/{group}")
        after = settle(stack, redis_url, group, before)
        log = stack.sidecar.log() + "".join(w.log() for w in stack.workers)
    return {"warmup": warm, "outcome": outcome, "before": before, "after": after, "log": log}


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def churned(tmp_path_factory):
    from servers import RedisServer

    redis_server = RedisServer().start()
    try:
        yield run_churn(redis_server.url, tmp_path_factory.mktemp("churn"), CYCLES)
    finally:
        redis_server.stop()


def test_every_cycle_completes(churned):
    assert churned["outcome"].get("ok") == CYCLES, churned["outcome"]
    assert "Traceback" not in churned["log"], churned["log"][-3000:]


def test_no_group_memberships_or_redis_keys_left(churned):
    before, after = churned["before"], churned["after"]
    assert after["members"] == 0, "group memberships left behind"
    assert after["redis_keys"] == before["redis_keys"], (before, after)


def test_no_file_descriptors_or_memory_leaked(churned):
    before, after = churned["before"], churned["after"]
    # The layer's pool keeps as many Redis connections as were ever busy at once (bounded by
    # the peak concurrency, not by the cycles): those are counted apart.
    assert after["client_sockets"] == 0, (before, after)
    assert after["fds_not_redis"] <= before["fds_not_redis"], (before, after)
    assert after["redis_connections"] <= 4 * 50, (before, after)
    assert after["rss_kb"] - before["rss_kb"] < 8 * 1024, f"RSS grew by {after['rss_kb'] - before['rss_kb']} KiB"


def test_open_connection_gauges_return_to_zero(churned):
    after = churned["after"]
    assert after["open_ws"] == 0 and after["open_http"] == 0, after


def test_no_greenlets_or_tracked_connections_leaked(churned):
    before, after = churned["before"], churned["after"]
    assert after["greenlets"] is not None, "the sidecar exposes no greenlet gauge"
    assert after["greenlets"] <= before["greenlets"], (before, after)
    assert after["connections"] == before["connections"] == 0, (before, after)
