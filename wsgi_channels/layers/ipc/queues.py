"""What the ``ipc://`` layer's transactions do to the store's tables (see :mod:`.store` for the schema).

Plain functions over an open ``sqlite3`` connection; the caller owns the
transaction and the write lock. Kept apart from :mod:`.layer`, which deals with
the API, processes, locks and wake-ups.

Invariants every function keeps:

* a queue's rows are ordered by ``id`` (FIFO); its head is its smallest id;
* a row with ``fanout > 0`` has exactly ``fanout`` rows in ``targets``;
* a ``!`` channel whose message expires unread leaves every group.
"""
from __future__ import annotations

import functools
import sqlite3
from typing import Callable, Iterator

from ..names import is_sidecar_prefix

__all__ = [
    "INSERT", "INSERT_IF_ROOM", "HEAD", "DELETE_HEAD",
    "chunks", "marks", "bump", "waiter_addrs", "present", "drop", "expire_queue", "room",
    "sweep_due", "sweep", "take_head", "take_rows", "queue_group_copies",
]

IN_CHUNK = 500  # names per "IN (...)" list

INSERT = "INSERT INTO messages (queue, target, fanout, sent, expires, data) VALUES (?, ?, ?, ?, ?, ?)"
# Capacity check and insert in one statement: a write statement holds the store's write lock
# from start to end, so concurrent senders can never overshoot.
INSERT_IF_ROOM = (
    "INSERT INTO messages (queue, target, fanout, sent, expires, data) SELECT ?1, ?2, 0, ?3, ?4, ?5 "
    "WHERE (SELECT count(*) FROM (SELECT 1 FROM messages WHERE queue = ?1 LIMIT ?6)) < ?6"
)
HEAD = "SELECT fanout, expires FROM messages WHERE queue = ? ORDER BY id LIMIT 1"
_HEAD_ROW = "SELECT id, target, fanout, expires, data FROM messages WHERE queue = ? ORDER BY id LIMIT 1"
# Takes the head of a queue only if it is still a live plain message: checked and deleted at once.
DELETE_HEAD = (
    "DELETE FROM messages WHERE id = (SELECT id FROM messages WHERE queue = ?1 ORDER BY id LIMIT 1) "
    "AND fanout = 0 AND expires > ?2 RETURNING target, data"
)

Row = tuple[int, str, "str | None", int]  # id, queue, target, fanout


def chunks(items: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(items), IN_CHUNK):
        yield items[i:i + IN_CHUNK]


def marks(n: int) -> str:
    return ",".join("?" * n)


@functools.lru_cache(maxsize=64)
def _nonempty_sql(n: int) -> str:
    """Which of n queue names hold rows: one index probe each, in one statement."""
    values = ",".join(["(?)"] * n)
    return (
        f"WITH q(name) AS (VALUES {values}) "
        "SELECT name FROM q WHERE EXISTS (SELECT 1 FROM messages WHERE queue = q.name)"
    )


def present(conn: sqlite3.Connection, names: list[str]) -> set[str]:
    """The queues among ``names`` that hold rows (live or not yet swept)."""
    found: set[str] = set()
    for chunk in chunks(names):
        found.update(r[0] for r in conn.execute(_nonempty_sql(len(chunk)), chunk))
    return found


def bump(conn: sqlite3.Connection, name: str, n: int) -> None:
    """Add ``n`` to a store-wide counter (statistics shared by every process)."""
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        (name, n),
    )


def waiter_addrs(conn: sqlite3.Connection, queues: list[str]) -> list[str]:
    """Socket addresses of the receivers registered for any of ``queues``."""
    if len(queues) == 1:
        return [r[0] for r in conn.execute("SELECT addr FROM waiters WHERE queue = ?", queues)]
    found: set[str] = set()
    for chunk in chunks(queues):
        found.update(r[0] for r in conn.execute(f"SELECT addr FROM waiters WHERE queue IN ({marks(len(chunk))})", chunk))
    return list(found)


# -- expiry -----------------------------------------------------------------------------------------


