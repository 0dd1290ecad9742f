"""Shared pieces of the sidecar benchmarks: a Redis + worker + sidecar stack, client processes, /proc readings."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

from servers import RedisServer, ServerProcess, free_port, wait_for_port  # noqa: E402

CLI = [sys.executable, "-m", "wsgi_channels"]
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> int:
    """Raise the open-files limit to the hard limit (inherited by the processes we start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Stack:
    """A throwaway redis-server, ``workers`` worker processes (echo routing) and one sidecar."""

    def __init__(self, workers: int = 1, threads: int = 4, sidecar_flags: tuple = (),
                 routing: str = "benchmarks.echo_routing:routing") -> None:
        self.dir = tempfile.mkdtemp(prefix="sidecar-bench-")
        self.redis = RedisServer()
        self.port = free_port()
        self.routing = routing
        self.workers_n = workers
        self.threads = threads
        self.sidecar_flags = list(sidecar_flags)
        self.workers: list[ServerProcess] = []
        self.sidecar: ServerProcess | None = None

    @property
    def url(self) -> str:
        return self.redis.url

    def start(self) -> "Stack":
        self.redis.start()
        for i in range(self.workers_n):
            self.workers.append(ServerProcess(
                CLI + ["worker", self.routing, "--layer", self.url, "--threads", str(self.threads),
                       "--log-level", "warning"],
                os.path.join(self.dir, f"worker{i}.log"), env=ENV, cwd=ROOT).start())
        self.sidecar = ServerProcess(
            CLI + ["sidecar", "--bind", f"127.0.0.1:{self.port}", "--layer", self.url, "--log-level", "warning",
                   *self.sidecar_flags],
            os.path.join(self.dir, "sidecar.log"), env=ENV, cwd=ROOT).start()
        wait_for_port(self.port, proc=self.sidecar.proc, log=self.sidecar.log_path)
        time.sleep(1.0)  # workers import Flask
        return self

    @property
    def sidecar_pid(self) -> int:
        assert self.sidecar and self.sidecar.proc
        return self.sidecar.proc.pid

    def stop(self) -> None:
        if self.sidecar:
            self.sidecar.stop()
        for w in self.workers:
            w.stop()
        self.redis.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Clients:
    """One ``_wsclients.py`` process holding ``count`` sockets."""

    def __init__(self, url: str, count: int, join: str = "", protocol: str = "ws", deflate: bool = False) -> None:
        args = [sys.executable, os.path.join(HERE, "_wsclients.py"), "--url", url, "--count", str(count),
                "--protocol", protocol]
        if join:
            args += ["--join", join]
        if deflate:
            args.append("--deflate")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                     env=ENV)

    def wait_ready(self, timeout: float = 600) -> tuple[int, int]:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("READY"):
            raise RuntimeError(f"clients failed: {line!r}")
        _, ok, failed = line.split()
        return int(ok), int(failed)

    def report(self) -> dict:
        self.proc.stdin.write("REPORT\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]

    def quit(self) -> None:
        try:
            self.proc.stdin.write("QUIT\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            self.proc.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(5)
