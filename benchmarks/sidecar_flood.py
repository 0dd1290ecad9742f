"""Benchmark: one flooding socket against everyone else's handshake and echo (issue 21, item 1).

A real stack: redis-server, one worker (the echo consumer of ``benchmarks/echo_routing.py``)
and a sidecar. A probe client times new clients, one after another: TCP connect, WebSocket
handshake (through the ``websocket.connect`` consumer) and one echo of a short text
message, through sidecar -> Redis -> worker -> Redis -> sidecar. Each scenario first
measures the probe with the sidecar idle, then again while one socket (another process)
floods at about ``--rate`` bytes a second:

- ``ping``: empty pings on an accepted WebSocket;
- ``fragment``: empty continuation frames without FIN after an empty first fragment;
- ``pipelined``: ``GET /_health`` requests pipelined on one keep-alive socket (the
  responses are read).

The WebSocket floods run twice: with the rate limit off (``--control-frame-rate 0``: only
the per-connection turns on the event loop protect the others) and with the default limit,
where the sidecar closes the flooder with 1008 and the flooder reconnects at once and floods
again, for as long as the scenario lasts. The pipelined flood runs on ``--http off`` and on
``--http layer``. Target: the probe's p50 and p99 while flooding within 2x of the idle
figures of the same scenario. The machine is shared (2 cores): figures are noisy; compare
within one run only.

A second table shows the output bounds (item 7): ``--slow-readers`` sockets each ask for
``--slow-mb`` MB of echo (1 MB binary messages) and never read; the sidecar's RSS, the bytes
it holds queued, and the sockets it closes, with the process-wide ``--max-outgoing-total`` off
and on, and with the defaults.

    python benchmarks/sidecar_flood.py [--probes 300] [--rate 1000000] [--rounds 3] [--slow-readers 30]
"""
from __future__ import annotations

import argparse
import base64
import os
import socket
import struct
import subprocess
import sys
import threading
import time

from _sidecar_stack import CLI, ENV, ROOT, cpu_seconds, percentile, rss_bytes

from servers import RedisServer, ServerProcess, free_port, wait_for_port  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

EMPTY_PING = b"\x89\x80\x00\x00\x00\x00"
EMPTY_FIRST_FRAGMENT = b"\x01\x80\x00\x00\x00\x00"
EMPTY_CONTINUATION = b"\x00\x80\x00\x00\x00\x00"
HEALTH = b"GET /_health HTTP/1.1\r\nHost: x\r\n\r\n"


