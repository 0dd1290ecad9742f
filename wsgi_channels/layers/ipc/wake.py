"""Cross-process wake-ups for the ``ipc://`` layer: Unix datagram sockets, one per blocked receiver.

Why this design:

* A receiver that must block binds a datagram socket in a private directory
  beside the store (``<store>-wake/``, mode 0700, so only the owner can poke it)
  and records its address in the store's ``waiters`` table for the queues it
  reads. After its insert commits, a sender looks up the waiters of its queues
  and sends each of them one byte with a non-blocking ``sendto``: one system
  call per waiter, no file to open.
* Registration commits before the receiver's last look at its queues, and the
  sender reads the registrations after its message is committed, so every
  message either is seen by that look or finds the waiter registered: no lost
  wake-up. A poke that arrives before the receiver starts waiting stays queued
  in the socket, so ``wait`` returns at once.
* Waiting is ``recv`` on a socket with a timeout: it releases the GIL under
  threads and yields to the hub under gevent's monkey-patching, and an idle
  receiver costs nothing but the safety-net poll (default once a second).
* A dead receiver leaves a socket file nobody reads: ``sendto`` fails with
  ``ECONNREFUSED``, and the sender drops the registration and the file.

Named FIFOs would need an open/write/close per poke; inotify is Linux-only and
not cooperative under gevent; an eventfd cannot be shared between unrelated
processes. A full socket buffer (a receiver busy elsewhere) just drops the
poke: that receiver is already due to look.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import socket
import sys
import threading
from typing import Iterable

from . import queues as q
from .store import ConnectionPool, current_pid, ensure_private_dir, private_dir

__all__ = ["wake_dir_for", "Waiter", "Poker", "ProcessState"]

log = logging.getLogger(__name__)

# sun_path holds 108 bytes on Linux and 104 on the BSDs and macOS, NUL included.
_MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103
_NAME_LEN = 18  # "<pid, up to 7 digits>-<10 hex digits>"


def wake_dir_for(store_path: str) -> tuple[str, bool]:
    """Directory for the wake-up sockets of a store, and whether it lies in the private temp dir.

    ``<store>-wake`` next to the database when socket paths there fit in
    ``sun_path``; otherwise a per-store directory under the user's private
    temporary directory.
    """
    beside = store_path + "-wake"
    if len(os.fsencode(beside)) + 1 + _NAME_LEN <= _MAX_SOCKET_PATH:
        return beside, False
    digest = hashlib.sha256(os.fsencode(os.path.realpath(store_path))).hexdigest()[:16]
    return os.path.join(private_dir(), f"wake-{digest}"), True


def _prepare_dir(directory: str, private: bool) -> None:
    if private:
        ensure_private_dir(os.path.dirname(directory))
        ensure_private_dir(directory)
    else:
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass


class Waiter:
    """One bound datagram socket that a blocked ``receive`` sleeps on.

    ``queues`` is what the store's ``waiters`` table lists for ``addr``; the
    layer keeps it in step with the registration it commits.
    """

    def __init__(self, directory: str, private: bool) -> None:
        _prepare_dir(directory, private)
        self.pid = current_pid()
        self.addr = os.path.join(directory, f"{self.pid}-{secrets.token_hex(5)}")
        self.queues: tuple[str, ...] = ()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            try:
                self._sock.bind(self.addr)
            except FileNotFoundError:  # another process removed the empty directory just now
                _prepare_dir(directory, private)
                self._sock.bind(self.addr)
        except OSError:
            self._sock.close()
            raise

    def drain(self) -> None:
        """Discard pokes already queued (they were for looks that already happened)."""
        self._sock.settimeout(0.0)
        try:
            while True:
                self._sock.recv(64)
        except (BlockingIOError, InterruptedError, socket.timeout):
            pass

    def wait(self, timeout: float) -> bool:
        """Sleep until poked or ``timeout`` seconds pass; True when poked."""
        self._sock.settimeout(max(timeout, 0.0))
        try:
            self._sock.recv(64)
            return True
        except (socket.timeout, BlockingIOError, InterruptedError):
            return False

    def close(self) -> None:
        """Close the socket and remove its file (only in the process that bound it)."""
        if current_pid() != self.pid:
            return
        self._sock.close()
        try:
            os.unlink(self.addr)
        except OSError:
            pass


class Poker:
    """The sending side: one unbound, non-blocking datagram socket per process."""

    def __init__(self) -> None:
        self._pid = -1
        self._sock: socket.socket | None = None

    def _socket(self) -> socket.socket:
        if self._sock is None or self._pid != current_pid():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            self._sock, self._pid = sock, current_pid()
        return self._sock

    def poke(self, addrs: Iterable[str]) -> list[str]:
        """Wake every address; return the ones whose receiver is gone."""
        sock = self._socket()
        dead = []
        for addr in addrs:
            try:
                sock.sendto(b"\x01", addr)
            except (BlockingIOError, InterruptedError):
                pass  # its buffer is full of pokes: it will look anyway
            except OSError as e:
                if e.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
                    dead.append(addr)
                else:
                    log.debug("could not wake receiver %s: %s", addr, e)
        return dead

    def close(self) -> None:
        if self._sock is not None and self._pid == current_pid():
            self._sock.close()
        self._sock = None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (a dead waiter's socket file can then go)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(directory: str) -> list[str]:
    """Unlink socket files of processes that no longer exist; return their addresses."""
    gone: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return gone
    for name in names:
        pid_text, _, _ = name.partition("-")
        if pid_text.isdigit() and not pid_alive(int(pid_text)):
            addr = os.path.join(directory, name)
            try:
                os.unlink(addr)
            except OSError:
                continue
            gone.append(addr)
    return gone


class ProcessState:
    """What one process owns besides connections: its waiter sockets, its poke socket, and
    the count of its sends not yet added to the store's ``messages_count``.

    Kept apart from the layer so a finalizer can release it at exit without a
    reference to the layer, and only in the process that created it.
    """

    def __init__(self, wake_dir: str) -> None:
        self.pid = current_pid()
        self.wake_dir = wake_dir
        self.lock = threading.Lock()
        self.idle: dict[tuple[str, ...], list[Waiter]] = {}
        self.all: set[Waiter] = set()
        self.poker = Poker()
        self.sent = 0  # sends not yet added to the store's messages_count

    def count_sent(self) -> None:
        with self.lock:
            self.sent += 1

    def take_sent(self) -> int:
        with self.lock:
            n, self.sent = self.sent, 0
        return n

    def release(self, pool: ConnectionPool | None = None) -> None:
        if current_pid() != self.pid:
            return
        with self.lock:
            waiters, self.all, self.idle = list(self.all), set(), {}
        sent = self.take_sent()
        if pool is not None and (waiters or sent):
            try:
                with pool.connection() as conn:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.executemany("DELETE FROM waiters WHERE addr = ?", [(w.addr,) for w in waiters])
                    if sent:
                        q.bump(conn, "messages_count", sent)
                    conn.execute("COMMIT")
            except Exception as e:  # dead sockets' rows go anyway when a sender finds them
                log.debug("could not unregister waiters or record sends: %s", e)
        for w in waiters:
            w.close()
        self.poker.close()
        if waiters:
            try:
                os.rmdir(self.wake_dir)  # only if no other process has a socket there
            except OSError:
                pass
