"""Real Redis Cluster and Sentinel deployments for tests, on free loopback ports.

``RedisClusterSet``
    primaries with replicas (3 + 3 by default), each a ``redis-server --cluster-enabled yes``
    joined by ``redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes``, with
    ``cluster-node-timeout`` 1000 ms, so a ``kill -9`` of a primary fails over in about two
    seconds. A node's cluster bus listens on its port + 10000, so every port is picked at most
    55535 with that bus port free too (:func:`free_cluster_port`).
``RedisSentinelSet``
    one primary, two replicas and three sentinels (``redis-server --sentinel``) watching it
    as ``service`` with ``down-after-milliseconds`` 1000.

Both start in a few seconds, are stopped with :meth:`stop`, and have helpers to ``kill -9``
a node, start it again, switch over gracefully (``CLUSTER FAILOVER`` on a replica,
``SENTINEL FAILOVER``) and wait until the cluster is ``cluster_state:ok`` with every slot
served by a running primary, or until every sentinel names the new primary. The helpers
talk to the servers with a plain redis-py client of short timeouts; nothing here goes
through the layer under test.

A missing ``redis-server`` or ``redis-cli`` fails loudly (``.ci/run`` installs both), never
skips.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from servers import RedisServer, find_redis_server, free_port, wait_for_port

__all__ = ["free_cluster_port", "find_redis_cli", "ClusterNode", "RedisClusterSet", "SentinelServer",
           "RedisSentinelSet", "wait_until"]

#: The highest port a cluster node may use: its bus port is port + 10000.
MAX_CLUSTER_PORT = 55535
#: Ports are drawn below the kernel's ephemeral range (32768+), bus ports included, so a
#: client socket's local port never takes one between the check and the server's bind.
_CLUSTER_PORTS = (10000, 22767)
_taken: set[int] = set()
#: A replica's full sync starts at once (Redis 7 otherwise waits 5 s for more replicas to join a
#: diskless transfer): a restarted node is back in a second.
_FAST_SYNC = ["--repl-diskless-sync-delay", "0"]  # ports handed out by this process (servers may still be starting)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free port for a cluster node: at most 55535, and its bus port (port + 10000) free too."""
    for _ in range(1000):
        port = random.randint(*_CLUSTER_PORTS)
        if {port, port + 10000} & _taken:
            continue
        if _bindable(port) and _bindable(port + 10000):
            _taken.update((port, port + 10000))
            assert port + 10000 <= MAX_CLUSTER_PORT + 10000
            return port
    raise RuntimeError("no free port pair (port, port + 10000) found for a cluster node")


def find_redis_cli() -> str:
    path = shutil.which("redis-cli") or next(
        (p for p in ("/usr/bin/redis-cli", "/usr/local/bin/redis-cli") if os.path.exists(p)), None)
    if not path:
        raise RuntimeError(
            "redis-cli is not installed: run `bash .ci/run` (it installs Debian's redis-tools) "
            "or `apt-get install redis-tools`"
        )
    return path


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Call ``check`` until it returns something true (returned), for at most ``timeout`` seconds.

    Exceptions from ``check`` count as "not yet" (a node that is down refuses connections);
    the last one is named in the ``TimeoutError``.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (redis.RedisError, OSError, KeyError, ValueError) as e:
            last = e
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not after {timeout}s" + (f" (last error: {last!r})" if last else ""))
        time.sleep(interval)


def _client(port: int, password: str | None = None, **kw: Any) -> redis.Redis:
    # No retries: redis-py retries a refused connection (three times, with backoff) by default,
    # and the waits here poll nodes that are down on purpose.
    return redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=2,
                       socket_connect_timeout=1, decode_responses=True, retry=Retry(NoBackoff(), 0), **kw)


class _Node(RedisServer):
    """A ``redis-server`` of a deployment: a client of its own, restartable on the same port and dir."""

    def client(self) -> redis.Redis:
        return _client(self.port, self.password)

    def call(self, *args: Any) -> Any:
        with self.client() as c:
            return c.execute_command(*args)

    def info(self, section: str) -> dict:
        with self.client() as c:
            return c.info(section)

    def kill(self) -> None:
        """``kill -9``: no shutdown, no goodbye to replicas or the cluster bus."""
        self.stop(signal.SIGKILL)

    def replica_of(self, port: int | None) -> None:
        """Start next time as a replica of the server on ``port`` (None: as a primary)."""
        args = self.args
        if "--replicaof" in args:
            i = args.index("--replicaof")
            del args[i:i + 3]
        if port is not None:
            args += ["--replicaof", "127.0.0.1", str(port)]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} 127.0.0.1:{self.port} {'running' if self.running else 'stopped'}>"


