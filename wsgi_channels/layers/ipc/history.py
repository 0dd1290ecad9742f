"""What the ``ipc://`` layer's history transactions do to ``hist`` and ``hist_meta`` (schema in :mod:`.store`).

Plain functions over an open connection; the caller owns the transaction and the write lock.

A history group's stream is its ``hist_meta`` row (epoch, top offset, the boot id it was made
under, when it expires) and its ``hist`` rows, offsets ``first..top`` contiguous: rows are
only ever removed from the head (by ``size``, and by age: with one ttl per group, expiry
times grow with the offset), at every :data:`TRIM_EVERY`-th offset, as on Redis: a stream holds
at most ``size + TRIM_EVERY - 1`` rows, and a reader that knows the group's ``size`` skips those
beyond it (deleting one row at the head of the table and of its expiry index at every append
cost a quarter of the append). An append renews the meta's expiry only when less than
``meta_ttl`` is left, to ``1.5 * meta_ttl``, so that the meta outlives the last message by
``meta_ttl`` at least without rewriting its index entry at every append. The epoch is new whenever the row is missing (a new store file,
``flush()``, an expired meta) or was written under another boot of the machine: with
``synchronous=NORMAL`` an OS crash may lose the last transactions, and the stream must then
not be taken for the one clients followed.
"""
from __future__ import annotations

import sqlite3
from typing import Optional

from ..features import new_epoch

__all__ = ["BOOT_ID", "TRIM_EVERY", "append", "position", "read", "touch_due"]


def _boot_id() -> str:
    """This boot of the machine (Linux's random boot id); "-" where there is none (then only a new
    file, ``flush()`` or an expired meta change the epoch: documented)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or "-"
    except OSError:
        return "-"


BOOT_ID = _boot_id()

#: A stream is trimmed at every offset that is a multiple of this (the Redis layer's value too).
TRIM_EVERY = 16
#: An append renews the meta's expiry when less than ``meta_ttl`` is left, to this many ``meta_ttl``.
META_RENEW = 1.5

_META = "SELECT epoch, top, boot, expires, meta_ttl FROM hist_meta WHERE grp = ?"
_PUT_META = ("INSERT OR REPLACE INTO hist_meta (grp, epoch, top, boot, expires, meta_ttl) "
             "VALUES (?, ?, ?, ?, ?, ?)")
# Trim the head: below top - size + 1, and the rows whose time passed (found from the head, in
# offset order, stopping at the first live one: never a scan of the group).
_TRIM = ("DELETE FROM hist WHERE grp = ?1 AND off < max(?2, coalesce("
         "(SELECT off FROM hist WHERE grp = ?1 AND expires > ?3 ORDER BY off LIMIT 1), ?4))")
_ROWS = "SELECT off, data FROM hist WHERE grp = ? AND off > ? AND expires > ? ORDER BY off LIMIT ?"


def _current(conn: sqlite3.Connection, group: str, now: float) -> Optional[tuple[str, int, float, float]]:
    """(epoch, top, expires, meta_ttl) of the group's stream, or None when it has to start anew."""
    row = conn.execute(_META, (group,)).fetchone()
    if row is None or row[2] != BOOT_ID or row[3] <= now:
        return None
    return row[0], row[1], row[3], row[4]


def _restart(conn: sqlite3.Connection, group: str, now: float, meta_ttl: float) -> tuple[str, int]:
    epoch = new_epoch()
    conn.execute("DELETE FROM hist WHERE grp = ?", (group,))
    conn.execute(_PUT_META, (group, epoch, 0, BOOT_ID, now + meta_ttl, meta_ttl))
    return epoch, 0


def append(conn: sqlite3.Connection, group: str, data: bytes, now: float, size: int, ttl: float,
           meta_ttl: float) -> tuple[str, int]:
    """Keep ``data`` under the group's next offset, trimmed to ``size`` and ``ttl``; (epoch, offset).

    In the caller's write transaction: the offset is assigned and the message stored at once,
    so any number of processes get contiguous, unique offsets.
    """
    found = _current(conn, group, now)
    if found is None:
        epoch, top = _restart(conn, group, now, meta_ttl)
    else:
        epoch, top = found[0], found[1]
    offset = top + 1
    if found is None or found[2] - now < meta_ttl or found[3] != meta_ttl:
        conn.execute("UPDATE hist_meta SET top = ?, expires = ?, meta_ttl = ? WHERE grp = ?",
                     (offset, now + META_RENEW * meta_ttl, meta_ttl, group))
    else:
        conn.execute("UPDATE hist_meta SET top = ? WHERE grp = ?", (offset, group))
    conn.execute("INSERT INTO hist (grp, off, expires, data) VALUES (?, ?, ?, ?)", (group, offset, now + ttl, data))
    if offset % TRIM_EVERY == 0:
        conn.execute(_TRIM, (group, offset - size + 1, now, offset + 1))
    return epoch, offset


def touch_due(conn: sqlite3.Connection, group: str, now: float) -> bool:
    """Whether a read must write first: the stream starts anew, or its meta is past half its life
    (reads keep a followed stream's epoch alive, renewing it at most once per half ``meta_ttl``)."""
    found = _current(conn, group, now)
    return found is None or found[2] - now < found[3] / 2


def position(conn: sqlite3.Connection, group: str, now: float, meta_ttl: float) -> tuple[str, int]:
    """(epoch, top), making the epoch when the group has none and renewing the meta; write transaction."""
    found = _current(conn, group, now)
    if found is None:
        return _restart(conn, group, now, meta_ttl)
    epoch, top, _, kept_ttl = found
    conn.execute("UPDATE hist_meta SET expires = ? WHERE grp = ?", (now + kept_ttl, group))
    return epoch, top


def read(conn: sqlite3.Connection, group: str, since: int, limit: int, now: float,
         size: int = 0) -> Optional[tuple[str, int, list[tuple[int, bytes]]]]:
    """(epoch, top, [(offset, data)]) with offset > ``since``, at most ``limit``, among the last
    ``size`` (the reader's option; 0: unknown, then up to ``TRIM_EVERY - 1`` more, all kept and
    contiguous); None when the stream has to start anew (the caller writes then). One snapshot:
    call inside a transaction."""
    found = _current(conn, group, now)
    if found is None:
        return None
    epoch, top = found[0], found[1]
    if size:
        since = max(since, top - size)
    rows = conn.execute(_ROWS, (group, since, now, limit)).fetchall() if limit else []
    return epoch, top, [(off, bytes(data)) for off, data in rows]
