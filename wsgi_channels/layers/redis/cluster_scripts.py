"""Lua scripts of the Redis layer on a Redis Cluster: every key a script touches is declared.

A Redis Cluster runs a script only on keys of one slot, and only keys passed in ``KEYS``
are routed (and checked: every script starts with ``#!lua``, so Redis 7 refuses any key
outside the declared slot at run time). The layer spreads names over ``cluster_tags``
buckets (:mod:`.slots`); every key of bucket ``T`` carries ``{T}``, and a script only ever
touches one bucket. Key layout (``P`` is the key prefix followed by ``:``):

``P:q:{T}NAME``, ``P:u:{T}NAME``, ``P:m:{T}NAME``, ``P:s:{T}KEY``
    a queue, a process prefix's unread flag and member index, a session value: as in the
    standalone layout (:mod:`.scripts`), the bucket's tag in front of the name.
``P:gl:{T}`` / ``P:ge:{T}`` / ``P:gc:{T}``
    every group membership of a member in bucket ``T``, as ``"GROUP CHANNEL"``: a ZSET with
    equal scores (members of one group are one lexical range), a ZSET scored by the
    membership's deadline (ms), and a HASH of the capacities ``group_add`` was given.
    Memberships live in the *member's* bucket, so making a channel leave its groups (its
    messages expired unread) touches only these three fixed keys: nothing is built from data.
``P:gp:{T}``
    HASH group -> the group's fan-out plan in this bucket (``cmsgpack``): ``{rules, sig,
    deadline, {member, capacity, ...}, {prefix, names or ref, count, capacity, ...}}``; it is
    replaced when a membership of the group in this bucket changes or its first one expires.
``P:t:{T}`` / ``P:td:{T}``
    the member names of large group messages (``r`` entries name them by the SHA1 of the
    names, see :mod:`.entries`), and when each is last needed (ms); dropped a while after that.

The fan-out pushes to its members' queues, so the caller passes those keys: it keeps each
group's member queues per bucket (from the plan's answer) with the plan's ``sig``; the
script pushes only when the plan it holds has that ``sig`` (then ``KEYS`` are exactly its
queues, in order), else it pushes nothing and answers the plan's members, and the caller
sends again with their keys (a second round trip, only after a membership change).

Pub/sub wake-ups are ``SPUBLISH`` on the queue's key (sharded pub/sub stays in the slot and
follows it when it moves). Needs Redis 7.0 (``#!lua``, ``SPUBLISH``, ``ZMSCORE``).
"""
from __future__ import annotations

from ..names import SIDECAR_PREFIX
from . import scripts as standalone
from .entries import LUA_CONSTANTS, lua_helpers
from .scripts import REF_MARGIN_MS, REF_MIN

__all__ = ["SEND", "RECEIVE", "RECEIVE_MANY", "READ_DONE", "FANOUT", "MEMBERS", "SETTLE", "GROUP_ADD",
           "GROUP_DISCARD", "EVICT", "STATS", "SESSION_CAS", "BUCKET_KEYS", "ALL"]

#: Kinds of the bucket's fixed keys, in the order scripts take them.
BUCKET_KEYS = ("gl", "ge", "gc", "gp", "t", "td")


#: The helper of scripts that make channels leave their groups.
_EVICT_HELPER = r"""
  -- channel c (a 'prefix!suffix' name, indexed in m) leaves every group it belongs to
  function C.evict(m, c)
    local groups = redis.call('HGET', m, c)
    if not groups then return 0 end
    for g in string.gmatch(groups, '[^ ]+') do C.forget(g .. ' ' .. c) end
    redis.call('HDEL', m, c)
    return 1
  end
"""

