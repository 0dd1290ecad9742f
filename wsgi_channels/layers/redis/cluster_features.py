"""Group history and presence on a Redis Cluster: the features' fan-out and notices per bucket.

The history and presence scripts (:mod:`.feature_scripts`) run as they are on a Cluster: every
key of a group carries the tag of the group's bucket, so each script stays in one slot. What
differs is where the members are: memberships live in each member's bucket, and the Cluster
fan-out pushes only to the queues the caller declared (:mod:`.cluster_groups`). This module
derives, from the Cluster scripts of :mod:`.cluster_scripts`, the fan-out that stamps the
sidecars' copies or reaches sidecars only, and the membership scripts that queue a notice,
and runs the fan-out with the same two-step protocol (the plan's keys learnt from its answer).
"""
from __future__ import annotations

import time
from typing import Any

from ... import exceptions as exc
from . import cluster_scripts as cscripts
from .cluster import run_all
from .connection import NOW, Script, bulk
from .feature_scripts import _NOTICE_PUSH, ORDER_WAIT, SIDECARS_ONLY, STAMPED, _derive, join_position

__all__ = ["ClusterFeaturesMixin", "C_FEATURE_FANOUT", "C_GROUP_ADD_NOTICE", "C_GROUP_DISCARD_NOTICE", "ADD_NOTICE",
           "DISCARD_NOTICE"]

_ORDER = f"""
local ORDERED = ARGV[12] ~= nil
-- stamped copies are queued in offset order (feature_scripts.FEATURE_FANOUT); the mark is the last
-- key, moved (mark()) only where the copies are queued (not when the plan's keys are asked for)
local function mark() end
if ORDERED then
  local hx, offset = KEYS[#KEYS], tonumber(ARGV[13])
  local last = redis.call('GET', hx)
  local same, at = false, 0
  if last then
    local sp = string.find(last, ' ', 1, true)
    same, at = string.sub(last, 1, sp - 1) == ARGV[12], tonumber(string.sub(last, sp + 1))
  end
  if ARGV[14] ~= '1' and offset > 1 and (not last or (same and at < offset - 1)) then return {{{ORDER_WAIT}}} end
  mark = function()
    if not same or at < offset then redis.call('SET', hx, ARGV[12] .. ' ' .. offset, 'PX', ARGV[15]) end
  end
end
"""

_FILTER = f"""
local MODE, SBODY = ARGV[10], ARGV[11]
local function sidecar(prefix) return string.sub(prefix, 1, #SIDECAR) == SIDECAR end
local function prefix_body(prefix)
  if MODE == '{STAMPED}' and sidecar(prefix) then return SBODY end
  return body
end
local chosen = {{}}
for i = 1, #prefixes, 4 do
  if MODE ~= '{SIDECARS_ONLY}' or sidecar(prefixes[i]) then chosen[#chosen + 1] = i end
end
"""

#: The Cluster fan-out (same KEYS, ARGV 1-9) with ARGV[10] the mode and ARGV[11] the stamped body,
#: as :data:`.feature_scripts.FEATURE_FANOUT` (the plan and its keys are the plain fan-out's); with
#: ARGV 12-15 (epoch, offset, '1' to force, ttl ms) and the bucket's ``P:hx:{T}group`` mark as the last
#: key, the stamped copies are queued in offset order (:data:`.feature_scripts.ORDER_WAIT`).
C_FEATURE_FANOUT = _derive(_derive(_derive(_derive(_derive(_derive(_derive(_derive(
    cscripts.FANOUT,
    "local function now_ms() return tonumber(dl) - tonumber(exp) end\n",
    "local function now_ms() return tonumber(dl) - tonumber(exp) end\n" + _ORDER),
    "#KEYS ~= 6 + #plain / 2", "#KEYS ~= (ORDERED and 7 or 6) + #plain / 2"),
    "  if not plan then return {0} end\n", "  if not plan then mark() return {0} end\n"),
    "\nlocal dropped = 0\n", "\nmark()\nlocal dropped = 0\n"),
    "local plain, prefixes = plan[4], plan[5]\n", "local plain, prefixes = plan[4], plan[5]\n" + _FILTER),
    "if #plain > 0 then\n  local entry = dl .. E_MESSAGE .. body",
    f"if #plain > 0 and MODE ~= '{SIDECARS_ONLY}' then\n  local entry = dl .. E_MESSAGE .. body"),
    "for i = 1, #prefixes, 4 do\n  local prefix, targets, count, cap = prefixes[i], prefixes[i + 1], prefixes[i + 2], "
    "prefixes[i + 3]\n  local q = KEYS[k]\n  local u, m = KEYS[k + 1], KEYS[k + 2]\n  k = k + 3\n",
    "for _, i in ipairs(chosen) do\n  local prefix, targets, count, cap = prefixes[i], prefixes[i + 1], "
    "prefixes[i + 2], prefixes[i + 3]\n  local k = 7 + #plain / 2 + 3 * (i - 1) / 4\n  local q = KEYS[k]\n"
    "  local u, m = KEYS[k + 1], KEYS[k + 2]\n"),
    "E_FIELD_END .. body", "E_FIELD_END .. prefix_body(prefix)", count=3)

# The notice push of the standalone scripts, waking the member's sidecar with a sharded publish.
_PUSH = _derive(_NOTICE_PUSH, "redis.call('PUBLISH', q, '')", "redis.call('SPUBLISH', q, '')")
_WAS = "local mem = g .. ' ' .. c\n"


def _with_push(source: str) -> str:
    """``source`` (a Cluster script: ``#!lua`` then its prelude) with the notice helpers after the prelude."""
    return _derive(source, "\nlocal function common()", _PUSH + join_position(10) + "\nlocal function common()")


