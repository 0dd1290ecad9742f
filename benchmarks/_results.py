"""Benchmark results as JSON (``--json PATH``): the figures, and the machine and date they come from.

The benchmarks used for the documentation's performance page (``layer_throughput.py``,
``push_fanout.py``, ``sidecar_broadcast.py``, ``sidecar_http.py``) take ``--json PATH``
and write one file in this shape, beside the table they print (unchanged)::

    {"benchmark": "push_fanout", "command": "benchmarks/push_fanout.py --clients 20 ...",
     "date": "2026-12-07T10:31:02Z", "duration_s": 81.4,
     "machine": {"cpu": "...", "cores": 2, "memory_gib": 23.4, "os": "Linux-6.1...",
                 "python": "3.11.7", "redis": "7.0.15"},
     "versions": {"wsgi_channels": "0.1.0.dev0", "channels_redis": "4.3.0", ...},
     "results": {...}}

``results`` is the benchmark's own: its docstring says what each figure means.
``docs/_charts.py`` draws the page's charts from the files committed in ``docs/_data/``.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from typing import Any

_STARTED = time.monotonic()
_COMMAND = " ".join(["benchmarks/" + os.path.basename(sys.argv[0]), *sys.argv[1:]])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _redis_version() -> str | None:
    exe = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"v=(\S+)", out)
    return found.group(1) if found else None


def machine() -> dict[str, Any]:
    """What ran the benchmark: figures from another machine (or another load) are not comparable."""
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": _memory_gib(), "os": platform.platform(),
            "python": platform.python_version(), "redis": _redis_version()}


def versions(*names: str) -> dict[str, str | None]:
    """Installed versions of wsgi_channels and the named distributions (``redis`` is redis-py)."""
    found: dict[str, str | None] = {}
    for name in ("wsgi_channels", *names):
        try:
            version: str | None = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = None
        found["redis-py" if name == "redis" else name] = version
    return found


def _finite(value: Any) -> Any:
    """NaN and infinities (a percentile of nothing, a rate over no time) become null: JSON has neither."""
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        return float(f"{value:.6g}")  # six significant digits: more is noise on this machine
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write(path: str | None, benchmark: str, results: dict[str, Any], peers: tuple[str, ...] = ()) -> None:
    """Write ``results`` with the machine, date and command line to ``path`` (nothing when ``path`` is None)."""
    if not path:
        return
    document = {
        "benchmark": benchmark,
        "command": _COMMAND,
        "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "duration_s": round(time.monotonic() - _STARTED, 1),
        "machine": machine(),
        "versions": versions(*peers),
        "results": _finite(results),
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(document, fh, indent=1, sort_keys=False, allow_nan=False)
        fh.write("\n")
    print(f"results written to {path}", file=sys.stderr)
