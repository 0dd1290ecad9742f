"""Break things on purpose and write down what held: ``docs/reliability.md``.

Reruns every scenario of the reliability suite (``tests/test_faults_*.py``,
``tests/test_churn.py``, ``tests/test_bad_input*.py``, ``tests/test_security.py``, the
atheris harness) with larger sizes, on real processes, and writes one table: each
scenario with its figure (recovery seconds, messages lost, leaks measured, inputs
tried, crashes).

    python benchmarks/reliability.py                 # full sizes, 2-minute soak
    python benchmarks/reliability.py --soak          # plus the 30-minute soak
    python benchmarks/reliability.py --quick         # CI-sized, for a smoke run
    python benchmarks/reliability.py --out docs/reliability.md

Needs ``redis-server`` (started on free ports; the machine's 6379 is never touched),
gunicorn, chromium is not needed. Figures depend on the machine: timings on a busy
2-core box are noisy, the pass/fail columns are not.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))

import faultkit as fk  # noqa: E402
from servers import RedisServer  # noqa: E402


def _tmp(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"reliability-{name}-"))


def redis_restart(args) -> dict:
    from test_faults_redis import run_redis_restart

    r = run_redis_restart(_tmp("restart"), empty=False, after=args.restart_after, rate=args.rate, clients=5)
    ok = r["processes_alive"] and r["lost_after_recovery"] == 0 and r["duplicates"] == 0 and r["recovery_s"] is not None
    return {"scenario": "Redis restarted (data kept) under steady pushes",
            "size": f"{r['pushes']} pushes at {args.rate:g}/s to 5 WebSockets; Redis down {r['outage_s']:.1f} s",
            "figure": f"recovery {r['recovery_s']:.2f} s after Redis was back; {r['refused']} pushes refused (503) "
                      f"while down; lost in gap {r['lost_in_gap']}; lost after recovery {r['lost_after_recovery']}; "
                      f"duplicates {r['duplicates']}; process restarts 0",
            "ok": ok}


def redis_empty(args) -> dict:
    from test_faults_redis import run_redis_restart

    r = run_redis_restart(_tmp("empty"), empty=True, after=args.restart_after, rate=args.rate, clients=5)
    closes = sum(c.count(1012) for c in r["closes"])
    ok = (r["processes_alive"] and closes >= 5 and r["lost_after_recovery"] == 0 and r["final_members"] == 5
          and r["recovery_s"] is not None)
    rec = "never" if r["recovery_s"] is None else f"{r['recovery_s']:.2f} s"
    return {"scenario": "Redis came back EMPTY (memberships lost)",
            "size": f"{r['pushes']} pushes at {args.rate:g}/s to 5 reconnecting WebSockets",
            "figure": f"{closes}/5 sockets closed with 1012, all rejoined; recovery {rec}; lost in gap "
                      f"{r['lost_in_gap']}; lost after recovery {r['lost_after_recovery']}",
            "ok": ok}


def _on_fresh_redis(run, *args, **kwargs) -> dict:
    """``run(url, *args, **kwargs)`` against a redis-server of its own, stopped afterwards."""
    server = RedisServer().start()
    try:
        return run(server.url, *args, **kwargs)
    finally:
        server.stop()


def shard_down(args) -> dict:
    from test_faults_redis import run_shard_down

    r = run_shard_down(_tmp("shard"), down=args.shard_down)
    ok = r["flowing"] == r["others"] and len(r["errors"]) == r["affected"] and r["after"] == r["names"]
    return {"scenario": "One of three Redis shards stopped",
            "size": f"{r['names']} channels, {r['affected']} on the stopped shard, down {args.shard_down:g} s",
            "figure": f"healthy shards {r['flowing']}/{r['others']} flowing; {len(r['errors'])}/{r['affected']} "
                      f"affected sends failed with LayerUnavailable naming the shard; recovered "
                      f"{r['recovery_s']:.2f} s after it returned; {r['after']}/{r['names']} flowing after",
            "ok": ok}


def worker_kill(args) -> dict:
    from test_faults_processes import HTTP_TIMEOUT, run_worker_kill

    r = _on_fresh_redis(run_worker_kill, _tmp("kill"))
    ok = r["status"] == 504 and r["next_status"] == 200 and r["next_pid"] in r["survivor_pids"]
    return {"scenario": "Worker SIGKILLed mid-request",
            "size": f"HTTP timeout {HTTP_TIMEOUT:g} s, 2 workers",
            "figure": f"client got {r['status']} after {r['seconds']:.2f} s; next request {r['next_status']} from "
                      f"the other worker",
            "ok": ok}


def worker_time_limit(args) -> dict:
    from test_faults_time_limit import run_stuck_http

    limit = 3.0
    r = _on_fresh_redis(run_stuck_http, _tmp("time-limit"), threads=8, stuck=12, sleep=25.0, limit=limit, watch=9.0)
    slow = sorted(t for s, t, _ in r["slow"] if s == 504)
    hello = [t for s, t, _ in r["hello"] if s == 200]
    stacks = r["log"].count("past the time limit")
    ok = len(slow) == 12 and len(hello) == len(r["hello"]) > 0 and stacks == 12 and r["worker_alive"]
    return {"scenario": "Consumers stuck past the worker's time limit",
            "size": f"12 x /sleep?s=25 through the sidecar on an 8-thread worker, --time-limit {limit:g}; "
                    "/hello asked every 0.2 s for 9 s",
            "figure": f"{len(slow)}/12 got 504 from the worker, after {slow[0]:.1f}-{slow[7]:.1f} s (the 8 running) "
                      f"and {slow[8]:.1f}-{slow[-1]:.1f} s (the 4 queued behind them); /hello {len(hello)}/"
                      f"{len(r['hello'])} answered 200, slowest {max(hello):.1f} s; {stacks} stuck stacks logged; "
                      f"{int(r['metrics'].get('wsgi_channels_worker_abandoned_threads', -1))} threads abandoned and "
                      "replaced, worker never restarted" if len(slow) == 12 and hello else
                      f"{len(slow)}/12 got 504; /hello {len(hello)}/{len(r['hello'])} answered",
            "ok": ok}


def sidecar_sigterm(args) -> dict:
    from test_faults_processes import run_sidecar_sigterm

    r = _on_fresh_redis(run_sidecar_sigterm, _tmp("sigterm"), clients=args.sigterm_clients)
    codes = [o[0] for o in r["outcomes"]]
    disconnects = len({ch for ch, _ in r["disconnects"]})
    ok = (codes == [1001] * r["clients"] and r["read"] == r["written"] and disconnects == r["clients"]
          and len(r["disconnects"]) == r["clients"] and r["exit_code"] == 0)
    return {"scenario": "Sidecar SIGTERM under load",
            "size": f"{r['clients']} clients sending {min(20.0, 400 / r['clients']):g} frames/s each, receiving "
                    f"floods",
            "figure": f"{codes.count(1001)}/{r['clients']} saw 1001; frames written {r['written']}, read "
                      f"{r['read']} (lost {r['written'] - r['read'] if r['written'] is not None else '?'}); "
                      f"disconnect messages {len(r['disconnects'])} for {disconnects} connections; exit {r['exit_code']}",
            "ok": ok}


def slow_clients(args) -> dict:
    from test_faults_processes import run_slow_clients

    r = _on_fresh_redis(run_slow_clients, _tmp("slow"), slow=args.slow_clients, stalled=args.stalled)
    grown = (r["rss_peak_kb"] - r["rss_before_kb"]) / 1024
    ok = r["alive"] and r["slow_closed"] >= args.slow_clients and r["dead_closed"] >= 1
    return {"scenario": "Slow and stalled clients",
            "size": f"{args.slow_clients} readers that never read ({r['flooded_mb']} MiB pushed at them), "
                    f"1 WebSocket that never answers pings, {args.stalled} half-sent request heads",
            "figure": f"all closed in {r['closed_in_s']:.1f} s; sidecar RSS peak +{grown:.1f} MiB "
                      f"(buffer limit 1 MiB per client); still serving",
            "ok": ok}


def churn(args) -> dict:
    from test_churn import run_churn

    r = _on_fresh_redis(run_churn, _tmp("churn"), args.churn, warmup=min(5000, max(1000, args.churn // 10)))
    b, a, o = r["before"], r["after"], r["outcome"]
    ok = (o.get("ok") == args.churn and a["members"] == 0 and a["redis_keys"] == b["redis_keys"]
          and a["fds_not_redis"] <= b["fds_not_redis"] and a["greenlets"] <= b["greenlets"]
          and a["open_ws"] == 0 and a["open_http"] == 0)
    return {"scenario": "Connect/disconnect churn",
            "size": f"{args.churn:,} handshake+close cycles, 50 at a time ({args.churn / o['seconds']:.0f} cycles/s)",
            "figure": f"fds {b['fds_not_redis']}->{a['fds_not_redis']} (+{a['redis_connections']} pooled Redis "
                      f"connections); greenlets {b['greenlets']:.0f}->{a['greenlets']:.0f}; RSS "
                      f"{b['rss_kb'] / 1024:.1f}->{a['rss_kb'] / 1024:.1f} MiB; group members {a['members']}; "
                      f"Redis keys {b['redis_keys']}->{a['redis_keys']}; failed cycles {args.churn - o.get('ok', 0)}",
            "ok": ok}


def soak(args) -> dict:
    from test_faults_redis import Listener, Pusher, members

    seconds = args.soak_minutes * 60
    server = RedisServer().start()
    samples = []
    try:
        with fk.Stack(server.url, _tmp("soak"), gunicorn_workers=2, threads=4) as st:
            listeners = [Listener(st.port, "soak") for _ in range(10)]
            for li in listeners:
                li.start()
            for li in listeners:
                li.ready.wait(15)
            fk.wait_until(lambda: members(server.url, "soak") == 10, 15)
            pusher = Pusher(st.web.port, "soak", args.rate)
            pusher.start()
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                time.sleep(min(10.0, seconds / 6))
                samples.append((time.monotonic() - t0, fk.rss_kb(st.sidecar.proc.pid), fk.redis_keys(server.url)))
            pusher.stop()
            time.sleep(1.0)
            for li in listeners:
                li.stop()
            acked = {seq for seq, _, status in pusher.results if status == 200}
            got = [{seq for seq, _ in li.got} for li in listeners]
            lost = sum(len(acked - g) for g in got)
            alive = all(p.running for p in st.procs)
    finally:
        server.stop()
    rss = [s[1] for s in samples]
    keys = [s[2] for s in samples]
    first_half = rss[: max(1, len(rss) // 2)]
    ok = alive and lost == 0 and max(rss) - min(first_half) < 20 * 1024
    return {"scenario": f"Soak ({args.soak_minutes:g} min)",
            "size": f"{len(pusher.results)} pushes at {args.rate:g}/s to 10 WebSockets "
                    f"({len(pusher.results) * 10} deliveries)",
            "figure": f"sidecar RSS {rss[0] / 1024:.1f} -> {rss[-1] / 1024:.1f} MiB (max {max(rss) / 1024:.1f}); "
                      f"Redis keys {keys[0]} -> {keys[-1]} (max {max(keys)}); lost {lost}",
            "ok": ok}


def _pytest(paths: list[str], extra: list[str] | None = None) -> tuple[int, int, int, str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths, *(extra or [])],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, PYTHONPATH=str(TESTS)))
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    count = lambda word: int(m.group(1)) if (m := re.search(rf"(\d+) {word}", tail)) else 0  # noqa: E731
    return count("passed"), count("failed") + count("error"), count("xfailed"), tail


def bad_input(args) -> dict:
    passed, failed, xfailed, tail = _pytest(["tests/test_bad_input_protocol.py", "tests/test_bad_input_messages.py"],
                                            ["--hypothesis-seed=0"])
    return {"scenario": "Bad input (wire and application messages, property tests)",
            "size": f"{passed + failed + xfailed} cases: malformed HTTP, handshakes, header floods, slow drip, "
                    f"invalid UTF-8, oversized/fragmented frames, bad close codes, bad names, non-serialisable "
                    f"and oversized messages, malformed replies; 400 examples per property",
            "figure": f"{passed} held with the documented status/close code; {failed} failed; {xfailed} known "
                      f"defects; sidecar crashes 0" if not failed else tail,
            "ok": failed == 0}


def security(args) -> dict:
    passed, failed, xfailed, tail = _pytest(["tests/test_security.py"])
    return {"scenario": "Security",
            "size": "CSWSH and allow-lists, reply-channel entropy, client steering, proxy headers, "
                    "leaks, Redis password and TLS, encryption with key rotation",
            "figure": f"{passed} checks held; {failed} failed; {xfailed} known gaps (xfail)",
            "ok": failed == 0}


def fuzzing(args) -> dict:
    from test_fuzz import run_fuzzer

    r = run_fuzzer(_tmp("fuzz"), runs=10 ** 9, seconds=args.fuzz_seconds, seed=int(time.time()) % 100000)
    return {"scenario": "Coverage-guided fuzzing (atheris) of the HTTP/WebSocket input path",
            "size": f"{args.fuzz_seconds} s",
            "figure": f"{r['runs']:,} inputs tried; crashes {len(r['artifacts']) if r['crashed'] else 0}",
            "ok": not r["crashed"]}


SCENARIOS = [redis_restart, redis_empty, shard_down, worker_kill, worker_time_limit, sidecar_sigterm, slow_clients,
             churn, soak, bad_input, security, fuzzing]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _row(r: dict) -> str:
    return f"| {_cell(r['scenario'])} | {_cell(r['size'])} | {_cell(r['figure'])} | {'yes' if r['ok'] else '**NO**'} |"


def _title_key(title: str) -> str:
    """A row's title without its size in parentheses: "Soak (18 min)" and "Soak (30 min)" are one row."""
    return re.sub(r"\s*\([^)]*\)$", "", title)