def drop(conn: sqlite3.Connection, rows: list[Row]) -> None:
    """Delete message rows; ``!`` channels whose message expired unread leave every group."""
    evict: set[str] = set()
    for msg_id, _queue, target, fanout in rows:
        if fanout:
            evict.update(r[0] for r in conn.execute("SELECT channel FROM targets WHERE msg = ?", (msg_id,)))
            conn.execute("DELETE FROM targets WHERE msg = ?", (msg_id,))
        elif target is not None:
            evict.add(target)
        conn.execute("DELETE FROM messages WHERE id = ?", (msg_id,))
    if evict:
        conn.executemany("DELETE FROM groups WHERE channel = ?", [(c,) for c in evict])


def expire_queue(conn: sqlite3.Connection, queue: str, now: float) -> None:
    """Delete the expired rows of one queue."""
    if queue.endswith("!"):
        rows = conn.execute(
            "SELECT id, queue, target, fanout FROM messages WHERE queue = ? AND expires <= ?", (queue, now)
        ).fetchall()
        drop(conn, rows)
    else:  # plain channels are never evicted from groups, and never hold group copies
        conn.execute("DELETE FROM messages WHERE queue = ? AND expires <= ?", (queue, now))


def room(conn: sqlite3.Connection, queue: str, now: float, capacity: int) -> int:
    """Free slots in ``queue`` (capacity minus rows waiting), after dropping its expired head."""
    row = conn.execute("SELECT expires FROM messages WHERE queue = ? ORDER BY id LIMIT 1", (queue,)).fetchone()
    if row is not None and row[0] <= now:
        # Rows of a queue expire in about the order they were queued: look further only then.
        expire_queue(conn, queue, now)
    used = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM messages WHERE queue = ? LIMIT ?)", (queue, capacity)
    ).fetchone()[0]
    return capacity - used


#: Seconds an empty presence group keeps its change number (then its row is removed).
EMPTY_PRESENCE_KEEP = 3600.0


def sweep_due(conn: sqlite3.Connection, now: float) -> bool:
    """Whether anything has expired (five index probes; no write lock needed)."""
    return bool(conn.execute(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE expires <= ?1)"
        " OR EXISTS (SELECT 1 FROM groups WHERE expires <= ?1)"
        " OR EXISTS (SELECT 1 FROM kv WHERE expires <= ?1)"
        " OR EXISTS (SELECT 1 FROM hist WHERE expires <= ?1)"
        " OR EXISTS (SELECT 1 FROM hist_meta WHERE expires <= ?1)",
        (now,),
    ).fetchone()[0])


def sweep(conn: sqlite3.Connection, now: float, stale_waiters: list[str]) -> None:
    """Delete every expired message, membership, session entry, kept message and history meta, long
    empty presence groups, and dead receivers' registrations. (Presence entries of a lapsed owner
    are removed by ``presence_sweep``, which sends their leaves.)"""
    rows = conn.execute("SELECT id, queue, target, fanout FROM messages WHERE expires <= ?", (now,)).fetchall()
    drop(conn, [r for r in rows if r[1].endswith("!")])
    conn.executemany("DELETE FROM messages WHERE id = ?", [(r[0],) for r in rows if not r[1].endswith("!")])
    conn.execute("DELETE FROM groups WHERE expires <= ?", (now,))
    conn.execute("DELETE FROM kv WHERE expires <= ?", (now,))
    conn.execute("DELETE FROM hist WHERE expires <= ?", (now,))
    conn.execute("DELETE FROM hist_meta WHERE expires <= ?", (now,))
    conn.execute("DELETE FROM presence_meta WHERE clients = 0 AND touched < ? AND NOT EXISTS "
                 "(SELECT 1 FROM presence_owner o WHERE o.grp = presence_meta.grp)", (now - EMPTY_PRESENCE_KEEP,))
    conn.executemany("DELETE FROM waiters WHERE addr = ?", [(a,) for a in stale_waiters])


# -- taking messages ----------------------------------------------------------------------------


