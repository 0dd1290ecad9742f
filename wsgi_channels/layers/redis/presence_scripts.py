"""Lua of presence (issue 19) on the Redis layer: one script per step of :mod:`.presence`.

The keys (``P:pe``, ``pu``, ``po``, ``pm``, ``pb``, ``pf`` of a group, ``P:px:{presence}``) are
described with history's in :mod:`.feature_scripts`.
"""
from __future__ import annotations

__all__ = ["PRESENCE_PUT", "PRESENCE_REMOVE", "PRESENCE_REFRESH", "PRESENCE_REASSERT", "PRESENCE_SWEEP",
           "PRESENCE_LIST", "PRESENCE_COUNTS", "EMPTY_PRESENCE_KEEP_MS"]

#: Milliseconds the presence keys of a group outlive its last change or refresh.
EMPTY_PRESENCE_KEEP_MS = 3_600_000

#: Lua: ``fragment(cid, rest, since)``, an entry as ``group_presence`` reads it (``P:pf``): msgpack
#: of the conn_id then, for a rest in clear text (a map of two), that map made a map of three with
#: ``since`` as a float64 (the entry as handed out), else (sealed) ``since`` and the rest as bin:
#: a clear-text reader reads a map of them, a keyed one an array ``[cid, since, rest, ...]``.
#: ``split(v)``: owner, since and rest of a ``pe`` value.
_FRAGMENT = r"""
local function fragment(cid, rest, s)
  local n, since = #cid, struct.pack('>d', tonumber(s))
  local head = n < 32 and string.char(160 + n) or (n < 256 and '\217' .. string.char(n)
                                                    or '\218' .. struct.pack('>I2', n))
  if string.sub(rest, 1, 6) == '\130\164info' then
    return head .. cid .. '\131' .. string.sub(rest, 2) .. '\165since\203' .. since
  end
  return head .. cid .. '\203' .. since .. '\198' .. struct.pack('>I4', #rest) .. rest
end

local function split(v)
  local a = string.find(v, ' ', 1, true)
  local b = string.find(v, ' ', a + 1, true)
  local d = string.find(v, ' ', string.find(v, ' ', b + 1, true) + 1, true)
  return string.sub(v, 1, a - 1), string.sub(v, a + 1, b - 1), string.sub(v, d + 1)
end
"""

