"""``layer_throughput.py --topologies``: the Redis layer on a Cluster and behind Sentinel, beside standalone Redis.

Five deployments started by this script on this machine, measured in the same run: every
row runs the deployments in alternating chunks (500 operations, 20 group sends), so they
all see the same moments of a noisy machine; the median of ``--repeats`` rounds is shown.
On a 2-core machine shared by up to 9 redis-servers, the client and other work, rates move
by tens of percent from one moment to the next: the server time per group send (``INFO
commandstats``, summed over the primaries and on the busiest one) does not, and says what a
group send costs the servers whatever the cores; nor does the CPU time per group send of the
client and every process of the deployment (``/proc/PID/stat``, 2,000 group sends one
deployment at a time), which says what a group send costs a machine whose cores are all busy:

- ``standalone``: one ``redis-server``;
- ``standalone+replica``: the same with one replica: the durability of the Cluster's
  primaries, which do the replication work on the same 2 cores, so this is the fair
  baseline of the Cluster's >= 80% targets (the replica-less figure is shown beside it);
- ``standalone+2 replicas``: the data nodes of the Sentinel set without the sentinels, the
  baseline of Sentinel's targets;
- ``sentinel``: a primary, two replicas, three sentinels (``redis+sentinel://``);
- ``cluster``: three primaries with a replica each (``redis+cluster://``).

Rows (rates per second): ``send``; ``receive``; the send-then-receive loop; ``Group.send()``
to 100 members spread over every primary (plain channels, which the Cluster spreads over
its buckets, one per primary with the default ``cluster_tags=auto``, so over all three
primaries; group sends per second, every delivery then checked), and the same on the
Cluster with ``cluster_tags=12`` (the default before ``auto``: 12 buckets, 4 per primary);
``send`` with ``wait_replicas=1`` (``WAIT 1 100`` in the same round trip) where there is a
replica. Beside ours, channels_redis 4.x (its core layer, awaited from one
event loop) on the same deployments: on the Cluster it fails, and its error is shown.
"""
from __future__ import annotations

import asyncio
import os
import resource
import statistics
import sys
import time
from typing import Any, Callable

from redis_topology import RedisClusterSet, RedisSentinelSet
from servers import RedisServer

MESSAGE = {"type": "websocket.send", "text": "hello from a view " * 5}
BIG = 1_000_000
ORDER = ["standalone", "standalone+replica", "standalone+2 replicas", "sentinel", "cluster"]
#: Each topology's fair baseline (the same data nodes without what the topology adds).
BASELINE = {"cluster": "standalone+replica", "sentinel": "standalone+2 replicas"}


def _ours(url: str, **options: Any) -> Any:
    from wsgi_channels.layers import from_url

    return from_url(url, capacity=BIG, process_capacity=BIG, **options)


def _theirs(host: Any) -> Any:
    from channels_redis.core import RedisChannelLayer

    return RedisChannelLayer(hosts=[host], capacity=BIG, prefix="bench-topo")


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


# -- ours ---------------------------------------------------------------------------------------


def ours_send(layer: Any, n: int) -> float:
    layer.flush()
    start = time.perf_counter()
    for _ in range(n):
        layer.send("bench.send", MESSAGE)
    return _rate(n, time.perf_counter() - start)


def ours_receive(layer: Any, n: int) -> float:
    layer.flush()
    for _ in range(n):
        layer.send("bench.recv", MESSAGE)
    start = time.perf_counter()
    for _ in range(n):
        if layer.receive(["bench.recv"])[0] is None:
            raise RuntimeError("wsgi_channels lost a message")
    return _rate(n, time.perf_counter() - start)


def ours_loop(layer: Any, n: int) -> float:
    layer.flush()
    start = time.perf_counter()
    for _ in range(n):
        layer.send("bench.loop", MESSAGE)
        if layer.receive(["bench.loop"])[0] is None:
            raise RuntimeError("wsgi_channels lost a message")
    return _rate(n, time.perf_counter() - start)


MEMBERS = [f"bench.member{i}" for i in range(100)]


