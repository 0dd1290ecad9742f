"""State of the in-memory layer's history and presence groups (the layer holds its lock around every call).

A history group is a :class:`History`: its epoch (made when the group is first used, so
a new process or layer starts new streams), its latest offset ``top`` and the kept
messages ``(offset, expires, data)`` in offset order. Trimming (by ``size`` and by age)
only ever pops the oldest, so the kept offsets are contiguous and an offset's index is
``offset - first``.

A presence group is a :class:`Presence`: entries by conn_id, the per-user reference
counts (``users`` is their number: O(1) stats), each owner's lease (monotonic deadline)
and its entries, the change version ``v`` and the mode (``"e"`` events, ``"c"`` counts).
An owner with no entries left in a group has no lease there.
"""
from __future__ import annotations

import time
from collections import deque
from itertools import islice
from typing import Any, Mapping, Optional

from ..serialization import decode
from .features import PresenceChange, PresenceEntry, PresenceOptions, new_epoch, presence_change

__all__ = ["History", "Presence", "history_of", "sweep_idle"]

#: Seconds an empty presence group keeps its change version (then it is forgotten).
EMPTY_PRESENCE_KEEP = 3600.0
#: Meta lifetime of a history stream first touched by a reader with no pattern for it.
DEFAULT_META_TTL = 86400.0


class History:
    __slots__ = ("epoch", "top", "entries", "expires", "meta_ttl")

    def __init__(self, now: float, meta_ttl: float) -> None:
        self.epoch = new_epoch()
        self.top = 0
        self.entries: deque[tuple[int, float, bytes]] = deque()
        self.meta_ttl = meta_ttl
        self.expires = now + meta_ttl

    def _trim(self, now: float) -> None:
        entries = self.entries
        while entries and entries[0][1] <= now:
            entries.popleft()

    def append(self, data: bytes, now: float, size: int, ttl: float, meta_ttl: float) -> int:
        """Keep ``data`` under the next offset (trimmed to ``size`` and ``ttl``); return the offset."""
        self.top = offset = self.top + 1
        entries = self.entries
        entries.append((offset, now + ttl, data))
        while len(entries) > size:
            entries.popleft()
        self._trim(now)
        self.meta_ttl = meta_ttl
        self.expires = now + meta_ttl
        return offset

    def read(self, since: int, limit: int, now: float) -> list[tuple[int, bytes]]:
        """The kept ``(offset, data)`` with offset > ``since``, at most ``limit``; touches the meta."""
        self._trim(now)
        self.expires = max(self.expires, now + self.meta_ttl)
        entries = self.entries
        if not limit or not entries:
            return []
        start = max(0, since + 1 - entries[0][0])
        return [(offset, data) for offset, _, data in islice(entries, start, start + limit)]


def history_of(histories: dict[str, History], group: str, now: float, meta_ttl: Optional[float]) -> History:
    """The group's stream; a new one (new epoch, top 0) when it has none or its meta expired."""
    history = histories.get(group)
    if history is None or history.expires <= now:
        history = histories[group] = History(now, meta_ttl or DEFAULT_META_TTL)
    return history


class Member:
    __slots__ = ("user", "info", "since", "owner")

    def __init__(self, user: Optional[str], info: bytes, since: float, owner: str) -> None:
        self.user = user
        self.info = info  # encode({"i": info}): compared as bytes, decoded for each reader
        self.since = since
        self.owner = owner


def _info(data: bytes) -> Any:
    return decode(data)["i"]