#: The helpers of scripts that work on a queue (they evict too).
_QUEUE_HELPERS = r"""
  -- An empty queue whose unread flag survived: every message for the prefix expired unread,
  -- so its reader is gone and all its channels leave their groups (see scripts.py).
  function C.bury(u, m, now)
    local flag = redis.call('GET', u)
    if not flag or (tonumber(flag) or 0) > now then return 0 end
    redis.call('DEL', u)
    local all = redis.call('HGETALL', m)
    for i = 1, #all, 2 do
      for g in string.gmatch(all[i + 1], '[^ ]+') do C.forget(g .. ' ' .. all[i]) end
    end
    redis.call('DEL', m)
    return #all / 2
  end

  -- Drop expired entries at the head of queue q; for a prefix (u, m given) their targets leave
  -- their groups. Returns the number of channels evicted.
  function C.trim(q, u, m, now)
    local evicted = 0
    local v = redis.call('LINDEX', q, 0)
    while v and C.deadline(v) <= now do
      redis.call('LPOP', q)
      if u then
        for _, c in ipairs(C.targets_of(v)) do evicted = evicted + C.evict(m, c) end
      end
      v = redis.call('LINDEX', q, 0)
    end
    if u and not v then redis.call('DEL', u) end
    return evicted
  end

"""


def _prelude(at: int, queues: bool = True, evicts: bool = True) -> str:
    """``#!lua`` (Redis 7 then checks every key against the declared slot), the bucket's fixed keys
    from ``KEYS[at]`` on, the entry constants, and ``common()`` with the helpers: those that work
    on a queue (``bury``, ``trim``) only for scripts that have one (``queues``), ``evict`` only for
    scripts that evict (a helper never called would leave its parameters unbound, which the
    static check of declared keys reports)."""
    keys = ", ".join(f"KEYS[{at + i}]" for i in range(len(BUCKET_KEYS)))
    return "#!lua\n" + f"local GL, GE, GC, GP, TT, TD = {keys}\n" + LUA_CONSTANTS + r"""
local function common()
  local C = {}

  function C.now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
""" + lua_helpers("redis.call('HGET', TT, ref)") + r"""

  -- membership mem ('GROUP CHANNEL') ends; its group's plan in this bucket goes with it
  function C.forget(mem)
    redis.call('ZREM', GL, mem)
    redis.call('ZREM', GE, mem)
    redis.call('HDEL', GC, mem)
    redis.call('HDEL', GP, string.sub(mem, 1, string.find(mem, ' ', 1, true) - 1))
  end

""" + (_EVICT_HELPER if evicts else "") + r"""
""" + (_QUEUE_HELPERS if queues else "") + r"""
  -- memberships of this bucket whose deadline passed, at most ``most`` of them, end now
  function C.expire(now, most)
    local old = redis.call('ZRANGEBYSCORE', GE, '-inf', now, 'LIMIT', 0, most)
    for _, mem in ipairs(old) do C.forget(mem) end
    return #old
  end

  -- the live members of group g in this bucket (expired ones end as they are met)
  function C.members(g, now)
    local mems = redis.call('ZRANGEBYLEX', GL, '[' .. g .. ' ', '(' .. g .. '!')
    local live, deadlines = {}, {}
    local from = #g + 2
    for i = 1, #mems, 1000 do
      local part = {unpack(mems, i, math.min(i + 999, #mems))}
      local scores = redis.call('ZMSCORE', GE, unpack(part))
      for j, mem in ipairs(part) do
        local d = tonumber(scores[j])
        if d and d > now then
          live[#live + 1] = string.sub(mem, from)
          deadlines[#deadlines + 1] = d
        else
          C.forget(mem)
        end
      end
    end
    return live, deadlines
  end

  return C
end
"""


#: KEYS: q [u m gl ge gc gp t td]; ARGV: expiry ms, capacity, group expiry ms, entry.
#: Returns the new queue length, or -1 when full.
SEND = _prelude(4) + r"""
local q, u, m = KEYS[1], KEYS[2], KEYS[3]
local entry = ARGV[4]
local n = redis.call('RPUSH', q, entry)
if n > tonumber(ARGV[2]) then
  local C = common()
  redis.call('RPOP', q)
  C.trim(q, u, m, C.deadline(entry) - tonumber(ARGV[1]))
  if redis.call('LLEN', q) >= tonumber(ARGV[2]) then return -1 end
  n = redis.call('RPUSH', q, entry)
end
redis.call('PEXPIRE', q, ARGV[1])
if n == 1 then
  if u then
    -- the queue was gone: if its unread flag survived, its reader is gone
    if redis.call('EXISTS', u) == 1 then
      local C = common()
      C.bury(u, m, C.deadline(entry) - tonumber(ARGV[1]))
    end
    if redis.call('EXISTS', m) == 1 then redis.call('SET', u, string.sub(entry, 1, E_DEADLINE_END), 'PX', ARGV[3]) end
  end
  redis.call('SPUBLISH', q, '')
end
return n
"""

