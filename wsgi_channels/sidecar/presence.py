"""The sidecar owns its sockets' presence entries: it keeps them alive, removes them, puts them back.

A connect consumer's ``Group(g).add(reply_channel, presence={...})`` makes the entry in the
layer, and the layer's membership notice (``__wsc_n`` with ``p``) tells the sidecar, which from
then on is the entry's owner (its process prefix is the owner's name):

- every ``ttl/3`` (the shortest ttl of its groups) it renews its lease in each group
  (``presence_refresh``); a group that answers False (the lease passed: the entries were swept,
  a Redis lost them) gets its entries back (``presence_reassert``), and every tenth round every
  group does, as a reconciliation;
- a socket that closes has its entries removed (``presence_remove``), batched per group;
- after a change of the layer's servers (``on_topology_change``: a failover) every group is
  reasserted at once;
- every :data:`SWEEP_SECONDS` it sweeps (``presence_sweep``): entries of an owner whose lease
  passed (a sidecar killed with ``kill -9``) are removed and their leaves sent, so they vanish
  within their ttl plus a sweep period whichever sidecar is left.

One greenlet does all of it (:meth:`PresenceKeeper.run`); layer failures are logged and retried
next round, never raised into a connection.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event

if TYPE_CHECKING:  # pragma: no cover
    from .resume import Follower
    from .server import Sidecar

__all__ = ["PresenceKeeper", "SWEEP_SECONDS", "REASSERT_EVERY"]

log = logging.getLogger(__name__)

#: Seconds between presence sweeps.
SWEEP_SECONDS = 2.0
#: Every this many refresh rounds, every group is reasserted (reconciliation).
REASSERT_EVERY = 10
#: Longest wait of the keeper's loop (it notices a topology change within it).
_TICK = 1.0


class PresenceKeeper:
    """The presence entries of one sidecar's sockets, by group, and the loop that keeps them."""

    def __init__(self, sidecar: "Sidecar") -> None:
        self.sidecar = sidecar
        self.owner = sidecar.prefix
        #: ``{group: {conn_id: notice entry}}`` of open sockets.
        self.members: dict[str, dict[str, dict[str, Any]]] = {}
        self.ttl: dict[str, float] = {}
        self._removals: dict[str, set[str]] = {}
        self._reassert: set[str] = set()
        self._topology_changed = False
        self._wake = gevent.event.Event()
        self._rounds = 0
        self._next_refresh = 0.0
        self._next_sweep = 0.0

    # -- from the connections ------------------------------------------------------------------

    def joined(self, follower: "Follower", group: str, entry: dict[str, Any]) -> None:
        self.members.setdefault(group, {})[entry["id"]] = entry
        try:
            ttl = float(entry.get("ttl") or 60.0)
        except (TypeError, ValueError):
            ttl = 60.0
        if ttl < self.ttl.get(group, float("inf")):
            self.ttl[group] = ttl
            self._wake.set()  # the refresh period may have become shorter

    def left(self, follower: "Follower", group: str, entry: dict[str, Any]) -> None:
        """The app discarded the socket from ``group`` (the layer removed the entry itself)."""
        self._forget(group, entry["id"])

    def closed(self, follower: "Follower") -> None:
        """The socket closed: its entries go (batched, from the keeper's greenlet)."""
        for group, entry in follower.presence.items():
            self._forget(group, entry["id"])
            self._removals.setdefault(group, set()).add(entry["id"])
        follower.presence.clear()
        self._wake.set()

    def _forget(self, group: str, cid: str) -> None:
        members = self.members.get(group)
        if members is not None:
            members.pop(cid, None)
            if not members:
                del self.members[group]
                self.ttl.pop(group, None)

    def topology_changed(self) -> None:
        """Called by the layer (maybe from another thread): reassert everything next round."""
        self._topology_changed = True

    # -- the loop ------------------------------------------------------------------------------

    def run(self, stopped: gevent.event.Event) -> None:
        layer = self.sidecar.layer
        try:
            layer.on_topology_change(self.topology_changed)
        except Exception as e:  # a layer without it never moves
            log.debug("on_topology_change not available: %s", e)
        while not stopped.is_set():
            try:
                self.round(time.monotonic())
            except Exception:  # never lose the loop
                log.exception("presence upkeep failed")
            self._wake.clear()
            self._wake.wait(timeout=self._delay())

    def _delay(self) -> float:
        if self._removals or self._reassert or self._topology_changed:
            return 0.0
        now = time.monotonic()
        due = min(self._next_sweep, self._next_refresh if self.members else float("inf"))
        return max(0.0, min(_TICK, due - now))

    def round(self, now: float) -> None:
        """One pass: removals, then a refresh and a sweep when due."""
        layer = self.sidecar.layer
        stats = self.sidecar.stats
        removals, self._removals = self._removals, {}
        for group, ids in removals.items():
            try:
                layer.presence_remove(group, self.owner, sorted(ids))
                stats.resumes["presence_removed"] += len(ids)
            except Exception as e:
                log.warning("removing %d presence entr(ies) of %r failed: %s", len(ids), group, e)
                if not self.sidecar.draining:
                    self._removals.setdefault(group, set()).update(ids)
        if self._topology_changed:
            self._topology_changed = False
            self._reassert.update(self.members)
        if self.members and now >= self._next_refresh:
            self._refresh(now)
        if self._reassert:
            groups, self._reassert = self._reassert, set()
            for group in groups:
                self.reassert(group)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_SECONDS
            try:
                changes = layer.presence_sweep()
                if changes:
                    stats.resumes["presence_swept"] += sum(
                        sum(1 for ev in c.events if ev and ev[0] == "l") for c in changes)
            except Exception as e:
                log.debug("presence sweep failed: %s", e)

    def _refresh(self, now: float) -> None:
        groups = sorted(self.members)
        self._next_refresh = now + max(0.5, min(self.ttl.get(g, 60.0) for g in groups) / 3)
        self._rounds += 1
        try:
            alive = self.sidecar.layer.presence_refresh(self.owner, groups)
        except Exception as e:
            log.warning("presence refresh of %d group(s) failed: %s", len(groups), e)
            return
        every = self._rounds % REASSERT_EVERY == 0
        for group, ok in zip(groups, alive):
            if every or not ok:
                self._reassert.add(group)

    def reassert(self, group: str) -> None:
        """Make the layer's entries of ``group`` owned by this sidecar exactly those of its open sockets."""
        entries = {cid: {"user": e.get("u"), "info": e.get("i"), "since": e.get("s")}
                   for cid, e in self.members.get(group, {}).items()}
        try:
            change = self.sidecar.layer.presence_reassert(self.owner, group, entries)
        except Exception as e:
            log.warning("reasserting the presence of %r failed: %s", group, e)
            self._reassert.add(group)
            return
        if change is not None:
            self.sidecar.stats.resumes["presence_reasserted"] += 1

    def stop(self) -> None:
        """The sidecar stops: remove every entry it still owns (its sockets are closed)."""
        for group, ids in list(self._removals.items()) + [(g, set(m)) for g, m in self.members.items()]:
            try:
                self.sidecar.layer.presence_remove(group, self.owner, sorted(ids))
            except Exception as e:
                log.debug("removing presence of %r at stop failed: %s", group, e)
        self._removals.clear()
        self.members.clear()