def _script_usec(layer: Any) -> list[float]:
    """Microseconds of EVALSHA each primary spent since its last reset (INFO commandstats)."""
    out = []
    for node in layer._nodes():
        info = node.execute("INFO", "commandstats").decode()
        match = next((line for line in info.splitlines() if line.startswith("cmdstat_evalsha:")), "")
        usec = dict(part.split("=") for part in match.split(":", 1)[1].split(",")).get("usec", "0") if match else "0"
        out.append(float(usec))
    return out


def ours_group_server(layer: Any, k: int) -> tuple[float, float]:
    """(server time per group send summed over the primaries, on the busiest primary), in us: what the
    fan-outs cost the servers, whatever the machine's cores."""
    layer.flush()
    for m in MEMBERS:
        layer.group_add("bench.group", m)
    layer.send_group("bench.group", MESSAGE)
    for node in layer._nodes():
        node.execute("CONFIG", "RESETSTAT")
    for _ in range(k):
        layer.send_group("bench.group", MESSAGE)
    usec = _script_usec(layer)
    layer.flush()
    return sum(usec) / k, max(usec) / k


def _pids(procs: list) -> list[int]:
    """The process ids of a deployment's servers (data nodes, and sentinels where there are)."""
    nodes = []
    for p in procs:
        nodes += getattr(p, "nodes", []) + getattr(p, "data", []) + getattr(p, "sentinels", []) or [p]
    return [n.proc.pid for n in nodes if n.proc is not None]


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def ours_group_cpu(layer: Any, k: int, pids: list[int]) -> tuple[float, float]:
    """(this process's, the deployment's processes') CPU microseconds per group send, over ``k``
    group sends and the replicas' catching up after them."""
    layer.flush()
    for m in MEMBERS:
        layer.group_add("bench.group", m)
    layer.send_group("bench.group", MESSAGE)
    time.sleep(0.2)
    servers = sum(_cpu_seconds(p) for p in pids)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    client = usage.ru_utime + usage.ru_stime
    for _ in range(k):
        layer.send_group("bench.group", MESSAGE)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    client = usage.ru_utime + usage.ru_stime - client
    time.sleep(0.2)  # the replicas apply the tail
    servers = sum(_cpu_seconds(p) for p in pids) - servers
    layer.flush()
    return client / k * 1e6, servers / k * 1e6


def ours_group(layer: Any, k: int) -> float:
    layer.flush()
    for m in MEMBERS:
        layer.group_add("bench.group", m)
    layer.send_group("bench.group", MESSAGE)  # the plans made, every bucket's members known
    start = time.perf_counter()
    for _ in range(k):
        layer.send_group("bench.group", MESSAGE)
    elapsed = time.perf_counter() - start
    got = sum(len(layer.receive_batch([m], 1000)) for m in MEMBERS)
    if got != (k + 1) * len(MEMBERS):
        raise RuntimeError(f"wsgi_channels delivered {got} of {(k + 1) * len(MEMBERS)}")
    return _rate(k, elapsed)


# -- channels_redis -------------------------------------------------------------------------------