#: The start of a loop over the queues of KEYS[7..]: q, or q u m for a process prefix (ARGV[i] == '1').
_NEXT_QUEUE = r"""
  local q = KEYS[k]
  local u, m = nil, nil
  if ARGV[i] == '1' then
    u, m = KEYS[k + 1], KEYS[k + 2]
    k = k + 3
  else
    k = k + 1
  end"""

#: KEYS: gl ge gc gp t td, then per queue q (a channel) or q u m (a process prefix); ARGV: '1' per
#: queue that is a prefix, now (ms). Returns {index, entry, now} for the first live entry, or nil.
RECEIVE = _prelude(1) + r"""
local now = tonumber(ARGV[#ARGV])
local k = 7
for i = 1, #ARGV - 1 do""" + _NEXT_QUEUE + r"""
  local v = redis.call('LPOP', q)
  if not u then
    while v do
      if tonumber(string.sub(v, 1, E_DEADLINE_END)) > now then return {i, v, now} end
      v = redis.call('LPOP', q)
    end
  elseif not v then
    if redis.call('EXISTS', u) == 1 then common().bury(u, m, now) end
  else
    while v do
      if tonumber(string.sub(v, 1, E_DEADLINE_END)) > now then
        if redis.call('EXISTS', q) == 0 then redis.call('DEL', u) end
        return {i, v, now}
      end
      local C = common()
      for _, c in ipairs(C.targets_of(v)) do C.evict(m, c) end
      v = redis.call('LPOP', q)
    end
    redis.call('DEL', u)
  end
end
return nil
"""

#: KEYS as RECEIVE; ARGV: '1' per queue that is a prefix, most entries, now (ms).
#: Returns {index, entry, index, entry, ..., now}, or an empty list.
RECEIVE_MANY = _prelude(1) + r"""
local now = tonumber(ARGV[#ARGV])
local most = tonumber(ARGV[#ARGV - 1])
local out, got = {}, 0
local k = 7
for i = 1, #ARGV - 2 do""" + _NEXT_QUEUE + r"""
  local v = redis.call('LPOP', q)
  if not v and u and redis.call('EXISTS', u) == 1 then common().bury(u, m, now) end
  while v do
    if tonumber(string.sub(v, 1, E_DEADLINE_END)) > now then
      out[#out + 1] = i
      out[#out + 1] = v
      got = got + 1
    elseif u then
      local C = common()
      for _, c in ipairs(C.targets_of(v)) do C.evict(m, c) end
    end
    if got >= most then break end
    v = redis.call('LPOP', q)
  end
  if u and redis.call('EXISTS', q) == 0 then redis.call('DEL', u) end
  if got >= most then break end
end
if got == 0 then return {} end
out[#out + 1] = now
return out
"""

