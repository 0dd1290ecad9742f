"""Groups on a Redis Cluster: the fan-out in every bucket, and the members of a group.

A mixin of :class:`~wsgi_channels.layers.redis.RedisChannelLayer`. A group's memberships live
in each member's bucket (:mod:`.cluster_scripts`), so a group send runs one fan-out script per
bucket, every node written before any is read (one round trip). The script pushes to its
members' queues only when the caller passed exactly their keys: this process keeps, per group
and bucket, the plan's ``sig`` and the packed command with those keys, and learns them from
the script's answer after a membership change (then a second round trip).
"""
from __future__ import annotations

from typing import Any, Sequence

from ... import exceptions as exc
from . import cluster_scripts as cscripts
from . import connection
from .cluster import run_all
from .connection import NOW, Script, bulk
from ..names import non_local_name, validate_group_name

__all__ = ["ClusterGroupsMixin"]

_C_FANOUT = Script(cscripts.FANOUT)
#: The fan-out command's head, then its body and deadline.
FANOUT_TAIL = b"%s$%d\r\n%s\r\n" + NOW
_C_MEMBERS = Script(cscripts.MEMBERS)
_C_SETTLE = Script(cscripts.SETTLE)
#: Entries of the per-process caches before they are cleared.
_CACHE_LIMIT = 10_000


class ClusterGroupsMixin:
    """``group_channels`` and ``send_group`` for Cluster buckets (the layer's standalone shards have theirs)."""

    _fanout_plans: dict
    _expiry_ms: int
    _gexp_ms: int
    capacity: int
    process_capacity: int
    _rules_flag: bytes
    _wait: bytes | None
    _replicated: Any
    _all_vshards: Any

    def _cluster_group_channels(self, buckets: list, group: str) -> list[str]:
        """The members of ``group`` in every bucket: one script per bucket (every node written, then
        read), then, in buckets with process prefixes among them, one more that settles those prefixes
        first (expired entries trimmed, dead prefixes' channels evicted) as the standalone script does."""
        replies = run_all([(b, _C_MEMBERS, connection.packed("EVALSHA", _C_MEMBERS.sha, 6, *b.bucket_keys, group))
                           for b in buckets])
        found: list[str] = []
        settle = []
        for bucket, reply in zip(buckets, replies):
            if isinstance(reply, Exception):
                raise reply
            names = [m.decode() for m in reply]
            prefixes = list(dict.fromkeys(non_local_name(n) for n in names if "!" in n))
            if not prefixes:
                found += names
                continue
            keys = [k for p in prefixes for k in (bucket.key("q", p), bucket.key("u", p), bucket.key("m", p))]
            settle.append((bucket, _C_SETTLE, connection.packed(
                "EVALSHA", _C_SETTLE.sha, 6 + len(keys), *bucket.bucket_keys, *keys, group)))
        for reply in run_all(settle) if settle else ():
            if isinstance(reply, Exception):
                raise reply
            found += [m.decode() for m in reply]
        return found

    @property
    def _all_cluster(self) -> bool | None:
        """Whether every vshard is a Cluster bucket (None until every member knows what it is)."""
        if self._all_vshards is None:
            return None
        return all(v.cluster for v in self._all_vshards)

    def _cluster_fanout_head(self, bucket: Any, group: str, sig: bytes, members: Sequence[str],
                             plain: int) -> bytes:
        """The packed fan-out command for ``bucket`` up to the body: the bucket's keys, then the queue
        keys of the group's plan there (``plain`` plain members, then process prefixes), its ``sig``."""
        keys = [bucket.key("q", name) for name in members[:plain]]
        for prefix in members[plain:]:
            keys += [bucket.key("q", prefix), bucket.key("u", prefix), bucket.key("m", prefix)]
        return b"*%d\r\n" % (3 + 6 + len(keys) + 9) + bulk(
            "EVALSHA", _C_FANOUT.sha, 6 + len(keys), *bucket.bucket_keys, *keys, group, sig, self._expiry_ms,
            self._gexp_ms, self.capacity, self.process_capacity, self._rules_flag)

    def _cluster_send_group(self, buckets: list, group: str, body: bytes) -> int:
        """The fan-out in every bucket, every node written then read (one round trip). A bucket whose
        plan's members this process does not know yet (or any more) answers them instead of pushing;
        it is sent again with their queues' keys (a second round trip, after a membership change)."""
        validate_group_name(group)
        plans = self._fanout_plans
        exp, size = self._expiry_ms, len(body)
        pending = list(buckets)
        dropped = 0
        for _ in range(5):
            heads = []
            for bucket in pending:
                known = plans.get((group, bucket))
                heads.append(known[1] if known is not None else self._cluster_fanout_head(bucket, group, b"", [], 0))
            replies = run_all([(b, _C_FANOUT, FANOUT_TAIL % (head, size, body, b.now_ms() + exp))
                               for b, head in zip(pending, heads)], tail=self._wait)
            if self._wait is not None:
                for acked in replies[1::2]:
                    self._replicated(acked)
                replies = replies[::2]
            again = []
            for bucket, reply in zip(pending, replies):
                if isinstance(reply, Exception):
                    raise reply
                if reply[0] != -1:
                    dropped += reply[0]
                    continue
                sig, plain, names = reply[1], reply[2], [n.decode() for n in reply[3:]]
                if len(plans) >= _CACHE_LIMIT:
                    plans.clear()
                plans[(group, bucket)] = (sig, self._cluster_fanout_head(bucket, group, sig, names, plain))
                again.append(bucket)
            if not again:
                return dropped
            pending = again
        raise exc.LayerUnavailable(f"the members of group {group!r} kept changing during a group send; "
                                   "the call did not complete for some of them")
