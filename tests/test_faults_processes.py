"""Processes that die or stop under load, and clients that stop reading.

- a worker SIGKILLed mid-request: the client gets 504 within the HTTP timeout and the
  next request, served by the other worker, succeeds;
- the sidecar stopped with SIGTERM under load: every client sees 1001 after every frame
  the sidecar wrote to it, and every connection produces exactly one disconnect;
- slow readers and stalled clients: closed, with the sidecar's memory bounded.

All real processes on a real Redis; the tests that need to see every message the
sidecar sends to the app act as the app themselves (:class:`faultkit.LayerConsumer`).
"""
from __future__ import annotations

import signal
import threading
import time

import pytest
import requests

import faultkit as fk
import stack
from servers import RedisServer

HTTP_TIMEOUT = 3.0


@pytest.fixture
def redis_url():
    server = RedisServer().start()
    yield server.url
    server.stop()


def run_worker_kill(redis_url: str, log_dir) -> dict:
    pidfile = log_dir / "slow.pid"
    with fk.Stack(redis_url, log_dir, sidecar_args=("--http", "layer", "--http-timeout", str(HTTP_TIMEOUT)),
                  workers=2, threads=1, FAULT_APP_PIDFILE=str(pidfile)) as st:
        base = f"http://127.0.0.1:{st.port}"
        assert requests.get(base + "/pid", timeout=10).status_code == 200
        result: dict = {}

        def slow() -> None:
            t0 = time.monotonic()
            r = requests.get(base + "/slow", params={"s": 30}, timeout=30)
            result.update(status=r.status_code, seconds=time.monotonic() - t0, body=r.text)

        t = threading.Thread(target=slow)
        t.start()
        fk.wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, what="the slow request started")
        victim_pid = int(pidfile.read_text())
        victim = next(w for w in st.workers if w.proc.pid == victim_pid)
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        t.join(HTTP_TIMEOUT + 10)
        after = requests.get(base + "/pid", timeout=10)
        survivors = [w for w in st.workers if w is not victim]
        return {"status": result.get("status"), "seconds": result.get("seconds"), "body": result.get("body", ""),
                "since_kill": time.monotonic() - killed_at, "next_status": after.status_code,
                "next_pid": int(after.text) if after.status_code == 200 else None, "victim": victim_pid,
                "survivor_pids": [w.proc.pid for w in survivors], "sidecar_alive": st.sidecar.running}


def test_worker_sigkilled_mid_request_gives_504_then_the_next_request_succeeds(redis_url, tmp_path):
    r = run_worker_kill(redis_url, tmp_path)
    assert r["status"] == 504, r
    assert r["seconds"] < HTTP_TIMEOUT + 2, r
    assert "Traceback" not in r["body"]
    assert r["next_status"] == 200 and r["next_pid"] in r["survivor_pids"], r
    assert r["sidecar_alive"]


