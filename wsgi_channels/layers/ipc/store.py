"""The SQLite file behind the ``ipc://`` layer: where it lives, who may open it, its schema.

One store is one SQLite database in WAL mode, shared by every process on the
machine that names the same path. WAL lets readers run beside the one writer;
every change is one ``BEGIN IMMEDIATE`` transaction, so a process killed in the
middle of one leaves nothing half-written (SQLite rolls the WAL tail back and
the kernel drops the dead process's file locks). ``synchronous=NORMAL`` keeps
that guarantee against process crashes; only an OS crash or power loss may
lose the last transactions, which is fine for messages that expire in a minute.

Safety of the file itself:

* the directory is created ``0700`` and the database ``0600`` (SQLite gives its
  ``-wal`` and ``-shm`` files the database file's mode);
* the default path lives in a per-user directory of the temporary directory,
  which must belong to the current user and be closed to others;
* a marker (``PRAGMA application_id`` + ``user_version``) says the file is a
  wsgi_channels store of a known schema; anything else raises :class:`StoreError`
  before the file is touched.
"""
from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import stat
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from ...exceptions import LayerUnavailable, StoreError

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "default_path",
    "private_dir",
    "prepare_path",
    "open_connection",
    "ConnectionPool",
    "WriteLock",
    "current_pid",
]

log = logging.getLogger(__name__)

#: ``PRAGMA application_id`` of a wsgi_channels store: "WSCh" in ASCII.
APPLICATION_ID = 0x57534368
#: ``PRAGMA user_version``: bumped when the schema changes. Version 2 added the history and
#: presence tables to version 1's (a v1 file is upgraded in place when a v2 process opens it;
#: a v1 process then refuses the file: restart every process of the machine together).
SCHEMA_VERSION = 2

