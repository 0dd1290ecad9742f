"""The in-memory layer (``memory://``): one process, any number of threads or greenlets.

Made for tests and ``wsgi-channels runserver``. Blocking ``receive`` waits on a
condition variable that every send notifies, so it wakes as soon as a message
arrives; under gevent's monkey-patching the same primitives are cooperative.

Each queue entry holds one encoded copy of a message and the list of channel
names still to receive it: a plain send has one target; a group send to several
members behind one ``prefix!`` stores one entry with all of them, which
``receive`` hands out one ``(channel, message)`` at a time.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Iterable

from ..serialization import decode
from .base import BaseChannelLayer, Received, non_local_name, validate_channel_name, validate_group_name

__all__ = ["MemoryChannelLayer"]

log = logging.getLogger(__name__)

_SWEEP_INTERVAL = 1.0


class _Entry:
    __slots__ = ("expires", "data", "targets", "sent")

    def __init__(self, expires: float, data: bytes, targets: deque, sent: float) -> None:
        self.expires = expires
        self.data = data
        self.targets = targets
        self.sent = sent


class MemoryChannelLayer(BaseChannelLayer):
    """In-process channel layer; see :class:`~wsgi_channels.layers.base.BaseChannelLayer` for options."""

    cross_process = False

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._cond = threading.Condition(threading.RLock())
        self._queues: dict[str, deque[_Entry]] = {}
        self._groups: dict[str, dict[str, float]] = {}
        self._sent = 0
        self._rr = 0
        self._last_sweep = time.monotonic()
        self._kv: dict[str, tuple[float, bytes]] = {}

    # -- expiry -----------------------------------------------------------------------------

    def _expire_queue(self, key: str, now: float) -> None:
        """Drop expired entries at the front of one queue (all share one expiry, so FIFO is age order)."""
        queue = self._queues.get(key)
        if not queue:
            return
        while queue and queue[0].expires <= now:
            entry = queue.popleft()
            if key.endswith("!"):
                for channel in entry.targets:
                    self._evict(channel)
        if not queue:
            del self._queues[key]

    def _evict(self, channel: str) -> None:
        """A message for ``channel`` expired unread: it leaves every group (CONTRACT: stricter)."""
        for members in self._groups.values():
            members.pop(channel, None)

    def _sweep(self, now: float, force: bool = False) -> None:
        if not force and now - self._last_sweep < _SWEEP_INTERVAL:
            return
        self._last_sweep = now
        for key in list(self._queues):
            self._expire_queue(key, now)
        for group in list(self._groups):
            members = self._groups[group]
            for channel in [c for c, exp in members.items() if exp <= now]:
                del members[channel]
            if not members:
                del self._groups[group]
        for key in [k for k, (exp, _) in self._kv.items() if exp <= now]:
            del self._kv[key]

    def _channel_in_use(self, channel: str) -> bool:
        with self._cond:
            return bool(self._queues.get(channel))

    # -- messages ---------------------------------------------------------------------------

    def send(self, channel: str, message: dict) -> None:
        validate_channel_name(channel)
        data = self._encode(message)
        key = non_local_name(channel)
        capacity = self.get_capacity(key)
        with self._cond:
            now = time.monotonic()
            self._sweep(now)
            self._expire_queue(key, now)
            queue = self._queues.setdefault(key, deque())
            if len(queue) >= capacity:
                self._count("channel_full_count")
                raise self.ChannelFull(f"channel {channel!r} is full ({capacity} messages waiting)")
            queue.append(_Entry(now + self.expiry, data, deque((channel,)), now))
            self._sent += 1
            self._cond.notify_all()

    def receive(self, channels: Iterable[str], block: bool = False, timeout: float | None = None) -> Received:
        names = self._receive_channels(channels)
        wait = self._block_timeout(block, timeout)
        if not names:
            return None, None
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                now = time.monotonic()
                self._sweep(now)
                # Start at a rotating offset so a busy channel cannot starve a quiet one.
                self._rr += 1
                n = len(names)
                for i in range(n):
                    key = names[(self._rr + i) % n]
                    self._expire_queue(key, now)
                    queue = self._queues.get(key)
                    if not queue:
                        continue
                    entry = queue[0]
                    target = entry.targets.popleft()
                    if not entry.targets:
                        queue.popleft()
                        if not queue:
                            del self._queues[key]
                    return target, decode(entry.data)
                remaining = deadline - now
                if remaining <= 0:
                    return None, None
                self._cond.wait(remaining)

    # -- groups -----------------------------------------------------------------------------

    def group_add(self, group: str, channel: str) -> None:
        validate_group_name(group)
        validate_channel_name(channel)
        with self._cond:
            self._groups.setdefault(group, {})[channel] = time.monotonic() + self.group_expiry

    def group_discard(self, group: str, channel: str) -> None:
        validate_group_name(group)
        validate_channel_name(channel)
        with self._cond:
            members = self._groups.get(group)
            if members is not None:
                members.pop(channel, None)
                if not members:
                    del self._groups[group]

    def _members(self, group: str, now: float) -> list[str]:
        self._sweep(now, force=True)
        return list(self._groups.get(group, ()))

    def group_channels(self, group: str) -> list[str]:
        validate_group_name(group)
        with self._cond:
            return self._members(group, time.monotonic())

    def send_group(self, group: str, message: dict) -> None:
        validate_group_name(group)
        data = self._encode(message)
        with self._cond:
            now = time.monotonic()
            buckets: dict[str, deque] = {}
            for channel in self._members(group, now):
                buckets.setdefault(non_local_name(channel), deque()).append(channel)
            for key, targets in buckets.items():
                self._expire_queue(key, now)
                queue = self._queues.setdefault(key, deque())
                capacity = self.get_capacity(key)
                if len(queue) >= capacity:
                    self._count("group_drop_count", len(targets))
                    log.debug("group %r: %d member(s) behind full channel %r skipped", group, len(targets), key)
                    continue
                queue.append(_Entry(now + self.expiry, data, targets, now))
                self._sent += 1
            self._cond.notify_all()

    # -- key-value store ------------------------------------------------------------------------

    def session_get(self, key: str) -> bytes | None:
        self._session_key(key)
        with self._cond:
            item = self._kv.get(key)
            if item is None or item[0] <= time.monotonic():
                return None
            return item[1]

    def session_set(self, key: str, value: bytes, ttl: float) -> None:
        self._session_key(key)
        if not isinstance(value, bytes):
            raise TypeError(f"session value must be bytes, not {type(value).__name__}")
        with self._cond:
            now = time.monotonic()
            self._sweep(now)
            self._kv[key] = (now + ttl, value)

    def session_delete(self, key: str) -> None:
        self._session_key(key)
        with self._cond:
            self._kv.pop(key, None)

    def session_compare_and_set(self, key: str, expected: bytes | None, value: bytes | None, ttl: float) -> bool:
        self._session_key(key)
        if value is not None:
            value = self._session_value(value)
        with self._cond:
            now = time.monotonic()
            item = self._kv.get(key)
            if (None if item is None or item[0] <= now else item[1]) != expected:
                return False
            if value is None:
                self._kv.pop(key, None)
            else:
                self._kv[key] = (now + ttl, value)
            return True

    # -- housekeeping -----------------------------------------------------------------------

    def flush(self) -> None:
        with self._cond:
            self._queues.clear()
            self._groups.clear()
            self._kv.clear()
            self._cond.notify_all()

    def global_statistics(self) -> dict[str, int]:
        with self._cond:
            self._sweep(time.monotonic(), force=True)
            pending = sum(len(e.targets) for q in self._queues.values() for e in q)
            return {"messages_count": self._sent, "messages_pending": pending, **self._local_statistics()}

    def channel_statistics(self, channel: str) -> dict[str, int]:
        key = non_local_name(validate_channel_name(channel, receive="!" in channel and channel.endswith("!")))
        with self._cond:
            now = time.monotonic()
            self._expire_queue(key, now)
            queue = self._queues.get(key, ())
            age = now - queue[0].sent if queue else 0.0
            return {
                "messages_pending": sum(len(e.targets) for e in queue),
                "messages_max_age": int(age),
                **self._local_statistics(),
            }
