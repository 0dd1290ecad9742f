"""The single-machine layer (``ipc:///path/to/channels.db``): every process on one host, no server.

Messages, groups and session entries live in one SQLite database in WAL mode
(see :mod:`.store`; what each transaction does to the tables is in
:mod:`.queues`). Every change is one SQLite transaction: a single
statement on the fast paths (a send checks the capacity and inserts in one
``INSERT ... SELECT``; a receive deletes the head of its queue with
``DELETE ... RETURNING``), a ``BEGIN IMMEDIATE`` block otherwise. So capacities
stay exact when many processes send at once, and a process killed at any point
leaves each message either queued or delivered, never both. Writers also take
an ``flock`` first (see :class:`.store.WriteLock`), which hands the store
from writer to writer faster than SQLite's sleeping busy handler.

A blocking ``receive`` sleeps on a Unix datagram socket that senders poke after
they commit (see :mod:`.wake`), with a slow poll (``poll_interval``,
default 1 s) only as a safety net.

Group history and presence (``group_history``/``group_presence``) are in
:mod:`.features`; a group with neither takes exactly the paths below.

Layout of a queue: ``messages`` rows ordered by id, keyed by the channel or, for
a process-local channel, by its ``prefix!``. A group send stores one row per
receiving queue; for a prefix with several members it lists them in
``targets``, and ``receive`` hands out one ``(channel, message)`` per member, in
order. Capacity counts rows, so a broadcast to 10,000 connections behind one
prefix takes one slot.

URL: ``ipc:///abs/path/channels.db`` (three slashes: an absolute path, or
``ipc://~/path.db`` in the home directory); ``ipc://`` alone uses
``<tmp>/wsgi_channels-<uid>/channels.db``. A relative path is refused: each
process would resolve it against its own working directory, and two processes
started from different directories would silently use two stores. Query parameters are
constructor keywords (``ipc:///run/app/ch.db?capacity=500&poll_interval=0.5``).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
import weakref
from contextlib import contextmanager
from typing import Any, Iterable, Iterator
from urllib.parse import unquote, urlsplit

from ...exceptions import ConfigurationError, LayerUnavailable, StoreError
from ...serialization import decode, encode, with_keys
from . import queues as q
from . import wake
from .features import IpcFeatures
from .store import ConnectionPool, WriteLock, current_pid, default_path, open_connection, prepare_path
from ..base import Received
from ..features import STAMP_KEY
from ..names import non_local_name, validate_channel_name, validate_group_name

__all__ = ["IpcChannelLayer"]

log = logging.getLogger(__name__)

_SWEEP_INTERVAL = 1.0
_STALE_WAITER_INTERVAL = 60.0
_MAX_IDLE_WAITERS = 64  # blocked threads or greenlets per process that keep their socket


class IpcChannelLayer(IpcFeatures):
    """Cross-process channel layer on one machine; options as :class:`BaseChannelLayer`, plus:

    ``path``
        the store file (default ``<tmp>/wsgi_channels-<uid>/channels.db``).
    ``poll_interval``
        seconds between safety-net looks of a blocked receive (default 1.0);
        senders wake receivers directly, so this only bounds the delay if a
        wake-up is ever lost.
    ``busy_timeout``
        seconds to wait for another process's write transaction before raising
        :class:`LayerUnavailable` (default 10).
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        poll_interval: float = 1.0,
        busy_timeout: float = 10.0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if float(poll_interval) <= 0 or float(busy_timeout) <= 0:
            raise ConfigurationError("poll_interval and busy_timeout must be positive numbers of seconds")
        self.poll_interval = float(poll_interval)
        self.busy_timeout = float(busy_timeout)
        self.path = prepare_path(os.fspath(path) if path else default_path(), private=not path)
        self._wake_dir, self._wake_private = wake.wake_dir_for(self.path)
        self._lock = WriteLock(self.path, self.busy_timeout)
        self._pool = ConnectionPool(lambda: open_connection(self.path, self.busy_timeout, self._lock))
        self._state = wake.ProcessState(self._wake_dir)
        self._finalizer = weakref.finalize(self, self._state.release, self._pool)
        self._rr = 0
        self._last_sweep = 0.0
        self._last_stale_check = time.monotonic()
        self._unstamped_checks: dict[str, float] = {}
        with self._pool.connection():  # open now: a bad path fails here, not at the first send
            pass

    @classmethod
    def from_url(cls, url: Any, **options: Any) -> "IpcChannelLayer":
        """``ipc:///abs/path.db``, ``ipc://~/path.db`` or ``ipc://`` (the per-user default).

        A relative path (``ipc://relative/path.db``) raises :class:`ConfigurationError`.
        """
        from .. import parse_options

        if not isinstance(url, str):
            raise ConfigurationError(f"ipc layer URL must be a string, not {url!r}")
        parts = urlsplit(url.strip())
        if parts.scheme.lower() != "ipc":
            raise ConfigurationError(f"not an ipc:// URL: {url!r}")
        path = unquote(parts.netloc + parts.path)
        if path and not os.path.isabs(os.path.expanduser(path)):
            raise ConfigurationError(
                f"ipc layer URL {url!r} names the relative path {path!r}, which each process would resolve "
                f"against its own working directory: write an absolute path with three slashes, such as "
                f"ipc://{os.path.abspath(path)} (or ipc:// alone for this user's default store)")
        opts = {**parse_options(parts.query), **options}
        for key in ("poll_interval", "busy_timeout"):
            if isinstance(opts.get(key), str):
                try:
                    opts[key] = float(opts[key])
                except ValueError:
                    raise ConfigurationError(f"layer URL option {key}={opts[key]!r} is not a number") from None
        opts.setdefault("path", path or None)
        try:
            return cls(**opts)
        except TypeError as e:
            if "unexpected keyword" not in str(e):
                raise
            raise ConfigurationError(f"ipc layer URL {url!r}: {e}") from None

    # -- connections and transactions ---------------------------------------------------------

    def _process_state(self) -> wake.ProcessState:
        state = self._state
        if state.pid != current_pid():  # forked: the parent's sockets are not ours to use or close
            state = self._state = wake.ProcessState(self._wake_dir)
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, state.release, self._pool)
        return state

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode (each statement is its own atomic transaction)."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except sqlite3.OperationalError as e:
            text = str(e)
            if "locked" in text or "busy" in text:
                raise LayerUnavailable(
                    f"channel store {self.path!r} stayed locked by another process for over "
                    f"{self.busy_timeout:g}s"
                ) from e
            raise StoreError(f"channel store {self.path!r}: {text}") from e
        except sqlite3.DatabaseError as e:
            raise StoreError(f"channel store {self.path!r} is damaged or not a store: {e}") from e

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the write lock; the pool rolls back if anything raises."""
        with self._lock():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:  # the pool then discards this connection
                    pass
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as conn, self._transaction(conn):
            yield conn

    def _poke(self, conn: sqlite3.Connection, queues: list[str]) -> None:
        """Wake the receivers registered for ``queues``; call after the change is committed.

        Reading the registrations after the commit is enough: a receiver registers
        before its last look at the queues, so it either sees the new message then
        or is registered by the time this runs.
        """
        addrs = q.waiter_addrs(conn, queues)
        if not addrs:
            return
        dead = self._process_state().poker.poke(addrs)
        if dead:  # receivers that died without unregistering
            with self._transaction(conn):
                conn.executemany("DELETE FROM waiters WHERE addr = ?", [(a,) for a in dead])
            for addr in dead:
                try:
                    os.unlink(addr)
                except OSError:
                    pass

    def _flush_sent(self, conn: sqlite3.Connection) -> None:
        """Add this process's recent sends to the shared messages_count (batched: one write a second)."""
        n = self._process_state().take_sent()
        if n:
            q.bump(conn, "messages_count", n)

    def _sweep(self, force: bool = False) -> None:
        """Delete whatever has expired (messages, memberships, session entries), at most once a second."""
        mono = time.monotonic()
        if not force and mono - self._last_sweep < _SWEEP_INTERVAL:
            return
        self._last_sweep = mono
        now = time.time()
        stale: list[str] = []
        if mono - self._last_stale_check > _STALE_WAITER_INTERVAL:
            self._last_stale_check = mono
            stale = wake.remove_stale(self._wake_dir)
        with self._connection() as conn:
            if not q.sweep_due(conn, now) and not stale and not self._state.sent:
                return
            with self._transaction(conn):
                self._flush_sent(conn)
                q.sweep(conn, now, stale)

    # -- messages -----------------------------------------------------------------------------

    def _channel_in_use(self, channel: str) -> bool:
        with self._connection() as conn:
            return conn.execute("SELECT 1 FROM messages WHERE queue = ? LIMIT 1", (channel,)).fetchone() is not None

    def send(self, channel: str, message: dict) -> None:
        validate_channel_name(channel)
        data = encode(message, self.max_message_size)
        queue = non_local_name(channel)
        target = channel if queue != channel else None
        capacity = self.get_capacity(queue)
        self._sweep()
        with self._connection() as conn:
            now = time.time()
            # Fast path: one statement checks the capacity and inserts, atomically.
            with self._lock():
                inserted = conn.execute(
                    q.INSERT_IF_ROOM, (queue, target, now, now + self.expiry, data, capacity)
                ).rowcount
            if inserted != 1:
                # Full, or full of expired messages: look again inside one transaction.
                with self._transaction(conn):
                    now = time.time()
                    if q.room(conn, queue, now, capacity) > 0:
                        conn.execute(q.INSERT, (queue, target, 0, now, now + self.expiry, data))
                        inserted = 1
                    else:
                        q.bump(conn, "channel_full_count", 1)
            if inserted != 1:
                raise self.ChannelFull(f"channel {channel!r} is full ({capacity} messages waiting)")
            self._process_state().count_sent()
            self._poke(conn, [queue])

    def _order(self, conn: sqlite3.Connection, names: list[str]) -> list[str]:
        """The queues among ``names`` that hold rows, starting at a rotating offset (no starvation)."""
        if len(names) == 1:
            return names
        present = q.present(conn, names)
        if not present:
            return []
        self._rr = start = (self._rr + 1) % len(names)
        return [name for name in names[start:] + names[:start] if name in present]

    def _take(self, names: list[str]) -> tuple[str, bytes] | None:
        """Take the first live message of the first non-empty queue (FIFO within a queue)."""
        with self._connection() as conn:
            for queue in self._order(conn, names):
                while True:  # another reader may take the head under us: look again (it made progress)
                    head = conn.execute(q.HEAD, (queue,)).fetchone()
                    if head is None:
                        break
                    now = time.time()
                    if head[0] == 0 and head[1] > now:
                        # fetchall(): the statement must finish for its autocommit to end.
                        with self._lock():
                            rows = conn.execute(q.DELETE_HEAD, (queue, now)).fetchall()
                        if rows:
                            return rows[0][0] or queue, rows[0][1]
                        continue
                    got = self._take_slow(conn, queue)
                    if got is not None:
                        return got
                    break
        return None

    def _take_slow(self, conn: sqlite3.Connection, queue: str) -> tuple[str, bytes] | None:
        """Expire the head of ``queue`` or hand out one member of a group copy, in one transaction."""
        with self._transaction(conn):
            return q.take_head(conn, queue, time.time())

    def receive(self, channels: Iterable[str], block: bool = False, timeout: float | None = None) -> Received:
        names = list(dict.fromkeys(self._receive_channels(channels)))
        wait = self._block_timeout(block, timeout)
        if not names:
            return None, None
        self._sweep()
        deadline = time.monotonic() + wait
        waiter = None
        try:
            while True:
                got = self._take(names)
                if got is not None:
                    return got[0], decode(got[1])
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None, None
                if waiter is None:
                    waiter = self._get_waiter(names)
                    continue  # registered: look once more before sleeping, so no send is missed
                if not waiter.wait(min(remaining, self.poll_interval)) and not os.path.exists(waiter.addr):
                    # Its file was removed (a tmp cleaner, an operator): senders cannot reach it.
                    self._discard_waiter(waiter)
                    waiter = None
                    continue
                waiter.drain()
                self._sweep()
        finally:
            if waiter is not None:
                self._put_waiter(waiter)

    def receive_batch(
        self, channels: Iterable[str], limit: int = 100, block: bool = False, timeout: float | None = None,
        shared: bool = False,
    ) -> list[tuple[str, dict]]:
        """Up to ``limit`` messages at once, waiting (like :meth:`receive`) only for the first.

        After the first message, one transaction takes the rest, and a group copy
        for many members of one prefix fills the batch from its single row: a
        sidecar reading its ``prefix!`` drains a broadcast to thousands of its
        connections in a few calls. Order is FIFO per queue, as with ``receive``.
        Every delivery is decoded on its own, ``shared`` or not.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int of at least 1, got {limit!r}")
        names = list(dict.fromkeys(self._receive_channels(channels)))
        first = self.receive(names, block=block, timeout=timeout)
        if first[0] is None:
            return []
        batch = [first]
        if limit > 1:
            batch += [(channel, decode(data)) for channel, data in self._take_many(names, limit - 1)]
        return batch

    def _take_many(self, names: list[str], limit: int) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        with self._connection() as conn:
            order = self._order(conn, names)
            if not order:
                return out
            with self._transaction(conn):
                now = time.time()
                for queue in order:
                    while len(out) < limit and q.take_rows(conn, queue, limit, now, out):
                        pass
                    if len(out) >= limit:
                        break
        return out

    # -- waiters ------------------------------------------------------------------------------

    def _get_waiter(self, names: list[str]) -> wake.Waiter:
        """A waiter socket registered for exactly ``names`` (reused when possible), with no stale pokes."""
        key = tuple(sorted(names))
        state = self._process_state()
        with state.lock:
            idle = state.idle.get(key)
            waiter = idle.pop() if idle else None
            if waiter is None:
                for other in state.idle.values():
                    if other:
                        waiter = other.pop()
                        break
        if waiter is None:
            try:
                waiter = wake.Waiter(self._wake_dir, self._wake_private)
            except OSError as e:
                raise StoreError(f"cannot create a wake-up socket in {self._wake_dir!r}: {e}") from e
            with state.lock:
                state.all.add(waiter)
        if waiter.queues != key:
            try:
                with self._write() as conn:
                    conn.execute("DELETE FROM waiters WHERE addr = ?", (waiter.addr,))
                    conn.executemany(
                        "INSERT OR IGNORE INTO waiters (queue, addr) VALUES (?, ?)",
                        [(queue, waiter.addr) for queue in key],
                    )
            except BaseException:
                self._discard_waiter(waiter)
                raise
            waiter.queues = key
        waiter.drain()
        return waiter

    def _put_waiter(self, waiter: wake.Waiter) -> None:
        state = self._process_state()
        if waiter.pid != state.pid:
            return
        with state.lock:
            if sum(len(v) for v in state.idle.values()) < _MAX_IDLE_WAITERS:
                state.idle.setdefault(waiter.queues, []).append(waiter)
                return
        self._discard_waiter(waiter)

    def _discard_waiter(self, waiter: wake.Waiter) -> None:
        state = self._process_state()
        with state.lock:
            state.all.discard(waiter)
        try:
            with self._write() as conn:
                conn.execute("DELETE FROM waiters WHERE addr = ?", (waiter.addr,))
        except Exception as e:
            log.debug("could not unregister waiter %s: %s", waiter.addr, e)
        waiter.close()

    # -- groups -------------------------------------------------------------------------------

    def group_add(self, group: str, channel: str, presence: Any = None) -> None:
        validate_group_name(group)
        validate_channel_name(channel)
        features = self._features.of(group) if self._has_features else None
        if features is not None or presence is not None:
            if features is None:
                self._require_presence(group)  # raises PresenceNotEnabled
            assert features is not None
            self._feature_group_add(group, channel, features, presence)
            return
        with self._connection() as conn, self._lock():
            conn.execute(
                "INSERT OR REPLACE INTO groups (grp, channel, expires) VALUES (?, ?, ?)",
                (group, channel, time.time() + self.group_expiry),
            )

    def group_discard(self, group: str, channel: str) -> None:
        validate_group_name(group)
        validate_channel_name(channel)
        features = self._features.of(group) if self._has_features else None
        if features is not None:
            self._feature_group_discard(group, channel, features)
            return
        with self._connection() as conn, self._lock():
            conn.execute("DELETE FROM groups WHERE grp = ? AND channel = ?", (group, channel))

    def group_channels(self, group: str) -> list[str]:
        validate_group_name(group)
        self._sweep(force=True)
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT channel FROM groups WHERE grp = ? AND expires > ? ORDER BY channel", (group, time.time())
            )
            return [r[0] for r in rows]

    def send_group(self, group: str, message: dict) -> None:
        validate_group_name(group)
        data = encode(message, self.max_message_size)
        self._sweep(force=True)
        with self._connection() as conn:
            queues = self._send_group(conn, group, data)
            if queues:
                self._poke(conn, queues)

    def _send_group(self, conn: sqlite3.Connection, group: str, data: bytes) -> list[str]:
        """Queue one copy per receiving queue in one transaction; return the queues that got one.

        A history group's message gets its offset and is kept in the same transaction; the
        copies for sidecar prefixes carry the stamp."""
        with self._transaction(conn):
            now = time.time()
            stamp = self._history_stamp(conn, group, data, now)
            stamped = None if stamp is None else with_keys(data, {STAMP_KEY: [group, stamp[0], stamp[1]]})
            buckets: dict[str, list[str]] = {}
            rows = conn.execute("SELECT channel FROM groups WHERE grp = ? AND expires > ?", (group, now)).fetchall()
            for (channel,) in rows:
                buckets.setdefault(non_local_name(channel), []).append(channel)
            filled, skipped = q.queue_group_copies(conn, buckets, now, self.expiry, data, self.get_capacity, stamped)
            dropped = sum(n for _, n in skipped)
            for queue, n in skipped:
                log.debug("group %r: %d member(s) behind full channel %r skipped", group, n, queue)
            if dropped:
                q.bump(conn, "group_drop_count", dropped)
            if filled:
                q.bump(conn, "messages_count", len(filled))
        return filled

    # -- key-value store ----------------------------------------------------------------------

    def session_get(self, key: str) -> bytes | None:
        self._session_key(key)
        with self._connection() as conn:
            row = conn.execute("SELECT value FROM kv WHERE key = ? AND expires > ?", (key, time.time())).fetchone()
        return None if row is None else bytes(row[0])

    def session_set(self, key: str, value: bytes, ttl: float) -> None:
        self._session_key(key)
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"session value must be bytes, not {type(value).__name__}")
        self._sweep()
        with self._connection() as conn, self._lock():
            conn.execute(
                "INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)",
                (key, bytes(value), time.time() + float(ttl)),
            )

    def session_delete(self, key: str) -> None:
        self._session_key(key)
        with self._connection() as conn, self._lock():
            conn.execute("DELETE FROM kv WHERE key = ?", (key,))

    def session_compare_and_set(self, key: str, expected: bytes | None, value: bytes | None, ttl: float) -> bool:
        self._session_key(key)
        if value is not None:
            value = self._session_value(value)
        with self._write() as conn:  # one write transaction: nobody else reads or writes in between
            now = time.time()
            row = conn.execute("SELECT value FROM kv WHERE key = ? AND expires > ?", (key, now)).fetchone()
            if (None if row is None else bytes(row[0])) != expected:
                return False
            if value is None:
                conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            else:
                conn.execute("INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)",
                             (key, value, now + float(ttl)))
            return True

    # -- housekeeping -------------------------------------------------------------------------

    def flush(self) -> None:
        with self._write() as conn:
            for table in ("messages", "targets", "groups", "kv", "hist", "hist_meta", "presence", "presence_owner",
                          "presence_users", "presence_meta"):
                conn.execute(f"DELETE FROM {table}")

    def _counters(self, conn: sqlite3.Connection) -> dict[str, int]:
        counts = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        found = {name: int(counts.get(name, 0)) for name in ("messages_count", "channel_full_count", "group_drop_count")}
        if counts.get("history_unstamped_count"):
            found["history_unstamped_count"] = int(counts["history_unstamped_count"])
        return found

    def global_statistics(self) -> dict[str, int]:
        """Store-wide figures, shared by every process (the full/drop counters too)."""
        self._sweep(force=True)
        with self._connection() as conn:
            if self._state.sent:
                with self._transaction(conn):
                    self._flush_sent(conn)
            conn.execute("BEGIN")
            try:
                pending = conn.execute(
                    "SELECT coalesce(sum(max(fanout, 1)), 0) FROM messages WHERE expires > ?", (time.time(),)
                ).fetchone()[0]
                counters = self._counters(conn)
            finally:
                conn.execute("COMMIT")
        return {"messages_pending": int(pending), **counters}

    def channel_statistics(self, channel: str) -> dict[str, int]:
        queue = non_local_name(validate_channel_name(channel, receive="!" in channel and channel.endswith("!")))
        now = time.time()
        with self._connection() as conn:
            conn.execute("BEGIN")
            try:
                pending, oldest = conn.execute(
                    "SELECT coalesce(sum(max(fanout, 1)), 0), min(sent) FROM messages WHERE queue = ? AND expires > ?",
                    (queue, now),
                ).fetchone()
                counters = self._counters(conn)
            finally:
                conn.execute("COMMIT")
        age = now - oldest if oldest is not None else 0.0
        counters.pop("messages_count")
        return {"messages_pending": int(pending), "messages_max_age": int(max(age, 0.0)), **counters}

    def close(self) -> None:
        """Unregister and remove this process's wake-up sockets and close its connections."""
        if self._state.pid == current_pid():
            self._finalizer.detach()
            self._state.release(self._pool)
            self._state = wake.ProcessState(self._wake_dir)
            self._finalizer = weakref.finalize(self, self._state.release, self._pool)
        self._pool.close()
        self._lock.close()

    def __repr__(self) -> str:
        return f"<IpcChannelLayer path={self.path!r} expiry={self.expiry:g} capacity={self.capacity}>"
