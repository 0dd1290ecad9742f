"""The receiving half of the Redis layer: ``receive``, ``receive_batch`` and their waits.

A mixin of :class:`~wsgi_channels.layers.redis.RedisChannelLayer` (its state lives there).
A channel list is planned once per shard (:class:`~.plans.ShardPlan`): the queues on that
shard and their receive scripts' commands, packed once. A receive pops the first live entry
of those queues in one script per shard (a single plain channel needs only ``LPOP``); the
layer's :class:`~.delivery.Delivery` turns a popped group entry (one copy for every member
behind a ``prefix!``) into one ``(channel, message)`` per member, the rest kept in the
layer's copy buffer.

Waiting: plain channels on one shard wait on the server with ``BLPOP`` (a batch receive,
on Redis 7, with ``BLMPOP``, which also takes a backlog whole); anything else
(process-local ``prefix!`` queues, several shards) waits on the shards' doorbells
(:mod:`.wakeup`), registered before the pop attempt that precedes each wait, so a
push after that attempt always wakes the reader; only the scripts pop those queues.

A blocking receive on a shard that can fail over (a Sentinel service) rides out a failover
within its own wait: when its server goes away it asks where the primary is now (at most
every 100 ms) and goes on waiting there; only when its wait ends first does it raise
``LayerUnavailable``. Doorbell registrations are made again after a failover.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Iterator

from redis.exceptions import ResponseError

from ... import exceptions as exc
from ..base import Received
from . import cluster_scripts as cscripts
from . import connection
from . import scripts
from .bodies import Bodies
from .connection import NOW, Script, Shard, bulk
from .copies import CopyBuffer
from .delivery import Delivery
from .entries import message_body
from .entries import deadline as entry_deadline
from .plans import ShardPlan
from .wakeup import Watch

__all__ = ["ReceivingMixin"]

log = logging.getLogger(__name__)

_READ_DONE = Script(scripts.READ_DONE)
_C_READ_DONE = Script(cscripts.READ_DONE)


class ReceivingMixin:
    """``receive`` and ``receive_batch`` of :class:`~wsgi_channels.layers.redis.RedisChannelLayer`.

    Uses the layer's key prefix and name lookup (``_p``, ``_shard_of``), its bodies
    (``_bodies``), what delivers popped entries (``_delivery``) and its receiving state:
    plans (``_plans``), copy buffer (``_copies``), round-robin counter (``_rr``), this
    thread's doorbell registration (``_local``, ``_epoch``), the longest server-side wait
    (``_block_step``).
    """

    _p: str
    _plans: dict
    _bodies: Bodies
    _delivery: Delivery
    _copies: CopyBuffer
    _rr: int
    _local: Any
    _epoch: int
    topology_epoch: int
    _block_step: float
    expiry: float
    _shard_of: Any
    _receive_channels: Any
    _block_timeout: Any

    def _plan(self, names: list[str]) -> list[ShardPlan]:
        """Per shard, the queues of ``names`` on it, cached per channel list."""
        key = tuple(names)
        plan = self._plans.get(key)
        if plan is None:
            by_shard: dict[Any, list] = {}
            for name in dict.fromkeys(names):
                by_shard.setdefault(self._shard_of(name), []).append(name)
            plan = [ShardPlan(shard, shard_names, self._p) for shard, shard_names in by_shard.items()]
            if len(self._plans) >= 1000:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _try_receive(self, names: list[str], plan: list[ShardPlan]) -> tuple[str, dict] | None:
        if self._copies:
            got = self._delivery.take_buffered(names, 1)
            if got:
                return got[0]
        self._rr += 1
        count = len(plan)
        for i in range(count):
            entry = plan[(self._rr + i) % count]
            shard = entry.shard
            if entry.lpop is not None:
                popped = self._pop_plain(shard, entry.lpop)
                if popped is not None:
                    return entry.names[0], self._bodies.open(message_body(popped))
                continue
            command, shard_names = entry.receive(self._rr)
            reply = shard.call(entry.scripts[0], command + NOW % shard.now_ms())
            if reply is not None:
                return self._delivery.deliver(shard_names[reply[0] - 1], reply[1], reply[2])
        return None

    @staticmethod
    def _pop_plain(shard: Shard, lpop: bytes) -> bytes | None:
        """The first live entry of a plain channel's queue (one ``LPOP``; expired ones are dropped)."""
        while True:
            entry = shard.execute_packed(lpop)
            if entry is None or entry_deadline(entry) > shard.now_ms():
                return entry

    def _try_receive_batch(self, names: list[str], plan: list[ShardPlan], limit: int,
                           shared: bool) -> list[tuple[str, dict]]:
        """Up to ``limit`` messages: buffered group copies first, then one script per shard."""
        batch: list[tuple[str, dict]] = []
        if self._copies:
            batch = self._delivery.take_buffered(names, limit, shared)
            if len(batch) >= limit:
                return batch
        self._rr += 1
        count = len(plan)
        for i in range(count):
            if len(batch) >= limit:
                break
            entry = plan[(self._rr + i) % count]
            shard = entry.shard
            command, shard_names = entry.receive_many(self._rr)
            most = b"%d" % (limit - len(batch))
            reply = shard.call(entry.scripts[1], b"%s$%d\r\n%s\r\n" % (command, len(most), most)
                               + NOW % shard.now_ms())
            if not reply:
                continue
            now_ms = reply[-1]
            buffered = False
            for j in range(0, len(reply) - 1, 2):
                buffered = self._delivery.take_entry(shard_names[reply[j] - 1], reply[j + 1], now_ms, shared, batch) \
                    or buffered
            if buffered and len(batch) < limit:
                batch += self._delivery.take_buffered(names, limit - len(batch), shared)
        return batch

    def _resolve_plan(self, channels: Iterable[str]) -> tuple[list[str], list] | None:
        """The validated names and per-shard plan of a channel list (None when it is empty)."""
        plan = self._plans.get(tuple(channels)) if type(channels) is list else None
        if plan is not None:  # a channel list seen (and validated) before
            return channels, plan  # type: ignore[return-value]  # a list, checked just above
        names = self._receive_channels(channels)
        if not names:
            return None
        return names, self._plan(names)

    def _watch(self, names: list[str], plan: list, wait: float) -> Watch:
        """An event rung by every push to the queues of ``plan``, kept for this thread's next receive.

        A thread that receives on the same channels again and again (the worker, the
        sidecar's loop) keeps its doorbell registration between calls: its next wait then
        needs no second pop attempt after registering, one round trip instead of two.
        """
        key = tuple(names)
        generation = self._watch_generation()
        watch = getattr(self._local, "watch", None)
        if watch is not None:
            if watch.key == key and watch.generation == generation:
                return watch
            self._local.watch = None
            if watch.generation[0] == generation[0]:
                watch.release()
            else:
                watch.watched = []  # forked: the parent's listener is abandoned here, never touched
        watch = Watch(key, generation, [(entry.shard.bell(), entry.keys) for entry in plan], min(wait, 2.0))
        self._local.watch = watch
        return watch

    def _watch_generation(self) -> tuple:
        """What a doorbell registration depends on: the process (fork), the layer (``close()``), and
        where the servers are (a failover moves the doorbells, so registrations are made again)."""
        return connection.fork_generation(), self._epoch, self.topology_epoch

    def _watching(self, names: list[str]) -> Watch | None:
        """This thread's registration if it already watches exactly ``names`` (registered before any pop)."""
        watch = getattr(self._local, "watch", None)
        if watch is not None and watch.key == tuple(names) and watch.generation == self._watch_generation():
            return watch
        return None

    def receive(self, channels: Iterable[str], block: bool = False, timeout: float | None = None) -> Received:
        if self._copies and type(channels) is list and len(channels) == 1 and channels[0] in self._copies:
            # Fast path for a process's reader on its prefix: the next member of a group message
            # fetched already (only validated names ever get a buffer).
            taken = self._delivery.take_buffered(channels, 1)
            if taken:
                return taken[0]
        resolved = self._resolve_plan(channels)
        if resolved is None:
            return None, None
        names, plan = resolved
        if block:
            wait = self._block_timeout(block, timeout)
            if len(plan) == 1 and plan[0].plain and wait > 0:
                got = self._blocking_pop(plan[0], wait)  # answers at once when a message is waiting
            else:
                got = self._await(names, plan, wait, lambda: self._try_receive(names, plan))
        else:
            got = self._try_receive(names, plan)
        return got if got is not None else (None, None)

    def receive_batch(self, channels: Iterable[str], limit: int = 100, block: bool = False,
                      timeout: float | None = None, shared: bool = False) -> list[tuple[str, dict]]:
        """Up to ``limit`` messages at once, waiting (like :meth:`receive`) only for the first.

        One round trip per shard fetches up to ``limit`` entries (a quiet queue costs one
        empty answer, a busy one is drained in the same call), and a group message for many
        members of one prefix fills the batch from its single copy, so a process reading its
        ``prefix!`` drains a broadcast to thousands of its connections in a few calls.
        ``shared``: see :meth:`BaseChannelLayer.receive_batch`; here the members of one group
        message then get one dict between them instead of a copy each.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int of at least 1, got {limit!r}")
        resolved = self._resolve_plan(channels)
        if resolved is None:
            return []
        names, plan = resolved
        wait = self._block_timeout(block, timeout) if block else 0.0
        if wait > 0 and len(plan) == 1 and plan[0].plain:
            entry = plan[0]
            if entry.shard.blmpop is not False:
                # Redis 7: one BLMPOP takes a backlog, or waits for the next messages and takes them all.
                batch = self._blocking_pop_many(entry, wait, limit)
                if batch is not None:
                    return batch
            # Older servers: a backlog is taken in one round trip; an empty queue is waited on with BLPOP.
            if not entry.drained:
                batch = self._try_receive_batch(names, plan, limit, shared)
                if batch:
                    entry.drained = len(batch) < limit
                    return batch
            entry.drained = False
            got = self._blocking_pop(entry, wait)
            return [got] if got is not None else []
        if wait > 0 and len(plan) == 1 and len(names) == 1 and plan[0].shard.blmpop is not False \
                and not self._copies:
            # One process prefix (the sidecar's loop): BLMPOP, as for plain channels, instead of the
            # doorbell and a script.
            batch = self._blocking_pop_prefix(names, plan, wait, limit, shared)
            if batch is not None:
                return batch
        return self._await(names, plan, wait, lambda: self._try_receive_batch(names, plan, limit, shared), limit) or []

    def _blocking_pop_prefix(self, names: list[str], plan: list[ShardPlan], wait: float, limit: int,
                             shared: bool) -> list[tuple[str, dict]] | None:
        """Up to ``limit`` messages of one process prefix's queue with ``BLMPOP`` (Redis 7+), waiting up
        to ``wait`` seconds for the first; None when the server has no ``BLMPOP`` (then the doorbell
        and ``RECEIVE_MANY`` serve, as on Redis 6).

        What ``RECEIVE_MANY`` does besides popping is kept: ``READ_DONE``, written in the same
        round trip right after the pop, removes the unread flag once the queue is empty; popped
        entries that had expired are dropped and their members leave their groups (``EVICT``).
        While a ``BLMPOP`` waits, a push is popped at once, so entries can only sit unread between
        this process's receives: after a gap of half the expiry (and first of all), the script
        runs once before the wait, and buries the prefix if every message expired unread. The
        wait is not cut short by copies another thread of this process buffers meanwhile: the
        sidecar, which reads its prefix from one loop, never has any.
        """
        entry = plan[0]
        shard, name, queue = entry.shard, names[0], entry.keys[0]
        deadline = time.monotonic() + wait
        if time.monotonic() - entry.read_at > self.expiry / 2:
            backlog = self._try_receive_batch(names, plan, limit, shared)
            entry.read_at = time.monotonic()
            if backlog:
                return backlog
        read_done = _C_READ_DONE if shard.cluster else _READ_DONE
        done = b"*5\r\n" + bulk("EVALSHA", read_done.sha, 2, queue, shard.key("u", name))
        for keys, step in self._blocking_steps(entry, wait):
            pop = connection.packed("BLMPOP", step, 1, queue, "LEFT", "COUNT", limit)
            try:
                reply, cleared = shard.pipeline([done], read_done, then=pop, then_first=True)
            except exc.LayerUnavailable as e:
                self._ride_out(entry, deadline, e)
                entry.read_at = float("-inf")  # a new server: the script runs before the next wait
                return self._blocking_pop_prefix(names, plan, max(0.0, deadline - time.monotonic()), limit, shared)
            entry.read_at = time.monotonic()
            if type(reply) is ResponseError:
                self._no_blmpop(shard, reply)
                return None
            shard.blmpop = True
            if isinstance(cleared, Exception):
                # What was popped is still delivered; the flag is cleared by the next READ_DONE.
                log.warning("could not clear the unread flag of %s: %s", name, cleared)
            if reply is None:
                continue
            now_ms = shard.now_ms()
            batch: list[tuple[str, dict]] = []
            expired: list[str] = []
            buffered = False
            for data in reply[1]:
                if entry_deadline(data) <= now_ms:
                    expired += self._delivery.targets(name, data, now_ms)
                else:
                    buffered = self._delivery.take_entry(name, data, now_ms, shared, batch) or buffered
            if expired:
                self._delivery.evict(name, expired)
            if buffered and len(batch) < limit:
                batch += self._delivery.take_buffered(names, limit - len(batch), shared)
            if batch:
                return batch
        return []

    def _blocking_steps(self, entry: ShardPlan, wait: float) -> Iterator[tuple[list[bytes], str]]:
        """The keys, in the order to try, and the timeout of each blocking pop within ``wait`` seconds.

        Each pop asks for less than the socket timeout (the server times it out, never us),
        never for 0 (that would wait forever), and the channels' order turns each time so a
        busy one cannot starve the rest.
        """
        keys = entry.keys
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._rr += 1
            r = self._rr % len(keys)
            yield keys[r:] + keys[:r], "%.3f" % max(0.01, min(remaining, self._block_step))

    def _blocking_pop(self, entry: ShardPlan, wait: float) -> tuple[str, dict] | None:
        """The next message of plain channels on one shard, waiting up to ``wait`` seconds on the server.

        One ``BLPOP`` answers as soon as a message is pushed: no doorbell, no second pop.
        A plain channel's queue holds only ``m`` entries, so popping one outside a script
        skips nothing but an expired head, which is dropped here as the scripts drop it.
        """
        shard = entry.shard
        deadline = time.monotonic() + wait
        for keys, step in self._blocking_steps(entry, wait):
            try:
                reply = shard.execute_packed(connection.packed("BLPOP", *keys, step), blocking=True)
            except exc.LayerUnavailable as e:
                self._ride_out(entry, deadline, e)
                continue
            if reply is None:
                continue
            key, data = reply
            if entry_deadline(data) <= shard.now_ms():
                continue  # expired unread
            return entry.names[entry.keys.index(key)], self._bodies.open(message_body(data))
        return None

    def _blocking_pop_many(self, entry: ShardPlan, wait: float, limit: int,
                           first: Callable[[bytes], Any] | None = None) -> list[tuple[str, dict]] | None:
        """Up to ``limit`` messages of plain channels on one shard with ``BLMPOP`` (Redis 7+), waiting up
        to ``wait`` seconds for the first: one command, no script, whether a backlog waits or not.

        Returns None when the server has no ``BLMPOP``, or the user may not run it (it is then not
        tried again on that shard by this process). Expired entries are dropped here, as in
        :meth:`_blocking_pop`. ``first(command)``, when given, makes the first round trip
        instead of the shard (it writes other commands with it) and returns the pop's reply.
        """
        shard = entry.shard
        deadline = time.monotonic() + wait
        for keys, step in self._blocking_steps(entry, wait):
            command = connection.packed("BLMPOP", step, len(keys), *keys, "LEFT", "COUNT", limit)
            try:
                if first is not None:
                    write_with, first = first, None
                    reply = write_with(command)
                    if type(reply) is ResponseError:
                        raise reply
                else:
                    reply = shard.execute_packed(command, blocking=True)
            except ResponseError as e:
                self._no_blmpop(shard, e)
                return None
            except exc.LayerUnavailable as e:
                self._ride_out(entry, deadline, e)
                continue
            shard.blmpop = True
            if reply is None:
                continue
            key, entries = reply
            name = entry.names[entry.keys.index(key)]
            now_ms = shard.now_ms()
            batch = []
            for data in entries:
                if entry_deadline(data) <= now_ms:
                    continue  # expired unread
                try:
                    batch.append((name, self._bodies.open(message_body(data))))
                except exc.ChannelsError as e:
                    # One unreadable entry must not cost the rest of the batch, already popped.
                    log.error("dropped an unreadable message on %s: %s", name, e)
            if batch:
                return batch
        return []

    @staticmethod
    def _no_blmpop(shard: Shard, error: ResponseError) -> None:
        """Note that ``shard`` refused ``BLMPOP`` (Redis before 7.0, also after a restart as an older
        version, or an ACL without it): it is not tried again there. Any other error is raised."""
        text = str(error).lower()
        if "unknown command" not in text and not text.startswith("noperm"):
            raise error
        shard.blmpop = False

    def _pop_plan(self, channels: Iterable[str], wait: float) -> ShardPlan | None:
        """The plan of ``channels`` when a blocking batch receive on them is one ``BLMPOP`` (plain
        channels on one shard that has it, or may), else None."""
        resolved = self._resolve_plan(channels)
        if resolved is None or wait <= 0:
            return None
        plan = resolved[1]
        if len(plan) == 1 and plan[0].plain and plan[0].shard.blmpop is not False:
            return plan[0]
        return None

    def _await(self, names: list[str], plan: list, wait: float, attempt: Any, limit: int = 0) -> Any:
        """``attempt()`` until it returns something, for up to ``wait`` seconds.

        Nothing is popped outside the scripts, and the doorbell is registered before the
        attempt that precedes each wait, so a push after that attempt always wakes us.
        With ``limit`` (a batch receive), a batch shorter than it means that attempt emptied
        every queue; the next call then waits for the doorbell before popping again (one empty
        round trip fewer each time a busy reader catches up), unless it has rung already.
        """
        if wait <= 0:
            return attempt()
        deadline = time.monotonic() + wait
        watch = self._watching(names)
        if watch is None:
            got = attempt()  # the common case of a waiting message needs no registration
            if got:
                return got
            watch = self._watch(names, plan, wait)
        elif watch.drained:
            watch.event.wait(wait)  # at once if a push rang since the attempt that emptied the queues
        watch.drained = False
        event = watch.event
        while True:
            event.clear()  # a push after this pop attempt sets it again
            try:
                got = attempt()
            except exc.LayerUnavailable as e:
                self._ride_out(plan, deadline, e)
                got = None
            if got:
                watch.drained = 0 < len(got) < limit
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            event.wait(remaining)
            if watch.generation != self._watch_generation():  # a failover moved the doorbells
                watch = self._watch(names, plan, max(0.0, deadline - time.monotonic()))
                event = watch.event

    def _ride_out(self, plan: Any, deadline: float, error: exc.LayerUnavailable) -> None:
        """After ``error`` in a blocking receive: on shards that can fail over, wait (up to ``deadline``)
        until one of them moved, asking where their servers are at most every 100 ms, then return
        for the caller to go on there. Anything else, or no move in time, raises ``error``."""
        shards = [entry.shard for entry in plan] if isinstance(plan, list) else [plan.shard]
        if not any(shard.fails_over for shard in shards):
            raise error
        epochs = [shard.topology_epoch for shard in shards]
        while time.monotonic() < deadline:
            if any([shard.recheck() for shard in shards]) or [s.topology_epoch for s in shards] != epochs:
                return
            time.sleep(0.05)
        raise error