# -- Redis Cluster ---------------------------------------------------------------------------------


class ClusterNode(_Node):
    """One node of a :class:`RedisClusterSet`; its ``nodes.conf`` stays in its dir across restarts."""

    def __init__(self, port: int, password: str | None, node_timeout_ms: int, binary: str | None) -> None:
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms), *_FAST_SYNC]
        if password:
            args += ["--masterauth", password]
        super().__init__(port=port, password=password, extra_args=args, binary=binary)
        self.node_id: str | None = None


@dataclass
class ClusterView:
    """What one node says about the cluster (``CLUSTER NODES``), by port."""

    masters: dict[int, list[tuple[int, int]]]  # running primary's port -> its slot ranges
    replicas: dict[int, int]  # replica's port -> its primary's port
    failed: set[int]  # ports flagged fail or pfail

    def owner(self, slot: int) -> int | None:
        for port, ranges in self.masters.items():
            if any(lo <= slot <= hi for lo, hi in ranges):
                return port
        return None

    def covered(self) -> bool:
        return sum(hi - lo + 1 for ranges in self.masters.values() for lo, hi in ranges) == 16384


def _parse_nodes(text: str) -> ClusterView:
    masters: dict[int, list[tuple[int, int]]] = {}
    replicas: dict[int, int] = {}
    failed: set[int] = set()
    ids: dict[str, int] = {}
    rows = []
    for line in text.strip().splitlines():
        fields = line.split()
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        ids[fields[0]] = port
        rows.append((port, fields))
    for port, fields in rows:
        flags = fields[2].split(",")
        if "fail" in flags or "fail?" in flags:
            failed.add(port)
        if "master" in flags:
            ranges = []
            for part in fields[8:]:
                if part.startswith("["):  # a slot being migrated or imported
                    continue
                lo, _, hi = part.partition("-")
                ranges.append((int(lo), int(hi or lo)))
            if ranges:
                masters[port] = ranges
        elif "slave" in flags and fields[3] in ids:
            replicas[port] = ids[fields[3]]
    return ClusterView(masters, replicas, failed)


