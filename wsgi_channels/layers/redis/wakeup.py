"""Wake-ups for blocking receives on the Redis layer: one pub/sub listener per shard per process.

The send and fan-out scripts ``PUBLISH`` on a queue's key when the queue goes
from empty to non-empty. A blocking ``receive`` registers an event for the
queues it waits on, makes sure this shard's listener is subscribed to them,
tries its pop script, and only then waits on the event. A push after the pop
attempt therefore always rings the event; a receive never waits on one shard
while another shard holds a message, and nothing is popped outside the scripts,
so a wake-up can never lose a message.

The listener runs in a daemon thread (a greenlet under gevent's monkey-patching)
that owns its connection: it alone connects, reads and reconnects. Other threads
only write ``SUBSCRIBE`` commands to it under a lock. Its reads are bounded by
the socket's timeout, so it notices ``close()`` and prunes idle subscriptions; a
timeout never loses part of a reply (the hiredis reader keeps it). After a reconnect it resubscribes and
wakes every waiter, so messages pushed while it was away are picked up at once.

A receiving thread keeps its registration between receives on the same channels (:class:`Watch`).

On a Redis Cluster (``sharded``) the listener uses sharded pub/sub (``SSUBSCRIBE``, one
command per slot, answered by ``smessage``): the scripts ``SPUBLISH`` on the queue's key,
which stays in the queue's slot. When the slot leaves the node (a failover or a
resharding) the server ends those subscriptions itself (an unasked ``sunsubscribe``): the
waiters are woken and ``on_moved`` is called, so the layer looks up the new owner. After a
Sentinel failover the layer calls :meth:`Doorbell.reconnect`: a subscription to a demoted
primary goes silent rather than failing, so it is moved actively.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable

import hiredis
from redis.crc import key_slot

__all__ = ["Doorbell", "Watch"]

log = logging.getLogger(__name__)

#: Seconds a subscription is kept after its last waiter left (receive loops come back quickly).
IDLE_UNSUBSCRIBE = 60.0
_POLL = 0.5
_BACKOFF_MAX = 1.0
_READ_SIZE = 65536


class Doorbell:
    """Pub/sub wake-ups for the queues of one shard, shared by every thread of one process."""

    def __init__(self, connect: Callable[[], Any], label: str, sharded: bool = False,
                 on_moved: Callable[[], None] | None = None) -> None:
        self._connect = connect
        self._label = label
        self.sharded = sharded
        self._subscribe, self._unsubscribe = ("SSUBSCRIBE", "SUNSUBSCRIBE") if sharded else ("SUBSCRIBE", "UNSUBSCRIBE")
        self._message = b"smessage" if sharded else b"message"
        self._confirmed = b"ssubscribe" if sharded else b"subscribe"
        #: Called (from the listener) when the server says the keys' slot is no longer its own.
        self.on_moved = on_moved
        self._leaving: set[bytes] = set()  # keys we unsubscribed from ourselves (a sunsubscribe expected)
        self._moving = False  # reconnect() asked for a new connection (a failover)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._waiters: dict[bytes, set] = {}
        self._subscribed: dict[bytes, float] = {}  # confirmed channel -> last time it had waiters
        self._pending: dict[bytes, threading.Event] = {}  # SUBSCRIBE sent, not yet confirmed
        self._orphans: deque = deque()  # (keys, event) left by finalizers that found the lock busy
        self._conn: Any = None
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- used by receiving threads ----------------------------------------------------------

    def watch(self, keys: Iterable[bytes], event: threading.Event, timeout: float) -> None:
        """Ring ``event`` whenever one of ``keys`` gets a message; wait (bounded) until subscribed."""
        new: list[bytes] = []
        waits: list[threading.Event] = []
        with self._lock:
            for key in keys:
                self._waiters.setdefault(key, set()).add(event)
                if key in self._subscribed:
                    continue
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = threading.Event()
                    new.append(key)
                waits.append(pending)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=f"wsgi-channels-wakeup {self._label}",
                                                daemon=True)
                self._thread.start()
        if new:
            self._send(self._subscribe, new)
        deadline = time.monotonic() + timeout
        for pending in waits:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not pending.wait(remaining):
                break

    def unwatch(self, keys: Iterable[bytes], event: threading.Event, blocking: bool = True) -> None:
        """Stop ringing ``event`` for ``keys``. With ``blocking=False`` (from a finalizer, which
        may run while this thread holds the lock) a busy lock defers the removal to the listener."""
        if not self._lock.acquire(blocking):
            self._orphans.append((list(keys), event))  # deque.append is atomic
            return
        try:
            self._forget(keys, event)
        finally:
            self._lock.release()

    def _forget(self, keys: Iterable[bytes], event: threading.Event) -> None:
        now = time.monotonic()
        for key in keys:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[key]
            if key in self._subscribed:
                self._subscribed[key] = now

    def ring(self, key: bytes) -> None:
        """Wake the local waiters of ``key`` (for messages that became available in this process)."""
        with self._lock:
            for event in self._waiters.get(key, ()):
                event.set()

    def close(self) -> None:
        self._closed = True
        self._wake_all()
        self.reconnect()

    def reconnect(self, label: str | None = None) -> None:
        """Drop the listener's connection now: it connects again (to the server the shard names
        now, called ``label``), subscribes to everything again and wakes every waiter."""
        with self._send_lock:
            self._label = label or self._label
            conn = self._conn
            self._moving = not self._closed
            if conn is not None and conn._sock is not None:
                try:
                    conn._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    # -- the listener -----------------------------------------------------------------------

    def _batches(self, keys: list[bytes]) -> list[list[bytes]]:
        """``keys`` in commands of at most 500; sharded ones never mix slots in one command."""
        if not self.sharded:
            return [keys[i:i + 500] for i in range(0, len(keys), 500)]
        by_slot: dict[int, list[bytes]] = {}
        for key in keys:
            by_slot.setdefault(key_slot(key), []).append(key)
        return [same[i:i + 500] for same in by_slot.values() for i in range(0, len(same), 500)]

    def _send(self, command: str, keys: list[bytes]) -> None:
        with self._send_lock:
            conn = self._conn
            if conn is None:
                return  # the listener subscribes to everything pending when it connects
            try:
                for batch in self._batches(keys):
                    conn.send_command(command, *batch, check_health=False)
            except Exception as e:  # the listener sees the broken connection and reconnects
                log.debug("wake-up subscription on %s failed: %s", self._label, e)

    def _wake_all(self) -> None:
        with self._lock:
            for waiters in self._waiters.values():
                for event in waiters:
                    event.set()

    def _run(self) -> None:
        backoff = 0.05
        last_prune = time.monotonic()
        while not self._closed:
            conn = None
            try:
                conn = self._connect()
                conn.connect()
                with self._send_lock:
                    self._conn = conn
                    with self._lock:
                        keys = list(set(self._waiters) | set(self._subscribed) | set(self._pending))
                        for key in keys:
                            self._pending.setdefault(key, threading.Event())
                        self._subscribed.clear()
                        self._leaving.clear()
                    for batch in self._batches(keys):
                        conn.send_command(self._subscribe, *batch, check_health=False)
                    moved, self._moving = self._moving, False
                if moved:
                    log.info("wake-up listener moved to %s", self._label)
                elif backoff > 0.05:
                    log.warning("wake-up listener reconnected to %s", self._label)
                backoff = 0.05
                self._wake_all()  # anything pushed while we were away is fetched now
                # Replies are read with our own hiredis reader straight from the socket, whose
                # timeout bounds each read (partial replies stay in the reader): cheaper than a
                # poll per message, which under gevent costs a hub round of its own.
                sock = conn._sock
                sock.settimeout(_POLL)
                reader = hiredis.Reader()
                while not self._closed:
                    try:
                        data = sock.recv(_READ_SIZE)
                    except socket.timeout:
                        data = None
                    if data is not None:
                        if not data:
                            raise ConnectionError("connection closed by the server")
                        reader.feed(data)
                        reply = reader.gets()
                        while reply is not False:
                            self._handle(reply)
                            reply = reader.gets()
                    now = time.monotonic()
                    if now - last_prune > _POLL * 4:
                        last_prune = now
                        self._prune(now)
            except Exception as e:
                if self._closed:
                    break
                if self._moving:  # reconnect(): a failover, not an outage
                    self._wake_all()
                    continue
                # Once per outage: retries (every second at most) during a long one log at debug.
                (log.warning if backoff == 0.05 else log.debug)(
                    "wake-up listener lost %s: %s; reconnecting", self._label, e)
                self._wake_all()  # waiters retry their pop and see the error for themselves
                if self.on_moved is not None:
                    self.on_moved()  # a dead node: the layer looks for the keys' new owner
                time.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
            finally:
                with self._send_lock:
                    self._conn = None
                if conn is not None:
                    try:
                        conn.disconnect()
                    except Exception:  # pragma: no cover - best effort
                        pass

    def _handle(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            if isinstance(reply, Exception):
                # A refused subscription (MOVED: the slot lives on another node now).
                log.debug("wake-up listener on %s: %s", self._label, reply)
                self._wake_all()
                if self.on_moved is not None:
                    self.on_moved()
            return
        kind, key = reply[0], reply[1]
        if kind == self._message:
            with self._lock:
                for event in self._waiters.get(key, ()):
                    event.set()
        elif kind == self._confirmed:
            with self._lock:
                self._subscribed[key] = time.monotonic()
                pending = self._pending.pop(key, None)
            if pending is not None:
                pending.set()
        elif kind == b"sunsubscribe" and self.sharded:
            with self._lock:
                if key in self._leaving:
                    self._leaving.discard(key)
                    return
                # Not asked for: the key's slot left this node. Waiters pop again (from the new
                # owner, once the layer knows it) and register there.
                self._subscribed.pop(key, None)
                for event in self._waiters.get(key, ()):
                    event.set()
            if self.on_moved is not None:
                self.on_moved()

    def _prune(self, now: float) -> None:
        with self._lock:
            while self._orphans:
                self._forget(*self._orphans.popleft())
            idle = [k for k, last in self._subscribed.items()
                    if k not in self._waiters and now - last > IDLE_UNSUBSCRIBE]
            # Forgotten before the server confirms: a waiter arriving meanwhile subscribes
            # afresh, and Redis handles the UNSUBSCRIBE and that SUBSCRIBE in order.
            for key in idle:
                del self._subscribed[key]
            if self.sharded:
                self._leaving.update(idle)
        if idle:
            self._send(self._unsubscribe, idle)


class Watch:
    """One thread's doorbell registration for one channel list, kept between its receives.

    Released when the thread receives on other channels, or when the thread ends (its
    thread-local storage, and with it this object, goes away).
    """

    __slots__ = ("key", "generation", "watched", "event", "drained")

    def __init__(self, key: tuple, generation: tuple, watched: list, timeout: float) -> None:
        self.key = key
        self.generation = generation  # (fork generation, layer epoch): stale after a fork or close()
        self.watched = watched
        self.event = threading.Event()
        #: The last pop attempt, made after the event was cleared, left every queue empty (it
        #: returned less than it was allowed to): any push since has rung the event.
        self.drained = False
        for bell, keys in watched:
            bell.watch(keys, self.event, timeout)

    def release(self) -> None:
        watched, self.watched = self.watched, []
        for bell, keys in watched:
            bell.unwatch(keys, self.event)

    def __del__(self) -> None:
        # The owning thread ended: never block here (a collection can run anywhere).
        for bell, keys in self.watched:
            bell.unwatch(keys, self.event, blocking=False)
