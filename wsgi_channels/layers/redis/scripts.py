"""Lua scripts of the Redis layer: every operation is one script, so one round trip.

Key layout (``P`` is the layer's key prefix followed by ``:``; the part in
braces is the Redis Cluster hash tag):

``P:q:{name}``
    LIST of queued entries for a channel, or for a process prefix ``name!``.
    Its TTL is reset to ``expiry`` on every push, so a queue nobody reads
    disappears with its last message.
``P:u:{prefix!}``
    "unread" flag of a process prefix that has group members: set when a push
    finds the queue empty, removed when a reader empties it. Queue gone but flag
    present means every message expired unread (the reading process is gone), and
    the prefix's channels leave their groups. Expired entries of a live queue are
    dropped when a reader meets them or when the queue is full; their targets then
    leave their groups one by one.
``P:m:{prefix!}``
    HASH ``channel -> "group group ..."``: the groups each channel of the prefix
    belongs to on this shard, for evicting it from all of them.
``P:g:{group}`` / ``P:gc:{group}``
    ZSET ``channel -> membership deadline (ms)`` and HASH ``channel -> capacity``.
    A group's memberships live on the shard of each member's queue, so a group
    send is one local fan-out script per shard and no member name crosses the wire.
    (The fan-out and ``group_add`` scripts are the ones that touch keys of two tags,
    the group's and its members'; under Redis Cluster they would run per slot.)
``P:gp:{group}``
    the group's fan-out plan on this shard (``cmsgpack``): its plain members with
    their capacities and, per process prefix, the members' names already joined
    into an entry's target list. A fan-out then costs a few commands however many
    members a prefix has, instead of walking every membership. Every change of the
    memberships deletes it (``group_add``, ``group_discard``, evictions), and it
    expires when the first of its memberships does, so it never names an expired
    or departed member.
``P:s:{key}``
    channel-session values (``SET ... PX``).

``P:t:{prefix!}:<sha1>``
    the member names of a large group message for one prefix (``r`` entries below),
    named by their SHA1, so the same members always make the same key. The fan-out
    renews its TTL (expiry plus a margin) with every message naming it, so it lives
    as long as any entry that names it, and goes with its TTL.

The entries of a queue (``m``, ``t`` and, for at least :data:`REF_MIN` members of one
prefix, ``r``) are described in :mod:`.entries`, which also makes the scripts' constants
(``E_DEADLINE_END``, ``E_KIND_AT``, ...) and entry helpers. A broadcast to 10,000 sockets of one
sidecar is a small ``r`` entry: no script copies the 190 KB of names per message, and the
reading process fetches them once per membership (``GET``) and keeps them.

The hot scripts (send, receive, fan-out) take "now" from the client, which
tracks its offset to the Redis clock (``TIME`` once per connection), so every
deadline is on the Redis clock without a ``TIME`` call per operation (``send``
gets its entry with the deadline already in front, the fan-out the deadline
itself, so neither formats a number); the others call ``TIME``
(safe: Redis 5+ replicates scripts by effects). The scripts use no command newer
than Redis 6.2 (outside them, a batch receive uses ``BLMPOP`` where the server has it).

The helpers shared by the scripts are made by ``common()`` only when a script
needs them (full queues, dead prefixes, expired entries): the common path of a hot
script creates no closures. Fixed arguments come first and the per-call ones last,
so the client packs the fixed part of a hot command once.
"""
from __future__ import annotations

from ..names import SIDECAR_PREFIX
from .entries import LUA_CONSTANTS, LUA_HELPERS

__all__ = ["SEND", "RECEIVE", "RECEIVE_MANY", "READ_DONE", "FANOUT", "MEMBERS", "GROUP_ADD", "GROUP_DISCARD",
           "EVICT", "STATS", "SESSION_CAS",
           "REF_MIN", "REF_MARGIN_MS"]

#: Members of one prefix from which a group message names them through a ``P:t:`` key.
REF_MIN = 256
#: How much longer than the messages naming it a ``P:t:`` key lives (clock differences between clients).
REF_MARGIN_MS = 10_000