class Presence:
    __slots__ = ("entries", "users", "owners", "by_owner", "v", "mode", "ttl", "events_max", "join_leave",
                 "max_members", "touched")

    def __init__(self, options: PresenceOptions) -> None:
        self.entries: dict[str, Member] = {}
        self.users: dict[str, int] = {}
        self.owners: dict[str, float] = {}
        self.by_owner: dict[str, set[str]] = {}
        self.v = 0
        self.mode = "e"
        self.touched = time.monotonic()
        self.configure(options)

    def configure(self, options: PresenceOptions) -> None:
        """Take the options of the latest add (processes share one configuration)."""
        self.ttl = options.ttl
        self.events_max = options.events_max
        self.join_leave = options.join_leave
        self.max_members = options.max_members

    # -- entries ----------------------------------------------------------------------------

    def _join(self, cid: str, member: Member) -> list[Any]:
        return ["j", cid, member.user, _info(member.info), int(member.since * 1000)]

    def _count_user(self, user: Optional[str], delta: int) -> None:
        if user is None:
            return
        n = self.users.get(user, 0) + delta
        if n > 0:
            self.users[user] = n
        else:
            self.users.pop(user, None)

    def put(self, cid: str, owner: str, user: Optional[str], info: bytes, since: float, now: float) -> Optional[list[Any]]:
        """Make or update an entry and renew its owner's lease (never shortened); the join event, or
        None when nothing about the entry changed. The caller checked ``max_members``."""
        member = self.entries.get(cid)
        event = None
        if member is None:
            member = self.entries[cid] = Member(user, info, since, owner)
            self.by_owner.setdefault(owner, set()).add(cid)
            self._count_user(user, 1)
            event = self._join(cid, member)
        elif member.user != user or member.info != info:
            self._count_user(member.user, -1)
            self._count_user(user, 1)
            member.user, member.info = user, info
            event = self._join(cid, member)
        lease = now + self.ttl
        if self.owners.get(owner, 0.0) < lease:
            self.owners[owner] = lease
        return event

    def _drop(self, cid: str, member: Member) -> list[Any]:
        del self.entries[cid]
        owned = self.by_owner.get(member.owner)
        if owned is not None:
            owned.discard(cid)
            if not owned:
                del self.by_owner[member.owner]
                self.owners.pop(member.owner, None)
        self._count_user(member.user, -1)
        return ["l", cid]

    def remove(self, cid: str, owner: str) -> Optional[list[Any]]:
        """Remove ``owner``'s entry ``cid``; its leave event, or None when it is not there."""
        member = self.entries.get(cid)
        if member is None or member.owner != owner:
            return None
        return self._drop(cid, member)

    def refresh(self, owner: str, now: float) -> bool:
        """Renew ``owner``'s lease if it has one (False: swept or never made)."""
        if owner not in self.owners:
            return False
        self.owners[owner] = max(self.owners[owner], now + self.ttl)
        return True

    def sweep(self, now: float) -> list[list[Any]]:
        """Remove the entries of every owner whose lease passed; their leave events."""
        events: list[list[Any]] = []
        for owner in [o for o, deadline in self.owners.items() if deadline <= now]:
            for cid in list(self.by_owner.get(owner, ())):
                events.append(self._drop(cid, self.entries[cid]))
            self.owners.pop(owner, None)
            self.by_owner.pop(owner, None)
        return events

    def reassert(self, owner: str, wanted: Mapping[str, tuple[Optional[str], bytes, float]],
                 now: float) -> list[list[Any]]:
        """Make ``owner``'s entries exactly ``wanted`` and renew its lease; the events."""
        events: list[list[Any]] = []
        for cid in list(self.by_owner.get(owner, ())):
            if cid not in wanted:
                events.append(self._drop(cid, self.entries[cid]))
        for cid, (user, info, since) in wanted.items():
            member = self.entries.get(cid)
            if member is not None and member.owner != owner:
                continue  # another owner's (cannot happen for real conn_ids: they name one channel)
            if member is None and len(self.entries) >= self.max_members:
                continue
            event = self.put(cid, owner, user, info, since if member is None else member.since, now)
            if event is not None:
                events.append(event)
        if wanted:
            self.owners[owner] = max(self.owners.get(owner, 0.0), now + self.ttl)
        return events

    # -- reads ------------------------------------------------------------------------------

    def live_entries(self, now: float) -> dict[str, PresenceEntry]:
        """Entries whose owner's lease has not passed (a dead owner's are left out at once)."""
        owners = self.owners
        return {cid: {"user": m.user, "info": _info(m.info), "since": m.since}
                for cid, m in self.entries.items() if owners.get(m.owner, 0.0) > now}

    def counts(self) -> dict[str, int]:
        return {"clients": len(self.entries), "users": len(self.users)}

    def notice_of(self, cid: str) -> dict[str, Any]:
        """The ``p`` of a membership notice: what the sidecar needs to keep this entry alive."""
        member = self.entries[cid]
        return {"id": cid, "ttl": self.ttl, "ev": self.events_max, "m": self.mode, "u": member.user,
                "i": _info(member.info), "s": member.since}

    # -- changes ----------------------------------------------------------------------------

    def changed(self, group: str, events: list[list[Any]], now: float) -> tuple[PresenceChange, Optional[PresenceChange]]:
        """Count a change made of ``events``: (the change for the caller, what the sidecars get or
        None), by :func:`.features.presence_change`."""
        self.v += 1
        self.touched = now
        self.mode, change, sent = presence_change(group, self.v, len(self.entries), len(self.users), self.mode,
                                                  self.join_leave, self.events_max, events)
        return change, sent


def sweep_idle(histories: dict[str, History], presences: dict[str, Presence], now: float) -> None:
    """Forget streams whose meta expired (trim the others' aged messages) and long-empty presence groups."""
    for group in list(histories):
        history = histories[group]
        if history.expires <= now:
            del histories[group]
        else:
            history._trim(now)
    for group in list(presences):
        state = presences[group]
        if not state.entries and not state.owners and state.touched < now - EMPTY_PRESENCE_KEEP:
            del presences[group]
