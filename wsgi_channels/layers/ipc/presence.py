"""What the ``ipc://`` layer's presence transactions do to the ``presence*`` tables (schema in :mod:`.store`).

Plain functions over an open connection; the caller owns the write transaction, so every
function here is atomic for every process: of several sweepers, one removes an entry and
makes its leave. ``presence_meta`` keeps the counts (``clients``, ``users``) in the same
transactions, so the stats are one row. Times are the wall clock (shared by processes).
An owner with no entries left in a group has no lease there.
"""
from __future__ import annotations

import sqlite3
from typing import Any, Mapping, Optional

from ...exceptions import PresenceFull
from ...serialization import decode
from ..features import PresenceChange, PresenceEntry, PresenceOptions, decode_infos, presence_change

__all__ = ["Meta", "add", "remove", "refresh", "sweep_groups", "sweep_group", "reassert", "live_entries", "counts",
           "changed", "notice_p"]

_META = ("SELECT clients, users, v, mode, ttl, events_max, join_leave, max_members FROM presence_meta "
         "WHERE grp = ?")
_LEASE = ("INSERT INTO presence_owner (grp, owner, expires) VALUES (?, ?, ?) "
          "ON CONFLICT (grp, owner) DO UPDATE SET expires = max(expires, excluded.expires)")


class Meta:
    """One ``presence_meta`` row, changed in memory and written back by :func:`changed`."""

    __slots__ = ("group", "clients", "users", "v", "mode", "ttl", "events_max", "join_leave", "max_members")

    def __init__(self, group: str, row: tuple[Any, ...]) -> None:
        self.group = group
        (self.clients, self.users, self.v, self.mode, self.ttl, self.events_max, join_leave,
         self.max_members) = row
        self.join_leave = bool(join_leave)

    @classmethod
    def load(cls, conn: sqlite3.Connection, group: str, options: Optional[PresenceOptions]) -> Optional["Meta"]:
        """The group's row (with ``options``, when given, as its options); None when it has none
        and no options make one."""
        row = conn.execute(_META, (group,)).fetchone()
        if row is None:
            if options is None:
                return None
            row = (0, 0, 0, "e", 0.0, 0, 0, 0)
        meta = cls(group, row)
        if options is not None:
            meta.ttl, meta.events_max = options.ttl, options.events_max
            meta.join_leave, meta.max_members = options.join_leave, options.max_members
        return meta


def _info(data: bytes) -> Any:
    return decode(data)["i"]


def _count_user(conn: sqlite3.Connection, meta: Meta, user: Optional[str], delta: int) -> None:
    if user is None:
        return
    row = conn.execute("SELECT n FROM presence_users WHERE grp = ? AND usr = ?", (meta.group, user)).fetchone()
    n = (row[0] if row else 0) + delta
    if n > 0:
        conn.execute("INSERT OR REPLACE INTO presence_users (grp, usr, n) VALUES (?, ?, ?)", (meta.group, user, n))
        if row is None:
            meta.users += 1
    elif row is not None:
        conn.execute("DELETE FROM presence_users WHERE grp = ? AND usr = ?", (meta.group, user))
        meta.users -= 1


def _join(cid: str, user: Optional[str], info: bytes, since: float) -> list[Any]:
    return ["j", cid, user, _info(info), int(since * 1000)]


def _put(conn: sqlite3.Connection, meta: Meta, cid: str, owner: str, user: Optional[str], info: bytes,
         since: float, now: float) -> Optional[list[Any]]:
    """Make or update an entry and renew the owner's lease (never shortened); the join, or None."""
    row = conn.execute("SELECT usr, info, since, owner FROM presence WHERE grp = ? AND conn = ?",
                       (meta.group, cid)).fetchone()
    event = None
    if row is None:
        conn.execute("INSERT INTO presence (grp, conn, usr, info, since, owner) VALUES (?, ?, ?, ?, ?, ?)",
                      (meta.group, cid, user, info, since, owner))
        meta.clients += 1
        _count_user(conn, meta, user, 1)
        event = _join(cid, user, info, since)
    elif row[0] != user or bytes(row[1]) != info:
        conn.execute("UPDATE presence SET usr = ?, info = ? WHERE grp = ? AND conn = ?", (user, info, meta.group, cid))
        _count_user(conn, meta, row[0], -1)
        _count_user(conn, meta, user, 1)
        event = _join(cid, user, info, row[2])
    conn.execute(_LEASE, (meta.group, owner, now + meta.ttl))
    return event