#: KEYS of every presence script: pe pu po pm px pb(base) pf; ARGV[1] the group.
#: An entry is one field of ``pe``: conn_id -> ``owner since tag digest rest`` (see the module).
_PRESENCE = f"""
local KEEP = {EMPTY_PRESENCE_KEEP_MS}
""" + _FRAGMENT + r"""
local pe, pu, po, pm, px, pb, pf = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local GROUP = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local meta = redis.call('HMGET', pm, 'v', 'm', 'ttl', 'ev', 'jl', 'max', 'fv')
local V, MODE = tonumber(meta[1]) or 0, meta[2] or 'e'
-- pf holds every entry's fragment as of change FV (a layer before pf changed pe without it)
local FV = tonumber(meta[7]) or 0
local TTL, EVMAX, JL, MAX = tonumber(meta[3]), tonumber(meta[4]), meta[5], tonumber(meta[6])

local function configure(ttl, ev, jl, max)
  TTL, EVMAX, JL, MAX = tonumber(ttl), tonumber(ev), jl, tonumber(max)
  redis.call('HSET', pm, 'ttl', ttl, 'ev', ev, 'jl', jl, 'max', max)
end

local function by_owner(owner) return pb .. ':' .. owner end
local function clients() return redis.call('HLEN', pe) end

-- an entry's owner, since, user tag and digest (the rest is this layer's clients' business)
local function fields(v)
  local a = string.find(v, ' ', 1, true)
  local b = string.find(v, ' ', a + 1, true)
  local c = string.find(v, ' ', b + 1, true)
  local d = string.find(v, ' ', c + 1, true)
  return string.sub(v, 1, a - 1), string.sub(v, a + 1, b - 1), string.sub(v, b + 1, c - 1), string.sub(v, c + 1, d - 1)
end

local function owner_of(v) return string.sub(v, 1, string.find(v, ' ', 1, true) - 1) end

local function count_user(u, d)
  if u == '' then return end
  if redis.call('HINCRBY', pu, u, d) <= 0 then redis.call('HDEL', pu, u) end
end

-- renew owner's lease (never shortened)
local function lease(owner)
  local deadline = now + TTL
  local cur = tonumber(redis.call('ZSCORE', po, owner) or '0')
  if cur < deadline then redis.call('ZADD', po, deadline, owner) end
  redis.call('PEXPIRE', by_owner(owner), KEEP + TTL)
end

-- make or update an entry (the same digest: unchanged) and renew its owner's lease: the join
-- event (nil: nothing changed), since
local function put(cid, owner, tag, digest, rest, s)
  local old = redis.call('HGET', pe, cid)
  local event
  if not old then
    redis.call('HSET', pe, cid, owner .. ' ' .. s .. ' ' .. tag .. ' ' .. digest .. ' ' .. rest)
    redis.call('HSET', pf, cid, fragment(cid, rest, s))
    redis.call('SADD', by_owner(owner), cid)
    count_user(tag, 1)
    event = {'j', cid, rest, s}
  else
    local o, os, otag, odigest = fields(old)
    s = os
    if odigest ~= digest then
      count_user(otag, -1)
      count_user(tag, 1)
      redis.call('HSET', pe, cid, o .. ' ' .. s .. ' ' .. tag .. ' ' .. digest .. ' ' .. rest)
      redis.call('HSET', pf, cid, fragment(cid, rest, s))
      event = {'j', cid, rest, s}
    end
  end
  lease(owner)
  return event, s
end

-- remove an entry (its owner loses its lease with its last entry): the leave event
local function drop(cid)
  local v = redis.call('HGET', pe, cid)
  if not v then return nil end
  local owner, _, tag = fields(v)
  redis.call('HDEL', pe, cid)
  redis.call('HDEL', pf, cid)
  redis.call('SREM', by_owner(owner), cid)
  if redis.call('EXISTS', by_owner(owner)) == 0 then redis.call('ZREM', po, owner) end
  count_user(tag, -1)
  return {'l', cid}
end

-- the sweep index and the keys' lifetime, after any change of the leases; pf made again from pe
-- when it is not as of the latest change (the group was changed by a layer before pf)
local function finish()
  local first = redis.call('ZRANGE', po, 0, 0, 'WITHSCORES')
  if first[1] then redis.call('ZADD', px, first[2], GROUP) else redis.call('ZREM', px, GROUP) end
  if FV ~= V or redis.call('HLEN', pf) ~= clients() then
    redis.call('DEL', pf)
    local all, args = redis.call('HGETALL', pe), {}
    for k = 1, #all, 2 do
      local _, s, rest = split(all[k + 1])
      args[#args + 1] = all[k]
      args[#args + 1] = fragment(all[k], rest, s)
      if #args >= 1000 or k + 2 > #all then
        redis.call('HSET', pf, unpack(args))
        args = {}
      end
    end
    FV = V
    redis.call('HSET', pm, 'fv', V)
  end
  local keep = KEEP + (TTL or 0)
  for _, k in ipairs({pe, pu, po, pm, pf}) do redis.call('PEXPIRE', k, keep) end
end

-- count a change made of events (the mode rule of features.presence_change):
-- {v, clients, users, mode before, join_leave, events_max, event, ...}
local function changed(events)
  local kept = FV == V
  V = V + 1
  if kept then FV = V end
  local c, u, before = clients(), redis.call('HLEN', pu), MODE
  if MODE == 'e' then
    if JL ~= '1' or c > (EVMAX or 0) then MODE = 'c' end
  elseif JL == '1' and c < 0.8 * (EVMAX or 0) then
    MODE = 'e'
  end
  redis.call('HSET', pm, 'v', V, 'm', MODE, 'fv', FV)
  local out = {V, c, u, before, JL or '0', EVMAX or 0}
  for _, e in ipairs(events) do out[#out + 1] = e end
  return out
end
"""

#: ARGV: group, ttl ms, events_max, join_leave ('1'/'0'), max_members, cid, owner, tag, digest, rest,
#: since. Returns {-1, clients} past max_members (nothing changed), else {made or changed (1/0),
#: since, mode after, change or nothing}. A join event is ``{'j', cid, rest, since}``.
PRESENCE_PUT = _PRESENCE + r"""
local cid = ARGV[6]
if redis.call('HEXISTS', pe, cid) == 0 and clients() >= tonumber(ARGV[5]) then
  return {-1, clients()}
end
configure(ARGV[2], ARGV[3], ARGV[4], ARGV[5])
local event, since = put(cid, ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11])
local change
if event then change = changed({event}) end
finish()
if change then return {1, since, MODE, change} end
return {0, since, MODE}
"""

