"""Lua scripts of the Redis layer: every operation is one script, so one round trip.

Key layout (``P`` is the layer's key prefix followed by ``:``; the part in
braces is the Redis Cluster hash tag):

``P:q:{name}``
    LIST of queued entries for a channel, or for a process prefix ``name!``.
    Its TTL is reset to ``expiry`` on every push, so a queue nobody reads
    disappears with its last message.
``P:u:{prefix!}``
    "unread" flag of a process prefix that has group members: set by every push,
    removed when a reader empties the queue. Queue gone but flag present means
    every message expired unread (the reading process is gone), and the prefix's
    channels leave their groups.
``P:m:{prefix!}``
    HASH ``channel -> "group group ..."``: the groups each channel of the prefix
    belongs to on this shard, for evicting it from all of them.
``P:g:{group}`` / ``P:gc:{group}``
    ZSET ``channel -> membership deadline (ms)`` and HASH ``channel -> capacity``.
    A group's memberships live on the shard of each member's queue, so a group
    send is one local fan-out script per shard and no member name crosses the wire.
``P:s:{key}``
    channel-session values (``SET ... PX``).

Entry format (one LIST element): 13 ASCII digits of the deadline in ms since the
epoch (Redis ``TIME``), one kind byte, then either the body (``m``) or the target
channel names separated by spaces, a newline and the body (``t``; process-local
channels, one entry for every member behind one prefix).

Scripts read the clock with ``TIME``: Redis 5+ replicates scripts by effects, so
this is safe on Redis 6 and 7. No command newer than Redis 6.2 is used.
"""
from __future__ import annotations

__all__ = ["SEND", "RECEIVE", "FANOUT", "MEMBERS", "GROUP_ADD", "GROUP_DISCARD", "EVICT", "STATS"]

_COMMON = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function deadline(v)
  return tonumber(string.sub(v, 1, 13))
end

