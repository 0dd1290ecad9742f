"""Traffic and stopwatches for the failover tests (``test_redis_failover.py``) and
``benchmarks/failover_timeline.py``.

Threads that use a real layer on a real Sentinel set or Redis Cluster and record every
outcome with its time: :class:`SendLoop` (sends a numbered message every few ms),
:class:`ReceiveLoop` (a blocking reader), :class:`GroupLoop` (group sends to members read
by a :class:`ReceiveLoop` on their process prefix). :class:`PromotionWatch` polls the
deployment and notes the first moment a new primary is visible (to any sentinel, or to any
cluster node) and answers as one. :class:`Topology` hides which kind of deployment it is.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import redis

from wsgi_channels.exceptions import LayerUnavailable
from wsgi_channels.layers import from_url

__all__ = ["SendLoop", "ReceiveLoop", "GroupLoop", "PromotionWatch", "Topology", "Outcome", "cut_off_replicas"]


def cut_off_replicas(primary: Any, replicas: int) -> None:
    """Disconnect ``primary``'s replicas and keep them out (``maxclients`` at the clients left), so
    that writes acknowledged from now on are not replicated (a Redis 7 replica reconnects at once,
    and would take them from the backlog). Connections already open keep working."""
    with primary.client() as c:
        connected = int(c.info("clients")["connected_clients"])
        c.config_set("maxclients", max(1, connected - 1 - replicas))  # this connection goes too
        c.execute_command("CLIENT", "KILL", "TYPE", "replica")


@dataclass
class Outcome:
    seq: int
    start: float
    end: float
    error: BaseException | None = None


class _Loop(threading.Thread):
    def __init__(self, url: str, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.interval = interval
        self.outcomes: list[Outcome] = []
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        self.join(15)

    def errors(self) -> list[BaseException]:
        return [o.error for o in self.outcomes if o.error is not None]

    def unexpected(self) -> list[BaseException]:
        """Errors callers must never see (anything but LayerUnavailable)."""
        return [e for e in self.errors() if not isinstance(e, LayerUnavailable)]

    def first_ok_after(self, t: float) -> Outcome | None:
        return next((o for o in self.outcomes if o.start >= t and o.error is None), None)

    def failed_after(self, t: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.start >= t and o.error is not None]

    def acked_after(self, t: float) -> list[int]:
        return [o.seq for o in self.outcomes if o.start >= t and o.error is None]


class SendLoop(_Loop):
    """``layer.send(channel, {"seq": n})`` every ``interval`` seconds, through a layer of its own."""

    def __init__(self, url: str, channel: str, interval: float = 0.01, call: str = "send", **options: Any) -> None:
        super().__init__(url, interval)
        self.channel = channel
        self.call = call
        self.options = options

    def run(self) -> None:
        layer = from_url(self.url, **self.options)
        seq = 0
        try:
            while not self.stopping.is_set():
                seq += 1
                start = time.monotonic()
                try:
                    getattr(layer, self.call)(self.channel, {"seq": seq})
                except BaseException as e:  # recorded: the test asserts which kinds occurred
                    self.outcomes.append(Outcome(seq, start, time.monotonic(), e))
                else:
                    self.outcomes.append(Outcome(seq, start, time.monotonic()))
                time.sleep(self.interval)
        finally:
            layer.close()


class GroupLoop(SendLoop):
    """``layer.send_group(group, {"seq": n})`` every ``interval`` seconds."""

    def __init__(self, url: str, group: str, interval: float = 0.02) -> None:
        super().__init__(url, group, interval, call="send_group")


class ReceiveLoop(_Loop):
    """Blocking receives (``receive_batch`` of a process prefix, or ``receive`` of plain channels)
    in a loop; records every message's seq with its arrival time, and every error."""

    def __init__(self, url: str, channels: list[str], timeout: float = 1.0) -> None:
        super().__init__(url, 0.0)
        self.channels = channels
        self.timeout = timeout
        self.got: list[tuple[str, int, float]] = []
        self.ready = threading.Event()

    def run(self) -> None:
        layer = from_url(self.url)
        try:
            while not self.stopping.is_set():
                start = time.monotonic()
                try:
                    if self.channels[0].endswith("!"):
                        batch = layer.receive_batch(self.channels, 100, block=True, timeout=self.timeout)
                    else:
                        channel, message = layer.receive(self.channels, block=True, timeout=self.timeout)
                        batch = [(channel, message)] if channel is not None else []
                except BaseException as e:
                    self.outcomes.append(Outcome(0, start, time.monotonic(), e))
                    time.sleep(0.05)
                    continue
                self.ready.set()
                now = time.monotonic()
                for channel, message in batch:
                    self.got.append((channel, message["seq"], now))
        finally:
            layer.close()

    def seqs(self, channel: str | None = None) -> list[int]:
        return [seq for ch, seq, _ in self.got if channel is None or ch == channel]


class PromotionWatch(threading.Thread):
    """Polls ``check()`` every 20 ms until it returns true; ``at`` is the monotonic time it first did."""

    def __init__(self, check: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.check = check
        self.at: float | None = None
        self.result: Any = None
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                result = self.check()
            except (redis.RedisError, OSError, ValueError, KeyError, LookupError):
                result = None
            if result:
                self.at, self.result = time.monotonic(), result
                return
            time.sleep(0.02)

    def wait(self, timeout: float) -> float:
        self.join(timeout)
        self.stopping.set()
        if self.at is None:
            raise TimeoutError(f"no promotion seen within {timeout}s")
        return self.at


class Topology:
    """A Sentinel set or a Redis Cluster behind one interface: which primary serves a key, how to
    kill or switch it over, and a watch for the first moment its successor is visible."""

    def __init__(self, kind: str, deployment: Any) -> None:
        self.kind = kind
        self.d = deployment

    @property
    def url(self) -> str:
        return self.d.url

    @property
    def replicas_per_primary(self) -> int:
        return self.d.replicas_wanted

    def primary_for(self, key: bytes) -> Any:
        return self.d.primary() if self.kind == "sentinel" else self.d.primary_for_key(key)

    def watch_promotion(self, old: Any) -> PromotionWatch:
        """Started before the fault: notes when any sentinel (any cluster node) first names a successor of
        ``old`` that answers ``ROLE`` as a primary."""
        if self.kind == "sentinel":
            sentinels, data = self.d.sentinels, self.d.data

            def check() -> Any:
                for s in sentinels:
                    if not s.running:
                        continue
                    with s.client() as c:
                        host, port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.d.service)
                    if int(port) != old.port:
                        node = next(n for n in data if n.port == int(port))
                        if node.call("ROLE")[0] == "master":
                            return node
                return None
        else:
            slot = self.d.view().masters[old.port][0][0]
            nodes = list(self.d.nodes)

            def check() -> Any:
                for n in nodes:
                    if n is old or not n.running:
                        continue
                    owner = self.d.view(n).owner(slot)
                    if owner is not None and owner != old.port:
                        new = self.d.node(owner)
                        if new.call("ROLE")[0] == "master":
                            return new
                return None

        watch = PromotionWatch(check)
        watch.start()
        return watch

    def kill(self, node: Any) -> None:
        self.d.kill(node)

    def switchover(self, node: Any) -> None:
        if self.kind == "sentinel":
            self.d.failover()
        else:
            self.d.failover(self.d.replicas_of(node)[0])
