"""The in-memory layer (``memory://``): one process, any number of threads or greenlets.

Made for tests and ``wsgi-channels runserver``. Blocking ``receive`` waits on a
condition variable that every send notifies, so it wakes as soon as a message
arrives; under gevent's monkey-patching the same primitives are cooperative.

Each queue entry holds one encoded copy of a message and the list of channel
names still to receive it: a plain send has one target; a group send to several
members behind one ``prefix!`` stores one entry with all of them, which
``receive`` hands out one ``(channel, message)`` at a time.

Group history and presence (``group_history``/``group_presence``) live beside the
queues, under the same lock, so an offset is assigned, stored and fanned out in one
step, and a presence change is made and sent in one step (:mod:`._memory_features`
holds their state). The epoch of a history group is made at its first use in this
layer instance: a new process (or a new layer, or ``flush()``) starts new streams.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Iterable

from ..exceptions import PresenceFull
from ..presence import conn_id
from ..serialization import decode, encode, with_keys
from . import _memory_features as mf
from .base import BaseChannelLayer, Received
from .features import (STAMP_KEY, HistoryOptions, HistoryPage, PresenceChange, PresenceEntry, PresenceOptions,
                       add_notice, check_entries, check_since_limit, discard_notice, gc_paused)
from .names import is_sidecar_prefix, non_local_name, validate_channel_name, validate_group_name

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
    sends_may_wait = False  # its sends take an in-process lock held for microseconds
    features_supported = frozenset({"history", "presence"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._cond = threading.Condition(threading.RLock())
        self._queues: dict[str, deque[_Entry]] = {}
        self._groups: dict[str, dict[str, float]] = {}
        self._sent = 0
        self._rr = 0
        self._last_sweep = time.monotonic()
        self._kv: dict[str, tuple[float, bytes]] = {}
        self._histories: dict[str, mf.History] = {}
        self._presences: dict[str, mf.Presence] = {}
        self._last_feature_sweep = self._last_sweep

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
        if (self._histories or self._presences) and now - self._last_feature_sweep >= _SWEEP_INTERVAL:
            self._last_feature_sweep = now
            mf.sweep_idle(self._histories, self._presences, now)
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

    def group_add(self, group: str, channel: str, presence: Any = None) -> None:
        validate_group_name(group)
        validate_channel_name(channel)
        features = self._features.of(group) if self._has_features else None
        if features is None and presence is None:
            with self._cond:  # a plain group: exactly the work it always was
                self._groups.setdefault(group, {})[channel] = time.monotonic() + self.group_expiry
            return
        entry = None
        if presence is not None:
            options, user, info = self._presence_arg(group, presence)  # PresenceNotEnabled without a pattern
            entry = options, user, encode({"i": info}, None)  # stored encoded: every read gets its own copy
        assert features is not None
        with self._cond:
            now = time.monotonic()
            made = None
            if entry is not None:  # first: PresenceFull leaves everything as it was
                made = self._presence_add(group, entry[0], channel, entry[1], entry[2], now)
            members = self._groups.setdefault(group, {})
            new = members.get(channel, 0.0) <= now
            members[channel] = now + self.group_expiry
            if is_sidecar_prefix(non_local_name(channel)) and (new or (made is not None and made[0])):
                # the position under the lock that makes the membership: exactly the messages after it see it
                position = self._join_position(group, features, now)
                self._push_internal(channel, add_notice(group, position, made[1] if made is not None else None), now)
            if made is not None and made[2] is not None:
                self._presence_send(group, made[2], now)
            self._cond.notify_all()

    def group_discard(self, group: str, channel: str) -> None:
        validate_group_name(group)
        validate_channel_name(channel)
        features = self._features.of(group) if self._has_features else None
        with self._cond:
            members = self._groups.get(group)
            was = None
            if members is not None:
                was = members.pop(channel, None)
                if not members:
                    del self._groups[group]
            if features is None:
                return
            now = time.monotonic()
            if features.presence is not None:
                self._presence_remove(group, non_local_name(channel), [conn_id(channel)], now)
            if was is not None and was > now and is_sidecar_prefix(non_local_name(channel)):
                self._push_internal(channel, discard_notice(group), now)
            self._cond.notify_all()

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
        history = self.history_options(group) if self._has_features else None
        with self._cond:
            now = time.monotonic()
            stamped = None if history is None else self._history_append(group, history, data, now)
            self._fan_out(group, data, stamped, now)
            self._cond.notify_all()

    def _fan_out(self, group: str, data: bytes, stamped: bytes | None, now: float,
                 sidecars_only: bool = False) -> None:
        """Queue ``data`` for every member (``stamped`` instead on sidecar prefixes, or only to them
        with ``sidecars_only``); lock held."""
        buckets: dict[str, deque] = {}
        for channel in self._members(group, now):
            buckets.setdefault(non_local_name(channel), deque()).append(channel)
        for key, targets in buckets.items():
            payload = data
            if stamped is not None or sidecars_only:
                sidecar = is_sidecar_prefix(key)
                if sidecars_only and not sidecar:
                    continue
                if sidecar and stamped is not None:
                    payload = stamped
            self._expire_queue(key, now)
            queue = self._queues.setdefault(key, deque())
            capacity = self.get_capacity(key)
            if len(queue) >= capacity:
                self._count("group_drop_count", len(targets))
                log.debug("group %r: %d member(s) behind full channel %r skipped", group, len(targets), key)
                continue
            queue.append(_Entry(now + self.expiry, payload, targets, now))
            self._sent += 1

    def _push_internal(self, channel: str, message: dict, now: float) -> None:
        """Queue a layer-made message (a notice) on ``channel``, whatever its capacity; lock held."""
        key = non_local_name(channel)
        self._expire_queue(key, now)
        self._queues.setdefault(key, deque()).append(
            _Entry(now + self.expiry, encode({}, None, message), deque((channel,)), now))

    def _send_group_internal(self, group: str, message: dict, sidecars_only: bool = True) -> None:
        validate_group_name(group)
        data = encode({}, None, message)
        with self._cond:
            self._fan_out(group, data, None, time.monotonic(), sidecars_only)
            self._cond.notify_all()

    # -- history ------------------------------------------------------------------------------

    def _history_append(self, group: str, options: HistoryOptions, data: bytes, now: float) -> bytes:
        """Give ``data`` the group's next offset and keep it; the copy stamped for sidecars. Lock held."""
        history = mf.history_of(self._histories, group, now, options.meta_ttl)
        offset = history.append(data, now, options.size, options.ttl, options.meta_ttl)
        return with_keys(data, {STAMP_KEY: [group, history.epoch, offset]})

    def _join_position(self, group: str, features: Any, now: float) -> Any:
        """The notice's ``h``: False, or the group's ``[epoch, offset]`` (as group_position). Lock held."""
        if features.history is None:
            return False
        history = mf.history_of(self._histories, group, now, features.history.meta_ttl)
        history.read(0, 0, now)  # touches the meta, as group_position does
        return [history.epoch, history.top]

    def _history_read(self, requests: Any) -> list[Any]:
        found: list[Any] = []
        with self._cond:
            now = time.monotonic()
            for group, since, limit in requests:
                try:
                    validate_group_name(group)
                    check_since_limit(since, limit, allow_zero=True)
                except Exception as e:
                    found.append(e)
                    continue
                options = self.history_options(group)
                history = mf.history_of(self._histories, group, now, options.meta_ttl if options else None)
                found.append((history.epoch, history.top, history.read(since, limit, now)))
        return [item if isinstance(item, BaseException) else
                HistoryPage(item[0], item[1], [(offset, decode(data)) for offset, data in item[2]])
                for item in found]

    # -- presence -----------------------------------------------------------------------------

    def _presence_add(self, group: str, options: PresenceOptions, channel: str, user: str | None, info: bytes,
                      now: float) -> tuple[bool, dict, tuple[PresenceChange, PresenceChange | None] | None]:
        """Make or update ``channel``'s entry: (made or changed, the notice's ``p``, the change). Lock held."""
        state = self._presences.get(group)
        cid = conn_id(channel)
        if state is not None and cid not in state.entries and len(state.entries) >= options.max_members:
            raise PresenceFull(f"group {group!r} has {len(state.entries)} presence entries (max_members "
                               f"{options.max_members} of {options.pattern!r}): not added")
        if state is None:
            state = self._presences[group] = mf.Presence(options)
        state.configure(options)
        event = state.put(cid, non_local_name(channel), user, info, time.time(), now)
        change = state.changed(group, [event], now) if event is not None else None
        return event is not None, state.notice_of(cid), change

    def _presence_remove(self, group: str, owner: str, conn_ids: Any, now: float) -> PresenceChange | None:
        """Remove ``owner``'s entries ``conn_ids``; send and return the change. Lock held."""
        state = self._presences.get(group)
        if state is None:
            return None
        events = [event for event in (state.remove(cid, owner) for cid in conn_ids) if event is not None]
        return self._presence_send(group, state.changed(group, events, now), now) if events else None

    def _presence_send(self, group: str, made: tuple[PresenceChange, PresenceChange | None],
                       now: float) -> PresenceChange:
        """Send a change (what its mode says to send) to the group's sidecar members; return it. Lock held."""
        change, sent = made
        if sent is not None:
            self._fan_out(group, encode({}, None, sent.message()), None, now, sidecars_only=True)
            self._cond.notify_all()
        return change

    def _presence_entries(self, group: str) -> dict[str, PresenceEntry]:
        validate_group_name(group)
        with gc_paused(), self._cond:  # paused around the lock: its release allocates (see gc_paused)
            state = self._presences.get(group)
            return {} if state is None else state.live_entries(time.monotonic())

    def _presence_counts(self, group: str) -> dict[str, int]:
        validate_group_name(group)
        with self._cond:
            state = self._presences.get(group)
            return {"clients": 0, "users": 0} if state is None else state.counts()

    def presence_refresh(self, owner: str, groups: Any) -> list[bool]:
        with self._cond:
            now = time.monotonic()
            found = []
            for group in groups:
                state = self._presences.get(group)
                found.append(state is not None and state.refresh(owner, now))
            return found

    def presence_remove(self, group: str, owner: str, conn_ids: Any) -> PresenceChange | None:
        validate_group_name(group)
        with self._cond:
            return self._presence_remove(group, owner, list(conn_ids), time.monotonic())

    def presence_reassert(self, owner: str, group: str, entries: Any) -> PresenceChange | None:
        validate_group_name(group)
        checked = check_entries(entries)
        with self._cond:
            now = time.monotonic()
            state = self._presences.get(group)
            if state is None:
                state = self._presences[group] = mf.Presence(self.presence_options(group) or PresenceOptions())
            events = state.reassert(owner, checked, now)
            return self._presence_send(group, state.changed(group, events, now), now) if events else None

    def presence_sweep(self, limit: int = 32) -> list[PresenceChange]:
        changes: list[PresenceChange] = []
        with self._cond:
            now = time.monotonic()
            for group, state in list(self._presences.items()):
                events = state.sweep(now)
                if events:
                    changes.append(self._presence_send(group, state.changed(group, events, now), now))
                    if len(changes) >= limit:
                        break
        return changes

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
            self._histories.clear()
            self._presences.clear()
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