#: KEYS: gl ge gc gp t td, then the plan's queues (q per plain member, q u m per process prefix, in
#: the plan's order); ARGV: group, the plan's sig as the caller knows it ('' for none), expiry ms,
#: group expiry ms, default capacity, process capacity, '1' to use stored capacities (the layer has
#: channel_capacity rules), body, the messages' deadline (13 digits).
#: Returns {dropped}, or {-1, sig, number of plain members, plain members..., prefixes...} without
#: pushing anything when the caller's keys are not the plan's (send again with theirs).
FANOUT = _prelude(1) + f"""
local REF_MIN, REF_MARGIN = {REF_MIN}, {REF_MARGIN_MS}
local SIDECAR = '{SIDECAR_PREFIX}'
""" + r"""
local G, exp, gexp, rules, body, dl = ARGV[1], ARGV[3], ARGV[4], ARGV[7], ARGV[8], ARGV[9]
local C = nil

local function now_ms() return tonumber(dl) - tonumber(exp) end

local default_cap, process_cap
local function layer_capacity(prefix)
  if prefix and string.sub(prefix, 1, #SIDECAR) == SIDECAR then
    process_cap = process_cap or tonumber(ARGV[6])
    return process_cap
  end
  default_cap = default_cap or tonumber(ARGV[5])
  return default_cap
end

local function prefix_of(c)
  local bang = string.find(c, '!', 1, true)
  if bang then return string.sub(c, 1, bang) end
  return nil
end

local function make_plan()
  C = C or common()
  local now = now_ms()
  C.expire(now, 100)
  local members, deadlines = C.members(G, now)
  if #members == 0 then
    redis.call('HDEL', GP, G)
    return nil
  end
  local caps = {}
  if rules == '1' then
    for i = 1, #members, 1000 do
      local part = {}
      for j = i, math.min(i + 999, #members) do part[#part + 1] = G .. ' ' .. members[j] end
      local got = redis.call('HMGET', GC, unpack(part))
      for j = 1, #got do caps[i + j - 1] = tonumber(got[j]) or 0 end
    end
  end
  local first = deadlines[1]
  for i = 2, #deadlines do if deadlines[i] < first then first = deadlines[i] end end
  local plain, plain_names, buckets, order = {}, {}, {}, {}
  for i, c in ipairs(members) do
    local prefix = prefix_of(c)
    if prefix then
      local b = buckets[prefix]
      if not b then
        b = {cap = caps[i] or 0}
        buckets[prefix] = b
        order[#order + 1] = prefix
      end
      b[#b + 1] = c
    else
      plain[#plain + 1] = c
      plain[#plain + 1] = caps[i] or 0
      plain_names[#plain_names + 1] = c
    end
  end
  -- member lists nobody needs any more go first
  local stale = redis.call('ZRANGEBYSCORE', TD, '-inf', now, 'LIMIT', 0, 64)
  for _, ref in ipairs(stale) do
    redis.call('HDEL', TT, ref)
    redis.call('ZREM', TD, ref)
  end
  local prefixes = {}
  for _, prefix in ipairs(order) do
    local b = buckets[prefix]
    local names = table.concat(b, E_SEPARATOR)
    if #b >= REF_MIN then
      local ref = redis.sha1hex(names)
      redis.call('HSET', TT, ref, names)
      redis.call('ZADD', TD, now + tonumber(exp) + REF_MARGIN, ref)
      redis.call('PEXPIRE', TT, gexp)
      redis.call('PEXPIRE', TD, gexp)
      names = ref
    end
    prefixes[#prefixes + 1] = prefix
    prefixes[#prefixes + 1] = names
    prefixes[#prefixes + 1] = #b
    prefixes[#prefixes + 1] = b.cap
  end
  local sig = redis.sha1hex(table.concat(plain_names, ' ') .. '|' .. table.concat(order, ' '))
  local plan = {rules, sig, first, plain, prefixes}
  redis.call('HSET', GP, G, cmsgpack.pack(plan))
  redis.call('PEXPIRE', GP, gexp)
  return plan
end

local plan = redis.call('HGET', GP, G)
if plan then
  plan = cmsgpack.unpack(plan)
  if plan[1] ~= rules or plan[3] <= now_ms() then plan = nil end
end
if plan then
  -- the member lists it names are needed as long as the messages about to name them
  local prefixes = plan[5]
  for i = 3, #prefixes, 4 do
    if prefixes[i] >= REF_MIN then
      local ref = prefixes[i - 1]
      if redis.call('ZADD', TD, 'XX', 'CH', now_ms() + tonumber(exp) + REF_MARGIN, ref) == 0
          and not redis.call('ZSCORE', TD, ref) then
        plan = nil  -- dropped since (no message for a while): make the plan and its lists again
        break
      end
    end
  end
end
if not plan then
  plan = make_plan()
  if not plan then return {0} end
end

local plain, prefixes = plan[4], plan[5]
if plan[2] ~= ARGV[2] or #KEYS ~= 6 + #plain / 2 + 3 * #prefixes / 4 then
  local out = {-1, plan[2], #plain / 2}
  for i = 1, #plain, 2 do out[#out + 1] = plain[i] end
  for i = 1, #prefixes, 4 do out[#out + 1] = prefixes[i] end
  return out
end

local dropped = 0
local k = 7
if #plain > 0 then
  local entry = dl .. E_MESSAGE .. body
  for i = 1, #plain, 2 do
    local q = KEYS[k]
    k = k + 1
    local cap = plain[i + 1]
    if cap == 0 then cap = layer_capacity(nil) end
    local n = redis.call('RPUSH', q, entry)
    if n > cap then
      redis.call('RPOP', q)
      C = C or common()
      C.trim(q, nil, nil, now_ms())
      if redis.call('LLEN', q) >= cap then n = 0 else n = redis.call('RPUSH', q, entry) end
    end
    if n == 0 then
      dropped = dropped + 1
    else
      redis.call('PEXPIRE', q, exp)
      if n == 1 then redis.call('SPUBLISH', q, '') end
    end
  end
end
for i = 1, #prefixes, 4 do
  local prefix, targets, count, cap = prefixes[i], prefixes[i + 1], prefixes[i + 2], prefixes[i + 3]
  local q = KEYS[k]
  local u, m = KEYS[k + 1], KEYS[k + 2]
  k = k + 3
  if cap == 0 then cap = layer_capacity(prefix) end
  local entry
  if count >= REF_MIN then
    entry = dl .. E_REFERENCE .. count .. E_SEPARATOR .. targets .. E_FIELD_END .. body
  else
    entry = dl .. E_TARGETS .. targets .. E_FIELD_END .. body
  end
  local n = redis.call('RPUSH', q, entry)
  if n == 1 and redis.call('EXISTS', u) == 1 then
    C = C or common()
    if C.bury(u, m, now_ms()) > 0 then
      -- the queue had vanished unread: its reader is gone and its channels just left every group
      redis.call('DEL', q)
      n = -1
    end
  end
  if n > cap then
    C = C or common()
    redis.call('RPOP', q)
    local evicted = C.trim(q, u, m, now_ms())  -- members whose earlier message expired leave
    if redis.call('LLEN', q) >= cap then
      dropped = dropped + count
      n = -1
    else
      if evicted > 0 then
        local left = {}
        local names = targets
        if count >= REF_MIN then names = redis.call('HGET', TT, targets) or '' end
        for _, c in ipairs(C.split(names)) do
          if redis.call('ZSCORE', GE, G .. ' ' .. c) then left[#left + 1] = c end
        end
        entry = dl .. E_TARGETS .. table.concat(left, E_SEPARATOR) .. E_FIELD_END .. body
        count = #left
      end
      if count > 0 then n = redis.call('RPUSH', q, entry) else n = -1 end
    end
  end
  if n > 0 then
    redis.call('PEXPIRE', q, exp)
    if n == 1 then
      redis.call('SET', u, dl, 'PX', gexp)  -- members of a group always have an index entry
      redis.call('SPUBLISH', q, '')
    end
  end
end
return {dropped}
"""