class Theirs:
    """channels_redis' core layer on one event loop; ``error`` holds what stopped it (the Cluster)."""

    def __init__(self, host: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.layer = _theirs(host)
        self.error: str | None = None

    def run(self, make: Callable[[], Any]) -> float | None:
        if self.error is not None:
            return None
        try:
            return self.loop.run_until_complete(make())
        except Exception as e:
            self.error = f"{type(e).__module__}.{type(e).__name__}: {str(e)[:120]}"
            return None

    def send(self, n: int) -> float | None:
        async def go() -> float:
            await self.layer.flush()
            start = time.perf_counter()
            for _ in range(n):
                await self.layer.send("bench.send", MESSAGE)
            return _rate(n, time.perf_counter() - start)
        return self.run(go)

    def receive(self, n: int) -> float | None:
        async def go() -> float:
            await self.layer.flush()
            for _ in range(n):
                await self.layer.send("bench.recv", MESSAGE)
            start = time.perf_counter()
            for _ in range(n):
                await self.layer.receive("bench.recv")
            return _rate(n, time.perf_counter() - start)
        return self.run(go)

    def loop_rate(self, n: int) -> float | None:
        async def go() -> float:
            await self.layer.flush()
            start = time.perf_counter()
            for _ in range(n):
                await self.layer.send("bench.loop", MESSAGE)
                await self.layer.receive("bench.loop")
            return _rate(n, time.perf_counter() - start)
        return self.run(go)

    def group(self, k: int) -> float | None:
        async def go() -> float:
            await self.layer.flush()
            for m in MEMBERS:
                await self.layer.group_add("bench.group", m)
            start = time.perf_counter()
            for _ in range(k):
                await self.layer.group_send("bench.group", MESSAGE)
            elapsed = time.perf_counter() - start
            await self.layer.flush()
            return _rate(k, elapsed)
        return self.run(go)

    def close(self) -> None:
        try:
            if self.error is None:
                self.loop.run_until_complete(self.layer.flush())
            self.loop.run_until_complete(self.layer.close_pools())
        except Exception:
            pass
        self.loop.close()


# -- the run ----------------------------------------------------------------------------------------


def start_deployments() -> dict[str, tuple[Any, str, Any, list]]:
    """name -> (ours' URL, a host for channels_redis, a description, processes to stop)."""
    out: dict[str, tuple[Any, str, Any, list]] = {}
    alone = RedisServer().start()
    out["standalone"] = (alone.url, alone.url, "1 redis-server", [alone])
    primary = RedisServer().start()
    replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    out["standalone+replica"] = (primary.url, primary.url, "1 primary + 1 replica", [primary, replica])
    primary2 = RedisServer().start()
    replicas2 = [RedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary2.port)]).start() for _ in range(2)]
    out["standalone+2 replicas"] = (primary2.url, primary2.url, "1 primary + 2 replicas", [primary2, *replicas2])
    sentinel = RedisSentinelSet().start()
    theirs = {"sentinels": [("127.0.0.1", s.port) for s in sentinel.sentinels], "master_name": sentinel.service}
    out["sentinel"] = (sentinel.url, theirs, "1 primary + 2 replicas + 3 sentinels", [sentinel])
    cluster = RedisClusterSet().start()
    out["cluster"] = (cluster.url, f"redis://127.0.0.1:{cluster.nodes[0].port}/0", "3 primaries + 3 replicas",
                      [cluster])
    return out


def interleaved(ops: dict[str, Callable[[int], Any]], total: int, chunk: int) -> dict[str, float | None]:
    """Operations per second of each ``ops[name](size)``, run in alternating chunks of ``chunk`` (the
    order turning each cycle), so every deployment sees the same moments of a noisy machine. A
    chunk's replication can end in the next one's time: chunks are long enough for that tail to be
    a small part. An op that returns False (channels_redis failed) is left out from then on (its
    rate: None)."""
    spent = {name: 0.0 for name in ops}
    failed: set[str] = set()
    order = list(ops)
    done = 0
    while done < total:
        size = min(chunk, total - done)
        order = order[1:] + order[:1]
        for name in order:
            if name in failed:
                continue
            start = time.perf_counter()
            if ops[name](size) is False:
                failed.add(name)
            spent[name] += time.perf_counter() - start
        done += size
    return {name: None if name in failed else _rate(total, spent[name]) for name in ops}


def _theirs_op(peer: Theirs, make: Callable[[int], Any]) -> Callable[[int], Any]:
    def op(size: int) -> bool:
        return peer.run(lambda: make(size)) is not None
    return op