# Messages: one row per plain send, one row per (group send, receiving queue).
#   queue   the channel, or ``prefix!`` for a process-local channel (capacity counts rows here)
#   target  full ``prefix!suffix`` name of a plain send to a process-local channel, else NULL
#   fanout  0 for a plain send; for a group copy, how many rows of ``targets`` are still to receive it
# ``id`` orders a queue (FIFO). No AUTOINCREMENT: it would cost one more page write per send; a
# receive deletes "the head of its queue", never a remembered id, so a reused id cannot confuse it.
_SCHEMA = """
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    target TEXT,
    fanout INTEGER NOT NULL DEFAULT 0,
    sent REAL NOT NULL,
    expires REAL NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX messages_queue ON messages (queue, id);
CREATE INDEX messages_expires ON messages (expires);
CREATE TABLE targets (
    msg INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    channel TEXT NOT NULL,
    PRIMARY KEY (msg, seq)
) WITHOUT ROWID;
CREATE TABLE groups (
    grp TEXT NOT NULL,
    channel TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (grp, channel)
) WITHOUT ROWID;
CREATE INDEX groups_channel ON groups (channel);
CREATE INDEX groups_expires ON groups (expires);
CREATE TABLE kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX kv_expires ON kv (expires);
CREATE TABLE waiters (
    queue TEXT NOT NULL,
    addr TEXT NOT NULL,
    PRIMARY KEY (queue, addr)
) WITHOUT ROWID;
CREATE INDEX waiters_addr ON waiters (addr);
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""

# Version 2: group history and presence (see history.py and presence.py).
#   hist        kept messages of history groups, offsets first..top contiguous per group
#   hist_meta   per history group: epoch, top offset, the boot id it was made under, when it expires
#   presence    entries: conn_id, user, encoded info, since (wall clock), owner (a process prefix)
#   presence_owner   each owner's lease in a group (expires: wall clock)
#   presence_users   per user the number of its entries (a row per user: users = row count)
#   presence_meta    per presence group: the counts (O(1) stats), change number, mode, options
_SCHEMA_V2 = """
CREATE TABLE hist (
    grp TEXT NOT NULL,
    off INTEGER NOT NULL,
    expires REAL NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (grp, off)
) WITHOUT ROWID;
CREATE INDEX hist_expires ON hist (expires);
CREATE TABLE hist_meta (
    grp TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    top INTEGER NOT NULL,
    boot TEXT NOT NULL,
    expires REAL NOT NULL,
    meta_ttl REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX hist_meta_expires ON hist_meta (expires);
CREATE TABLE presence (
    grp TEXT NOT NULL,
    conn TEXT NOT NULL,
    usr TEXT,
    info BLOB NOT NULL,
    since REAL NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (grp, conn)
) WITHOUT ROWID;
CREATE INDEX presence_by_owner ON presence (grp, owner);
CREATE TABLE presence_owner (
    grp TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (grp, owner)
) WITHOUT ROWID;
CREATE INDEX presence_owner_expires ON presence_owner (expires);
CREATE TABLE presence_users (
    grp TEXT NOT NULL,
    usr TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (grp, usr)
) WITHOUT ROWID;
CREATE TABLE presence_meta (
    grp TEXT PRIMARY KEY,
    clients INTEGER NOT NULL,
    users INTEGER NOT NULL,
    v INTEGER NOT NULL,
    mode TEXT NOT NULL,
    ttl REAL NOT NULL,
    events_max INTEGER NOT NULL,
    join_leave INTEGER NOT NULL,
    max_members INTEGER NOT NULL,
    touched REAL NOT NULL
) WITHOUT ROWID;
"""


def private_dir() -> str:
    """``<tmp>/wsgi_channels-<uid>``: the current user's directory for default stores and sockets."""
    return os.path.join(tempfile.gettempdir(), f"wsgi_channels-{os.getuid()}")


def default_path() -> str:
    """Store path used by ``ipc://`` without a path."""
    return os.path.join(private_dir(), "channels.db")


def ensure_private_dir(directory: str) -> None:
    """Create ``directory`` 0700, or check that an existing one is ours and closed to others.

    Used for directories in the shared temporary directory, where another user
    could otherwise create the directory first and read or plant files in it.
    """
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        st = os.lstat(directory)
    except OSError as e:
        raise StoreError(f"cannot create the channel store directory {directory!r}: {e.strerror}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{directory!r} is not a directory")
    if st.st_uid != os.getuid():
        raise StoreError(
            f"{directory!r} belongs to uid {st.st_uid}, not to this user (uid {os.getuid()}); "
            "refusing to keep a channel store in a directory someone else controls"
        )
    if st.st_mode & 0o077:
        raise StoreError(
            f"{directory!r} is open to other users (mode {stat.S_IMODE(st.st_mode):o}); "
            "expected 700 for a channel store in the temporary directory"
        )


def _makedirs_private(directory: str) -> None:
    """``os.makedirs`` giving every directory it creates mode 0700 (makedirs does so for the last only)."""
    missing = []
    while directory and not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            if not os.path.isdir(d):
                raise


def prepare_path(path: str, private: bool = False) -> str:
    """Make sure ``path`` can hold a store: directory present, file present with mode 0600.

    ``private`` (the default path in the temporary directory) also checks the
    directory's owner and mode. Raises :class:`StoreError` naming the problem.
    """
    path = os.path.abspath(os.path.expanduser(path))
    directory = os.path.dirname(path)
    if private:
        ensure_private_dir(directory)
    elif not os.path.isdir(directory):
        try:
            _makedirs_private(directory)
        except OSError as e:
            raise StoreError(
                f"cannot create the directory of the channel store {path!r}: {e.strerror}"
            ) from e
    if os.path.isdir(path):
        raise StoreError(f"channel store path {path!r} is a directory; give a file path such as {path}/channels.db")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as e:
        raise StoreError(f"channel store {path!r} is not writable: {e.strerror}") from e
    os.close(fd)
    # SQLite creates -wal and -shm beside the database: the directory must be writable too.
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StoreError(f"the directory of channel store {path!r} is not writable (SQLite needs its -wal file there)")
    return path


def _check_marker(conn: sqlite3.Connection, path: str) -> int:
    """The store's schema version; 0 for an empty database. Raises :class:`StoreError` for
    anything else than a wsgi_channels store this code can read (or upgrade)."""
    if not conn.in_transaction:  # one snapshot: another process may be creating the schema right now
        conn.execute("BEGIN")
        try:
            return _check_marker(conn, path)
        finally:
            conn.execute("COMMIT")
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id == APPLICATION_ID:
        if not 1 <= version <= SCHEMA_VERSION:
            raise StoreError(
                f"channel store {path!r} has schema version {version}, this wsgi_channels reads version "
                f"{SCHEMA_VERSION}: use a new path, or delete the file (its messages are short-lived)"
            )
        return int(version)
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if app_id == 0 and version == 0 and tables == 0:
        return 0
    raise StoreError(
        f"{path!r} is an SQLite database but not a wsgi_channels store "
        f"(application_id {app_id:#x}, {tables} schema object(s)); refusing to touch it"
    )


#: Small pages: a send or receive rewrites a few pages into the WAL, and most messages are small.
_PAGE_SIZE = 1024


def _statements(schema: str) -> list[str]:
    return [statement for statement in schema.split(";") if statement.strip()]


def _initialize(conn: sqlite3.Connection, path: str) -> None:
    """Create the schema in an empty store, or upgrade a version-1 store, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _check_marker(conn, path)  # another process may have won the race
        if version == 0:
            for statement in _statements(_SCHEMA) + _statements(_SCHEMA_V2):
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            log.info("created channel store %s", path)
        elif version == 1:
            for statement in _statements(_SCHEMA_V2):
                conn.execute(statement)
            log.warning("upgraded channel store %s to schema version %d (history and presence tables): "
                        "processes of an older wsgi_channels can no longer open it", path, SCHEMA_VERSION)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def open_connection(path: str, busy_timeout: float, lock: "WriteLock") -> sqlite3.Connection:
    """Open, check (and on first use create) the store at ``path``; raise :class:`StoreError` if unusable.

    Creating the store (page size, WAL mode, schema) happens under ``lock``:
    SQLite does not wait for a busy lock while it switches journal modes, so
    processes opening a new store at once would otherwise fail.
    """
    try:
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False, cached_statements=256
        )
    except sqlite3.Error as e:
        raise StoreError(f"cannot open channel store {path!r}: {e}") from e
    try:
        current = _check_marker(conn, path) == SCHEMA_VERSION
        if not current or conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            with lock():
                version = _check_marker(conn, path)
                if not version:
                    conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")  # only takes effect on an empty file
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                if version != SCHEMA_VERSION:
                    _initialize(conn, path)
        conn.execute("PRAGMA synchronous = NORMAL")
        # After a checkpoint the WAL file is cut back to this size: no unbounded growth.
        conn.execute("PRAGMA journal_size_limit = 8388608")
        conn.execute("PRAGMA temp_store = MEMORY")
    except (StoreError, LayerUnavailable):
        conn.close()
        raise
    except sqlite3.DatabaseError as e:
        conn.close()
        text = str(e)
        if "not a database" in text or "malformed" in text:
            raise StoreError(f"{path!r} is not a wsgi_channels store ({text})") from e
        if "readonly" in text or "unable to open" in text:
            raise StoreError(f"channel store {path!r} is not writable ({text})") from e
        if "locked" in text or "busy" in text:
            raise LayerUnavailable(f"channel store {path!r} stayed locked for {busy_timeout:g}s ({text})") from e
        raise StoreError(f"cannot use channel store {path!r}: {text}") from e
    return conn


_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def current_pid() -> int:
    """``os.getpid()`` without a system call per use (kept current by a fork hook)."""
    return _pid


# Connections inherited through fork() must never be closed (or finalized) in the child:
# SQLite forbids using a connection across fork, and closing one can disturb the parent's
# locks. They are parked here for the life of the process instead.
_inherited: list[sqlite3.Connection] = []


class ConnectionPool:
    """Connections of one process to one store, handed to one thread or greenlet at a time.

    sqlite3 connections are not safe to share concurrently, and one per thread
    would mean one per greenlet under gevent. A small pool gives each caller
    its own connection for the length of one operation; nothing waits on I/O
    while holding one, so the pool stays as small as the real concurrency.
    """

    MAX_IDLE = 8

    def __init__(self, opener: Callable[[], sqlite3.Connection]) -> None:
        self._opener = opener
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._pid = current_pid()

    def _check_fork(self) -> None:
        if current_pid() != self._pid:
            with self._lock:
                if current_pid() != self._pid:
                    _inherited.extend(self._idle)
                    self._idle = []
                    self._pid = current_pid()

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        self._check_fork()
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._opener()
        pid = self._pid
        healthy = True
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    healthy = False
            raise
        finally:
            if pid != current_pid():
                _inherited.append(conn)
            elif healthy:
                with self._lock:
                    if len(self._idle) < self.MAX_IDLE:
                        self._idle.append(conn)
                        conn = None
                if conn is not None:
                    conn.close()
            else:
                conn.close()

    def close(self) -> None:
        self._check_fork()
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class WriteLock:
    """Serializes this store's writers across processes with ``flock`` on ``<store>-lock``.

    SQLite's own busy handler sleeps 1, 2, 5, 10... ms between retries, which
    caps a busy store at a few hundred writes per second per waiting process
    and adds milliseconds to wake-up latency. Writers here take this lock first,
    so SQLite's write lock is (almost) always free when they ask for it. The
    kernel drops an ``flock`` when its holder dies, SIGKILL included, so a
    crash never leaves it held.

    A lock file descriptor is shared by the threads of a process (``flock`` is
    per open file), so an in-process lock goes with it. Waiting polls with
    short, growing sleeps rather than a blocking ``flock``: that keeps a
    deadline (a stopped holder raises :class:`LayerUnavailable` after
    ``timeout``) and, under gevent, yields to the hub instead of blocking it.
    """

    def __init__(self, store_path: str, timeout: float) -> None:
        self.path = store_path + "-lock"
        self.timeout = timeout
        self._owner = current_pid()
        self._fd = -1
        self._local = threading.Lock()

    @contextmanager
    def __call__(self) -> Iterator[None]:
        if self._owner != current_pid():
            # Forked: the parent's descriptor shares the parent's lock, and the in-process
            # lock may be a copy of one another thread held. Start afresh.
            self._owner, self._fd, self._local = current_pid(), -1, threading.Lock()
        if not self._local.acquire(timeout=self.timeout):
            raise LayerUnavailable(f"gave up waiting {self.timeout:g}s for this process's write turn on {self.path!r}")
        try:
            if self._fd < 0:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            fd = self._fd
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._wait(fd)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._local.release()

    def close(self) -> None:
        """Close this process's lock file descriptor (it is reopened on the next write)."""
        if self._owner == current_pid() and self._fd >= 0:
            with self._local:
                fd, self._fd = self._fd, -1
                os.close(fd)

    def _wait(self, fd: int) -> None:
        deadline = time.monotonic() + self.timeout
        delay = 0.00005
        while True:
            time.sleep(delay)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LayerUnavailable(
                        f"channel store lock {self.path!r} held by another process for over {self.timeout:g}s"
                    ) from None
                delay = min(delay * 2, 0.001)