def take_head(conn: sqlite3.Connection, queue: str, now: float) -> tuple[str, bytes] | None:
    """One delivery from the head of ``queue``: expire what is due, hand out one member of a group copy."""
    row = conn.execute(_HEAD_ROW, (queue,)).fetchone()
    if row is not None and row[3] <= now:
        expire_queue(conn, queue, now)
        row = conn.execute(_HEAD_ROW, (queue,)).fetchone()
    if row is None:
        return None
    msg_id, target, fanout, _, data = row
    if not fanout:
        conn.execute("DELETE FROM messages WHERE id = ?", (msg_id,))
        return target or queue, data
    first = conn.execute("SELECT seq, channel FROM targets WHERE msg = ? ORDER BY seq LIMIT 1", (msg_id,)).fetchone()
    if first is None or fanout <= 1:
        conn.execute("DELETE FROM messages WHERE id = ?", (msg_id,))
    else:
        conn.execute("UPDATE messages SET fanout = fanout - 1 WHERE id = ?", (msg_id,))
    if first is None:  # pragma: no cover - fanout and targets always change together
        return None
    conn.execute("DELETE FROM targets WHERE msg = ? AND seq = ?", (msg_id, first[0]))
    return first[1], data


def take_rows(conn: sqlite3.Connection, queue: str, limit: int, now: float, out: list[tuple[str, bytes]]) -> bool:
    """Move deliveries from the head of ``queue`` into ``out`` (until it holds ``limit``).

    Returns True when the queue may hold more. A group copy only partly
    handed out stops the queue here: nothing behind it may go first.
    """
    want = limit - len(out)
    rows = conn.execute(
        "SELECT id, target, fanout, expires, data FROM messages WHERE queue = ? ORDER BY id LIMIT ?",
        (queue, want),
    ).fetchall()
    done: list[tuple[int]] = []
    expired: list[Row] = []
    more = len(rows) == want
    for msg_id, target, fanout, expires, data in rows:
        if len(out) >= limit:
            more = True
            break
        if expires <= now:
            expired.append((msg_id, queue, target, fanout))
            continue
        if not fanout:
            out.append((target or queue, data))
            done.append((msg_id,))
            continue
        free = limit - len(out)
        members = conn.execute(
            "SELECT seq, channel FROM targets WHERE msg = ? ORDER BY seq LIMIT ?", (msg_id, free)
        ).fetchall()
        out.extend((channel, data) for _, channel in members)
        if len(members) < free or fanout <= len(members):
            conn.execute("DELETE FROM targets WHERE msg = ?", (msg_id,))
            done.append((msg_id,))
        else:
            conn.execute("DELETE FROM targets WHERE msg = ? AND seq <= ?", (msg_id, members[-1][0]))
            conn.execute("UPDATE messages SET fanout = fanout - ? WHERE id = ?", (len(members), msg_id))
            more = False
            break
    conn.executemany("DELETE FROM messages WHERE id = ?", done)
    if expired:
        drop(conn, expired)
        more = True
    return more


# -- group sends ----------------------------------------------------------------------------------


def queue_group_copies(
    conn: sqlite3.Connection, buckets: dict[str, list[str]], now: float, expiry: float, data: bytes,
    capacity_of: Callable[[str], int], stamped: bytes | None = None,
) -> tuple[list[str], list[tuple[str, int]]]:
    """One row per receiving queue (members behind one prefix share it); skip full queues.

    ``stamped`` (a history group's message with its ``__wsc_h``) goes to sidecar prefixes
    instead of ``data``. Returns the queues that got a copy, and ``(queue, members)`` for
    each one skipped.
    """
    filled: list[str] = []
    skipped: list[tuple[str, int]] = []
    plain = data
    for queue, members in buckets.items():
        if room(conn, queue, now, capacity_of(queue)) <= 0:
            skipped.append((queue, len(members)))
            continue
        data = stamped if stamped is not None and is_sidecar_prefix(queue) else plain
        filled.append(queue)
        if len(members) == 1:
            target = members[0] if members[0] != queue else None
            conn.execute(INSERT, (queue, target, 0, now, now + expiry, data))
            continue
        # Several members behind one prefix: one copy, and the list of who still gets it.
        msg_id = conn.execute(INSERT, (queue, None, len(members), now, now + expiry, data)).lastrowid
        conn.executemany(
            "INSERT INTO targets (msg, seq, channel) VALUES (?, ?, ?)",
            [(msg_id, i, channel) for i, channel in enumerate(members)],
        )
    return filled, skipped