def run_sidecar_sigterm(redis_url: str, log_dir, clients: int = 20, burst: int = 50) -> dict:
    """SIGTERM while clients send and receive; count frames written vs. read, closes and disconnects."""
    consumer = fk.LayerConsumer(redis_url).start()
    admin = fk.free_port()
    # Room for the bursts in websocket.receive: a full channel would (rightly) close with 1013 instead.
    side = stack.sidecar(stack.env_for(redis_url + "?capacity=5000"), log_dir, None, "--admin-bind",
                         f"127.0.0.1:{admin}", "--grace-period", "3", "--ping-interval", "0")
    side.start()
    socks: list = []
    try:
        for _ in range(clients):
            c = fk.RawClient(side.port)
            assert c.handshake("/load")[0] == 101
            socks.append(c)
        fk.wait_until(lambda: len(consumer.connects) == clients, 10, what="all connects seen")
        stop_sending = threading.Event()
        outcomes: list = [None] * clients
        # About 400 frames/s in all, whatever the number of clients: load the single test
        # consumer keeps up with (beyond it the sidecar rightly closes with 1013, try again later).
        interval = max(0.05, clients / 400)

        def client(i: int, c: fk.RawClient) -> None:
            c.send(fk.frame(fk.OP_TEXT, f"flood {burst} 100".encode()))
            sender = threading.Thread(target=lambda: _keep_sending(c, stop_sending, interval), daemon=True)
            sender.start()
            code, data = c.read_until_close()
            try:
                if code is not None:
                    c.send(fk.close_frame(code))  # answer the close handshake
            except OSError:
                pass
            outcomes[i] = (code, len(data))

        threads = [threading.Thread(target=client, args=(i, c)) for i, c in enumerate(socks)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # floods delivered and echoes flowing: load
        side.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(15)
        stop_sending.set()
        written = None
        try:
            m = fk.metrics(admin)
            written = int(m.get("wsgi_channels_sidecar_frames_sent_total", -1))
        except requests.RequestException:
            pass
        side.proc.wait(15)
        exit_code = side.proc.returncode
        fk.wait_until(lambda: len(consumer.disconnects) >= clients, 10, what="disconnects")
        time.sleep(0.5)
        return {"clients": clients, "outcomes": outcomes, "written": written,
                "read": sum(n for _, n in (o or (None, 0) for o in outcomes)),
                "disconnects": list(consumer.disconnects), "connects": list(consumer.connects),
                "exit_code": exit_code, "log": side.log()}
    finally:
        for c in socks:
            c.close()
        side.stop()
        consumer.stop()


def _keep_sending(c: fk.RawClient, stop: threading.Event, interval: float) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        try:
            c.send(fk.frame(fk.OP_TEXT, f"load {n}".encode()))
        except OSError:
            return
        time.sleep(interval)


def test_sidecar_sigterm_under_load(redis_url, tmp_path):
    r = run_sidecar_sigterm(redis_url, tmp_path)
    assert r["exit_code"] == 0, r["log"][-3000:]
    assert [o[0] for o in r["outcomes"]] == [1001] * r["clients"], r["outcomes"]
    # Every frame the sidecar counted as written reached its client before the close frame.
    assert r["written"] is not None and r["read"] == r["written"], (r["read"], r["written"])
    channels = [ch for ch, _ in r["disconnects"]]
    assert sorted(channels) == sorted(r["connects"]), "exactly one disconnect per connection"
    assert {code for _, code in r["disconnects"]} == {1001}
    assert "Traceback" not in r["log"]


def run_slow_clients(redis_url: str, log_dir, slow: int = 5, stalled: int = 200, flood_mb: int = 8) -> dict:
    """Readers that never read, a WebSocket that never answers pings, and many half-sent heads."""
    consumer = fk.LayerConsumer(redis_url).start()
    admin = fk.free_port()
    side = stack.sidecar(stack.env_for(redis_url), log_dir, None, "--admin-bind", f"127.0.0.1:{admin}",
                         "--max-outgoing-buffer", str(1 << 20), "--ping-interval", "0.5", "--ping-timeout", "1",
                         "--handshake-timeout", "1")
    side.start()
    socks: list = []
    try:
        pid = side.proc.pid
        warm = fk.RawClient(side.port)
        assert warm.handshake("/warm")[0] == 101
        warm.send(fk.close_frame(1000))
        warm.read_until_close()
        rss_before = fk.rss_kb(pid)
        peak = rss_before
        t0 = time.monotonic()
        for _ in range(slow):
            c = fk.RawClient(side.port, rcvbuf=4096)
            assert c.handshake("/slow")[0] == 101
            c.send(fk.frame(fk.OP_TEXT, f"flood {flood_mb * 64} 16384".encode()))  # flood_mb MiB each
            socks.append(c)
        stalled_ws = fk.RawClient(side.port, rcvbuf=4096)
        assert stalled_ws.handshake("/stalled")[0] == 101  # then never reads, never answers a ping
        heads = []
        for _ in range(stalled):
            h = fk.RawClient(side.port)
            h.send(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # and nothing more
            heads.append(h)
        socks += heads + [stalled_ws]

        def all_closed() -> bool:
            nonlocal peak
            peak = max(peak, fk.rss_kb(pid))
            m = fk.metrics(admin)
            return (m.get("wsgi_channels_sidecar_slow_closed_total", 0) >= slow
                    and m.get("wsgi_channels_sidecar_dead_closed_total", 0) >= 1
                    and m.get("wsgi_channels_sidecar_tracked_connections", 1e9) == 0)

        fk.wait_until(all_closed, 30, 0.1, what="slow and stalled clients closed")
        closed_in = time.monotonic() - t0
        good = fk.RawClient(side.port)
        assert good.handshake("/good")[0] == 101
        good.send(fk.frame(fk.OP_TEXT, b"hello"))
        echoed = good.read_frame()
        good.close()
        m = fk.metrics(admin)
        return {"rss_before_kb": rss_before, "rss_peak_kb": peak, "rss_after_kb": fk.rss_kb(pid),
                "flooded_mb": slow * flood_mb, "closed_in_s": closed_in, "echo": echoed,
                "slow_closed": m.get("wsgi_channels_sidecar_slow_closed_total"),
                "dead_closed": m.get("wsgi_channels_sidecar_dead_closed_total"),
                "alive": side.running, "log": side.log()}
    finally:
        for c in socks:
            c.close()
        side.stop()
        consumer.stop()


def test_slow_and_stalled_clients_are_closed_with_memory_bounded(redis_url, tmp_path):
    r = run_slow_clients(redis_url, tmp_path)
    assert r["alive"] and r["echo"] == (fk.OP_TEXT, b"hello")
    assert r["slow_closed"] >= 5 and r["dead_closed"] >= 1, r
    # 40 MiB were pushed at readers that never read; the sidecar may buffer 1 MiB for each.
    grown = (r["rss_peak_kb"] - r["rss_before_kb"]) / 1024
    assert grown < 5 * 1 + 20, f"RSS grew {grown:.1f} MiB while {r['flooded_mb']} MiB were flooded"
    assert "Traceback" not in r["log"]
