"""Redis faults under steady traffic: a restart, a restart that comes back empty, one shard of three down.

Real processes throughout: gunicorn workers push to a group on each POST
(``fault_app:app``), a sidecar holds the WebSockets, a worker runs the consumers
(joining the group on connect), all on a real ``redis-server``. Each scenario is a
function returning its figures; ``benchmarks/reliability.py`` runs them again,
longer, and writes ``docs/reliability.md``.
"""
from __future__ import annotations

import signal
import threading
import time

import requests
import websocket

import faultkit as fk
from servers import RedisServer
from wsgi_channels.exceptions import LayerUnavailable
from wsgi_channels.layers import from_url


class Pusher(threading.Thread):
    """POSTs ``/push?group=G&seq=N`` to gunicorn at ``rate`` per second; records (seq, time, status)."""

    def __init__(self, port: int, group: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/push"
        self.group, self.interval = group, 1.0 / rate
        self.results: list = []
        self.stopping = threading.Event()

    def run(self) -> None:
        http = requests.Session()
        seq = 0
        next_at = time.monotonic()
        while not self.stopping.is_set():
            seq += 1
            t = time.monotonic()
            try:
                status = http.post(self.url, params={"group": self.group, "seq": seq}, timeout=5).status_code
            except requests.RequestException:
                status = 0
            self.results.append((seq, t, status))
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


class Listener(threading.Thread):
    """One WebSocket on ``/ws/G``; records (seq, time) of each push; reconnects after a close
    when ``reconnect`` (as the shipped browser client does for 1001/1011/1012/1013)."""

    def __init__(self, port: int, group: str, reconnect: bool = False) -> None:
        super().__init__(daemon=True)
        self.url = f"ws://127.0.0.1:{port}/ws/{group}"
        self.reconnect = reconnect
        self.got: list = []
        self.closes: list = []
        self.connects = 0
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.ws = None

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.ws = websocket.create_connection(self.url, timeout=1)
            except Exception:
                time.sleep(0.1)
                continue
            self.connects += 1
            self.ready.set()
            while not self.stopping.is_set():
                try:
                    opcode, data = self.ws.recv_data(control_frame=True)
                except websocket.WebSocketTimeoutException:
                    continue
                except Exception:
                    self.closes.append(None)
                    break
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    self.closes.append(int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005)
                    break
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self.got.append((int(data), time.monotonic()))
            try:
                self.ws.close(timeout=0.5)
            except Exception:
                pass
            if not self.reconnect:
                return
            time.sleep(0.2)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


def members(url: str, group: str) -> int:
    layer = from_url(url)
    try:
        return len(layer.group_channels(group))
    except LayerUnavailable:
        return -1
    finally:
        layer.close()


def run_redis_restart(log_dir, empty: bool, before: float = 1.5, down: float = 1.0, after: float = 5.0,
                      rate: float = 40.0, clients: int = 3) -> dict:
    """Push steadily while Redis is restarted; figures and raw evidence for the assertions.

    ``empty=False``: Redis keeps its data (AOF) over a clean restart. ``empty=True``: it is
    SIGKILLed and comes back with nothing (no persistence), so group memberships are gone.
    """
    group = "restart"
    extra = [] if empty else ["--appendonly", "yes", "--appendfsync", "always"]
    redis_server = RedisServer(extra_args=extra).start()
    listeners: list = []
    try:
        with fk.Stack(redis_server.url, log_dir, gunicorn_workers=2, threads=4) as st:
            pids = [p.proc.pid for p in st.procs]
            listeners = [Listener(st.port, group, reconnect=empty) for _ in range(clients)]
            for li in listeners:
                li.start()
            for li in listeners:
                assert li.ready.wait(15), "a WebSocket did not connect"
            fk.wait_until(lambda: members(redis_server.url, group) == clients, 15, what="all clients in the group")
            pusher = Pusher(st.web.port, group, rate)
            pusher.start()
            time.sleep(before)
            t_down = time.monotonic()
            redis_server.stop(signal.SIGKILL if empty else signal.SIGTERM)
            time.sleep(down)
            redis_server.start()
            t_up = time.monotonic()
            time.sleep(after)
            pusher.stop()
            time.sleep(1.0)  # deliveries in flight
            final_members = members(redis_server.url, group)
            for li in listeners:
                li.stop()
            alive = all(p.running for p in st.procs) and [p.proc.pid for p in st.procs] == pids
            log = "".join(p.log() for p in st.procs)
    finally:
        for li in listeners:
            li.stop()
        redis_server.stop()
    return summarize(pusher.results, listeners, t_down, t_up, alive, log, final_members)


def summarize(pushes, listeners, t_down, t_up, alive, log, final_members) -> dict:
    acked = [(seq, t) for seq, t, status in pushes if status == 200]
    refused = [seq for seq, t, status in pushes if status != 200]
    got = [{seq for seq, _ in li.got} for li in listeners]
    delivered_to_all = [(seq, t) for seq, t in acked if all(seq in g for g in got)]
    # Recovery: from Redis accepting connections again to the first push after it delivered to every client.
    first_ok = next((t for seq, t in delivered_to_all if t >= t_up), None)
    recovery = None if first_ok is None else max(0.0, first_ok - t_up)
    after = [seq for seq, t in acked if first_ok is not None and t >= first_ok]
    lost_after = sum(1 for seq in after for g in got if seq not in g)
    lost_gap = sum(1 for seq, t in acked if first_ok is None or t < first_ok for g in got if seq not in g)
    duplicates = sum(len(li.got) - len({s for s, _ in li.got}) for li in listeners)
    return {
        "pushes": len(pushes), "acked": len(acked), "refused": len(refused),
        "recovery_s": recovery, "lost_in_gap": lost_gap, "lost_after_recovery": lost_after,
        "delivered_after_recovery": len(after), "duplicates": duplicates, "processes_alive": alive,
        "closes": [li.closes for li in listeners], "connects": [li.connects for li in listeners],
        "outage_s": t_up - t_down, "final_members": final_members, "log": log,
    }


def test_redis_restart_under_steady_traffic_recovers_without_restarts(tmp_path):
    r = run_redis_restart(tmp_path, empty=False)
    assert r["processes_alive"], "gunicorn, the sidecar and the worker must all survive without a restart"
    assert r["recovery_s"] is not None and r["recovery_s"] < 10, r
    assert r["delivered_after_recovery"] >= 40, r
    assert r["lost_after_recovery"] == 0, r
    assert r["duplicates"] == 0, r
    assert r["refused"] >= 1, "pushes while Redis was down must fail visibly (503), not vanish"
    assert all(c == [] for c in r["closes"]), "sockets stay up through a restart that keeps the data"
    assert r["final_members"] == 3, r
    assert "unavailable" in r["log"]


def test_redis_back_empty_closes_sockets_with_1012_and_clients_rejoin(tmp_path):
    r = run_redis_restart(tmp_path, empty=True)
    assert r["processes_alive"]
    assert all(1012 in closes for closes in r["closes"]), r["closes"]
    assert all(n >= 2 for n in r["connects"]), r["connects"]
    assert r["recovery_s"] is not None and r["recovery_s"] < 15, r
    assert r["lost_after_recovery"] == 0, r
    assert r["final_members"] == 3, r


def run_shard_down(log_dir, down: float = 2.0) -> dict:
    """Three shards, one stopped: names on the other two keep flowing, the affected ones fail
    with LayerUnavailable naming the shard, and all recover when it returns."""
    shards = [RedisServer().start() for _ in range(3)]
    url = ",".join(s.url for s in shards)
    layer = from_url(url)
    try:
        layer.flush()
        names = [f"shard.test.{i}" for i in range(60)]
        owner = {n: layer._shard_of(n).identity for n in names}
        victim = shards[1]
        victim_id = f"127.0.0.1:{victim.port}/0"
        affected = [n for n in names if owner[n] == victim_id]
        others = [n for n in names if owner[n] != victim_id]
        victim.stop(signal.SIGKILL)
        t0 = time.monotonic()
        flowing, errors = 0, []
        for n in others:
            layer.send(n, {"text": n})
            if layer.receive([n], block=True, timeout=2) == (n, {"text": n}):
                flowing += 1
        for n in affected:
            try:
                layer.send(n, {"text": n})
            except LayerUnavailable as e:
                errors.append(str(e))
        group_error = None
        try:
            layer.send_group("spread", {"text": "x"})  # a group send touches every shard
            for n in names:
                layer.group_add("spread", n)
        except LayerUnavailable as e:
            group_error = str(e)
        time.sleep(max(0.0, down - (time.monotonic() - t0)))
        victim.start()
        t_up = time.monotonic()
        recovered = None
        while time.monotonic() - t_up < 15:
            try:
                layer.send(affected[0], {"text": "back"})
                if layer.receive([affected[0]], block=True, timeout=1)[0] == affected[0]:
                    recovered = time.monotonic() - t_up
                    break
            except LayerUnavailable:
                time.sleep(0.05)
        after = 0
        for n in names:
            layer.send(n, {"text": "after"})
            if layer.receive([n], block=True, timeout=2) == (n, {"text": "after"}):
                after += 1
        return {"names": len(names), "affected": len(affected), "others": len(others), "flowing": flowing,
                "errors": errors, "group_error": group_error, "recovery_s": recovered, "after": after,
                "victim": f"127.0.0.1:{victim.port}"}
    finally:
        layer.close()
        for s in shards:
            s.stop()


def test_one_of_three_shards_down(tmp_path):
    r = run_shard_down(tmp_path)
    assert r["affected"] and r["others"], r
    assert r["flowing"] == r["others"], "names on the healthy shards must keep flowing"
    assert len(r["errors"]) == r["affected"], "every name on the stopped shard fails"
    assert all(r["victim"] in e and "unavailable" in e for e in r["errors"]), r["errors"][:2]
    assert r["group_error"] is not None and r["victim"] in r["group_error"]
    assert r["recovery_s"] is not None, "the shard's names recover when it returns"
    assert r["after"] == r["names"]