def _drop(conn: sqlite3.Connection, meta: Meta, cid: str, owner: str, user: Optional[str]) -> list[Any]:
    conn.execute("DELETE FROM presence WHERE grp = ? AND conn = ?", (meta.group, cid))
    meta.clients -= 1
    _count_user(conn, meta, user, -1)
    if conn.execute("SELECT 1 FROM presence WHERE grp = ? AND owner = ? LIMIT 1", (meta.group, owner)).fetchone() is None:
        conn.execute("DELETE FROM presence_owner WHERE grp = ? AND owner = ?", (meta.group, owner))
    return ["l", cid]


def add(conn: sqlite3.Connection, group: str, options: PresenceOptions, cid: str, owner: str, user: Optional[str],
        info: bytes, since: float, now: float) -> tuple[Meta, Optional[list[Any]]]:
    """Make or update ``cid``'s entry; (the group's meta, the join event or None). ``PresenceFull``
    past ``max_members`` before anything is written."""
    meta = Meta.load(conn, group, options)
    assert meta is not None
    exists = conn.execute("SELECT 1 FROM presence WHERE grp = ? AND conn = ?", (group, cid)).fetchone() is not None
    if not exists and meta.clients >= options.max_members:
        raise PresenceFull(f"group {group!r} has {meta.clients} presence entries (max_members "
                           f"{options.max_members} of {options.pattern!r}): not added")
    return meta, _put(conn, meta, cid, owner, user, info, since, now)


def remove(conn: sqlite3.Connection, group: str, owner: str, conn_ids: list[str]) -> tuple[Optional[Meta], list[list[Any]]]:
    """Remove ``owner``'s entries among ``conn_ids``; (the meta, the leave events)."""
    meta = Meta.load(conn, group, None)
    if meta is None:
        return None, []
    events = []
    for cid in conn_ids:
        row = conn.execute("SELECT usr, owner FROM presence WHERE grp = ? AND conn = ?", (group, cid)).fetchone()
        if row is not None and row[1] == owner:
            events.append(_drop(conn, meta, cid, owner, row[0]))
    return meta, events


def refresh(conn: sqlite3.Connection, owner: str, groups: list[str], now: float) -> list[bool]:
    """Renew ``owner``'s lease in each group where it has one, for the group's ttl."""
    update = ("UPDATE presence_owner SET expires = "
              "max(expires, ?1 + coalesce((SELECT ttl FROM presence_meta WHERE grp = ?2), 60.0)) "
              "WHERE grp = ?2 AND owner = ?3")
    return [conn.execute(update, (now, group, owner)).rowcount == 1 for group in groups]


def sweep_groups(conn: sqlite3.Connection, now: float, limit: int) -> list[str]:
    """Groups with an owner whose lease passed (at most ``limit``)."""
    rows = conn.execute("SELECT DISTINCT grp FROM presence_owner WHERE expires <= ? LIMIT ?", (now, limit))
    return [r[0] for r in rows]


def sweep_group(conn: sqlite3.Connection, group: str, now: float) -> tuple[Optional[Meta], list[list[Any]]]:
    """Remove every entry of the group's owners whose lease passed; (the meta, the leaves)."""
    meta = Meta.load(conn, group, None)
    owners = [r[0] for r in conn.execute("SELECT owner FROM presence_owner WHERE grp = ? AND expires <= ?",
                                         (group, now))]
    events: list[list[Any]] = []
    if meta is None:
        conn.execute("DELETE FROM presence_owner WHERE grp = ?", (group,))
        return None, events
    for owner in owners:
        rows = conn.execute("SELECT conn, usr FROM presence WHERE grp = ? AND owner = ?", (group, owner)).fetchall()
        for cid, user in rows:
            events.append(_drop(conn, meta, cid, owner, user))
        conn.execute("DELETE FROM presence_owner WHERE grp = ? AND owner = ?", (group, owner))
    return meta, events