def handshake_request(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        data += chunk
    return data


def text_frame(text: bytes) -> bytes:
    """A masked client text frame (mask key 0: the payload goes as it is)."""
    assert len(text) < 126
    return struct.pack("!BB", 0x81, 0x80 | len(text)) + b"\x00\x00\x00\x00" + text


# -- the flooder (a process of its own) --------------------------------------------------------------

def flooder(kind: str, port: int, rate: int) -> None:
    """Flood at about ``rate`` bytes a second until stdin closes; reconnect when closed."""
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    sent = connections = 0
    chunk = 60_000
    blob = {"ping": EMPTY_PING, "fragment": EMPTY_CONTINUATION, "pipelined": HEALTH}[kind]
    blob = blob * (chunk // len(blob))
    started = time.monotonic()
    while not stop.is_set():
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if kind != "pipelined":
                sock.sendall(handshake_request(port, "/flooder"))
                if b" 101 " not in read_head(sock).split(b"\r\n", 1)[0]:
                    raise ConnectionError("handshake refused")
                if kind == "fragment":
                    sock.sendall(EMPTY_FIRST_FRAGMENT)
            connections += 1
            sock.settimeout(None)
            threading.Thread(target=_drain, args=(sock,), daemon=True).start()
            while not stop.is_set():
                behind = started + sent / rate - time.monotonic()
                if behind > 0:
                    time.sleep(behind)
                sock.sendall(blob)
                sent += len(blob)
        except OSError:
            time.sleep(0.01)
        finally:
            try:
                sock.close()
            except (OSError, UnboundLocalError):
                pass
    print(f"{sent} {connections}", flush=True)


def _drain(sock: socket.socket) -> None:
    """Read what comes back; at the server's end of the stream, make the sender reconnect at once."""
    try:
        while sock.recv(1 << 20):
            pass
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class Flood:
    def __init__(self, kind: str, port: int, rate: int) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--flooder", kind, str(port), str(rate)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
        self.sent = self.connections = 0

    def stop(self) -> None:
        out, _ = self.proc.communicate("", timeout=30)
        self.sent, self.connections = (int(v) for v in out.split())


# -- the probe ----------------------------------------------------------------------------------

def probe(port: int) -> float:
    """Seconds for a new client's connect, handshake and one echo."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(handshake_request(port, "/probe"))
        head = read_head(sock)
        assert b" 101 " in head.split(b"\r\n", 1)[0], head[:100]
        sock.sendall(text_frame(b"hello"))
        data = head.split(b"\r\n\r\n", 1)[1]
        while len(data) < 7:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the echo")
            data += chunk
        assert data[:7] == b"\x81\x05hello", data[:20]
        elapsed = time.perf_counter() - started
        sock.sendall(b"\x88\x82\x00\x00\x00\x00\x03\xe8")  # close 1000
    return elapsed


def probes(port: int, n: int) -> list[float]:
    return [probe(port) for _ in range(n)]


def metric(admin_port: int, name: str, **labels: str) -> float:
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def settle(admin_port: int, timeout: float = 60.0) -> None:
    """Wait until the sidecar has read everything the flood left in the kernel's buffers."""
    deadline = time.monotonic() + timeout
    last = -1.0
    while time.monotonic() < deadline:
        now = metric(admin_port, "wsgi_channels_sidecar_received_bytes_total")
        if now == last:
            return
        last = now
        time.sleep(0.5)


# -- the stack ------------------------------------------------------------------------------------

class Sidecar:
    def __init__(self, redis_url: str, workdir: str, *flags: str) -> None:
        self.port = free_port()
        self.admin = free_port()
        self.proc = ServerProcess(
            CLI + ["sidecar", "--bind", f"127.0.0.1:{self.port}", "--layer", redis_url, "--log-level", "warning",
                   "--admin-bind", f"127.0.0.1:{self.admin}", *flags],
            os.path.join(workdir, f"sidecar-{self.port}.log"), env=ENV, cwd=ROOT).start()
        wait_for_port(self.port, proc=self.proc.proc, log=self.proc.log_path)

    def stop(self) -> None:
        self.proc.stop()


def run_scenario(side: Sidecar, kind: str, n: int, rate: int, rounds: int) -> dict:
    """``rounds`` alternations of an idle batch and a flooded batch (``n`` probes in all, each):
    the machine's load drifts, and alternating spreads the drift over both."""
    idle: list[float] = []
    busy: list[float] = []
    cpu = seconds = read = flooding = closed = 0.0
    connections = 0
    for _ in range(rounds):
        idle += probes(side.port, n // rounds)
        before_bytes = metric(side.admin, "wsgi_channels_sidecar_received_bytes_total")
        before_closed = metric(side.admin, "wsgi_channels_sidecar_dropped_total", reason="control_flood")
        flood = Flood(kind, side.port, rate)
        started = time.monotonic()
        time.sleep(1.0)  # the flood is established, the kernel's buffers full
        cpu0, t0 = cpu_seconds(side.proc.proc.pid), time.monotonic()
        busy += probes(side.port, n // rounds)
        cpu += cpu_seconds(side.proc.proc.pid) - cpu0
        seconds += time.monotonic() - t0
        flood.stop()
        flooding += time.monotonic() - started
        read += metric(side.admin, "wsgi_channels_sidecar_received_bytes_total") - before_bytes
        closed += metric(side.admin, "wsgi_channels_sidecar_dropped_total", reason="control_flood") - before_closed
        connections += flood.connections
        settle(side.admin)
    return {"idle": idle, "flood": busy, "cpu": cpu / seconds, "read": read / flooding,
            "closed": closed, "connections": connections}


def binary_frame(size: int) -> bytes:
    """A masked client binary frame of ``size`` bytes (mask key 0)."""
    return struct.pack("!BBQ", 0x82, 0x80 | 127, size) + b"\x00\x00\x00\x00" + b"s" * size


def run_slow_readers(redis_url: str, workdir: str, flags: tuple, n: int, mb: int) -> dict:
    """``n`` sockets that never read, each sent ``mb`` 1 MB messages to echo back."""
    side = Sidecar(redis_url, workdir, *flags)
    pid = side.proc.proc.pid
    peak = {"rss": 0, "queued": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["rss"] = max(peak["rss"], rss_bytes(pid))
            peak["queued"] = max(peak["queued"], metric(side.admin, "wsgi_channels_sidecar_queued_bytes"))
            time.sleep(0.05)

    socks = []
    try:
        probes(side.port, 20)
        rss0 = rss_bytes(pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for _ in range(n):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", side.port))
            sock.sendall(handshake_request(side.port, "/slow"))
            read_head(sock)
            socks.append(sock)
        message = binary_frame(1_000_000)
        for _ in range(mb):
            for sock in socks:
                try:
                    sock.sendall(message)
                except OSError:
                    pass  # closed already
                time.sleep(0.005)  # the worker keeps up: websocket.receive never fills
        time.sleep(3.0)
        done.set()
        sampler.join()
        after = probes(side.port, 20)
        return {"rss0": rss0, "rss": peak["rss"], "queued": peak["queued"],
                "cap": metric(side.admin, "wsgi_channels_sidecar_dropped_total", reason="outgoing_cap"),
                "own": metric(side.admin, "wsgi_channels_sidecar_dropped_total", reason="slow_client"),
                "probe": percentile(after, 0.5)}
    finally:
        done.set()
        for sock in socks:
            sock.close()
        side.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=300, help="probes per measurement")
    parser.add_argument("--rate", type=int, default=1_000_000, help="flood bytes per second")
    parser.add_argument("--rounds", type=int, default=3, help="idle/flood alternations per scenario")
    parser.add_argument("--slow-readers", type=int, default=30, help="sockets that never read (0 = skip)")
    parser.add_argument("--slow-mb", type=int, default=8, help="MB of echo each slow reader asks for")
    args = parser.parse_args()
    import tempfile

    workdir = tempfile.mkdtemp(prefix="sidecar-flood-")
    redis = RedisServer().start()
    worker = ServerProcess(CLI + ["worker", "benchmarks.echo_routing:routing", "--layer", redis.url, "--threads", "4",
                                  "--log-level", "warning"], os.path.join(workdir, "worker.log"), env=ENV,
                           cwd=ROOT).start()
    time.sleep(1.5)  # the worker imports Flask
    configurations = [
        ("--http off, rate limit off", ("--http", "off", "--control-frame-rate", "0"),
         ["ping", "fragment", "pipelined"]),
        ("--http off, default rate limit (flooder reconnects)", ("--http", "off"), ["ping", "fragment"]),
        ("--http layer", ("--http", "layer"), ["pipelined"]),
    ]
    rows = []
    slow_configurations = [
        ("--max-outgoing-buffer 16 MiB, --max-outgoing-total 0 (no process bound)",
         ("--max-outgoing-buffer", str(16 << 20), "--max-outgoing-total", "0")),
        ("--max-outgoing-buffer 16 MiB, --max-outgoing-total 64 MiB",
         ("--max-outgoing-buffer", str(16 << 20), "--max-outgoing-total", str(64 << 20))),
        ("defaults (--max-outgoing-buffer 4 MiB, --max-outgoing-total 256 MiB)", ()),
    ]
    slow_rows = []
    try:
        if args.slow_readers:
            for title, flags in slow_configurations:
                slow_rows.append((title, run_slow_readers(redis.url, workdir, flags, args.slow_readers,
                                                          args.slow_mb)))
        for title, flags, kinds in configurations:
            side = Sidecar(redis.url, workdir, *flags)
            try:
                probes(side.port, 50)  # warm-up
                for kind in kinds:
                    rows.append((title, kind, run_scenario(side, kind, args.probes, args.rate, args.rounds)))
            finally:
                side.stop()
    finally:
        worker.stop()
        redis.stop()

    print(f"\nNew clients' handshake + one echo while one socket floods at ~{args.rate / 1e6:g} MB/s "
          f"({args.probes} probes each, in {args.rounds} idle/flood alternations; sidecar + Redis + 1 worker; "
          "2 shared cores, noisy)\n")
    print("| sidecar | flood | idle p50 / p99 (ms) | flooding p50 / p99 (ms) | ratio p50 / p99 | sidecar CPU "
          "| flood read by sidecar | flooder closed (1008) |")
    print("|---|---|---|---|---|---|---|---|")
    for title, kind, r in rows:
        i50, i99 = percentile(r["idle"], 0.5) * 1000, percentile(r["idle"], 0.99) * 1000
        f50, f99 = percentile(r["flood"], 0.5) * 1000, percentile(r["flood"], 0.99) * 1000
        print(f"| {title} | {kind} | {i50:.2f} / {i99:.2f} | {f50:.2f} / {f99:.2f} | {f50 / i50:.2f}x / "
              f"{f99 / i99:.2f}x | {100 * r['cpu']:.0f}% | {r['read'] / 1e6:.2f} MB/s "
              f"| {int(r['closed'])} |")
    if slow_rows:
        print(f"\n{args.slow_readers} sockets that never read, each asking for {args.slow_mb} MB of echo "
              "(loopback's kernel buffers hold about 3 MB per socket; the rest is queued in the sidecar)\n")
        print("| sidecar | RSS before / peak (MiB) | peak queued (MiB) | closed: process bound / own bound "
              "| new client's handshake+echo after (p50 ms) |")
        print("|---|---|---|---|---|")
        for title, r in slow_rows:
            print(f"| {title} | {r['rss0'] / 2**20:.0f} / {r['rss'] / 2**20:.0f} | {r['queued'] / 2**20:.0f} "
                  f"| {int(r['cap'])} / {int(r['own'])} | {1000 * r['probe']:.2f} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--flooder":
        flooder(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(main())
