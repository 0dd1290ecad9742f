"""``history_presence.py storm``: kill -9 a sidecar holding resuming sockets, start it again, count.

One worker (``tests/resume_app.py``: a socket on ``/ws/<group>`` joins ``group``), one sidecar,
``--client-procs`` processes of ``_resume_clients.py`` holding ``--sockets`` opted-in clients in
group ``storm.<n>`` (a ``group_history`` pattern of ``history_presence.FEATURES``: 5,000 kept
messages, 600 s), a publisher thread in this process sending ``--rate`` messages/s
(``{"s": n, "t": time}``) on its own schedule. Then: SIGKILL the sidecar, ``--down`` s later
start a new one on the same port; the moment it accepts a TCP connection again is ``t_listen``.
The publisher goes on for ``--after`` s, stops; each client reports when it has the last offset
(or after a timeout). ``STORM_SIDECAR_LOG=info`` runs the sidecars at that log level, and
``WSGI_CHANNELS_SIDECAR_PROFILE=FILE`` has the new one write a cProfile to FILE and log its
connections by state every second (the killed one never writes).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, "tests")

from servers import ServerProcess, free_port, wait_for_port  # noqa: E402
from wsgi_channels.layers import from_url  # noqa: E402
from wsgi_channels.layers.names import new_process_prefix  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _env(url: str) -> dict:
    env = dict(os.environ)
    env["WSGI_CHANNELS_LAYER"] = url
    env["PYTHONPATH"] = os.pathsep.join([TESTS, ROOT, env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _sidecar(env: dict, port: int, tmp: str, n: int) -> ServerProcess:
    return ServerProcess([sys.executable, "-m", "wsgi_channels", "sidecar", "--bind", f"127.0.0.1:{port}",
                          "--ping-interval", "0", "--connect-timeout", "10",
                          "--log-level", os.environ.get("STORM_SIDECAR_LOG", "warning")],
                         os.path.join(tmp, f"sidecar{n}.log"), env=env, cwd=ROOT)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class Publisher(threading.Thread):
    def __init__(self, url: str, group: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.layer = from_url(url)
        self.group, self.rate = group, rate
        self.stop = threading.Event()
        self.sent = 0
        self.errors: dict = {}
        self.late = 0  # sends that started more than one period after their slot

    def run(self) -> None:
        period = 1.0 / self.rate
        start = time.monotonic()
        while not self.stop.is_set():
            slot = start + self.sent * period
            delay = slot - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:
                self.late += 1
            try:
                self.layer.send_group(self.group, {"text": json.dumps({"s": self.sent, "t": time.time()})})
            except Exception as e:  # counted and shown: the run goes on
                key = f"{type(e).__name__}: {e}"[:80]
                self.errors[key] = self.errors.get(key, 0) + 1
            self.sent += 1


def run_storm(url: str, tmp: str, sockets: int, rate: float, resume: bool, args) -> dict:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    env = _env(url)
    port = free_port()
    group = f"storm.{new_process_prefix('x')[2:-1]}"
    worker = ServerProcess([sys.executable, "-m", "wsgi_channels", "worker", "resume_app:routing", "--threads", "8",
                            "--log-level", "warning"], os.path.join(tmp, "worker.log"), env=env, cwd=TESTS).start()
    sidecar = _sidecar(env, port, tmp, 1).start()
    wait_for_port(port, proc=sidecar.proc, log=sidecar.log_path)
    clients: list[subprocess.Popen] = []
    publisher = None
    try:
        per = [sockets // args.client_procs + (1 if i < sockets % args.client_procs else 0)
               for i in range(args.client_procs)]
        t0 = time.monotonic()
        for n in per:
            clients.append(subprocess.Popen(
                [sys.executable, os.path.join(HERE, "_resume_clients.py"), "--port", str(port), "--group", group,
                 "--count", str(n)] + ([] if resume else ["--no-resume"]),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=HERE, env=env))
        connected = 0
        for c in clients:
            line = c.stdout.readline()  # type: ignore[union-attr]
            if not line.startswith("READY"):
                raise RuntimeError(f"clients failed: {line!r}")
            connected += int(line.split()[1])
        setup = time.monotonic() - t0
        print(f"\nStorm ({url.split('://')[0]}{'' if resume else ', baseline: reconnect WITHOUT positions'}): "
              f"{connected:,} of {sockets:,} sockets connected in {setup:.1f} s; publishing {rate:g} msg/s to {group}")
        publisher = Publisher(url, group, rate)
        publisher.start()
        time.sleep(3.0)  # every client has messages, so a position
        sidecar.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        sidecar.proc.wait()  # type: ignore[union-attr]
        killed = time.time()
        time.sleep(args.down)
        sidecar2 = _sidecar(env, port, tmp, 2).start()
        while not _listening(port):
            if sidecar2.proc.poll() is not None:  # type: ignore[union-attr]
                raise RuntimeError(f"the new sidecar died: {open(sidecar2.log_path).read()[-3000:]}")
            time.sleep(0.005)
        t_listen = time.time()
        sidecar = sidecar2
        cpu_before = {"worker": cpu_seconds(worker.proc.pid),  # type: ignore[union-attr]
                      "clients": sum(cpu_seconds(c.pid) for c in clients)}
        time.sleep(args.after)
        publisher.stop.set()
        publisher.join(10)
        top = publisher.layer.group_position(group)[1]
        summaries: list = []
        for c in clients:
            c.stdin.write(f"REPORT {t_listen} {top} 60\n")  # type: ignore[union-attr]
            c.stdin.flush()  # type: ignore[union-attr]
        for c in clients:
            summaries += json.loads(c.stdout.readline())  # type: ignore[union-attr]
        cpu = {"sidecar (new)": cpu_seconds(sidecar.proc.pid), "worker": cpu_seconds(worker.proc.pid),  # type: ignore
               "clients": sum(cpu_seconds(c.pid) for c in clients)}
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu.items()}
    finally:
        for c in clients:
            try:
                c.stdin.write("QUIT\n")  # type: ignore[union-attr]
                c.stdin.flush()  # type: ignore[union-attr]
                c.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                c.kill()
        if publisher is not None:
            publisher.stop.set()
            publisher.layer.close()
        sidecar.stop()
        worker.stop()
    res = report(summaries, sockets, rate, args, publisher, top, t_listen - killed, connected)
    res["resume"] = resume
    res["cpu_s_after_listening"] = cpu
    print("CPU seconds from listening again to the report: "
          + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()) + f" (wall {args.after:g} s + the wait)")
    return res


def report(summaries: list, sockets: int, rate: float, args, publisher, top: int, dead_s: float,
           connected: int) -> dict:
    caught = [s["caught_up_s"] for s in summaries if s["caught_up_s"] is not None]
    recon = [s["reconnect_s"] for s in summaries if s["reconnect_s"] is not None]
    recov = [s["recovered_s"] for s in summaries if s["recovered_s"] is not None]
    complete = [s for s in summaries if s["last"] == top]
    expected = sum(s["last"] - s["first"] + 1 for s in summaries if s["first"] is not None)
    res = {
        "sockets": sockets, "connected": connected, "rate": rate, "down_s": args.down, "after_s": args.after,
        "client_procs": args.client_procs, "dead_s": dead_s, "published": publisher.sent, "top": top,
        "publisher_late": publisher.late, "publisher_errors": publisher.errors,
        "reconnected": len(recon), "recovered_frames": sum(s["recovered"] for s in summaries),
        "caught_up": len(caught), "complete": len(complete),
        "received": sum(s["received"] for s in summaries), "expected": expected,
        "replayed": sum(s["replayed"] for s in summaries),
        "dups": sum(s["dups"] for s in summaries), "gaps": sum(s["gaps"] for s in summaries),
        "gap_frames": sum(s["gap_frames"] for s in summaries),
        "silent_gaps": sum(s.get("silent_gaps", 0) for s in summaries),
        "epoch_changes": sum(s["epoch_changes"] for s in summaries),
        "reconnect_p50_s": pct(recon, 0.5), "reconnect_p99_s": pct(recon, 0.99),
        "recovered_p50_s": pct(recov, 0.5), "recovered_p99_s": pct(recov, 0.99),
        "caught_up_p50_s": pct(caught, 0.5), "caught_up_p99_s": pct(caught, 0.99),
        "caught_up_max_s": max(caught) if caught else None,
        "within_10s": sum(1 for c in caught if c <= 10.0),
    }
    failures: dict = {}
    for s in summaries:
        for k, v in s["failures"].items():
            failures[k] = failures.get(k, 0) + v
    res["handshake_failures"] = {k: v for k, v in failures.items() if not k.startswith("gap:")}
    res["gap_reasons"] = {k[4:]: v for k, v in failures.items() if k.startswith("gap:")}
    print(f"sidecar dead {dead_s:.2f} s (SIGKILL to listening again); {publisher.sent:,} published "
          f"(top offset {top:,}), {publisher.late} sends late, errors {publisher.errors or 'none'}")
    print(f"{'sockets':>8} {'msg/s':>6} {'reconnected':>12} {'recovered':>10} {'caught up':>10} {'<=10 s':>7} "
          f"{'complete':>9} {'dups':>5} {'gaps':>5} {'silent':>6} {'gap frames':>11}")
    print(f"{connected:>8,} {rate:>6g} {len(recon):>12,} {res['recovered_frames']:>10,} {len(caught):>10,} "
          f"{res['within_10s']:>7,} {len(complete):>9,} {res['dups']:>5} {res['gaps']:>5} {res['silent_gaps']:>6} "
          f"{res['gap_frames']:>11}")
    print(f"{'from listening again to':<32} {'p50 s':>7} {'p99 s':>7} {'max s':>7}")
    for label, values in (("reconnected (101)", recon), ("'recovered' frame", recov), ("caught up", caught)):
        print(f"{label:<32} {pct(values, 0.5):>7.2f} {pct(values, 0.99):>7.2f} "
              f"{(max(values) if values else float('nan')):>7.2f}")
    print(f"messages received {res['received']:,} of {expected:,} expected (each client: first to last offset), "
          f"{res['replayed']:,} of them replayed from history; "
          f"handshake failures while down/reconnecting: {res['handshake_failures'] or 'none'}; "
          f"gap frames by reason: {res['gap_reasons'] or 'none'}")
    return res