local function targets_of(v)
  local out = {}
  if string.byte(v, 14) ~= 116 then return out end  -- not a 't' entry
  local nl = string.find(v, '\n', 15, true)
  for name in string.gmatch(string.sub(v, 15, nl - 1), '[^ ]+') do out[#out + 1] = name end
  return out
end

local function tag_key(P, kind, name)
  return P .. kind .. ':{' .. name .. '}'
end

-- channel c (a 'prefix!suffix' name) leaves every group it belongs to on this shard
local function evict(P, m, c)
  local groups = redis.call('HGET', m, c)
  if not groups then return 0 end
  for g in string.gmatch(groups, '[^ ]+') do
    redis.call('ZREM', tag_key(P, 'g', g), c)
    redis.call('HDEL', tag_key(P, 'gc', g), c)
  end
  redis.call('HDEL', m, c)
  return 1
end

local function evict_all(P, m)
  local all = redis.call('HGETALL', m)
  for i = 1, #all, 2 do
    for g in string.gmatch(all[i + 1], '[^ ]+') do
      redis.call('ZREM', tag_key(P, 'g', g), all[i])
      redis.call('HDEL', tag_key(P, 'gc', g), all[i])
    end
  end
  redis.call('DEL', m)
  return #all / 2
end

-- Drop expired entries at the head of queue q (all entries of a queue share one
-- expiry, so age order is queue order). For a process prefix (u, m given), the
-- targets of expired entries leave their groups; a queue that vanished by TTL
-- while its unread flag stayed means its reader is gone: all its channels leave.
-- Returns the number of channels evicted.
local function trim(P, q, u, m, now)
  local v = redis.call('LINDEX', q, 0)
  if not v then
    if u and redis.call('EXISTS', u) == 1 then
      redis.call('DEL', u)
      return evict_all(P, m)
    end
    return 0
  end
  local evicted = 0
  while v and deadline(v) <= now do
    redis.call('LPOP', q)
    if u then
      for _, c in ipairs(targets_of(v)) do evicted = evicted + evict(P, m, c) end
    end
    v = redis.call('LINDEX', q, 0)
  end
  if u and not v then redis.call('DEL', u) end
  return evicted
end

local function push(q, u, m, entry, expiry_ms, gexp_ms)
  local n = redis.call('RPUSH', q, entry)
  redis.call('PEXPIRE', q, expiry_ms)
  if u and redis.call('EXISTS', m) == 1 then redis.call('SET', u, '1', 'PX', gexp_ms) end
  if n == 1 then redis.call('PUBLISH', q, '') end
  return n
end
"""

#: KEYS: q [u m]; ARGV: entry tail (kind byte + ...), expiry ms, capacity, P, group expiry ms.
#: Returns the new queue length, or -1 when the channel is full.
SEND = _COMMON + r"""
local now = now_ms()
local q, u, m = KEYS[1], KEYS[2], KEYS[3]
trim(ARGV[4], q, u, m, now)
if redis.call('LLEN', q) >= tonumber(ARGV[3]) then return -1 end
local exp = tonumber(ARGV[2])
return push(q, u, m, string.format('%013d', now + exp) .. ARGV[1], exp, ARGV[5])
"""

#: KEYS: queues on this shard, in the order to try; ARGV: P, then '1' per key that is a prefix.
#: Returns {index, entry, now} for the first live entry, or nil.
RECEIVE = _COMMON + r"""
local now = now_ms()
local P = ARGV[1]
for i, q in ipairs(KEYS) do
  local u, m
  if ARGV[i + 1] == '1' then
    local rest = string.sub(q, #P + 2)
    u, m = P .. 'u' .. rest, P .. 'm' .. rest
  end
  local v = redis.call('LPOP', q)
  if not v then
    if u and redis.call('EXISTS', u) == 1 then
      redis.call('DEL', u)
      evict_all(P, m)
    end
  else
    while v do
      if deadline(v) > now then
        if u and redis.call('EXISTS', q) == 0 then redis.call('DEL', u) end
        return {i, v, now}
      end
      if u then
        for _, c in ipairs(targets_of(v)) do evict(P, m, c) end
      end
      v = redis.call('LPOP', q)
    end
    if u then redis.call('DEL', u) end
  end
end
return nil
"""

_MEMBERS = r"""
-- Live members of group g on this shard: expired memberships dropped, and process
-- prefixes whose messages expired unread trimmed (which evicts their channels).
local function live_members(P, g, gc, now)
  local expired = redis.call('ZRANGEBYSCORE', g, '-inf', now)
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', g, '-inf', now)
    for i = 1, #expired, 500 do
      redis.call('HDEL', gc, unpack(expired, i, math.min(i + 499, #expired)))
    end
  end
  local members = redis.call('ZRANGE', g, 0, -1)
  local seen, evicted = {}, 0
  for _, c in ipairs(members) do
    local bang = string.find(c, '!', 1, true)
    if bang then
      local prefix = string.sub(c, 1, bang)
      if not seen[prefix] then
        seen[prefix] = true
        evicted = evicted + trim(P, tag_key(P, 'q', prefix), tag_key(P, 'u', prefix), tag_key(P, 'm', prefix), now)
      end
    end
  end
  if evicted > 0 then members = redis.call('ZRANGE', g, 0, -1) end
  if #members == 0 then redis.call('DEL', gc) end
  return members
end
"""

#: KEYS: g gc; ARGV: P. Returns the live members on this shard.
MEMBERS = _COMMON + _MEMBERS + r"""
return live_members(ARGV[1], KEYS[1], KEYS[2], now_ms())
"""

#: KEYS: g gc; ARGV: P, body, expiry ms, group expiry ms.
#: Queues one entry per plain member and one per process prefix (naming all its members).
#: Returns the number of members skipped because their channel was full.
FANOUT = _COMMON + _MEMBERS + r"""
local P, body = ARGV[1], ARGV[2]
local exp, gexp = tonumber(ARGV[3]), ARGV[4]
local now = now_ms()
local members = live_members(P, KEYS[1], KEYS[2], now)
if #members == 0 then return 0 end
local capflat = redis.call('HGETALL', KEYS[2])
local caps = {}
for i = 1, #capflat, 2 do caps[capflat[i]] = tonumber(capflat[i + 1]) end
local dl = string.format('%013d', now + exp)
local plain = nil
local buckets, order = {}, {}
local dropped = 0
for _, c in ipairs(members) do
  local bang = string.find(c, '!', 1, true)
  if bang then
    local prefix = string.sub(c, 1, bang)
    local b = buckets[prefix]
    if not b then
      b = {}
      buckets[prefix] = b
      order[#order + 1] = prefix
    end
    b[#b + 1] = c
  else
    local q = tag_key(P, 'q', c)
    trim(P, q, nil, nil, now)
    if redis.call('LLEN', q) >= (caps[c] or 100) then
      dropped = dropped + 1
    else
      if not plain then plain = dl .. 'm' .. body end
      push(q, nil, nil, plain, exp, gexp)
    end
  end
end
for _, prefix in ipairs(order) do
  local b = buckets[prefix]
  local q = tag_key(P, 'q', prefix)
  if redis.call('LLEN', q) >= (caps[b[1]] or 10000) then
    dropped = dropped + #b
  else
    push(q, tag_key(P, 'u', prefix), tag_key(P, 'm', prefix),
         dl .. 't' .. table.concat(b, ' ') .. '\n' .. body, exp, gexp)
  end
end
return dropped
"""

#: KEYS: g gc [m]; ARGV: channel, group expiry ms, capacity, group name.
GROUP_ADD = _COMMON + r"""
local c, gexp = ARGV[1], tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now_ms() + gexp, c)
redis.call('PEXPIRE', KEYS[1], gexp)
redis.call('HSET', KEYS[2], c, ARGV[3])
redis.call('PEXPIRE', KEYS[2], gexp)
local m = KEYS[3]
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

#: KEYS: g gc [m]; ARGV: channel, group name.
GROUP_DISCARD = r"""
local c = ARGV[1]
redis.call('ZREM', KEYS[1], c)
redis.call('HDEL', KEYS[2], c)
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
local m = KEYS[3]
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

#: KEYS: m; ARGV: P, channels whose buffered message expired in the reading process.
EVICT = _COMMON + r"""
local n = 0
for i = 2, #ARGV do n = n + evict(ARGV[1], KEYS[1], ARGV[i]) end
return n
"""

#: KEYS: q [u m]; ARGV: P. Returns {pending targets, head deadline or 0, now}.
STATS = _COMMON + r"""
local now = now_ms()
trim(ARGV[1], KEYS[1], KEYS[2], KEYS[3], now)
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local pending = 0
for _, v in ipairs(entries) do
  if string.byte(v, 14) == 116 then pending = pending + #targets_of(v) else pending = pending + 1 end
end
local head = 0
if #entries > 0 then head = deadline(entries[1]) end
return {pending, head, now}
"""