def reassert(conn: sqlite3.Connection, group: str, owner: str, options: Optional[PresenceOptions],
             wanted: Mapping[str, tuple[Optional[str], bytes, float]], now: float) -> tuple[Meta, list[list[Any]]]:
    """Make ``owner``'s entries exactly ``wanted`` and renew its lease; (the meta, the events)."""
    meta = Meta.load(conn, group, None) or Meta.load(conn, group, options or PresenceOptions())
    assert meta is not None
    events: list[list[Any]] = []
    for cid, user in conn.execute("SELECT conn, usr FROM presence WHERE grp = ? AND owner = ?", (group, owner)).fetchall():
        if cid not in wanted:
            events.append(_drop(conn, meta, cid, owner, user))
    for cid, (user, info, since) in wanted.items():
        row = conn.execute("SELECT owner, since FROM presence WHERE grp = ? AND conn = ?", (group, cid)).fetchone()
        if row is not None and row[0] != owner:
            continue
        if row is None and meta.clients >= meta.max_members:
            continue
        event = _put(conn, meta, cid, owner, user, info, since if row is None else row[1], now)
        if event is not None:
            events.append(event)
    if wanted:
        conn.execute(_LEASE, (group, owner, now + meta.ttl))
    return meta, events


def changed(conn: sqlite3.Connection, meta: Meta, events: list[list[Any]],
            now: float) -> tuple[PresenceChange, Optional[PresenceChange]]:
    """Count a change and write the meta back; (the change, what the sidecars get or None)."""
    meta.v += 1
    meta.mode, change, sent = presence_change(meta.group, meta.v, meta.clients, meta.users, meta.mode,
                                              meta.join_leave, meta.events_max, events)
    write_meta(conn, meta, now)
    return change, sent


def write_meta(conn: sqlite3.Connection, meta: Meta, now: float) -> None:
    conn.execute("INSERT OR REPLACE INTO presence_meta (grp, clients, users, v, mode, ttl, events_max, join_leave, "
                 "max_members, touched) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (meta.group, meta.clients, meta.users, meta.v, meta.mode, meta.ttl, meta.events_max,
                  int(meta.join_leave), meta.max_members, now))


def notice_p(conn: sqlite3.Connection, meta: Meta, cid: str) -> dict[str, Any]:
    """The ``p`` of a membership notice for ``cid``'s entry."""
    user, info, since = conn.execute("SELECT usr, info, since FROM presence WHERE grp = ? AND conn = ?",
                                     (meta.group, cid)).fetchone()
    return {"id": cid, "ttl": meta.ttl, "ev": meta.events_max, "m": meta.mode, "u": user, "i": _info(bytes(info)),
            "s": since}


def live_entries(conn: sqlite3.Connection, group: str, now: float) -> dict[str, PresenceEntry]:
    """Entries whose owner's lease has not passed (a dead owner's are left out at once). The
    caller pauses the GC around it and the connection's release (:class:`.features.gc_paused`)."""
    rows = conn.execute(
        "SELECT p.conn, p.usr, p.info, p.since FROM presence p JOIN presence_owner o "
        "ON o.grp = p.grp AND o.owner = p.owner WHERE p.grp = ? AND o.expires > ?", (group, now)).fetchall()
    infos = decode_infos([info for _, _, info, _ in rows])
    return {cid: {"user": user, "info": info, "since": since}
            for (cid, user, _, since), info in zip(rows, infos)}


def counts(conn: sqlite3.Connection, group: str) -> dict[str, int]:
    row = conn.execute("SELECT clients, users FROM presence_meta WHERE grp = ?", (group,)).fetchone()
    return {"clients": row[0] if row else 0, "users": row[1] if row else 0}