def run(repeats: int, quick: bool) -> dict:
    n = 1000 if quick else 4000
    k = 20 if quick else 100
    chunk, group_chunk = 500, 20
    deployments = start_deployments()
    try:
        ours = {name: _ours(d[0]) for name, d in deployments.items()}
        waited = {name: _ours(d[0], wait_replicas=1, wait_replicas_timeout=0.1)
                  for name, d in deployments.items() if name != "standalone"}
        twelve = _ours(deployments["cluster"][0], cluster_tags=12, prefix="tags12")  # 4 buckets per primary
        theirs = {name: Theirs(d[1]) for name, d in deployments.items()}
        rows: dict[str, dict[str, list]] = {}

        def note(row: str, rates: dict, peer_rates: dict | None = None) -> None:
            for name, value in rates.items():
                rows.setdefault(row, {}).setdefault(name, []).append(
                    (value, None if peer_rates is None else peer_rates.get(name)))

        for layer in list(ours.values()) + [twelve]:  # warm up: connections, scripts, plans
            ours_loop(layer, 50)
            ours_group(layer, 2)
        for name in ORDER:
            theirs[name].loop_rate(50)

        def sends(layer: Any) -> Callable[[int], None]:
            return lambda size: [layer.send("bench.send", MESSAGE) for _ in range(size)] and None

        def receives(layer: Any) -> Callable[[int], None]:
            def op(size: int) -> None:
                for _ in range(size):
                    if layer.receive(["bench.recv"])[0] is None:
                        raise RuntimeError("wsgi_channels lost a message")
            return op

        def loops(layer: Any) -> Callable[[int], None]:
            def op(size: int) -> None:
                for _ in range(size):
                    layer.send("bench.loop", MESSAGE)
                    if layer.receive(["bench.loop"])[0] is None:
                        raise RuntimeError("wsgi_channels lost a message")
            return op

        def groups(layer: Any) -> Callable[[int], None]:
            return lambda size: [layer.send_group("bench.group", MESSAGE) for _ in range(size)] and None

        async def t_send(peer: Theirs, size: int) -> float:
            for _ in range(size):
                await peer.layer.send("bench.send", MESSAGE)
            return 1.0

        async def t_receive(peer: Theirs, size: int) -> float:
            for _ in range(size):
                await peer.layer.receive("bench.recv")
            return 1.0

        async def t_loop(peer: Theirs, size: int) -> float:
            for _ in range(size):
                await peer.layer.send("bench.loop", MESSAGE)
                await peer.layer.receive("bench.loop")
            return 1.0

        async def t_group(peer: Theirs, size: int) -> float:
            for _ in range(size):
                await peer.layer.group_send("bench.group", MESSAGE)
            return 1.0

        def peer_ops(make: Any) -> dict[str, Callable[[int], Any]]:
            return {name: _theirs_op(theirs[name], lambda size, p=theirs[name]: make(p, size)) for name in ORDER}

        async def t_prepare(peer: Theirs, size: int) -> float:
            await peer.layer.flush()
            for _ in range(size):
                await peer.layer.send("bench.recv", MESSAGE)
            for m in MEMBERS:
                await peer.layer.group_add("bench.group", m)
            return 1.0

        for r in range(repeats):
            for layer in ours.values():
                layer.flush()
            note("send", interleaved({name: sends(layer) for name, layer in ours.items()}, n, chunk),
                 interleaved(peer_ops(t_send), n, chunk))
            for name, layer in ours.items():
                layer.flush()
                for _ in range(n):
                    layer.send("bench.recv", MESSAGE)
            for name in ORDER:
                theirs[name].run(lambda p=theirs[name]: t_prepare(p, n))
            note("receive", interleaved({name: receives(layer) for name, layer in ours.items()}, n, chunk),
                 interleaved(peer_ops(t_receive), n, chunk))
            note("send-then-receive loop", interleaved({name: loops(layer) for name, layer in ours.items()}, n, chunk),
                 interleaved(peer_ops(t_loop), n, chunk))
            for layer in list(ours.values()) + [twelve]:
                layer.flush()
                for m in MEMBERS:
                    layer.group_add("bench.group", m)
                layer.send_group("bench.group", MESSAGE)
            group_ops = {name: groups(layer) for name, layer in ours.items()}
            group_ops["cluster, cluster_tags=12"] = groups(twelve)
            rates = interleaved(group_ops, k, group_chunk)
            note("Group.send() to 100 members (group sends/s)", {n_: v for n_, v in rates.items() if n_ in ours},
                 interleaved(peer_ops(t_group), k, group_chunk))
            note("Group.send() to 100 members, cluster_tags=12", {"cluster": rates["cluster, cluster_tags=12"]})
            for layer in list(ours.values()) + [twelve]:  # every delivery arrived
                got = sum(len(layer.receive_batch([m], 1000)) for m in MEMBERS)
                if got != (k + 1) * len(MEMBERS):
                    raise RuntimeError(f"wsgi_channels delivered {got} of {(k + 1) * len(MEMBERS)}")
            for layer in waited.values():
                layer.flush()
            note("send, wait_replicas=1", interleaved({name: sends(layer) for name, layer in waited.items()}, n, chunk))
            server = {name: ours_group_server(layer, k) for name, layer in ours.items()}
            note("server us per Group.send(), all primaries", {name: v[0] for name, v in server.items()})
            note("server us per Group.send(), busiest primary", {name: v[1] for name, v in server.items()})
            all12, busiest12 = ours_group_server(twelve, k)
            note("server us per Group.send(), all primaries, cluster_tags=12", {"cluster": all12})
            note("server us per Group.send(), busiest primary, cluster_tags=12", {"cluster": busiest12})
            cpu_k = 200 if quick else 2000
            cpu = {name: ours_group_cpu(layer, cpu_k, _pids(deployments[name][3])) for name, layer in ours.items()}
            cpu12 = ours_group_cpu(twelve, cpu_k, _pids(deployments["cluster"][3]))
            note("CPU us per Group.send(), client", {name: v[0] for name, v in cpu.items()})
            note("CPU us per Group.send(), every server process", {name: v[1] for name, v in cpu.items()})
            note("CPU us per Group.send(), client + servers", {name: sum(v) for name, v in cpu.items()})
            note("CPU us per Group.send(), client + servers, cluster_tags=12", {"cluster": sum(cpu12)})
            print(f"  round {r + 1} of {repeats}", file=sys.stderr, flush=True)
        spread = len({ours["cluster"]._shard_of(m).node().address for m in MEMBERS})
        buckets = {"auto": len(ours["cluster"]._shards), "12": len(twelve._shards)}
        errors = {name: t.error for name, t in theirs.items() if t.error}
        for layer in list(ours.values()) + list(waited.values()) + [twelve]:
            layer.flush()
            layer.close()
        for t in theirs.values():
            t.close()
    finally:
        for _, _, _, procs in deployments.values():
            for p in procs:
                p.stop()
    medians = {row: {name: tuple(statistics.median(v[i] for v in values) if all(v[i] is not None for v in values)
                                 else None for i in range(2))
                     for name, values in by_name.items()}
               for row, by_name in rows.items()}
    return {"rows": medians, "errors": errors, "spread": spread, "buckets": buckets, "repeats": repeats, "n": n, "k": k,
            "deployments": {name: d[2] for name, d in deployments.items()}}


