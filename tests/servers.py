"""Real server processes for tests: free ports, log files, readiness waits.

``RedisServer`` runs a real ``redis-server`` (found on PATH or in
``/usr/bin``/``/usr/sbin``) on a free loopback port, with no persistence. It can
be stopped (SIGTERM or SIGKILL) and started again on the same port for restart
tests. A missing ``redis-server`` fails loudly: it is never a skip.

``find_redis6_server`` gives a Redis 6.0 binary for the contract suite's
``redis6`` backend: ``.ci/fetch-redis6`` unpacks Debian 11's package into
``.ci/cache/`` the first time (no root needed); if that fails the tests fail.
"""
from __future__ import annotations

import collections
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["free_port", "wait_for_port", "RedisServer", "find_redis_server", "find_redis6_server", "ServerProcess"]


#: Ports :func:`free_port` draws from: below Redis Cluster nodes' ports and bus ports (10000-32767,
#: tests/redis_topology.py) and below the kernel's ephemeral range (32768+). A port the kernel
#: hands out (``bind(0)``) is an ephemeral one, so a client socket opened anywhere on the machine
#: between the check and the server's own bind could take it as its local port ("Address already
#: in use"); these never are. Each pytest-xdist process draws from its own half.
_PORTS = (2000, 9999)
_handed_out: "collections.deque[int]" = collections.deque(maxlen=1000)


def _port_range() -> tuple[int, int]:
    lo, hi = _PORTS
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and count > 1:
        share = (hi - lo + 1) // count
        lo += int(worker[2:]) % count * share
        hi = lo + share - 1
    return lo, hi


def free_port() -> int:
    """A loopback port nothing listens on now, outside the ephemeral range (see :data:`_PORTS`)."""
    lo, hi = _port_range()
    for _ in range(2000):
        port = random.randint(lo, hi)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.append(port)
        return port
    raise RuntimeError(f"no free port found in {lo}-{hi}")


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0, proc=None, log=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}"
                               + (f"; log:\n{Path(log).read_text(errors='replace')[-4000:]}" if log else ""))
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s"
                       + (f"; log:\n{Path(log).read_text(errors='replace')[-4000:]}" if log else ""))


def find_redis_server() -> str:
    path = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server")
         if os.path.exists(p)), None)
    if not path:
        raise RuntimeError(
            "redis-server is not installed: run `bash .ci/run` (it installs Debian's redis-server) "
            "or `apt-get install redis-server`"
        )
    return path


_FETCH_REDIS6 = Path(__file__).resolve().parent.parent / ".ci" / "fetch-redis6"


def find_redis6_server() -> str:
    """Path of a Redis 6.0 ``redis-server``: ``$WSGI_CHANNELS_REDIS6``, else fetched by ``.ci/fetch-redis6``."""
    path = os.environ.get("WSGI_CHANNELS_REDIS6")
    if path:
        return path
    done = subprocess.run(["bash", str(_FETCH_REDIS6)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"could not fetch Redis 6 with {_FETCH_REDIS6} (exit {done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


class ServerProcess:
    """A subprocess with a log file, stopped politely then firmly."""

    def __init__(self, args: list[str], log_path: str, env: dict | None = None, cwd: str | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.cwd, start_new_session=True)
        log.close()
        return self

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def send_signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RedisServer(ServerProcess):
    """A throwaway ``redis-server`` on a free port; ``url`` is its ``redis://`` URL."""

    def __init__(self, port: int | None = None, password: str | None = None,
                 extra_args: list[str] | None = None, workdir: str | None = None,
                 binary: str | None = None) -> None:
        self.port = port or free_port()
        self.password = password
        self.dir = workdir or tempfile.mkdtemp(prefix=f"redis-{self.port}-")
        args = [binary or find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.dir, "--daemonize", "no"]
        if password:
            args += ["--requirepass", password]
        args += extra_args or []
        super().__init__(args, os.path.join(self.dir, "redis.log"))

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        super().start()
        wait_for_port(self.port, proc=self.proc, log=self.log_path)
        return self

    def restart(self, down_for: float = 0.0, sig: int = signal.SIGKILL) -> None:
        self.stop(sig)
        if down_for:
            time.sleep(down_for)
        self.start()
