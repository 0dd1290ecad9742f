"""Failover timeline: from ``kill -9`` of a primary to the first successful send and the first WebSocket frame.

For each topology (a Sentinel set: primary, 2 replicas, 3 sentinels with
``down-after-milliseconds 1000``; a Redis Cluster: 3 primaries with a replica each,
``cluster-node-timeout 1000``), ``--runs`` times (default 5) on a fresh deployment:

- a real stack on it (gunicorn pushing to a group on each POST at 40/s, a sidecar holding 3
  WebSockets joined to that group by a worker's consumer), and a thread sending to a
  channel every 10 ms through the layer;
- the primary that serves the sidecar's queue (and that channel) is killed with ``kill -9``
  (times run from the signal; sends and pushes count once they start after the process is gone);
- the script notes when any sentinel (any cluster node) first names a successor that answers
  ``ROLE`` as a primary ("promotion visible"), the end of the first send that succeeded after
  the kill, and the first frame a WebSocket received of a push made after the kill.

Printed: the median (and the range) of each interval over the runs. The issue's bounds:
sends succeed again within 5 s of the kill and within 0.5 s of the promotion being visible.
The machine is shared and noisy.

Run from the repository root::

    .venv/bin/python benchmarks/failover_timeline.py [--runs 5] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import _results  # noqa: E402
import faultkit as fk  # noqa: E402
from failover_kit import SendLoop, Topology  # noqa: E402
from redis_topology import RedisClusterSet, RedisSentinelSet  # noqa: E402
from test_faults_redis import Listener, Pusher, members  # noqa: E402
from wsgi_channels.layers import from_url  # noqa: E402


def one_run(kind: str, log_dir: Path) -> dict:
    deployment = (RedisSentinelSet() if kind == "sentinel" else RedisClusterSet()).start()
    topology = Topology(kind, deployment)
    url = topology.url
    listeners: list = []
    pusher = sender = None
    try:
        with fk.Stack(url, log_dir, gunicorn_workers=2, threads=4) as st:
            prefix = re.search(r"sidecar prefix (sidecar\.[\w\-]+!)", st.sidecar.log()).group(1)  # type: ignore[union-attr]
            layer = from_url(url)
            bucket = layer._shard_of(prefix)
            channel = next(n for n in (f"timeline.{i}" for i in range(10_000)) if layer._shard_of(n) is bucket)
            victim = topology.primary_for(bucket.key("q", prefix))
            layer.close()
            listeners = [Listener(st.port, "timeline") for _ in range(3)]
            for li in listeners:
                li.start()
            for li in listeners:
                if not li.ready.wait(20):
                    raise RuntimeError("a WebSocket did not connect")
            fk.wait_until(lambda: members(url, "timeline") == 3, 20, what="every WebSocket in the group")
            sender = SendLoop(url, channel, capacity=1_000_000)  # nobody reads it: never full
            sender.start()
            pusher = Pusher(st.web.port, "timeline", 40)
            pusher.start()
            time.sleep(1.5)
            watch = topology.watch_promotion(victim)
            t_kill = time.monotonic()
            topology.kill(victim)
            t_dead = time.monotonic()  # reaped: a send that started before may still have succeeded
            t_visible = watch.wait(20)
            deadline = time.monotonic() + 15
            first_send = None
            first_frame = None
            while time.monotonic() < deadline and (first_send is None or first_frame is None):
                time.sleep(0.1)
                ok = sender.first_ok_after(t_dead)
                first_send = ok.end if ok else None
                after = {seq for seq, t, status in list(pusher.results) if t >= t_dead and status == 200}
                frames = [t for li in listeners for seq, t in list(li.got) if seq in after]
                first_frame = min(frames) if frames else None
            closes = [c for li in listeners for c in li.closes]
            return {"visible": t_visible - t_kill,
                    "send": None if first_send is None else first_send - t_kill,
                    "send_after_visible": None if first_send is None else first_send - t_visible,
                    "frame": None if first_frame is None else first_frame - t_kill,
                    "closes": closes,
                    "errors": sorted({type(e).__name__ for e in sender.errors()})}
    finally:
        if pusher is not None:
            pusher.stop()
        if sender is not None:
            sender.stop()
        for li in listeners:
            li.stop()
        deployment.stop()


def summary(values: list) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "n/a"
    return f"{statistics.median(got):.2f} s ({min(got):.2f}-{max(got):.2f})" + (
        f", {len(values) - len(got)} missing" if len(got) < len(values) else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per topology; the median is shown")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    results: dict[str, list[dict]] = {"sentinel": [], "cluster": []}
    with tempfile.TemporaryDirectory(prefix="failover-timeline-") as tmp:
        for i in range(args.runs):
            for kind in results:  # alternated, so both see the same moments of a noisy machine
                run_dir = Path(tmp) / f"{kind}-{i}"
                run_dir.mkdir()
                results[kind].append(one_run(kind, run_dir))
                print(f"  run {i + 1}: {kind}: {results[kind][-1]}", file=sys.stderr, flush=True)
    print()
    print(f"Failover timeline after kill -9 of the primary serving the sidecar's queue, median (range) of "
          f"{args.runs} runs; shared, noisy machine.")
    print()
    rows = [("kill -9 -> promotion visible", "visible"), ("kill -9 -> first successful send", "send"),
            ("promotion visible -> first successful send", "send_after_visible"),
            ("kill -9 -> first WebSocket frame of a push made after it", "frame")]
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'Sentinel':>26}  {'Cluster':>26}")
    for label, key in rows:
        print(f"{label:{width}}  {summary([r[key] for r in results['sentinel']]):>26}  "
              f"{summary([r[key] for r in results['cluster']]):>26}")
    print()
    for kind, runs in results.items():
        sends = [r["send"] for r in runs if r["send"] is not None]
        after = [r["send_after_visible"] for r in runs if r["send_after_visible"] is not None]
        closes = [c for r in runs for c in r["closes"]]
        errors = sorted({e for r in runs for e in r["errors"]})
        print(f"{kind}: sends back within 5 s of the kill in {sum(s <= 5 for s in sends)}/{len(runs)} runs, within "
              f"0.5 s of the promotion in {sum(a <= 0.5 for a in after)}/{len(runs)}; WebSocket closes: "
              f"{closes or 'none'}; errors the senders saw: {', '.join(errors) or 'none'}")
    _results.write(args.json, "failover_timeline", {"runs": args.runs, "results": results},
                   peers=("redis",))
    return 0


if __name__ == "__main__":
    sys.exit(main())
