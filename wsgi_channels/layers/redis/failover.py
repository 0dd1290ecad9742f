"""How the Redis layer lives through failovers: the topology epoch and its callbacks, the replay of
recent memberships, and ``wait_replicas``.

A mixin of :class:`~wsgi_channels.layers.redis.RedisChannelLayer` (its state lives there).
A Sentinel service's shard moves when the sentinels announce a new primary; a Cluster's
buckets move when the slot map says so. Replication is asynchronous, so what a primary
acknowledged just before it died may be missing on its successor:

- each process re-adds (or discards again) the group memberships it changed in the last
  :data:`MEMBERSHIP_REPLAY_SECONDS`, in order, once it has followed a failover; only then
  are the :meth:`FailoverMixin.on_topology_change` callbacks called (the sidecar checks its
  state marker at once then);
- a message acknowledged just before the crash may be lost: ``wait_replicas`` narrows that
  window, at the price of a replica's round trip on every write (see docs/deployment.md).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Sequence

from ... import exceptions as exc
from .connection import Script, packed

__all__ = ["FailoverMixin", "MEMBERSHIP_REPLAY_SECONDS"]

log = logging.getLogger(__name__)

#: After a failover, each process adds again (or discards again) the group memberships it changed
#: this many seconds before: replication is asynchronous, and a membership acknowledged just before
#: the old primary died may be missing on its successor. Replaying is idempotent (``group_add``
#: renews, ``group_discard`` of a non-member does nothing) and keeps this process's order.
MEMBERSHIP_REPLAY_SECONDS = 5.0
_JOURNAL_LIMIT = 10_000


class FailoverMixin:
    """Failover handling of :class:`~wsgi_channels.layers.redis.RedisChannelLayer`.

    Uses the layer's ``_members``, ``_journal``, ``_topology_callbacks``, ``_wait``,
    ``_wait_for``, ``_unreplicated``, ``_replication_ok`` and its ``_group_add``/``_group_discard``.
    """

    _members: list
    _journal: deque | None
    _topology_callbacks: list
    _wait: bytes | None
    _wait_for: int
    _unreplicated: int
    _replication_ok: bool
    _group_add: Any
    _group_discard: Any

    @staticmethod
    def _wait_command(replicas: Any, timeout: Any) -> tuple[bytes | None, int]:
        try:
            count, ms = int(replicas), max(0, int(float(timeout) * 1000))
        except (TypeError, ValueError):
            raise exc.ConfigurationError(f"wait_replicas must be a number of replicas and wait_replicas_timeout a "
                                         f"number of seconds, not {replicas!r} and {timeout!r}") from None
        if count < 0:
            raise exc.ConfigurationError(f"wait_replicas must be 0 (off) or more, not {count}")
        return (packed("WAIT", count, ms) if count else None), count

    @property
    def topology_epoch(self) -> int:
        """A number that grows with every failover (or slot move) this process's layer followed."""
        return sum(m.epoch for m in self._members)

    def on_topology_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every failover this layer follows, once this process's recent
        membership changes are re-applied (in a thread of the layer's; keep it short). The sidecar
        checks its state at once then, instead of at its next check."""
        self._topology_callbacks.append(callback)

    def _topology_changed(self) -> None:
        threading.Thread(target=self._after_failover, name="wsgi-channels-failover", daemon=True).start()

    def _after_failover(self) -> None:
        for member in self._members:
            try:
                member.failed_over()  # a Cluster's record of its buckets, written again where it went missing
            except Exception:
                log.exception("checking the Redis Cluster's record of its hash tags after a failover failed")
        if self._journal is not None:
            self._replay_memberships()
        for callback in list(self._topology_callbacks):
            try:
                callback()
            except Exception:
                log.exception("topology change callback %r failed", callback)

    def _journal_membership(self, op: str, group: str, channel: str) -> None:
        journal = self._journal
        if journal is None:
            return
        now = time.monotonic()
        journal.append((now, op, group, channel))
        while journal and (now - journal[0][0] > MEMBERSHIP_REPLAY_SECONDS or len(journal) > _JOURNAL_LIMIT):
            journal.popleft()

    def _replay_memberships(self) -> None:
        """Re-apply this process's membership changes of the last few seconds, in order (after a failover)."""
        assert self._journal is not None
        cutoff = time.monotonic() - MEMBERSHIP_REPLAY_SECONDS
        recent = [entry for entry in list(self._journal) if entry[0] >= cutoff]
        if not recent:
            return
        failed = 0
        for _, op, group, channel in recent:
            try:
                (self._group_add if op == "add" else self._group_discard)(group, channel)
            except exc.ChannelsError:
                failed += 1
        log.info("re-applied %d recent group membership change(s) after a failover (%d failed)",
                 len(recent) - failed, failed)

    def _replicated(self, acked: Any) -> None:
        """Note the reply of a ``WAIT`` that followed a write: fewer replicas than asked is counted."""
        if isinstance(acked, int) and acked >= self._wait_for:
            self._replication_ok = True
            return
        self._unreplicated += 1
        if self._replication_ok:
            self._replication_ok = False
            log.warning("a write was confirmed by %s replica(s), fewer than wait_replicas=%d, within "
                        "wait_replicas_timeout: it stays queued on the primary and may be lost if that fails "
                        "now (logged once until replicas confirm again)", acked, self._wait_for)

    def _script_waited(self, shard: Any, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``shard.script(...)``, followed by the ``WAIT`` of ``wait_replicas`` in the same round trip."""
        if self._wait is None:
            return shard.script(script, keys, args)
        reply, acked = shard.pipeline([packed("EVALSHA", script.sha, len(keys), *keys, *args)], script,
                                      tail=(self._wait,))
        if isinstance(reply, Exception):
            raise reply
        self._replicated(acked)
        return reply