_COMMON = LUA_CONSTANTS + r"""
local function common()
  local C = {}

  function C.now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
""" + LUA_HELPERS + r"""

  function C.tag_key(P, kind, name)
    return P .. kind .. ':{' .. name .. '}'
  end

  -- channel c leaves group g (its fan-out plan goes with the membership)
  function C.leave(P, g, c)
    redis.call('ZREM', C.tag_key(P, 'g', g), c)
    redis.call('HDEL', C.tag_key(P, 'gc', g), c)
    redis.call('DEL', C.tag_key(P, 'gp', g))
  end

  -- channel c (a 'prefix!suffix' name) leaves every group it belongs to on this shard
  function C.evict(P, m, c)
    local groups = redis.call('HGET', m, c)
    if not groups then return 0 end
    for g in string.gmatch(groups, '[^ ]+') do C.leave(P, g, c) end
    redis.call('HDEL', m, c)
    return 1
  end

  -- An empty queue whose unread flag survived: every message queued for the prefix
  -- expired unread (the key's TTL removed them), so its reader is gone and all its
  -- channels leave their groups. Call only when the queue is empty. The flag holds the
  -- deadline of the message that found the queue empty; while that is still ahead, the
  -- queue was emptied by a reader (a BLMPOP, whose READ_DONE follows), not by expiry.
  function C.bury(P, u, m, now)
    local flag = redis.call('GET', u)
    if not flag or (tonumber(flag) or 0) > now then return 0 end
    redis.call('DEL', u)
    local all = redis.call('HGETALL', m)
    for i = 1, #all, 2 do
      for g in string.gmatch(all[i + 1], '[^ ]+') do C.leave(P, g, all[i]) end
    end
    redis.call('DEL', m)
    return #all / 2
  end

  -- Drop expired entries at the head of queue q (all entries of a queue share one
  -- expiry, so age order is queue order); for a prefix (u, m given) their targets
  -- leave their groups. Runs when a queue is at capacity and for statistics: below
  -- capacity an expired entry costs nothing, and receive skips it.
  -- Returns the number of channels evicted.
  function C.trim(P, q, u, m, now)
    local evicted = 0
    local v = redis.call('LINDEX', q, 0)
    while v and C.deadline(v) <= now do
      redis.call('LPOP', q)
      if u then
        for _, c in ipairs(C.targets_of(v)) do evicted = evicted + C.evict(P, m, c) end
      end
      v = redis.call('LINDEX', q, 0)
    end
    if u and not v then redis.call('DEL', u) end
    return evicted
  end

  return C
end
"""

#: KEYS: q [u m]; ARGV: expiry ms, capacity, P, group expiry ms, entry (13 digits of its
#: deadline, kind byte, ...). Returns the new queue length, or -1 when full.
SEND = _COMMON + r"""
local q, entry = KEYS[1], ARGV[5]
-- Push first (the common case needs no length check), take it back when over capacity.
local n = redis.call('RPUSH', q, entry)
if n > tonumber(ARGV[2]) then
  local C = common()
  redis.call('RPOP', q)
  C.trim(ARGV[3], q, KEYS[2], KEYS[3], C.deadline(entry) - tonumber(ARGV[1]))
  if redis.call('LLEN', q) >= tonumber(ARGV[2]) then return -1 end
  n = redis.call('RPUSH', q, entry)
end
redis.call('PEXPIRE', q, ARGV[1])
if n == 1 then
  local u = KEYS[2]
  if u then
    local m = KEYS[3]
    -- the queue was gone: if its unread flag survived, its reader is gone
    if redis.call('EXISTS', u) == 1 then
      local C = common()
      C.bury(ARGV[3], u, m, C.deadline(entry) - tonumber(ARGV[1]))
    end
    if redis.call('EXISTS', m) == 1 then redis.call('SET', u, string.sub(entry, 1, E_DEADLINE_END), 'PX', ARGV[4]) end
  end
  redis.call('PUBLISH', q, '')
end
return n
"""

#: KEYS: queues on this shard, in the order to try; ARGV: P, '1' per key that is a prefix, now (ms).
#: Returns {index, entry, now} for the first live entry, or nil.
RECEIVE = _COMMON + r"""
local P, now = ARGV[1], tonumber(ARGV[#ARGV])
for i, q in ipairs(KEYS) do
  local v = redis.call('LPOP', q)
  if ARGV[i + 1] ~= '1' then
    while v do
      if tonumber(string.sub(v, 1, E_DEADLINE_END)) > now then return {i, v, now} end
      v = redis.call('LPOP', q)
    end
  else
    local rest = string.sub(q, #P + 2)
    local u, m = P .. 'u' .. rest, P .. 'm' .. rest
    if not v then
      if redis.call('EXISTS', u) == 1 then common().bury(P, u, m, now) end
    else
      while v do
        if tonumber(string.sub(v, 1, E_DEADLINE_END)) > now then
          if redis.call('EXISTS', q) == 0 then redis.call('DEL', u) end
          return {i, v, now}
        end
        local C = common()
        for _, c in ipairs(C.targets_of(v)) do C.evict(P, m, c) end
        v = redis.call('LPOP', q)
      end
      redis.call('DEL', u)
    end
  end
end
return nil
"""