#: ARGV: group, owner, cid, cid, ... Returns the change, or {} when nothing was removed.
PRESENCE_REMOVE = _PRESENCE + r"""
local events = {}
for k = 3, #ARGV do
  local v = redis.call('HGET', pe, ARGV[k])
  if v and owner_of(v) == ARGV[2] then events[#events + 1] = drop(ARGV[k]) end
end
if #events == 0 then return {} end
finish()
return changed(events)
"""

#: ARGV: group, owner. Returns 1 when the owner had a lease there (renewed), else 0.
PRESENCE_REFRESH = _PRESENCE + r"""
if not TTL or not redis.call('ZSCORE', po, ARGV[2]) then return 0 end
lease(ARGV[2])
finish()
return 1
"""

#: ARGV: group, ttl ms, events_max, join_leave, max_members (options for a group with none stored),
#: owner, then cid, tag, digest, rest, since for each entry. Returns the change, or {}.
PRESENCE_REASSERT = _PRESENCE + r"""
if not TTL then configure(ARGV[2], ARGV[3], ARGV[4], ARGV[5]) end
local owner = ARGV[6]
local wanted = {}
for k = 7, #ARGV, 5 do wanted[ARGV[k]] = true end
local events = {}
for _, cid in ipairs(redis.call('SMEMBERS', by_owner(owner))) do
  if not wanted[cid] then events[#events + 1] = drop(cid) end
end
for k = 7, #ARGV, 5 do
  local cid = ARGV[k]
  local cur = redis.call('HGET', pe, cid)
  if cur and owner_of(cur) ~= owner then
    cur = nil  -- another owner's (cannot happen for real conn_ids: they name one channel)
  elseif not cur and clients() >= MAX then
    cur = nil  -- full: left out
  else
    local event = put(cid, owner, ARGV[k + 1], ARGV[k + 2], ARGV[k + 3], ARGV[k + 4])
    if event then events[#events + 1] = event end
  end
end
finish()
if #events == 0 then return {} end
return changed(events)
"""

#: ARGV: group. Removes every entry of the owners whose lease passed; the change, or {}.
PRESENCE_SWEEP = _PRESENCE + r"""
local events = {}
for _, owner in ipairs(redis.call('ZRANGEBYSCORE', po, '-inf', now)) do
  for _, cid in ipairs(redis.call('SMEMBERS', by_owner(owner))) do
    local event = drop(cid)
    if event then events[#events + 1] = event end
  end
  redis.call('ZREM', po, owner)
  redis.call('DEL', by_owner(owner))
end
finish()
if #events == 0 then return {} end
return changed(events)
"""

#: KEYS: pe po pm pf; ARGV: ``p`` (a reader of clear text) or ``e`` (with keys). Returns ``{head,
#: {fragment, ...}}``: the fragments (:data:`_FRAGMENT`) of the live entries and the msgpack head
#: that makes them, joined, one msgpack value: a map of ``n`` (``p``) or an array of ``3n`` (``e``)
#: items. So this process decodes a thousand entries in one call and makes no object it does not
#: hand out. While no lease has passed and ``pf`` is as of the latest change (the usual case)
#: the fragments are ``HVALS pf``; else made here from the live entries of ``pe``.
PRESENCE_LIST = _FRAGMENT + r"""
local pe, po, pm, pf = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local function head(n)
  if ARGV[1] == 'p' then return '\223' .. struct.pack('>I4', n) end
  return '\221' .. struct.pack('>I4', 3 * n)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live
if redis.call('ZRANGEBYSCORE', po, '-inf', now, 'LIMIT', 0, 1)[1] then
  live = {}
  for _, owner in ipairs(redis.call('ZRANGEBYSCORE', po, '(' .. now, '+inf')) do live[owner] = true end
else
  local v = redis.call('HMGET', pm, 'v', 'fv')
  if (tonumber(v[1]) or 0) == (tonumber(v[2]) or 0) and redis.call('HLEN', pf) == redis.call('HLEN', pe) then
    local frags = redis.call('HVALS', pf)
    return {head(#frags), frags}
  end
end
local all, out = redis.call('HGETALL', pe), {}
for k = 1, #all, 2 do
  local owner, s, rest = split(all[k + 1])
  if not live or live[owner] then out[#out + 1] = fragment(all[k], rest, s) end
end
return {head(#out), out}
"""

#: KEYS: pe pu. Returns {clients, users}.
PRESENCE_COUNTS = r"""
return {redis.call('HLEN', KEYS[1]), redis.call('HLEN', KEYS[2])}
"""
