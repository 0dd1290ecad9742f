"""RFC 6455 conformance of the sidecar, as the Autobahn testsuite's fuzzing client measures it.

Starts a real layer (a throwaway ``redis-server`` when the Redis layer is
installed, else the single-machine ``ipc://`` layer), a real worker running the
echo consumer of ``benchmarks/echo_routing.py`` and a real sidecar, then runs
``wstest -m fuzzingclient`` against it and prints, per section, how many cases
came out OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED and FAILED.

``autobahntestsuite`` runs under Python 2.7 only: the script makes a Python 2.7
virtualenv for it (``--py2`` names the interpreter; default ``~/.pyenv/versions/2.7.18/bin/python``)
on first use and reuses it afterwards.

    python benchmarks/autobahn.py            # sections 1-10
    python benchmarks/autobahn.py --full     # and, with compression, 12 and 13 (slow)
    python benchmarks/autobahn.py --cases 5.* 6.4.*

Exit status 0 when every case ran is OK, NON-STRICT or INFORMATIONAL.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

from servers import RedisServer, ServerProcess, free_port, wait_for_port  # noqa: E402

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
FAST_CASES = [f"{n}.*" for n in range(1, 11)]
SLOW_CASES = ["12.*", "13.*"]
DEFAULT_PY2 = os.path.expanduser("~/.pyenv/versions/2.7.18/bin/python")
DEFAULT_VENV = os.path.join(tempfile.gettempdir(), "wsgi-channels-autobahn-py27")
#: Section 9 sends messages of up to 16 MiB: the layer and the sidecar must carry them.
BIG = 20 * 1024 * 1024


def ensure_wstest(py2: str, venv: str) -> str:
    """Path of ``wstest`` inside a Python 2.7 virtualenv holding ``autobahntestsuite``."""
    wstest = os.path.join(venv, "bin", "wstest")
    if os.path.exists(wstest):
        return wstest
    if not os.path.exists(py2):
        sys.exit(f"Python 2.7 not found at {py2}: autobahntestsuite needs it (pass --py2)")
    print(f"creating a Python 2.7 virtualenv in {venv} for autobahntestsuite ...", flush=True)
    if subprocess.call([py2, "-m", "virtualenv", "--version"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL) != 0:
        subprocess.check_call([py2, "-m", "pip", "install", "-q", "--user", "virtualenv<20.22"])
    subprocess.check_call([py2, "-m", "virtualenv", "-q", venv])
    subprocess.check_call([os.path.join(venv, "bin", "pip"), "install", "-q", "autobahntestsuite"])
    return wstest


def layer_url(workdir: str) -> tuple[str, RedisServer | None]:
    try:
        import wsgi_channels.layers.redis  # noqa: F401
    except ImportError:
        return f"ipc://{workdir}/autobahn.db?max_message_size={BIG}", None
    redis = RedisServer().start()
    return f"{redis.url}?max_message_size={BIG}", redis


def summarize(index_path: str, agent: str) -> tuple[dict, list]:
    with open(index_path) as fh:
        results = json.load(fh)[agent]
    per_section: dict = defaultdict(Counter)
    bad = []
    for case, result in results.items():
        section = case.split(".")[0]
        behavior = result["behavior"]
        close = result.get("behaviorClose", "OK")
        # A case passes when both its data and its closing behaviour pass.
        outcome = behavior if close in PASSING or behavior not in PASSING else "FAILED"
        per_section[section][outcome] += 1
        if outcome not in PASSING:
            bad.append((case, behavior, close))
    return per_section, sorted(bad, key=lambda b: [int(x) for x in b[0].split(".")])


def print_table(per_section: dict) -> None:
    columns = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
    print(f"{'section':>8} " + " ".join(f"{c:>14}" for c in columns) + f" {'total':>6}")
    totals: Counter = Counter()
    for section in sorted(per_section, key=int):
        counts = per_section[section]
        totals.update(counts)
        print(f"{section:>8} " + " ".join(f"{counts.get(c, 0):>14}" for c in columns)
              + f" {sum(counts.values()):>6}")
    print(f"{'all':>8} " + " ".join(f"{totals.get(c, 0):>14}" for c in columns) + f" {sum(totals.values()):>6}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="also run sections 12 and 13 (compression; slow)")
    parser.add_argument("--cases", nargs="*", help="case globs to run instead (e.g. 1.* 9.1.*)")
    parser.add_argument("--py2", default=DEFAULT_PY2, help="Python 2.7 interpreter for autobahntestsuite")
    parser.add_argument("--venv", default=DEFAULT_VENV, help="where to keep the Python 2.7 virtualenv")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before the run is abandoned")
    parser.add_argument("--keep", action="store_true", help="keep the report directory")
    args = parser.parse_args(argv)

    wstest = ensure_wstest(args.py2, args.venv)
    cases = args.cases or (FAST_CASES + (SLOW_CASES if args.full else []))
    workdir = tempfile.mkdtemp(prefix="autobahn-")
    url, redis = layer_url(workdir)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cli = [sys.executable, "-m", "wsgi_channels"]
    worker = ServerProcess(cli + ["worker", "benchmarks.echo_routing:routing", "--layer", url, "--threads", "4"],
                           os.path.join(workdir, "worker.log"), env=env, cwd=ROOT).start()
    sidecar = ServerProcess(cli + ["sidecar", "--bind", f"127.0.0.1:{port}", "--layer", url,
                                   "--max-message-size", str(BIG - 65536), "--max-outgoing-buffer", str(2 * BIG),
                                   "--log-level", os.environ.get("SIDECAR_LOG_LEVEL", "warning")],
                            os.path.join(workdir, "sidecar.log"), env=env, cwd=ROOT).start()
    agent = "wsgi_channels"
    try:
        wait_for_port(port, proc=sidecar.proc, log=sidecar.log_path)
        spec = {"outdir": os.path.join(workdir, "report"), "servers": [{"agent": agent,
                                                                        "url": f"ws://127.0.0.1:{port}"}],
                "cases": cases, "exclude-cases": [], "exclude-agent-cases": {}}
        spec_path = os.path.join(workdir, "fuzzingclient.json")
        with open(spec_path, "w") as fh:
            json.dump(spec, fh)
        print(f"layer {url.split('?')[0]}; sidecar on {port}; cases {' '.join(cases)}", flush=True)
        started = time.monotonic()
        with open(os.path.join(workdir, "wstest.log"), "wb") as log:
            code = subprocess.call([wstest, "-m", "fuzzingclient", "-s", spec_path], cwd=workdir,
                                   stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout)
        elapsed = time.monotonic() - started
        index = os.path.join(workdir, "report", "index.json")
        if not os.path.exists(index):
            print(open(os.path.join(workdir, "wstest.log"), errors="replace").read()[-3000:])
            print(f"wstest exited with {code} and wrote no report", file=sys.stderr)
            return 1
        per_section, bad = summarize(index, agent)
        print(f"\nAutobahn fuzzingclient against the sidecar ({elapsed:.0f}s):")
        print_table(per_section)
        for case, behavior, close in bad:
            print(f"  case {case}: behavior {behavior}, close {close}")
        if args.keep:
            print(f"report: {os.path.join(workdir, 'report', 'index.html')}")
        return 1 if bad else 0
    finally:
        sidecar.stop()
        worker.stop()
        if redis is not None:
            redis.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