#: KEYS: queues on this shard; ARGV: P, '1' per key that is a prefix, most entries, now (ms).
#: Pops up to that many live entries, draining each queue in turn.
#: Returns {index, entry, index, entry, ..., now}, or an empty list.
RECEIVE_MANY = _COMMON + r"""
local P, now = ARGV[1], tonumber(ARGV[#ARGV])
local most = tonumber(ARGV[#ARGV - 1])
local out, got = {}, 0
for i, q in ipairs(KEYS) do
  local u, m
  if ARGV[i + 1] == '1' then
    local rest = string.sub(q, #P + 2)
    u, m = P .. 'u' .. rest, P .. 'm' .. rest
  end
  local v = redis.call('LPOP', q)
  if not v and u and redis.call('EXISTS', u) == 1 then common().bury(P, u, m, now) end
  while v do
    if tonumber(string.sub(v, 1, E_DEADLINE_END)) > now then
      out[#out + 1] = i
      out[#out + 1] = v
      got = got + 1
    elseif u then
      local C = common()
      for _, c in ipairs(C.targets_of(v)) do C.evict(P, m, c) end
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

_MEMBERS = r"""
-- Members of group g on this shard whose membership has not expired. Expired ones are
-- removed when ``clean`` or when none is left (the fan-out skips that: scores filter them,
-- group_add and group_channels clean up, and the key's TTL covers the rest).
local function live_members(g, gc, now, clean)
  local members = redis.call('ZRANGEBYSCORE', g, '(' .. now, '+inf')
  if (clean or #members == 0) and redis.call('ZCARD', g) > #members then
    local expired = redis.call('ZRANGEBYSCORE', g, '-inf', now)
    redis.call('ZREMRANGEBYSCORE', g, '-inf', now)
    for i = 1, #expired, 500 do
      redis.call('HDEL', gc, unpack(expired, i, math.min(i + 499, #expired)))
    end
  end
  if #members == 0 then redis.call('DEL', gc) end
  return members
end

local function prefix_of(c)
  local bang = string.find(c, '!', 1, true)
  if bang then return string.sub(c, 1, bang) end
  return nil
end
"""

#: KEYS: g gc; ARGV: P. Returns the live members on this shard, after settling every
#: process prefix among them (expired entries trimmed, dead prefixes evicted).
MEMBERS = _COMMON + _MEMBERS + r"""
local C = common()
local P = ARGV[1]
local now = C.now_ms()
local members = live_members(KEYS[1], KEYS[2], now, true)
local seen, evicted = {}, 0
for _, c in ipairs(members) do
  local prefix = prefix_of(c)
  if prefix and not seen[prefix] then
    seen[prefix] = true
    local q, u, m = C.tag_key(P, 'q', prefix), C.tag_key(P, 'u', prefix), C.tag_key(P, 'm', prefix)
    evicted = evicted + C.trim(P, q, u, m, now)
    if redis.call('EXISTS', q) == 0 then evicted = evicted + C.bury(P, u, m, now) end
  end
end
if evicted > 0 then members = live_members(KEYS[1], KEYS[2], now, true) end
return members
"""

#: KEYS: g gc gp; ARGV: P, expiry ms, group expiry ms, default capacity, process capacity,
#: '1' to use the capacities stored by group_add (the layer has channel_capacity rules),
#: body, the messages' deadline (now + expiry, ms, 13 digits).
#: Queues one entry per plain member and one per process prefix (naming all its members,
#: through a ``P:t:`` key from REF_MIN of them), following the group's plan (made from the
#: memberships when there is none, or when a ``P:t:`` key it names has expired).
#: Returns the number of members skipped because their channel was full.
#: Its common path (a plan, room in every queue) turns no number into text or back but the
#: capacities it compares with, once each (a conversion costs a microsecond or so): the
#: deadline comes ready from the client, the expiry goes to PEXPIRE as it came, and "now"
#: is worked out only where it is needed.
FANOUT = _COMMON + _MEMBERS + f"""
local REF_MIN, REF_MARGIN = {REF_MIN}, {REF_MARGIN_MS}
local SIDECAR = '{SIDECAR_PREFIX}'
""" + r"""
local P, exp, gexp, rules, body, dl = ARGV[1], ARGV[2], ARGV[3], ARGV[6], ARGV[7], ARGV[8]
local g = KEYS[1]

local function now_ms() return tonumber(dl) - tonumber(exp) end

-- A member's capacity when its plan says 0 (the layer's default): process_capacity for the
-- sidecar's prefixes, else capacity; each read from ARGV once, when first needed.
local default_cap, process_cap
local function layer_capacity(prefix)
  if prefix and string.sub(prefix, 1, #SIDECAR) == SIDECAR then
    process_cap = process_cap or tonumber(ARGV[5])
    return process_cap
  end
  default_cap = default_cap or tonumber(ARGV[4])
  return default_cap
end

-- The plan: {rules flag, {member, capacity, ...}, {prefix, names, count, capacity, ...}} where
-- names is 'member member ...' or, for REF_MIN members or more, the P:t: key holding them
-- (capacity 0: the layer's default). It lives until its first membership expires.
local function make_plan()
  local now = now_ms()
  local members = live_members(g, KEYS[2], now, false)
  if #members == 0 then return nil end
  local caps = {}
  if rules == '1' then
    local flat = redis.call('HGETALL', KEYS[2])
    for i = 1, #flat, 2 do caps[flat[i]] = tonumber(flat[i + 1]) end
  end
  local plain, buckets, order = {}, {}, {}
  local last, lastb = nil, nil  -- members of one prefix mostly come together: skip re-slicing
  for _, c in ipairs(members) do
    local prefix
    if last and string.find(c, last, 1, true) == 1 then
      prefix = last
    else
      prefix = prefix_of(c)
    end
    if prefix then
      local b = (prefix == last) and lastb or buckets[prefix]
      if not b then
        b = {}
        buckets[prefix] = b
        order[#order + 1] = prefix
      end
      b[#b + 1] = c
      last, lastb = prefix, b
    else
      plain[#plain + 1] = c
      plain[#plain + 1] = caps[c] or 0
    end
  end
  local prefixes = {}
  for _, prefix in ipairs(order) do
    local b = buckets[prefix]
    local names = table.concat(b, E_SEPARATOR)
    if #b >= REF_MIN then
      local key = P .. 't:{' .. prefix .. '}:' .. redis.sha1hex(names)
      redis.call('SET', key, names, 'PX', tonumber(exp) + REF_MARGIN)
      names = key
    end
    prefixes[#prefixes + 1] = prefix
    prefixes[#prefixes + 1] = names
    prefixes[#prefixes + 1] = #b
    prefixes[#prefixes + 1] = caps[b[1]] or 0
  end
  local plan = {rules, plain, prefixes}
  local first = redis.call('ZRANGEBYSCORE', g, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  local ttl = math.floor(tonumber(first[2]) - now)
  if ttl > 0 then redis.call('SET', KEYS[3], cmsgpack.pack(plan), 'PX', ttl) end
  return plan
end

local plan = redis.call('GET', KEYS[3])
if plan then
  plan = cmsgpack.unpack(plan)
  if plan[1] ~= rules then plan = nil end  -- made by a layer configured otherwise
end
if plan then
  -- every P:t: key it names lives at least as long as the messages about to name it
  local prefixes = plan[3]
  for i = 3, #prefixes, 4 do
    if prefixes[i] >= REF_MIN and redis.call('PEXPIRE', prefixes[i - 1], tonumber(exp) + REF_MARGIN) == 0 then
      plan = nil  -- expired since (no message for a while): make the plan and its keys again
      break
    end
  end
end
if not plan then
  plan = make_plan()
  if not plan then return 0 end
end

local dropped = 0
local plain, prefixes = plan[2], plan[3]
if #plain > 0 then
  local entry = dl .. E_MESSAGE .. body
  for i = 1, #plain, 2 do
    local c, cap = plain[i], plain[i + 1]
    if cap == 0 then cap = layer_capacity(nil) end
    -- Push first (the common case needs no length check), take it back when over capacity.
    local q = P .. 'q:{' .. c .. '}'
    local n = redis.call('RPUSH', q, entry)
    if n > cap then
      redis.call('RPOP', q)
      common().trim(P, q, nil, nil, now_ms())
      if redis.call('LLEN', q) >= cap then n = 0 else n = redis.call('RPUSH', q, entry) end
    end
    if n == 0 then
      dropped = dropped + 1
    else
      redis.call('PEXPIRE', q, exp)
      if n == 1 then redis.call('PUBLISH', q, '') end
    end
  end
end
for i = 1, #prefixes, 4 do
  local prefix, targets, count, cap = prefixes[i], prefixes[i + 1], prefixes[i + 2], prefixes[i + 3]
  if cap == 0 then cap = layer_capacity(prefix) end
  local q = P .. 'q:{' .. prefix .. '}'
  local entry
  if count >= REF_MIN then
    entry = dl .. E_REFERENCE .. count .. E_SEPARATOR .. targets .. E_FIELD_END .. body
  else
    entry = dl .. E_TARGETS .. targets .. E_FIELD_END .. body
  end
  local n = redis.call('RPUSH', q, entry)
  local u, m  -- the prefix's unread flag and index, needed when its queue was empty or is full
  if n == 1 or n > cap then u, m = P .. 'u:{' .. prefix .. '}', P .. 'm:{' .. prefix .. '}' end
  if n == 1 and redis.call('EXISTS', u) == 1 and common().bury(P, u, m, now_ms()) > 0 then
    -- the queue had vanished unread: its reader is gone and its channels just left every
    -- group, these members included
    redis.call('DEL', q)
    n = -1
  elseif n > cap then
    local C = common()
    redis.call('RPOP', q)
    local evicted = C.trim(P, q, u, m, now_ms())  -- members whose earlier message expired leave
    if redis.call('LLEN', q) >= cap then
      dropped = dropped + count
      n = -1
    else
      if evicted > 0 then
        local left = {}
        local names = targets
        if count >= REF_MIN then names = redis.call('GET', targets) or '' end
        for _, c in ipairs(C.split(names)) do
          if redis.call('ZSCORE', g, c) then left[#left + 1] = c end
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
      redis.call('PUBLISH', q, '')
    end
  end
end
return dropped
"""

#: KEYS: g gc gp [m]; ARGV: channel, group expiry ms, capacity, group name.
GROUP_ADD = _COMMON + r"""
local c, gexp = ARGV[1], tonumber(ARGV[2])
local now = common().now_ms()
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  for i = 1, #expired, 500 do
    redis.call('HDEL', KEYS[2], unpack(expired, i, math.min(i + 499, #expired)))
  end
end
redis.call('ZADD', KEYS[1], now + gexp, c)
redis.call('PEXPIRE', KEYS[1], gexp)
redis.call('HSET', KEYS[2], c, ARGV[3])
redis.call('PEXPIRE', KEYS[2], gexp)
redis.call('DEL', KEYS[3])
local m = KEYS[4]
if m then
  local g = ARGV[4]
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

#: KEYS: g gc gp [m]; ARGV: channel, group name.
GROUP_DISCARD = r"""
local c = ARGV[1]
if redis.call('ZREM', KEYS[1], c) == 1 then redis.call('DEL', KEYS[3]) end
redis.call('HDEL', KEYS[2], c)
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[2], KEYS[3]) end
local m = KEYS[4]
if m then
  local cur = redis.call('HGET', m, c)
  if cur then
    local left = {}
    for g in string.gmatch(cur, '[^ ]+') do
      if g ~= ARGV[2] then left[#left + 1] = g end
    end
    if #left == 0 then redis.call('HDEL', m, c) else redis.call('HSET', m, c, table.concat(left, ' ')) end
  end
end
return 1
"""

#: KEYS: q u. Sent right after a ``BLMPOP`` on a process prefix's queue (in the same round trip):
#: the reader emptied the queue, so its unread flag goes, as RECEIVE_MANY's last step does. A push
#: between the pop and this script finds the queue empty, sets the flag again, and leaves the queue
#: non-empty here, so the flag stays.
READ_DONE = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
return 0
"""

#: KEYS: m; ARGV: P, channels whose buffered message expired in the reading process.
EVICT = _COMMON + r"""
local C = common()
local n = 0
for i = 2, #ARGV do n = n + C.evict(ARGV[1], KEYS[1], ARGV[i]) end
return n
"""

#: KEYS: s; ARGV: '1' if a value is expected, the expected value, '1' to store a value (else delete),
#: the value, its TTL in ms. Returns 1 when the key held what was expected (and was changed), else 0.
SESSION_CAS = r"""
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if ARGV[3] == '1' then redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5]) else redis.call('DEL', KEYS[1]) end
return 1
"""

#: KEYS: q [u m]; ARGV: P. Returns {pending targets, head deadline or 0, now}.
STATS = _COMMON + r"""
local C = common()
local now = C.now_ms()
C.trim(ARGV[1], KEYS[1], KEYS[2], KEYS[3], now)
if KEYS[2] and redis.call('EXISTS', KEYS[1]) == 0 then C.bury(ARGV[1], KEYS[2], KEYS[3], now) end
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local pending = 0
for _, v in ipairs(entries) do
  pending = pending + C.count_of(v)
end
local head = 0
if #entries > 0 then head = C.deadline(entries[1]) end
return {pending, head, now}
"""