def merge_rows(rows: list[dict], path: Path) -> list:
    """``--only``: the rows of the existing table, with the rerun scenarios replaced (by title)."""
    fresh = {_title_key(r["scenario"]): r for r in rows}
    merged: list = []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("| ") and not line.startswith("| Scenario") and not line.startswith("|---"):
                title = line[2:].split(" | ", 1)[0].replace("\\|", "|")
                merged.append(fresh.pop(_title_key(title), line))
    return merged + list(fresh.values())


def write_doc(rows: list, args, started: float, path: Path) -> None:

    lines = [
        "# Reliability: what wsgi_channels survives",
        "",
        "Produced by `python benchmarks/reliability.py` "
        + ("(`--soak`) " if args.soak else "") + ("(`--quick`: CI sizes) " if args.quick else "")
        + f"on {datetime.date.today().isoformat()}, {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs (shared with other work: timings are noisy), in "
        f"{(time.monotonic() - started) / 60:.1f} minutes. Every row is a real run on real processes "
        "(redis-server, gunicorn, the sidecar, the worker); the same scenarios run at smaller sizes in the "
        "test suite (`tests/test_faults_*.py`, `tests/test_churn.py`, `tests/test_bad_input*.py`, "
        "`tests/test_security.py`, `tests/test_fuzz.py`).",
        "",
        "| Scenario | Run | Figure | Held |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(r if isinstance(r, str) else _row(r))
    lines += ["", *NOTES, ""]
    if args.soak_minutes < 30:
        lines.insert(-1, f"The soak above ran {args.soak_minutes:g} minutes (time was short on this run); "
                     "`--soak` runs the full 30.")
    if path.exists():  # sections from other scripts (## headings, after the notes) are kept as they are
        kept = path.read_text().split("\n## ", 1)
        if len(kept) == 2:
            lines += ["## " + kept[1].rstrip("\n"), ""]
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


NOTES = [
    "How to read it:",
    "",
    "- *Recovery* is measured from the moment Redis accepts connections again to the first push "
    "(sent through gunicorn) delivered to every WebSocket. Delivery is at most once: pushes made while "
    "Redis is down fail visibly (503 from the app) and are not retried; nothing acknowledged after "
    "recovery is lost.",
    "- A Redis that comes back empty has lost every group membership. The sidecar keeps a marker "
    "membership of its own and checks it every 2 s; when it is gone it closes its WebSockets with 1012 "
    "(service restart), the shipped browser client reconnects, and the connect consumers rejoin.",
    "- *Lost in gap* counts per socket: a push sent to 5 sockets and lost counts 5. With the data kept, "
    "what is lost is what was in flight between the app, Redis and the sidecar when Redis stopped.",
        "- The churn's file-descriptor figure excludes the layer's pooled Redis connections, which grow to "
    "the peak number of concurrent layer calls (not with the number of cycles) and close after 30 s idle.",
    "- Bad input and security rows rerun the test files (`tests/test_bad_input*.py`, "
    "`tests/test_security.py`) and count their cases; an `xfail` there is a known defect not yet fixed.",
    '',
    "## The worker's time limit",
    '',
    'What a consumer that blocks (a slow query, a lost lock, a call without a timeout) costs, and the bounds:',
    '',
    '- **Limit**: a message whose consumer runs `--time-limit` seconds (default 60; `WSGI_CHANNELS_TIME_LIMIT`; `0` = off) without sending anything is given up. Each message the consumer sends starts the count again, so a streamed response that keeps sending is never given up.',
    '- **When**: the worker looks every tenth of the limit (at least every 50 ms, at most every second), so a message is given up between `limit` and `limit + min(1 s, limit / 10)` after its last send: 3.3-3.5 s for a 3 s limit in the row above, on a loaded 2-core machine.',
    '- **The client** gets 504 (`http.request`, response not started), a cut response (started: the worker sends `{"abort": true}` and the sidecar drops the connection, so a chunked body has no last chunk and a sized one is short), or close 1011 (`websocket.connect`, `websocket.receive`). Every later send of the consumer is dropped: never a second response.',
    '- **Capacity**: the stuck thread is replaced at once, so the worker keeps its `--threads`; a message queued behind stuck ones waits at most one more limit (the 4 sleeps queued behind 8 stuck ones above got 504 at 6.5 s), and other requests are answered throughout.',
    '- **Stuck threads** run on until their consumer returns (Python cannot kill a thread; a greenlet killed inside a redis-py command would leave its connection out of step), counted in `wsgi_channels_worker_abandoned_threads`. At `--max-abandoned` of them at once (default twice `--threads`), the worker stops receiving, finishes its messages in flight within `--grace`, and exits with status 75 for its supervisor to start a fresh process.',
    '- **Under `--greenlets`** only greenlets that wait cooperatively (sleep, sockets, Redis) can be given up; one that computes without yielding holds the whole process, as in any gevent server.',
    "- **Cost**: one uncontended lock per message and per send on the worker's fast path (`benchmarks/wsgi_consumer.py` and `benchmarks/sidecar_http.py` unchanged within their noise).",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"))
    p.add_argument("--soak", action="store_true", help="soak for 30 minutes (default: 2)")
    p.add_argument("--soak-minutes", type=float, default=None, help="soak this long instead")
    p.add_argument("--fuzz-seconds", type=int, default=None, help="fuzz this long (default 300)")
    p.add_argument("--quick", action="store_true", help="CI sizes (a smoke run of this script)")
    p.add_argument("--only", nargs="*", help="rerun only these scenarios (function names) and replace their "
                                            "rows in the existing document")
    args = p.parse_args(argv)
    args.soak_minutes = args.soak_minutes or (30.0 if args.soak else (0.5 if args.quick else 2.0))
    args.churn = 10_000 if args.quick else 100_000
    args.rate = 40.0 if args.quick else 100.0
    args.restart_after = 5.0 if args.quick else 15.0
    args.shard_down = 2.0 if args.quick else 5.0
    args.sigterm_clients = 20 if args.quick else 50
    args.slow_clients = 5 if args.quick else 20
    args.stalled = 200 if args.quick else 1000
    args.fuzz_seconds = args.fuzz_seconds or (20 if args.quick else 300)
    started = time.monotonic()
    rows = []
    for scenario in SCENARIOS:
        if args.only and scenario.__name__ not in args.only:
            continue
        t0 = time.monotonic()
        print(f"-- {scenario.__name__} ...", flush=True)
        try:
            row = scenario(args)
        except Exception as e:  # a scenario that breaks is a row that says so
            row = {"scenario": scenario.__name__, "size": "-", "figure": f"did not complete: {type(e).__name__}: {e}",
                   "ok": False}
        print(f"   {row['figure']} ({time.monotonic() - t0:.0f} s)", flush=True)
        rows.append(row)
    path = Path(args.out)
    if args.only and path.exists():  # keep the document's header and notes; replace the rerun rows
        merged = merge_rows(rows, path)
        text = path.read_text().splitlines()
        first = next(i for i, line in enumerate(text) if line.startswith("| Scenario"))
        last = max(i for i, line in enumerate(text) if line.startswith("| "))
        body = text[:first + 2] + [r if isinstance(r, str) else _row(r) for r in merged] + text[last + 1:]
        if "soak" in args.only and args.soak_minutes >= 30:
            body = [line for line in body if not line.startswith("The soak above ran")]
        path.write_text("\n".join(body) + "\n")
    else:
        write_doc(rows, args, started, path)
    print(f"wrote {args.out}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