#: KEYS: gl ge gc gp t td; ARGV: group. Returns the group's live members in this bucket.
MEMBERS = _prelude(1, queues=False, evicts=False) + r"""
local C = common()
local members = C.members(ARGV[1], C.now_ms())
return members
"""

#: KEYS: gl ge gc gp t td, then q u m per process prefix among the group's members here; ARGV:
#: group. Settles each prefix (expired entries trimmed, a dead prefix's channels evicted), then
#: returns the group's live members in this bucket.
SETTLE = _prelude(1) + r"""
local C = common()
local now = C.now_ms()
for k = 7, #KEYS, 3 do
  local q, u, m = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  C.trim(q, u, m, now)
  if redis.call('EXISTS', q) == 0 then C.bury(u, m, now) end
end
local members = C.members(ARGV[1], now)
return members
"""

#: KEYS: gl ge gc gp t td [m]; ARGV: group, channel, group expiry ms, capacity.
GROUP_ADD = _prelude(1, queues=False, evicts=False) + r"""
local C = common()
local g, c, gexp = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = C.now_ms()
C.expire(now, 100)
local mem = g .. ' ' .. c
redis.call('ZADD', GE, now + gexp, mem)
redis.call('ZADD', GL, 0, mem)
redis.call('HSET', GC, mem, ARGV[4])
redis.call('HDEL', GP, g)
redis.call('PEXPIRE', GL, gexp)
redis.call('PEXPIRE', GE, gexp)
redis.call('PEXPIRE', GC, gexp)
redis.call('PEXPIRE', GP, gexp)
local m = KEYS[7]
if m then
  local cur = redis.call('HGET', m, c)
  if not cur then
    redis.call('HSET', m, c, g)
  elseif not string.find(' ' .. cur .. ' ', ' ' .. g .. ' ', 1, true) then
    redis.call('HSET', m, c, cur .. ' ' .. g)
  end
  redis.call('PEXPIRE', m, gexp)
end
return 1
"""