class RedisClusterSet:
    """A Redis Cluster of ``primaries`` primaries with ``replicas`` replicas each, on loopback.

    ``url`` is its ``redis+cluster://`` URL (every node a seed). :meth:`view` reads the
    topology from a running node; :meth:`wait_ok` waits until every running node reports
    ``cluster_state:ok`` and agrees that every slot is served by a running primary.
    """

    def __init__(self, primaries: int = 3, replicas: int = 1, password: str | None = None,
                 node_timeout_ms: int = 1000, binary: str | None = None) -> None:
        self.primaries_wanted = primaries
        self.replicas_wanted = replicas
        self.password = password
        self.node_timeout_ms = node_timeout_ms
        self.binary = binary or find_redis_server()
        self.cli = find_redis_cli()
        self.nodes: list[ClusterNode] = []
        self._served: dict[int, int] = {}  # port of a primary killed or failed over -> a slot it served

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> "RedisClusterSet":
        started = time.monotonic()
        try:
            for _ in range(self.primaries_wanted * (1 + self.replicas_wanted)):
                self.nodes.append(self._start_node())
            self._create()
            self.wait_ok(timeout=timeout - (time.monotonic() - started), replicas=True)
            for node in self.nodes:
                node.node_id = node.call("CLUSTER", "MYID")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self) -> ClusterNode:
        last: Exception | None = None
        for _ in range(5):  # another process may bind a checked port before the server does
            node = ClusterNode(free_cluster_port(), self.password, self.node_timeout_ms, self.binary)
            try:
                return node.start()
            except (RuntimeError, TimeoutError) as e:
                last = e
                node.stop(signal.SIGKILL)
        raise RuntimeError(f"could not start a cluster node: {last}")

    def _create(self) -> None:
        args = [self.cli] + (["-a", self.password, "--no-auth-warning"] if self.password else [])
        args += ["--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(self.replicas_wanted), "--cluster-yes"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise RuntimeError(f"redis-cli --cluster create failed (exit {done.returncode}):\n"
                               f"{done.stdout[-3000:]}\n{done.stderr[-2000:]}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(signal.SIGKILL)
            shutil.rmtree(node.dir, ignore_errors=True)
            _taken.difference_update((node.port, node.port + 10000))

    @property
    def seeds(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return "redis+cluster://" + auth + ",".join(f"{h}:{p}" for h, p in self.seeds) + "/"

    # -- topology -----------------------------------------------------------------------------

    def node(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def running(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.running]

    def view(self, node: ClusterNode | None = None) -> ClusterView:
        """The topology as ``node`` (default: the first running node) sees it."""
        node = node or self.running()[0]
        return _parse_nodes(node.call("CLUSTER", "NODES"))

    def primaries(self) -> list[ClusterNode]:
        return [self.node(p) for p in sorted(self.view().masters)]

    def replicas_of(self, primary: ClusterNode) -> list[ClusterNode]:
        return [self.node(r) for r, p in sorted(self.view().replicas.items()) if p == primary.port]

    def primary_for_slot(self, slot: int) -> ClusterNode:
        port = self.view().owner(slot)
        if port is None:
            raise LookupError(f"slot {slot} has no primary")
        return self.node(port)

    def primary_for_key(self, key: str | bytes) -> ClusterNode:
        from redis.crc import key_slot

        return self.primary_for_slot(key_slot(key.encode() if isinstance(key, str) else key))

    # -- faults -------------------------------------------------------------------------------

    def kill(self, node: ClusterNode) -> None:
        """``kill -9`` ``node`` (the slots it served are remembered for :meth:`wait_failover`)."""
        self._remember(node)
        node.kill()

    def restart(self, node: ClusterNode, timeout: float = 15.0) -> None:
        """Start a stopped node again (same port, dir and ``nodes.conf``) and wait until the cluster is
        ok with it back: a killed primary whose slots failed over rejoins as a replica."""
        node.start()
        self.wait_ok(timeout=timeout, replicas=True)

    def failover(self, replica: ClusterNode, mode: str | None = None) -> ClusterNode:
        """``CLUSTER FAILOVER [FORCE|TAKEOVER]`` on ``replica``, which takes over its primary's slots;
        returns that primary (for :meth:`wait_failover`)."""
        primary = self.node(self.view().replicas[replica.port])
        self._remember(primary)
        replica.call("CLUSTER", "FAILOVER", *([mode] if mode else []))
        return primary

    def _remember(self, node: ClusterNode) -> None:
        ranges = self.view().masters.get(node.port)
        if ranges:
            self._served[node.port] = ranges[0][0]

    def wait_failover(self, old: ClusterNode, timeout: float = 10.0) -> ClusterNode:
        """Wait until the slots ``old`` served (when it was killed or failed over by these helpers)
        are served by another running node, with every running node reporting ``cluster_state:ok``;
        returns that node."""
        slot = self._served.get(old.port)
        if slot is None:
            raise ValueError(f"{old!r} was not a primary killed or failed over by this RedisClusterSet")

        def moved() -> ClusterNode | None:
            if not self._check_ok(replicas=False):
                return None
            port = self.view().owner(slot)
            return self.node(port) if port is not None and port != old.port else None

        return wait_until(moved, timeout, f"failover of {old!r}'s slots")

    def wait_ok(self, timeout: float = 10.0, replicas: bool = False) -> None:
        """Wait until every running node reports ``cluster_state:ok`` and sees all 16384 slots on
        running primaries, all of them alike; with ``replicas``, also until every running node is
        a primary with slots or a replica whose link to its running primary is up."""
        wait_until(lambda: self._check_ok(replicas), timeout, "cluster_state:ok on every running node")

    def _check_ok(self, replicas: bool) -> bool:
        running = {n.port for n in self.running()}
        seen = None
        for node in self.running():
            if "cluster_state:ok" not in node.call("CLUSTER", "INFO"):
                return False
            view = self.view(node)
            owners = sorted(view.masters.items())
            if not view.covered() or set(view.masters) - running or (seen is not None and owners != seen):
                return False
            seen = owners
            if replicas:
                if running - set(view.masters) - {r for r, p in view.replicas.items() if p in running}:
                    return False
                if node.port in view.replicas:
                    info = node.info("replication")
                    if info.get("master_link_status") != "up" or info.get("master_port") != view.replicas[node.port]:
                        return False
        return seen is not None


# -- Sentinel ------------------------------------------------------------------------------------


class SentinelServer(_Node):
    """``redis-server sentinel.conf --sentinel`` watching one service."""

    def __init__(self, service: str, primary_port: int, quorum: int, down_after_ms: int, failover_timeout_ms: int,
                 password: str | None, sentinel_password: str | None, binary: str | None) -> None:
        port = free_port()
        workdir = tempfile.mkdtemp(prefix=f"sentinel-{port}-")
        conf = os.path.join(workdir, "sentinel.conf")
        lines = [
            f"port {port}", "bind 127.0.0.1", f"dir {workdir}", "daemonize no",
            f"sentinel monitor {service} 127.0.0.1 {primary_port} {quorum}",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {failover_timeout_ms}",
            f"sentinel parallel-syncs {service} 1",
        ]
        if password:
            lines.append(f"sentinel auth-pass {service} {password}")
        if sentinel_password:
            lines.append(f"requirepass {sentinel_password}")
        with open(conf, "w") as f:  # sentinel rewrites it (its id, known replicas and sentinels)
            f.write("\n".join(lines) + "\n")
        super().__init__(port=port, password=sentinel_password, workdir=workdir, binary=binary)
        # A sentinel takes its settings from its file only; RedisServer's data options do not apply.
        self.args = [binary or find_redis_server(), conf, "--sentinel"]


class RedisSentinelSet:
    """A primary with ``replicas`` replicas, watched as ``service`` by ``sentinels`` sentinels.

    ``password`` protects the data nodes (``requirepass``/``masterauth``, the sentinels' ``auth-pass``);
    ``sentinel_password`` the sentinels (``requirepass``). ``url`` is the ``redis+sentinel://`` URL.
    """

    def __init__(self, replicas: int = 2, sentinels: int = 3, service: str = "mymaster",
                 password: str | None = None, sentinel_password: str | None = None,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 2000, binary: str | None = None) -> None:
        self.service = service
        self.password = password
        self.sentinel_password = sentinel_password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.replicas_wanted = replicas
        self.sentinels_wanted = sentinels
        self.binary = binary or find_redis_server()
        self.data: list[_Node] = []
        self.sentinels: list[SentinelServer] = []

    def _data_node(self, replica_of: int | None = None) -> _Node:
        node = _Node(password=self.password, binary=self.binary,
                     extra_args=[*_FAST_SYNC, *(["--masterauth", self.password] if self.password else [])])
        node.replica_of(replica_of)
        return node

    def start(self, timeout: float = 20.0) -> "RedisSentinelSet":
        started = time.monotonic()
        try:
            primary = self._data_node().start()
            self.data.append(primary)
            for _ in range(self.replicas_wanted):
                self.data.append(self._data_node(replica_of=primary.port).start())
            # Replicas linked before the sentinels start: a sentinel learns them from its first INFO
            # of the primary (afterwards it asks only every 10 s).
            wait_until(lambda: all(n.info("replication").get("master_link_status") == "up" for n in self.data[1:]),
                       timeout, "replicas linked to the primary")
            quorum = self.sentinels_wanted // 2 + 1
            for _ in range(self.sentinels_wanted):
                sentinel = SentinelServer(self.service, primary.port, quorum, self.down_after_ms,
                                          self.failover_timeout_ms, self.password, self.sentinel_password,
                                          self.binary)
                self.sentinels.append(sentinel.start())
            self.wait_ready(timeout=timeout - (time.monotonic() - started))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.sentinels + self.data:
            node.stop(signal.SIGKILL)
            shutil.rmtree(node.dir, ignore_errors=True)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        query = f"?sentinel_password={self.sentinel_password}" if self.sentinel_password else ""
        return f"redis+sentinel://{auth}{hosts}/{self.service}/0{query}"

    # -- topology -----------------------------------------------------------------------------

    def node(self, port: int) -> _Node:
        return next(n for n in self.data if n.port == port)

    def sentinel_views(self) -> list[dict]:
        """``SENTINEL MASTER service`` of every running sentinel."""
        views = []
        for s in self.sentinels:
            if s.running:
                with s.client() as c:
                    views.append(c.sentinel_master(self.service))
        return views

    def primary(self) -> _Node:
        """The primary every running sentinel names (raises if they disagree)."""
        ports = {int(v["port"]) for v in self.sentinel_views()}
        if len(ports) != 1:
            raise ValueError(f"the sentinels disagree on the primary: {sorted(ports)}")
        return self.node(ports.pop())

    def replicas(self) -> list[_Node]:
        primary = self.primary()
        return [n for n in self.data if n is not primary]

    def wait_ready(self, timeout: float = 30.0) -> _Node:
        """Wait until every running sentinel names one running primary that says ``role:master``, knows
        every running replica and every other running sentinel, and every running replica's link to
        that primary is up; returns the primary.

        After a switch-over the old primary stays a primary, accepting writes, until a sentinel's
        periodic ``INFO`` of it (every 10 s) sees the mismatch and demotes it; every sentinel then
        needs its own next ``INFO`` to see it as a healthy replica: up to about 20 s in all.
        """
        return wait_until(self._ready, timeout, f"sentinels agreeing on {self.service!r} and its replicas")

    def _ready(self) -> _Node | None:
        views = self.sentinel_views()
        live_sentinels = sum(s.running for s in self.sentinels)
        ports = {int(v["port"]) for v in views}
        if len(ports) != 1:
            return None
        primary = self.node(ports.pop())
        if not primary.running or primary.info("replication").get("role") != "master":
            return None
        live_replicas = [n for n in self.data if n.running and n is not primary]
        for v in views:
            if not v.get("is_master") or v.get("is_sdown") or v.get("is_odown") or v.get("is_failover_in_progress"):
                return None
            if int(v["num-other-sentinels"]) < live_sentinels - 1:
                return None
        # Every sentinel must see every running replica as a healthy replica of that primary, or it
        # may answer a SENTINEL FAILOVER with NOGOODSLAVE.
        for s in self.sentinels:
            if not s.running:
                continue
            with s.client() as c:
                known = {int(r["port"]): r for r in c.sentinel_slaves(self.service)}
            for n in live_replicas:
                r = known.get(n.port)
                if r is None or set(r["flags"].split(",")) != {"slave"} or r.get("master-link-status") != "ok" \
                        or int(r.get("master-port", 0)) != primary.port:
                    return None
        for n in live_replicas:
            info = n.info("replication")
            if info.get("master_port") != primary.port or info.get("master_link_status") != "up":
                return None
        return primary

    # -- faults -------------------------------------------------------------------------------

    def kill(self, node: _Node) -> None:
        node.kill()

    def restart(self, node: _Node, as_replica: bool = True, timeout: float = 30.0) -> None:
        """Start a stopped data node again on its port. ``as_replica`` (default) starts it as a replica
        of the current primary, as a deployment whose sentinel rewrote its config file would;
        otherwise it comes back as the primary it was and waits for the sentinels to demote it.
        Waits until the set is ready again."""
        node.replica_of(self.primary().port if as_replica else None)
        node.start()
        self.wait_ready(timeout=timeout)

    def failover(self) -> None:
        """``SENTINEL FAILOVER service`` on a running sentinel: a switch-over without agreement."""
        sentinel = next(s for s in self.sentinels if s.running)
        sentinel.call("SENTINEL", "FAILOVER", self.service)

    def wait_failover(self, old: _Node, timeout: float = 10.0) -> _Node:
        """Wait until every running sentinel names a primary other than ``old`` and that node says
        ``role:master``; returns it (the old one may not have been reconfigured yet)."""

        def switched() -> _Node | None:
            ports = {int(v["port"]) for v in self.sentinel_views()}
            if len(ports) != 1 or old.port in ports:
                return None
            new = self.node(ports.pop())
            return new if new.info("replication").get("role") == "master" else None

        return wait_until(switched, timeout, f"the sentinels naming a primary other than {old!r}")
