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
next round, never raised into a connection. A refresh round is one command per group (a
reconciliation round reasserts instead of refreshing: still one), whatever the number of sockets.

Presence frames to opted-in clients are bounded per socket and group (:meth:`PresenceKeeper.frame`):
a change goes out at once when the last frame is at least :data:`FRAME_INTERVAL` old; the
changes that come sooner are merged into one frame sent when that interval is over (a join and
the leave of the same connection cancel out), so a socket gets at most three frames a second per
group, whatever the churn. Past ``events_max`` members the layer sends nothing but the switch to
count mode (``m: "c"``); the sidecar then reads the group's counts (O(1)) at most once every
:data:`COUNT_SECONDS` while it has opted-in sockets in it, and sends the counts when they
changed: a reconnect storm of a big group costs each member one count update a second.
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

__all__ = ["PresenceKeeper", "SWEEP_SECONDS", "REASSERT_EVERY", "FRAME_INTERVAL", "COUNT_SECONDS"]

log = logging.getLogger(__name__)

#: Seconds between presence sweeps.
SWEEP_SECONDS = 2.0
#: Every this many refresh rounds, every group is reasserted (reconciliation).
REASSERT_EVERY = 10
#: Longest wait of the keeper's loop (it notices a topology change within it).
_TICK = 1.0
#: Shortest time between two presence frames of one group to one socket (changes in between are merged).
FRAME_INTERVAL = 0.34
#: Seconds between count reads of a group in count mode (past ``events_max``), while opted-in sockets follow it.
COUNT_SECONDS = 1.0