def print_tables(result: dict) -> None:
    rows, errors = result["rows"], result["errors"]
    print()
    print(f"The Redis layer by topology, median of {result['repeats']} rounds ({result['n']} messages, "
          f"{result['k']} group sends per figure). Same machine, same run; the machine is shared and noisy: "
          "read the ratios.")
    for name, what in result["deployments"].items():
        print(f"  {name}: {what}")
    print(f"  The 100 group members' buckets live on {result['spread']} of the Cluster's 3 primaries "
          f"({result['buckets']['auto']} buckets with cluster_tags=auto, the default; "
          f"{result['buckets']['12']} with cluster_tags=12).")
    print()
    header = ["rate per second (server and CPU us: lower is better)", *ORDER, "cluster vs standalone+replica", "sentinel vs standalone+2 replicas",
              "cluster vs standalone"]
    lines = [header]
    for row, by_name in rows.items():
        ours = {name: by_name.get(name, (None, None))[0] for name in ORDER}

        def ratio(a: Any, b: Any) -> str:
            return f"{a / b:.0%}" if a and b else ""

        lines.append([f"wsgi_channels: {row}", *(f"{ours[n]:,.0f}" if ours[n] else "n/a" for n in ORDER),
                      ratio(ours["cluster"], ours[BASELINE["cluster"]]),
                      ratio(ours["sentinel"], ours[BASELINE["sentinel"]]),
                      ratio(ours["cluster"], ours["standalone"])])
        theirs = {name: by_name.get(name, (None, None))[1] for name in ORDER}
        if not row.startswith(("send, wait_replicas", "server us", "CPU us", "Group.send() to 100 members, cluster_tags")):
            lines.append([f"channels_redis: {row}",
                          *(f"{theirs[n]:,.0f}" if theirs[n] else ("error" if n in errors else "n/a") for n in ORDER),
                          "", ratio(theirs["sentinel"], theirs[BASELINE["sentinel"]]), ""])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("  ".join(str(c).ljust(w) if j == 0 else str(c).rjust(w) for j, (c, w) in enumerate(zip(line, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()
    loop = rows["send-then-receive loop"]
    group = rows["Group.send() to 100 members (group sends/s)"]
    for row, figures in (("send-then-receive loop", loop), ("Group.send() to 100 members", group)):
        for name in ("cluster", "sentinel"):
            got = figures[name][0] / figures[BASELINE[name]][0]
            plain = figures[name][0] / figures["standalone"][0]
            print(f"Target: {row} on {name} >= 80% of {BASELINE[name]}: {'met' if got >= 0.8 else 'MISSED'} "
                  f"({got:.0%}; {plain:.0%} of standalone without replicas)")
    waited = rows.get("send, wait_replicas=1", {})
    for name in ("standalone+replica", "standalone+2 replicas", "sentinel", "cluster"):
        if name in waited and rows["send"][name][0]:
            print(f"wait_replicas=1 costs {1 - waited[name][0] / rows['send'][name][0]:.0%} of the send rate on {name} "
                  f"({rows['send'][name][0]:,.0f} -> {waited[name][0]:,.0f}/s; each send waits for a replica's "
                  "acknowledgement, on loopback here, a network round trip in production)")
    twelve = rows.get("Group.send() to 100 members, cluster_tags=12", {}).get("cluster", (None,))[0]
    if twelve:
        print(f"Group.send() to 100 members on the cluster with cluster_tags=12 (4 buckets per primary): "
              f"{twelve / group[BASELINE['cluster']][0]:.0%} of {BASELINE['cluster']}, against "
              f"{group['cluster'][0] / group[BASELINE['cluster']][0]:.0%} with cluster_tags=auto (one per primary)")
    total = rows["server us per Group.send(), all primaries"]
    busiest = rows["server us per Group.send(), busiest primary"]
    total12 = rows["server us per Group.send(), all primaries, cluster_tags=12"]["cluster"][0]
    print(f"Server time per Group.send() to 100 members: standalone {total['standalone'][0]:.0f} us; cluster "
          f"{total['cluster'][0]:.0f} us over its primaries (one fan-out per bucket: {result['buckets']['auto']} "
          f"scripts; {total12:.0f} us with cluster_tags=12, {result['buckets']['12']} scripts), "
          f"{busiest['cluster'][0]:.0f} us on the busiest primary. On this 2-core machine the primaries, their "
          "replicas and the client share two cores, so the sum counts; with a core per primary, the busiest one "
          "would.")
    cpu = rows["CPU us per Group.send(), client + servers"]
    cpu12 = rows["CPU us per Group.send(), client + servers, cluster_tags=12"]["cluster"][0]
    base = BASELINE["cluster"]
    print(f"CPU time per Group.send() to 100 members, the client's and every server process's: {base} "
          f"{cpu[base][0]:.0f} us, cluster {cpu['cluster'][0]:.0f} us ({cpu12:.0f} us with cluster_tags=12): "
          f"on cores that are all busy the cluster can reach about {cpu[base][0] / cpu['cluster'][0]:.0%} of "
          f"{base}'s rate (the rate rows are higher where the deployments' processes run in parallel on idle "
          "cores).")
    for name, error in errors.items():
        print(f"channels_redis on {name}: {error}")
