"""Group history and presence of the ``ipc://`` layer: the layer methods (the SQL is in
:mod:`.history` and :mod:`.presence`).

Every change is one ``BEGIN IMMEDIATE`` transaction of the store, as for messages: a history
send assigns the offset, stores the message and queues its copies at once (contiguous,
unique offsets for any number of processes); a membership of a history or presence group,
its notice and its presence change are made at once; a sweep removes entries and queues
their leaves at once (of racing sweepers, one makes each leave). Receivers are woken after
the commit, as for sends.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from ...presence import conn_id
from ...serialization import encode
from ..base import BaseChannelLayer
from ..features import (Features, HistoryPage, PresenceChange, PresenceEntry, PresenceOptions, add_notice,
                        check_entries, check_since_limit, discard_notice, gc_paused)
from ..names import is_sidecar_prefix, non_local_name, validate_group_name
from . import history as hist
from . import presence as pres
from . import queues as q

__all__ = ["IpcFeatures"]

log = logging.getLogger(__name__)

_UNSTAMPED_RECHECK = 60.0  # seconds between looks, per group, for a history kept by other processes
_CACHE_LIMIT = 10000


class IpcFeatures(BaseChannelLayer):
    """History and presence methods of :class:`~wsgi_channels.layers.ipc.IpcChannelLayer`."""

    features_supported = frozenset({"history", "presence"})

    if TYPE_CHECKING:
        expiry: float

        def _connection(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _transaction(self, conn: sqlite3.Connection) -> AbstractContextManager[sqlite3.Connection]: ...
        def _poke(self, conn: sqlite3.Connection, queues: list[str]) -> None: ...

    _unstamped_checks: dict[str, float]

    # -- shared steps (inside a write transaction) -------------------------------------------------

    def _queue_notice(self, conn: sqlite3.Connection, channel: str, notice: dict[str, Any], now: float) -> str:
        """Queue a notice on ``channel`` whatever its capacity (bounded by membership changes)."""
        queue = non_local_name(channel)
        conn.execute(q.INSERT, (queue, channel if channel != queue else None, 0, now, now + self.expiry,
                                encode({}, None, notice)))
        return queue

    def _queue_internal(self, conn: sqlite3.Connection, group: str, message: dict[str, Any], now: float,
                        sidecars_only: bool = True) -> list[str]:
        """Queue a layer-made message for the group's (sidecar) members; the queues that got it."""
        buckets: dict[str, list[str]] = {}
        for (channel,) in conn.execute("SELECT channel FROM groups WHERE grp = ? AND expires > ?", (group, now)):
            queue = non_local_name(channel)
            if not sidecars_only or is_sidecar_prefix(queue):
                buckets.setdefault(queue, []).append(channel)
        if not buckets:
            return []
        filled, skipped = q.queue_group_copies(conn, buckets, now, self.expiry, encode({}, None, message),
                                               self.get_capacity)
        dropped = sum(n for _, n in skipped)
        if dropped:
            q.bump(conn, "group_drop_count", dropped)
        return filled

    def _change(self, conn: sqlite3.Connection, meta: Optional[pres.Meta], events: list[list[Any]],
                now: float, queues: list[str]) -> Optional[PresenceChange]:
        """Count a presence change, queue what the sidecars get; the change (None: no events)."""
        if meta is None or not events:
            return None
        change, sent = pres.changed(conn, meta, events, now)
        if sent is not None:
            queues += self._queue_internal(conn, meta.group, sent.message(), now)
        return change

    def _history_stamp(self, conn: sqlite3.Connection, group: str, data: bytes, now: float) -> Optional[tuple[str, int]]:
        """In ``send_group``'s transaction: the group's (epoch, offset) for ``data`` when this process
        keeps history for it; otherwise None (and, now and then, a warning when another process does)."""
        options = self.history_options(group) if self._has_features else None
        if options is not None:
            return hist.append(conn, group, data, now, options.size, options.ttl, options.meta_ttl)
        checks = self._unstamped_checks
        if checks.get(group, 0.0) > now:
            return None
        if len(checks) >= _CACHE_LIMIT:
            checks.clear()
        checks[group] = now + _UNSTAMPED_RECHECK
        if conn.execute("SELECT 1 FROM hist_meta WHERE grp = ? AND expires > ?", (group, now)).fetchone():
            q.bump(conn, "history_unstamped_count", 1)
            log.warning("group %r keeps history (configured elsewhere) but this process has no group_history pattern "
                        "for it: its messages are neither kept nor stamped (give every process the same layer URL)",
                        group)
        return None

    # -- memberships of history and presence groups --------------------------------------------------

    def _feature_group_add(self, group: str, channel: str, features: Features, presence: Any) -> None:
        entry = None
        if presence is not None:
            options, user, info = self._presence_arg(group, presence)
            entry = options, user, encode({"i": info}, None)
        queues: list[str] = []
        with self._connection() as conn:
            with self._transaction(conn):
                now = time.time()
                made = None
                if entry is not None:  # first: PresenceFull leaves everything as it was
                    cid = conn_id(channel)
                    meta, event = pres.add(conn, group, entry[0], cid, non_local_name(channel), entry[1], entry[2],
                                           now, now)
                    made = (event is not None, meta, cid, event)
                    if event is None:
                        pres.write_meta(conn, meta, now)  # the options may have changed
                row = conn.execute("SELECT expires FROM groups WHERE grp = ? AND channel = ?", (group, channel)).fetchone()
                conn.execute("INSERT OR REPLACE INTO groups (grp, channel, expires) VALUES (?, ?, ?)",
                             (group, channel, now + self.group_expiry))
                sent = notice_p = None
                if made is not None:
                    if made[3] is not None:
                        sent = pres.changed(conn, made[1], [made[3]], now)[1]
                    notice_p = pres.notice_p(conn, made[1], made[2])
                # The notice first, then the change: the sidecar learns of the membership before anything of it.
                if is_sidecar_prefix(non_local_name(channel)) and (row is None or row[0] <= now or (made and made[0])):
                    # in the membership's transaction: exactly the messages after this position see it
                    position: Any = False
                    if features.history is not None:
                        position = list(hist.position(conn, group, now, features.history.meta_ttl))
                    queues.append(self._queue_notice(conn, channel, add_notice(group, position, notice_p), now))
                if sent is not None:
                    queues += self._queue_internal(conn, group, sent.message(), now)
            if queues:
                self._poke(conn, sorted(set(queues)))

    def _feature_group_discard(self, group: str, channel: str, features: Features) -> None:
        queues: list[str] = []
        with self._connection() as conn:
            with self._transaction(conn):
                now = time.time()
                row = conn.execute("DELETE FROM groups WHERE grp = ? AND channel = ? RETURNING expires",
                                   (group, channel)).fetchone()
                if features.presence is not None:
                    meta, events = pres.remove(conn, group, non_local_name(channel), [conn_id(channel)])
                    self._change(conn, meta, events, now, queues)
                if row is not None and row[0] > now and is_sidecar_prefix(non_local_name(channel)):
                    queues.append(self._queue_notice(conn, channel, discard_notice(group), now))
            if queues:
                self._poke(conn, sorted(set(queues)))

    def _send_group_internal(self, group: str, message: dict[str, Any], sidecars_only: bool = True) -> None:
        validate_group_name(group)
        with self._connection() as conn:
            with self._transaction(conn):
                queues = self._queue_internal(conn, group, message, time.time(), sidecars_only)
            if queues:
                self._poke(conn, queues)

    # -- history reads ---------------------------------------------------------------------------------

    def _history_read(self, requests: Sequence[tuple[str, int, int]]) -> list[Union[HistoryPage, BaseException]]:
        found: list[Union[HistoryPage, BaseException]] = []
        with self._connection() as conn:
            for group, since, limit in requests:
                try:
                    validate_group_name(group)
                    check_since_limit(since, limit, allow_zero=True)
                    page = self._read_one(conn, group, since, limit)
                except Exception as e:
                    found.append(e)
                    continue
                epoch, top, rows = page
                found.append(HistoryPage(epoch, top, [(offset, self._decode_kept(data)) for offset, data in rows]))
        return found

    @staticmethod
    def _decode_kept(data: bytes) -> dict[str, Any]:
        from ...serialization import decode
        return decode(data)

    def _read_one(self, conn: sqlite3.Connection, group: str, since: int,
                  limit: int) -> tuple[str, int, list[tuple[int, bytes]]]:
        """One group's page: a read snapshot, or a write first when the epoch must be made or renewed."""
        now = time.time()
        options = self.history_options(group)
        size = options.size if options else 0
        conn.execute("BEGIN")
        try:
            due = hist.touch_due(conn, group, now)
            page = None if due else hist.read(conn, group, since, limit, now, size)
        finally:
            conn.execute("COMMIT")
        if page is not None:
            return page
        with self._transaction(conn):
            hist.position(conn, group, now, options.meta_ttl if options else 86400.0)
            page = hist.read(conn, group, since, limit, now, size)
        assert page is not None
        return page

    # -- presence ----------------------------------------------------------------------------------------

    def _presence_entries(self, group: str) -> dict[str, PresenceEntry]:
        with gc_paused(), self._connection() as conn:  # paused around the pool's generator (see gc_paused)
            return pres.live_entries(conn, group, time.time())

    def _presence_counts(self, group: str) -> dict[str, int]:
        with self._connection() as conn:
            return pres.counts(conn, group)

    def presence_refresh(self, owner: str, groups: Sequence[str]) -> list[bool]:
        if not groups:
            return []
        with self._connection() as conn:
            with self._transaction(conn):
                return pres.refresh(conn, owner, list(groups), time.time())

    def presence_remove(self, group: str, owner: str, conn_ids: Sequence[str]) -> Optional[PresenceChange]:
        validate_group_name(group)
        queues: list[str] = []
        with self._connection() as conn:
            with self._transaction(conn):
                now = time.time()
                meta, events = pres.remove(conn, group, owner, list(conn_ids))
                change = self._change(conn, meta, events, now, queues)
            if queues:
                self._poke(conn, queues)
        return change

    def presence_reassert(self, owner: str, group: str,
                          entries: Mapping[str, Mapping[str, Any]]) -> Optional[PresenceChange]:
        validate_group_name(group)
        wanted = check_entries(entries)
        options: Optional[PresenceOptions] = self.presence_options(group)
        queues: list[str] = []
        with self._connection() as conn:
            with self._transaction(conn):
                now = time.time()
                meta, events = pres.reassert(conn, group, owner, options, wanted, now)
                change = self._change(conn, meta, events, now, queues)
            if queues:
                self._poke(conn, queues)
        return change

    def presence_sweep(self, limit: int = 32) -> list[PresenceChange]:
        changes: list[PresenceChange] = []
        queues: list[str] = []
        with self._connection() as conn:
            now = time.time()
            if conn.execute("SELECT 1 FROM presence_owner WHERE expires <= ? LIMIT 1", (now,)).fetchone() is None:
                return changes  # the common case: a read, no write lock
            with self._transaction(conn):  # one writer at a time: a racing sweeper finds nothing left
                now = time.time()
                for group in pres.sweep_groups(conn, now, limit):
                    meta, events = pres.sweep_group(conn, group, now)
                    change = self._change(conn, meta, events, now, queues)
                    if change is not None:
                        changes.append(change)
            if queues:
                self._poke(conn, sorted(set(queues)))
        return changes
