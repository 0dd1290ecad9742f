"""Real processes for the example and browser tests: gunicorn, the sidecar, workers, runserver.

Each is a :class:`servers.ServerProcess` on a free port with a log file and a
readiness wait; a process that dies before it listens fails the test with its log.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from servers import ServerProcess, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PY = sys.executable
BIN = Path(PY).parent


def env_for(layer: str | None = None, *paths: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.pop("WSGI_CHANNELS_LAYER", None)
    if layer:
        env["WSGI_CHANNELS_LAYER"] = layer
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in paths] + [env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Proc(ServerProcess):
    """A ServerProcess that knows its port and waits for it."""

    def __init__(self, args: list[str], log_path: Path, env: dict, cwd: Path | None = None,
                 port: int | None = None) -> None:
        super().__init__([str(a) for a in args], str(log_path), env=env, cwd=str(cwd) if cwd else None)
        self.port = port

    def start(self, wait: float = 20.0) -> "Proc":  # type: ignore[override]
        super().start()
        if self.port:
            wait_for_port(self.port, proc=self.proc, log=self.log_path, timeout=wait)
        return self

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the log of {self.args[:4]} after {timeout}s:\n{self.log()[-4000:]}")


def gunicorn(app: str, cwd: Path, env: dict, log_dir: Path, workers: int = 3) -> Proc:
    port = free_port()
    return Proc([BIN / "gunicorn", "-w", str(workers), "-k", "sync", "-b", f"127.0.0.1:{port}",
                 "--graceful-timeout", "3", "--access-logfile", "-", app],
                log_dir / f"gunicorn-{port}.log", env, cwd, port)


def sidecar(env: dict, log_dir: Path, port: int | None = None, *extra: str) -> Proc:
    port = port or free_port()
    return Proc([PY, "-m", "wsgi_channels", "sidecar", "--bind", f"127.0.0.1:{port}", "--grace-period", "1",
                 "--access-log", "-", *extra], log_dir / f"sidecar-{port}-{time.monotonic_ns()}.log", env, None, port)


def worker(routing: str, cwd: Path, env: dict, log_dir: Path, threads: int = 4) -> Proc:
    proc = Proc([PY, "-m", "wsgi_channels", "worker", routing, "--threads", str(threads), "--grace", "2"],
                log_dir / f"worker-{time.monotonic_ns()}.log", env, cwd)
    return proc


def runserver(script: Path, log_dir: Path, env: dict) -> Proc:
    """``python examples/.../x.py --bind`` (the example's own ``main()``, which runs ``runserver``)."""
    port = free_port()
    return Proc([PY, script, "--bind", f"127.0.0.1:{port}"], log_dir / f"{script.stem}-{port}.log", env,
                script.parent, port)


def stop_all(procs: list) -> None:
    for p in reversed(procs):
        try:
            p.stop(signal.SIGTERM, timeout=10)
        except Exception:  # keep stopping the others
            p.kill()


def run(args: list, cwd: Path, env: dict, timeout: float = 60) -> str:
    proc = subprocess.run([str(a) for a in args], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr
