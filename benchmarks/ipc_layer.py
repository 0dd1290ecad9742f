"""The single-machine layer (``ipc://``) beside asgi_ipc 1.4 and our Redis layer, one run, real processes.

Every figure crosses a process boundary: process A sends, process B receives.

Rows (each contender):

- ``stream``: A sends ``--messages`` messages (~300 bytes, http.request-like)
  to one channel while B receives them; messages/s from A's first send to B's
  last receive.
- ``stream, batch reader``: the same, B reading with ``receive_batch(.., 100)``
  as the sidecar reads its process prefix; asgi_ipc has no batch call, so its
  ratio is taken against its one-at-a-time stream.
- ``stream, busy store``: the same with 300 messages (1 KiB) already waiting on
  100 other channels (slow clients' reply channels), as in a loaded site.
- ``send-then-receive``: A queues ``--messages`` messages, exits, then B
  receives them all; messages/s over both phases.
- ``wake p50/p99``: A sends one message every 5 ms carrying its send time; B,
  blocked in ``receive``, notes the delay when it gets it (CLOCK_MONOTONIC is
  shared by all processes).
- ``CPU us/send+receive``: one process sends and receives, the store kept
  nearly empty (asgi_ipc's best case: its cost grows with every queued byte,
  ours does not); CPU time, so the machine's load matters less.
- ``idle CPU``: B waits on an empty channel for ``--idle`` seconds; CPU time
  it used divided by wall time.

asgi_ipc has no blocking receive (its ``receive`` ignores ``block``), so B
drives it as the Channels 1.x worker did: ``receive``; if nothing, sleep 10 ms
and try again. asgi_ipc runs in its own virtualenv (it needs msgpack-python
0.5), created on first use at ``/tmp/asgi_ipc_venv`` (``--peer-python`` to
point elsewhere); each role runs as a subprocess of that interpreter.

The machine this runs on is small and shared: figures are noisy, the ratios
are what to read. Contenders take turns scenario by scenario, and each figure
is the median of ``--repeats`` rounds. Run from the repository root::

    .venv/bin/python benchmarks/ipc_layer.py [--quick] [--messages N] [--no-peer] [--no-redis]
    .venv/bin/python benchmarks/ipc_layer.py --kill-soak 300     # the SIGKILL soak, longer than CI's
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEER_VENV = "/tmp/asgi_ipc_venv"
PEER_REQUIREMENT = "asgi_ipc==1.4.*"
CAPACITY = 100_000
EXPIRY = 3600  # nothing may expire during a run, however slow a contender is
POLL_1X = 0.01  # Channels 1.x worker: sleep after an empty receive


# -- roles: each runs in its own process, possibly under the peer's interpreter ---------------------


def make_layer(kind: str, url: str) -> Any:
    if kind == "asgi_ipc":
        import asgi_ipc

        return asgi_ipc.IPCChannelLayer(
            prefix=url, capacity=CAPACITY, expiry=EXPIRY, message_memory=200 * 1024 * 1024
        )
    sys.path.insert(0, ROOT)
    from wsgi_channels.layers import from_url

    return from_url(url, capacity=CAPACITY, process_capacity=CAPACITY, expiry=EXPIRY)


def receive_one(kind: str, layer: Any, channels: list[str], timeout: float) -> tuple[Any, Any]:
    """One blocking receive; for asgi_ipc, the 1.x worker's poll-and-sleep loop."""
    if kind != "asgi_ipc":
        return layer.receive(channels, block=True, timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        channel, message = layer.receive(channels)
        if channel is not None or time.monotonic() > deadline:
            return channel, message
        time.sleep(POLL_1X)


def message(size: int, **extra: Any) -> dict:
    return {
        "reply_channel": "http.response!Hx7sKq2", "method": "POST", "path": "/chat/room/1/",
        "headers": [[b"host", b"example.com"], [b"content-type", b"application/json"]],
        "body": b"x" * size, **extra,
    }


def role_send(kind: str, url: str, n: int, size: int, gap: float) -> dict:
    layer = make_layer(kind, url)
    full = 0
    start = time.monotonic()
    for i in range(n):
        while True:
            try:
                layer.send("bench.q", message(size, t=time.monotonic(), i=i))
                break
            except layer.ChannelFull:
                full += 1
                time.sleep(0.0005)
        if gap:
            time.sleep(gap)
    return {"start": start, "end": time.monotonic(), "full": full}


def role_recv(kind: str, url: str, n: int) -> dict:
    layer = make_layer(kind, url)
    print("ready", flush=True)
    delays, got, first = [], 0, None
    start = time.monotonic()
    while got < n:
        channel, msg = receive_one(kind, layer, ["bench.q"], 30)
        if channel is None:
            raise SystemExit(f"receiver timed out after {got} messages")
        now = time.monotonic()
        first = first or now
        delays.append(now - msg["t"])
        got += 1
    return {"start": start, "first": first, "last": time.monotonic(), "delays": delays}


def role_recv_batch(kind: str, url: str, n: int) -> dict:
    """The sidecar's way of reading: ``receive_batch`` of up to 100 (asgi_ipc has no such call)."""
    layer = make_layer(kind, url)
    print("ready", flush=True)
    got = 0
    start = time.monotonic()
    while got < n:
        batch = layer.receive_batch(["bench.q"], 100, block=True, timeout=30)
        if not batch:
            raise SystemExit(f"receiver timed out after {got} messages")
        got += len(batch)
    return {"start": start, "last": time.monotonic()}


def role_cpu(kind: str, url: str, n: int) -> dict:
    """CPU time of one send plus one receive in a single process, the store kept nearly empty."""
    layer = make_layer(kind, url)
    for _ in range(50):  # warm up: connections, statement caches
        layer.send("cpu.q", message(200, t=0.0))
        layer.receive(["cpu.q"])
    before = resource.getrusage(resource.RUSAGE_SELF)
    for i in range(n):
        layer.send("cpu.q", message(200, t=0.0, i=i))
        layer.receive(["cpu.q"])
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_us": cpu / n * 1e6}


def role_fill(kind: str, url: str, channels: int, per_channel: int) -> dict:
    layer = make_layer(kind, url)
    for c in range(channels):
        for i in range(per_channel):
            layer.send(f"slow.client{c}", message(1024, t=0.0, i=i))
    return {}


def role_idle(kind: str, url: str, seconds: float) -> dict:
    layer = make_layer(kind, url)
    receive_one(kind, layer, ["idle.q"], 0.05)  # warm up: connections, sockets
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    while time.monotonic() - start < seconds:
        receive_one(kind, layer, ["idle.q"], max(0.0, min(5.0, seconds - (time.monotonic() - start))))
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - start
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_percent": 100.0 * cpu / wall}


def role_flush(kind: str, url: str) -> dict:
    layer = make_layer(kind, url)
    layer.flush()
    if kind == "asgi_ipc":  # remove its shared memory and semaphores from /dev/shm
        import posix_ipc

        for suffix in ("-messages", "-groups"):
            for unlink in (posix_ipc.unlink_shared_memory, posix_ipc.unlink_semaphore):
                try:
                    unlink(f"/{url}{suffix}")
                except posix_ipc.ExistentialError:
                    pass
    return {}


def role_victim(kind: str, url: str) -> dict:
    """Mixed traffic until killed: takes ``soak.in`` messages (printing their ids), churns the rest."""
    layer = make_layer(kind, url)
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        channel, msg = layer.receive(["soak.in"])
        if channel is not None:
            os.write(1, b"%d\n" % msg["id"])
        layer.send("soak.churn", {"i": i, "pad": b"x" * (i % 900)})
        layer.receive(["soak.churn"])
        layer.group_add("soak.g", "soak.m!c%d" % (i % 9))
        layer.send_group("soak.g", {"i": i})
        layer.receive(["soak.m!"])
        layer.receive_batch(["soak.m!", "soak.churn"], 4)
        layer.session_set("soak.s%d" % (i % 11), b"v" * (i % 64), 60)


ROLES = {"send": role_send, "recv": role_recv, "recv_batch": role_recv_batch, "cpu": role_cpu, "fill": role_fill, "idle": role_idle, "flush": role_flush,
         "victim": role_victim}


def kill_soak(iterations: int) -> int:
    """SIGKILL a process in the middle of traffic, again and again; check the store after each kill."""
    import random
    import signal
    import sqlite3

    sys.path.insert(0, ROOT)
    from wsgi_channels.layers.ipc import IpcChannelLayer

    tmp = tempfile.mkdtemp(prefix="wsgi_channels_soak_")
    path = os.path.join(tmp, "channels.db")
    layer = IpcChannelLayer(path, capacity=CAPACITY, busy_timeout=5)
    c = Contender("ipc", "ipc", f"ipc://{path}", sys.executable)
    sent, consumed, bad = [], [], 0
    start = time.monotonic()
    try:
        for it in range(iterations):
            for _ in range(20):
                layer.send("soak.in", {"id": len(sent)})
                sent.append(len(sent))
            proc = c.start("victim")
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(proc.communicate()[1])
            time.sleep(random.uniform(0.001, 0.05))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            consumed.extend(int(x) for x in proc.stdout.read().split())
            proc.stdout.close()
            proc.stderr.close()
            conn = sqlite3.connect(path, timeout=10)
            if conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                bad += 1
            conn.close()
            layer.send("soak.after", {"it": it})  # no deadlock: the others carry on at once
            if layer.receive(["soak.after"], block=True, timeout=5) != ("soak.after", {"it": it}):
                bad += 1
        remaining = []
        while True:
            channel, msg = layer.receive(["soak.in"])
            if channel is None:
                break
            remaining.append(msg["id"])
    finally:
        layer.close()
        shutil.rmtree(tmp, ignore_errors=True)
    duplicates = len(consumed) - len(set(consumed)) + len(set(consumed) & set(remaining))
    lost = len(set(sent) - set(consumed) - set(remaining))
    print(f"{iterations} kills in {time.monotonic() - start:.1f}s: {bad} failed checks, {duplicates} duplicates, "
          f"{lost} messages lost (at most one per kill can be: taken in the instant before the victim printed it)")
    return 1 if bad or duplicates or lost > iterations else 0


def run_role(argv: list[str]) -> None:
    role, kind, url, *rest = argv
    args = [json.loads(a) for a in rest]
    result = ROLES[role](kind, url, *args)
    print("RESULT " + json.dumps(result), flush=True)


# -- orchestration ---------------------------------------------------------------------------------


class Contender:
    def __init__(self, label: str, kind: str, url: str, python: str) -> None:
        self.label, self.kind, self.url, self.python = label, kind, url, python

    def start(self, role: str, *args: Any) -> subprocess.Popen:
        cmd = [self.python, os.path.abspath(__file__), "--role", role, self.kind, self.url,
               *[json.dumps(a) for a in args]]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)

    def run(self, role: str, *args: Any) -> dict:
        return self.result(self.start(role, *args))

    @staticmethod
    def result(proc: subprocess.Popen, timeout: float = 300) -> dict:
        out, err = proc.communicate(timeout=timeout)
        for line in out.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[7:])
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{last} (exit status {proc.returncode})")

    def receiver(self, n: int, role: str = "recv") -> subprocess.Popen:
        proc = self.start(role, n)
        line = proc.stdout.readline().strip()
        if line != "ready":
            proc.kill()
            last = (proc.communicate()[1].strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"receiver did not start: {last}")
        return proc