#: KEYS: gl ge gc gp t td [m]; ARGV: group, channel.
GROUP_DISCARD = _prelude(1, queues=False, evicts=False) + r"""
local g, c = ARGV[1], ARGV[2]
local mem = g .. ' ' .. c
if redis.call('ZREM', GE, mem) == 1 then
  redis.call('ZREM', GL, mem)
  redis.call('HDEL', GC, mem)
  redis.call('HDEL', GP, g)
end
local m = KEYS[7]
if m then
  local cur = redis.call('HGET', m, c)
  if cur then
    local left = {}
    for other in string.gmatch(cur, '[^ ]+') do
      if other ~= g then left[#left + 1] = other end
    end
    if #left == 0 then redis.call('HDEL', m, c) else redis.call('HSET', m, c, table.concat(left, ' ')) end
  end
end
return 1
"""

#: KEYS: gl ge gc gp t td m; ARGV: channels whose buffered message expired in the reading process.
EVICT = _prelude(1, queues=False) + r"""
local C = common()
local m = KEYS[7]
local n = 0
for i = 1, #ARGV do n = n + C.evict(m, ARGV[i]) end
return n
"""

#: KEYS: q [u m gl ge gc gp t td]. Returns {pending targets, head deadline or 0, now}.
STATS = _prelude(4) + r"""
local C = common()
local now = C.now_ms()
local q, u, m = KEYS[1], KEYS[2], KEYS[3]
C.trim(q, u, m, now)
if u and redis.call('EXISTS', q) == 0 then C.bury(u, m, now) end
local entries = redis.call('LRANGE', q, 0, -1)
local pending = 0
for _, v in ipairs(entries) do
  pending = pending + C.count_of(v)
end
local head = 0
if #entries > 0 then head = C.deadline(entries[1]) end
return {pending, head, now}
"""

#: KEYS: q u (see scripts.READ_DONE).
READ_DONE = "#!lua\n" + standalone.READ_DONE
#: KEYS: s (see scripts.SESSION_CAS).
SESSION_CAS = "#!lua\n" + standalone.SESSION_CAS

#: Every script, by name (the static check walks them).
ALL = {"SEND": SEND, "RECEIVE": RECEIVE, "RECEIVE_MANY": RECEIVE_MANY, "FANOUT": FANOUT, "MEMBERS": MEMBERS,
       "SETTLE": SETTLE, "GROUP_ADD": GROUP_ADD, "GROUP_DISCARD": GROUP_DISCARD, "EVICT": EVICT, "STATS": STATS,
       "READ_DONE": READ_DONE, "SESSION_CAS": SESSION_CAS}