#: The Cluster GROUP_ADD with a notice, as :data:`.feature_scripts.GROUP_ADD_NOTICE`. KEYS: gl ge gc gp
#: t td m q u [hx]; ARGV: group, channel, group expiry ms, capacity, '1' or '2', deadline, expiry ms,
#: body [, 'm', epoch, offset]. The membership is in the member's bucket and the group's stream in
#: the group's (another slot): the position comes from the bucket's order mark
#: (:func:`.feature_scripts.join_position`, mode ``m``), which every stamped copy queued in the
#: bucket moves in the script that queues it.
C_GROUP_ADD_NOTICE = _derive(_derive(
    _with_push(cscripts.GROUP_ADD), _WAS, _WAS + "local was = redis.call('ZSCORE', GE, mem)\n"),
    "\nreturn 1\n", r"""
local new = (not was) or tonumber(was) <= now
if ARGV[5] == '2' or new then push_notice(KEYS[8], KEYS[9], c, ARGV[6], ARGV[7], gexp, notice_body()) end
if new then return 1 end
return 0
""")

#: The Cluster GROUP_DISCARD with a notice. KEYS: gl ge gc gp t td m q u; ARGV: group, channel,
#: deadline, expiry ms, group expiry ms, body.
C_GROUP_DISCARD_NOTICE = _derive(_derive(
    _with_push(cscripts.GROUP_DISCARD), _WAS, _WAS + "local was = redis.call('ZSCORE', GE, mem)\n"),
    "\nreturn 1\n", r"""
if was and tonumber(was) > common().now_ms() then
  push_notice(KEYS[8], KEYS[9], c, ARGV[3], ARGV[4], ARGV[5], ARGV[6])
  return 1
end
return 0
""")

_FANOUT = Script(C_FEATURE_FANOUT)
#: As :data:`.history.ORDER_WAIT_SECONDS` (defined here: history imports this module).
ORDER_WAIT_SECONDS = 0.25
#: The scripts of :data:`C_GROUP_ADD_NOTICE` and :data:`C_GROUP_DISCARD_NOTICE`.
ADD_NOTICE = Script(C_GROUP_ADD_NOTICE)
DISCARD_NOTICE = Script(C_GROUP_DISCARD_NOTICE)


class ClusterFeaturesMixin:
    """The features' fan-out and notices on Cluster buckets, for :class:`~.history.HistoryMixin`."""

    _fanout_plans: dict
    _expiry_ms: int
    _gexp_ms: int
    capacity: int
    process_capacity: int
    _rules_flag: bytes
    _wait: bytes | None

    def _cluster_feature_head(self, bucket: Any, group: str, sig: bytes, members: list, plain: int,
                              ordered: bool) -> bytes:
        keys = [bucket.key("q", name) for name in members[:plain]]
        for prefix in members[plain:]:
            keys += [bucket.key("q", prefix), bucket.key("u", prefix), bucket.key("m", prefix)]
        if ordered:
            keys.append(bucket.key("hx", group))
        return b"*%d\r\n" % (3 + 6 + len(keys) + 11 + (4 if ordered else 0)) + bulk(
            "EVALSHA", _FANOUT.sha, 6 + len(keys), *bucket.bucket_keys, *keys, group, sig, self._expiry_ms,
            self._gexp_ms, self.capacity, self.process_capacity, self._rules_flag)

    def _cluster_feature_fan_out(self, buckets: list, group: str, body: bytes, mode: str, stamped: bytes,
                                 order: Any = None) -> int:
        """:meth:`.cluster_groups.ClusterGroupsMixin._cluster_send_group` with the features' fan-out."""
        plans = self._fanout_plans
        ordered = order is not None
        tail = bulk(mode, stamped)
        pending = list(buckets)
        dropped = 0
        waited = 0.0
        rounds = 0
        while pending and rounds < 5:
            items = []
            force = "1" if waited >= ORDER_WAIT_SECONDS else "0"
            for bucket in pending:
                known = plans.get((group, bucket, "features", ordered))
                head = known[1] if known is not None else self._cluster_feature_head(bucket, group, b"", [], 0, ordered)
                extra = bulk(order[0], order[1], force, order[2]) if order is not None else b""
                items.append((bucket, _FANOUT,
                              head + bulk(body) + NOW % (bucket.now_ms() + self._expiry_ms) + tail + extra))
            replies = run_all(items, tail=self._wait)
            if self._wait is not None:
                for acked in replies[1::2]:
                    self._replicated(acked)  # type: ignore[attr-defined]
                replies = replies[::2]
            again, later = [], []
            for bucket, reply in zip(pending, replies):
                if isinstance(reply, Exception):
                    raise exc.LayerUnavailable(f"Redis refused a message for group {group!r}: {reply}")
                if reply[0] == ORDER_WAIT:
                    later.append(bucket)
                    continue
                if reply[0] != -1:
                    dropped += reply[0]
                    continue
                sig, plain, names = reply[1], reply[2], [n.decode() for n in reply[3:]]
                if len(plans) >= 10_000:
                    plans.clear()
                plans[(group, bucket, "features", ordered)] = (
                    sig, self._cluster_feature_head(bucket, group, sig, names, plain, ordered))
                again.append(bucket)
            if later:
                pause = min(0.01, 0.0005 + waited / 4)
                time.sleep(pause)
                waited += pause
            else:
                rounds += 1  # a round of plan changes (waiting for a predecessor is bounded by time)
            pending = again + later
        if not pending:
            return dropped
        raise exc.LayerUnavailable(f"the members of group {group!r} kept changing during a group send; "
                                   "the call did not complete for some of them")