def merge(pending: dict[str, Any] | None, body: dict[str, Any]) -> dict[str, Any]:
    """``pending`` (a presence frame not sent yet) updated by the later change ``body``: the counts,
    number and mode of the later one, the events of both (a join whose leave follows is dropped
    with it: the client never saw it), ``stale`` when either was."""
    events = body.get("ev")
    if pending is None:
        out = dict(body)
        out["ev"] = list(events) if isinstance(events, list) else []
        return out
    merged = list(pending.get("ev") or [])
    for ev in events if isinstance(events, list) else ():
        if isinstance(ev, list) and len(ev) >= 2 and ev[0] == "l":
            joined = next((i for i in range(len(merged) - 1, -1, -1)
                           if merged[i][0] == "j" and merged[i][1] == ev[1]), None)
            if joined is not None and not any(e[0] == "l" and e[1] == ev[1] for e in merged[joined + 1:]):
                del merged[joined]
                continue
        merged.append(ev)
    stale = pending.get("stale") or body.get("stale")
    out = dict(body)
    out["ev"] = merged
    if stale:
        out["stale"] = True
    return out


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
        #: Opted-in sockets following groups in count mode, by group; the counts last sent.
        self.counting: dict[str, set["Follower"]] = {}
        self._counted: dict[str, tuple[int, int]] = {}
        self._fresh: set["Follower"] = set()  # entered count mode: get the counts at the next read
        self._next_count = 0.0

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
        for group in list(follower.pframes):
            self.uncount(follower, group)
        follower.pframes.clear()
        if not follower.presence:
            return
        for group, entry in follower.presence.items():
            self._forget(group, entry["id"])
            self._removals.setdefault(group, set()).add(entry["id"])
        follower.presence.clear()
        self._wake.set()

    # -- presence frames to opted-in sockets ----------------------------------------------------

    def frame(self, follower: "Follower", body: dict[str, Any]) -> None:
        """A presence change for ``follower``'s socket: written now, or merged into the frame sent
        when :data:`FRAME_INTERVAL` since its last one is over."""
        group = body.get("g")
        if not isinstance(group, str):
            return
        mode = body.get("m")
        if mode == "c":
            self.count(follower, group, fresh=False)  # this change has the counts
        elif mode == "e":
            self.uncount(follower, group)
        now = time.monotonic()
        slot = follower.pframes.get(group)
        if slot is None:
            slot = follower.pframes[group] = [0.0, None]
        if slot[1] is None and now >= slot[0]:
            slot[0] = now + FRAME_INTERVAL
            follower.side.write_control({"t": "p", **body})
            self.sidecar.stats.resumes["presence_frames"] += 1
            return
        if slot[1] is None:
            gevent.spawn_later(slot[0] - now, self._flush, follower, group)
        else:
            self.sidecar.stats.resumes["presence_merged"] += 1
        slot[1] = merge(slot[1], body)

    def _flush(self, follower: "Follower", group: str) -> None:
        slot = follower.pframes.get(group)
        if slot is None or slot[1] is None:
            return
        body, slot[1] = slot[1], None
        slot[0] = time.monotonic() + FRAME_INTERVAL
        follower.side.write_control({"t": "p", **body})
        self.sidecar.stats.resumes["presence_frames"] += 1

    def count(self, follower: "Follower", group: str, fresh: bool = True) -> None:
        """``follower`` follows ``group`` in count mode: it gets the counts read every :data:`COUNT_SECONDS`
        when they changed (``fresh``: the next ones whatever they are)."""
        members = self.counting.setdefault(group, set())
        if follower not in members:
            members.add(follower)
            if fresh:
                self._fresh.add(follower)
            self._wake.set()

    def uncount(self, follower: "Follower", group: str) -> None:
        members = self.counting.get(group)
        if members is not None and follower in members:
            members.discard(follower)
            self._fresh.discard(follower)
            if not members:
                del self.counting[group]
                self._counted.pop(group, None)

    def _read_counts(self, now: float) -> None:
        """Count mode: the counts of each group followed, sent to its sockets when they changed (to a
        socket that just entered count mode, whatever they are)."""
        self._next_count = now + COUNT_SECONDS
        fresh, self._fresh = self._fresh, set()
        for group, members in list(self.counting.items()):
            try:
                counts = self.sidecar.layer._presence_counts(group)
            except Exception as e:
                log.debug("reading the presence counts of %r failed: %s", group, e)
                continue
            stats = self.sidecar.stats
            stats.resumes["presence_count_reads"] += 1
            value = (int(counts.get("clients", 0)), int(counts.get("users", 0)))
            changed = self._counted.get(group) != value
            self._counted[group] = value
            body = {"g": group, "c": value[0], "u": value[1], "m": "c", "ev": []}
            for follower in list(members):
                if changed or follower in fresh:
                    side = follower.side
                    if side.session is None or not side.session.open:
                        continue
                    self.frame(follower, body)

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
        due = min(self._next_sweep, self._next_refresh if self.members else float("inf"),
                  self._next_count if self.counting else float("inf"))
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
        if self.counting and now >= self._next_count:
            self._read_counts(now)
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
        """Renew the lease in every group: one command per group (a reconciliation round reasserts
        each group instead, which renews the lease too)."""
        groups = sorted(self.members)
        self._next_refresh = now + max(0.5, min(self.ttl.get(g, 60.0) for g in groups) / 3)
        self._rounds += 1
        if self._rounds % REASSERT_EVERY == 0:
            self._reassert.update(groups)
            return
        try:
            alive = self.sidecar.layer.presence_refresh(self.owner, groups)
        except Exception as e:
            log.warning("presence refresh of %d group(s) failed: %s", len(groups), e)
            return
        self.sidecar.stats.resumes["presence_refresh_commands"] += len(groups)
        for group, ok in zip(groups, alive):
            if not ok:
                self._reassert.add(group)

    def reassert(self, group: str) -> None:
        """Make the layer's entries of ``group`` owned by this sidecar exactly those of its open sockets."""
        entries = {cid: {"user": e.get("u"), "info": e.get("i"), "since": e.get("s")}
                   for cid, e in self.members.get(group, {}).items()}
        self.sidecar.stats.resumes["presence_refresh_commands"] += 1
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