def scenario_stream(c: Contender, n: int, idle: float) -> dict[str, float]:
    c.run("flush")
    recv = c.receiver(n)
    sent = c.run("send", n, 200, 0)
    got = c.result(recv)
    out = {"stream": n / (got["last"] - sent["start"])}
    if c.kind != "asgi_ipc":
        recv = c.receiver(n, "recv_batch")
        sent = c.run("send", n, 200, 0)
        got = c.result(recv)
        out["batched"] = n / (got["last"] - sent["start"])
    return out


def scenario_busy(c: Contender, n: int, idle: float) -> dict[str, float]:
    c.run("flush")
    c.run("fill", 100, 3)
    recv = c.receiver(n)
    sent = c.run("send", n, 200, 0)
    got = c.result(recv)
    c.run("flush")
    return {"busy": n / (got["last"] - sent["start"])}


def scenario_batch(c: Contender, n: int, idle: float) -> dict[str, float]:
    c.run("flush")
    sent = c.run("send", n, 200, 0)
    recv = c.receiver(n)
    got = c.result(recv)
    return {"batch": n / ((sent["end"] - sent["start"]) + (got["last"] - got["start"]))}


def scenario_wake(c: Contender, n: int, idle: float) -> dict[str, float]:
    samples = max(100, min(400, n // 10))
    recv = c.receiver(samples)
    time.sleep(0.3)  # let it settle into its blocking wait
    c.run("send", samples, 200, 0.005)
    delays = sorted(c.result(recv)["delays"])
    return {"p50": statistics.median(delays) * 1000,
            "p99": delays[min(len(delays) - 1, int(len(delays) * 0.99))] * 1000}


def scenario_idle(c: Contender, n: int, idle: float) -> dict[str, float]:
    return {"idle": c.run("idle", idle)["cpu_percent"]}


def scenario_cpu(c: Contender, n: int, idle: float) -> dict[str, float]:
    c.run("flush")
    return {"cpu": c.run("cpu", n)["cpu_us"]}


SCENARIOS = [scenario_stream, scenario_busy, scenario_batch, scenario_wake, scenario_idle, scenario_cpu]


def measure_all(contenders: list[Contender], n: int, idle: float, repeats: int,
                results: dict[str, dict[str, float] | str]) -> None:
    """Each scenario for each contender in turn, ``repeats`` rounds; medians.

    Interleaving matters on a shared machine: the load changes from minute to
    minute, and every contender should meet the same weather.
    """
    samples: dict[str, dict[str, list[float]]] = {c.label: {} for c in contenders}
    for round_ in range(repeats):
        for scenario in SCENARIOS:
            for c in contenders:
                if isinstance(results.get(c.label), str):
                    continue  # already failed
                print(f"round {round_ + 1}/{repeats}: {scenario.__name__[9:]} on {c.label}", file=sys.stderr,
                      flush=True)
                try:
                    for key, value in scenario(c, n, idle).items():
                        samples[c.label].setdefault(key, []).append(value)
                except Exception as e:
                    results[c.label] = f"failed: {e}"
    for c in contenders:
        if not isinstance(results.get(c.label), str):
            results[c.label] = {k: statistics.median(v) for k, v in samples[c.label].items()}
        try:
            c.run("flush")
        except Exception:
            pass


def ensure_peer(python: str | None) -> str:
    """The asgi_ipc interpreter: given, or the venv at PEER_VENV (created when missing)."""
    if python:
        return python
    peer = os.path.join(PEER_VENV, "bin", "python")
    check = [peer, "-c", "import asgi_ipc, posix_ipc"]
    if os.path.exists(peer) and subprocess.run(check, capture_output=True).returncode == 0:
        return peer
    print(f"creating {PEER_VENV} with {PEER_REQUIREMENT} ...", file=sys.stderr)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", PEER_VENV], check=True)
    subprocess.run([peer, "-m", "pip", "install", "-q", PEER_REQUIREMENT], check=True)
    return peer


def start_redis() -> Any:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from servers import RedisServer  # noqa: E402

    return RedisServer().start()


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def print_table(results: dict[str, dict[str, float] | str]) -> None:
    columns = [("stream", "stream msg/s", 0), ("batched", "stream, batch reader msg/s", 0),
               ("busy", "busy store msg/s", 0), ("batch", "send-then-receive msg/s", 0),
               ("p50", "wake p50 ms", 2), ("p99", "wake p99 ms", 2), ("idle", "idle CPU %", 2),
               ("cpu", "CPU us/send+receive", 0)]
    header = ["layer"] + [title for _, title, _ in columns]
    rows, notes = [], []
    for label, res in results.items():
        if isinstance(res, str):
            rows.append([label] + ["-"] * len(columns))
            notes.append(f"{label}: {res}")
        else:
            rows.append([label] + [fmt(res.get(key), d) for key, _, d in columns])
    ours, peer = results.get("ipc:// (wsgi_channels)"), results.get("asgi_ipc 1.4")
    if isinstance(ours, dict) and isinstance(peer, dict):
        ratio = []
        for key, _, _ in columns:
            if key in ("p50", "p99", "idle", "cpu"):  # lower is better: how many times lower ours is
                r = peer[key] / ours[key] if ours[key] > 0 else 0.0
                ratio.append("-" if not r else f"{r:.1f}x lower" if r >= 1 else f"{1 / r:.1f}x higher")
            elif key == "batched":  # asgi_ipc cannot batch: against its one-at-a-time stream
                ratio.append(f"{ours[key] / peer['stream']:.1f}x (vs its stream)")
            else:
                ratio.append(f"{ours[key] / peer[key]:.1f}x")
        rows.append(["ipc / asgi_ipc"] + ratio)
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(line)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print(line)
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))
    print(line)
    for note in notes:
        print(note)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--role":
        run_role(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000,
                        help="per throughput row (asgi_ipc slows down with every queued message: keep it modest)")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle receive to measure CPU")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each figure is the median (default 3)")
    parser.add_argument("--quick", action="store_true", help="1,000 messages, 2 s idle, one round")
    parser.add_argument("--no-peer", action="store_true", help="skip asgi_ipc")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis layer")
    parser.add_argument("--peer-python", help="interpreter that has asgi_ipc 1.4 installed")
    parser.add_argument("--kill-soak", type=int, metavar="N",
                        help="instead: SIGKILL a busy process N times and check the store after each")
    args = parser.parse_args()
    if args.kill_soak:
        return kill_soak(args.kill_soak)
    n, idle, repeats = (1000, 2.0, 1) if args.quick else (args.messages, args.idle, args.repeats)

    tmp = tempfile.mkdtemp(prefix="wsgi_channels_bench_")
    results: dict[str, dict[str, float] | str] = {}
    redis = None
    try:
        me = sys.executable
        contenders = [Contender("ipc:// (wsgi_channels)", "ipc", f"ipc://{tmp}/channels.db", me)]
        if not args.no_peer:
            contenders.append(Contender("asgi_ipc 1.4", "asgi_ipc", f"wcbench{os.getpid()}", ensure_peer(args.peer_python)))
        if not args.no_redis:
            try:
                import wsgi_channels.layers.redis  # noqa: F401

                redis = start_redis()
                contenders.append(Contender("redis:// (wsgi_channels)", "redis", redis.url, me))
            except Exception as e:  # the Redis layer or redis-server missing: say so in the table
                results["redis:// (wsgi_channels)"] = f"not available ({type(e).__name__}: {e})"
        measure_all(contenders, n, idle, repeats, results)
    finally:
        if redis is not None:
            redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{n} messages per throughput figure, median of {repeats} interleaved round(s); "
          f"{os.cpu_count()} CPUs, shared and noisy: compare ratios.")
    print_table(results)
    print("asgi_ipc is driven like the Channels 1.x worker: non-blocking receive, 10 ms sleep when empty;")
    print("it has no receive_batch, hence n/a in that column.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
