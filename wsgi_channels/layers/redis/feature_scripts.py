"""Lua of group history (issue 18) on the Redis layer, and the key layout of history and presence
(issue 19; presence's Lua is in :mod:`.presence_scripts`).

Key layout (``P`` the layer's key prefix and ``:``; every key of one group has the group's
hash tag, so a group's history or presence lives on one shard: the group's own, by the ring):

``P:h:{group}``
    LIST of the kept messages, oldest first: ``h`` items of :mod:`.entries` (the deadline when
    the item ages out, its offset, the body). Trimmed from the head, so the kept offsets are
    contiguous: to ``size``, then by age, at every offset that is a multiple of
    :data:`TRIM_EVERY` (16), so it holds at most ``size + 15`` items; a read skips the items
    beyond the last ``size`` (the meta's) and the aged ones. Its TTL is the history ``ttl``.
``P:hm:{group}``
    STRING ``epoch top run meta_ttl size``, separated by spaces: the epoch, the latest offset,
    the identity (``run_id/replid``) of the server that wrote it, the meta ttl (ms) and the size of the latest
    append's options (0: not known yet); expires ``meta_ttl`` after the latest append or read.
    One ``GET`` reads it and one ``SET ... PX`` writes it. A layer before this one kept a HASH
    there (fields ``e t r m``; its stream trimmed to size at every append): it is read as the
    same meta (same epoch, same offsets: the epoch rule applies to its ``r`` as to any) and
    written back as the string, so a stream goes on across an upgrade. A process of the older version that meets the string is
    refused (``WRONGTYPE``, raised as ``LayerUnavailable``) until it is upgraded too.
``P:pe:{group}``
    HASH of the presence entries (``HLEN`` is the clients count), each one field: conn_id ->
    ``owner since tag digest rest``, separated by spaces (no space inside the first four):
    the owner (a ``sidecar.*!`` prefix), since (seconds since the epoch, as text), the user's
    tag (hex, ``''``: no user), the digest of the user and info (hex: an update with the same
    digest changes nothing), then the user and info (msgpack ``{"info": info, "user": user}``, sealed
    like a message body: encrypted with ``symmetric_encryption_keys``). The tag and digest are
    BLAKE2b, keyed on an encrypted layer (a key derived from the first encryption key), so that
    they reveal nothing to a reader of Redis: the scripts need user equality (the users count,
    an update that changes nothing), never the user (:mod:`.presence`).
``P:pu:{group}`` / ``P:po:{group}`` / ``P:pm:{group}``
    HASH user tag -> entries (refcounts: ``HLEN`` is the users count), ZSET owner -> lease
    deadline (ms, server clock), HASH of the change version ``v``, mode ``m`` and the options
    of the latest add (``ttl`` ms, ``ev``, ``jl``, ``max``).
``P:pb:{group}:<owner>``
    SET of an owner's conn_ids in the group.
``P:pf:{group}``
    HASH conn_id -> the entry as ``group_presence`` reads it (msgpack: the map handed out, or, on
    an encrypted layer, since and the sealed rest), written with ``pe`` so that a read only joins
    them; ``pm``'s ``fv`` is the change it is as of (a layer before it changed ``pe`` alone: the
    next change, refresh or sweep makes it again, reads meanwhile make the fragments from ``pe``).
``P:px:{presence}``
    ZSET group -> its earliest owner lease, per shard: what ``presence_sweep`` looks at.

The epoch rule: a stream's meta remembers the identity of the server that wrote it, its
``run_id`` and its replication id (``master_replid``), as ``run_id/replid``. A server restarted
(even from its persistence files, which may miss the last writes) or another server that took
over after a failover (asynchronous replication may have lost acknowledged appends) has another
``run_id``; a server that became a replica (taking its new primary's data, which may lack the
tail it had written) and was promoted again keeps its ``run_id`` but not its replication id
(Redis makes a new one at every promotion). Either way the script starts a new stream there: a
new epoch (the client's random candidate, :func:`..features.new_epoch`; a script has no
CSPRNG) and offset 0. ``FLUSHALL``, ``flush()`` and an expired meta remove the meta: a new
stream too. The replication id is read in every history script (``INFO replication``, about
3 us of server time): a connection survives its server's demotion and promotion, so it cannot
be learnt once. Redis also makes a new replication id when a primary that had replicas has had
none for ``repl-backlog-ttl`` (an hour by default): a new epoch then, needlessly but safely.

What the rule costs: the script compares the meta's ``run_id`` with the one its connection
learnt (:attr:`.link.Script.run_id`: the caller's connection asks ``INFO server`` once, in front
of the first such script it sends, and fills it in as the script's last argument). A TCP
connection cannot outlive its server process, and a process keeps its ``run_id``, so a
connection's is exact; equal to the meta's (with the replication id the script reads), the
stream goes on with no ``INFO server``. Any other case
(a meta of another run, no meta, or a connection that does not know it yet) asks the server's
own ``INFO server`` inside the script, whose ``run_id`` then rules as before: a connection's
value can spare the script an ``INFO``, never keep a stream the server's own ``run_id`` would not.
This holds where a connection reaches one server process (direct, Sentinel, Cluster, a TCP proxy
or virtual IP whose connections end with their server), not behind a proxy that routes each
command to a backend of its choosing.

``history_trust_persistence`` (for servers run with ``appendfsync always``) keeps a stream whose
meta survived a restart: another ``run_id`` is trusted when this server is a standalone
primary (``redis_mode``) with ``aof_enabled:1`` that has not switched replication ids in this
run (``second_repl_offset:-1``: a replica promoted by a failover has, until it restarts). A
restart without the data, ``FLUSHALL`` and an expired meta leave no meta: a new stream. It covers
restarts of one server: the layer refuses it with Sentinel and Cluster, where failovers are
expected (a promoted replica that restarted before the stream was next touched would look like a
restarted primary, and asynchronous replication may have lost the tail).

The fan-out of a history group's message and of the layer's own messages is the fan-out
script of :mod:`.scripts` with more arguments (derived when the module loads, each change
checked to apply exactly where expected): the stamped body that ``sidecar.*!`` prefixes
receive instead, or "sidecars only", or "keep first": the message is numbered and kept in the
group's stream and the sidecars' copies stamped in the same script (:data:`STAMP_LUA`, made
once and only when a ``sidecar.*!`` prefix gets a copy), so on the group's own server the
copies are queued in offset order.
"""
from __future__ import annotations

from ..names import SIDECAR_PREFIX
from .entries import DEADLINE_DIGITS, LUA_CONSTANTS
from .scripts import _COMMON, FANOUT, GROUP_ADD, GROUP_DISCARD

__all__ = ["HIST_APPEND", "HIST_READ", "FEATURE_FANOUT", "GROUP_ADD_NOTICE", "GROUP_DISCARD_NOTICE",
           "FEATURE_KEY_KINDS", "TRIM_EVERY", "STAMPED", "SIDECARS_ONLY", "KEEP", "KEEP_POSITION", "ORDER_WAIT", "POSITION_LOCAL", "POSITION_MARK",
           "join_position"]

#: Key kinds of history and presence (``flush`` removes them).
FEATURE_KEY_KINDS = ("h", "hm", "hx", "pe", "pu", "po", "pm", "pb", "px", "pf")
#: What the fan-out answers instead of queueing a stamped copy whose predecessor has not been queued
#: on that server yet (another publisher's fan-out is under way): the caller sends it again shortly.
ORDER_WAIT = -2
#: Modes of :data:`FEATURE_FANOUT`: stamped copies for sidecar prefixes; sidecar prefixes only; keep
#: the message in the group's history, then stamped copies (answering the members skipped; with
#: ``KEEP_POSITION`` the epoch and the offset too, for the fan-out on other shards).
STAMPED, SIDECARS_ONLY, KEEP, KEEP_POSITION = "s", "o", "k", "p"
#: A stream is trimmed (to its size, then by age) at every offset that is a multiple of this: it
#: holds at most ``size + TRIM_EVERY - 1`` messages, of which reads see the last ``size``.
TRIM_EVERY = 16

_STREAM = LUA_CONSTANTS + f"""
local DEADLINE_FORMAT = '%0{DEADLINE_DIGITS}d'
""" + r"""
local function time_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- history_trust_persistence (set by the script from its ARGV): see the module
local TRUST = false

-- Whether this server process may be trusted to hold what an earlier run of it wrote: a
-- standalone primary with its append-only file on, that was not a replica promoted in this run.
local function restarted_from_aof(server)
  if not string.find(server, 'redis_mode:standalone', 1, true) then return false end
  local repl = redis.call('INFO', 'replication')
  if not string.find(repl, 'role:master', 1, true) or not string.find(repl, 'second_repl_offset:-1', 1, true) then
    return false
  end
  return string.find(redis.call('INFO', 'persistence'), 'aof_enabled:1', 1, true) ~= nil
end

-- The meta: 'epoch top run meta_ttl size' (see the module; size 0: not known); nil when there is
-- none (or not of that form). A HASH (e t r m) is the meta an older version wrote, which trimmed
-- its stream to size at every append: read as the same (size 0), and 'true' after it.
local function read_meta(hm)
  local v = redis.pcall('GET', hm)
  if type(v) == 'table' then  -- WRONGTYPE: a hash
    local old = redis.call('HMGET', hm, 'e', 't', 'r', 'm')
    if not old[1] then return nil end
    return old[1], tonumber(old[2]), old[3] or '', tonumber(old[4]), 0, true
  end
  if not v then return nil end
  local e, t, r, m, s = string.match(v, '^(%S+) (%d+) (%S*) (%d+) (%d+)$')
  return e, tonumber(t), r, tonumber(m), tonumber(s), false
end

local function write_meta(hm, epoch, top, run, meta_ttl, size)
  redis.call('SET', hm, epoch .. ' ' .. top .. ' ' .. run .. ' ' .. meta_ttl .. ' ' .. size, 'PX', meta_ttl)
end

-- The stream's epoch, latest offset, meta ttl, size (0: not known), whether it was made now, and
-- the server's identity ('run_id/master_replid'); a new stream (candidate epoch, offset 0, no
-- messages) when it has no meta or another server process, or this one with other data, wrote
-- it (see the module). run: the run_id the caller's connection learnt ('' when unknown); a meta
-- of another identity, or none, is checked against the server's own (INFO), which rules. A HASH
-- meta (an older version's) names the run_id alone: the same process goes on with it.
local function stream(h, hm, candidate, meta_ttl, run)
  local epoch, top, wrote, mttl, size, old = read_meta(hm)
  local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
  local server
  if run == '' or (wrote ~= run .. '/' .. replid and not (old and wrote == run)) then
    server = redis.call('INFO', 'server')
    run = string.match(server, 'run_id:(%w+)')
  end
  local me = run .. '/' .. replid
  if epoch and (wrote == me or (old and wrote == run) or (TRUST and restarted_from_aof(server))) then
    mttl = mttl or meta_ttl
    if old or wrote ~= me then write_meta(hm, epoch, top, me, mttl, size) end
    return epoch, top, mttl, size, false, me
  end
  redis.call('DEL', h)
  write_meta(hm, candidate, 0, me, meta_ttl, 0)
  return candidate, 0, meta_ttl, 0, true, me
end

-- Drop the aged items at the head (one ttl per group: age order is offset order); the first kept.
local function trim_aged(h, now)
  local v = redis.call('LINDEX', h, 0)
  while v and tonumber(string.sub(v, 1, E_DEADLINE_END)) <= now do
    redis.call('LPOP', h)
    v = redis.call('LINDEX', h, 0)
  end
  return v
end
"""

_APPEND = _STREAM + f"""
local TRIM_EVERY = {TRIM_EVERY}
""" + r"""
-- Keep body under the stream's next offset (now: the time on the server's clock, in ms); the
-- epoch and the offset. Every TRIM_EVERY-th offset
-- the stream is trimmed to size, then by age: it holds at most size + TRIM_EVERY - 1 items, and
-- readers skip those beyond size (the meta's size) and those aged.
local function history_append(h, hm, candidate, size, ttl, meta_ttl, body, run, now)
  local epoch, top, _, _, _, server_run = stream(h, hm, candidate, meta_ttl, run)
  top = top + 1
  local n = redis.call('RPUSH', h, string.format(DEADLINE_FORMAT, now + ttl) .. E_HISTORY .. top .. E_FIELD_END .. body)
  if top % TRIM_EVERY == 0 then
    if n > size then redis.call('LTRIM', h, -size, -1) end
    trim_aged(h, now)
  end
  redis.call('PEXPIRE', h, ttl)
  write_meta(hm, epoch, top, server_run, meta_ttl, size)
  return epoch, top
end
"""

#: KEYS: h hm; ARGV: candidate epoch, size, ttl ms, meta ttl ms, body, trust ('1': history_trust_persistence),
#: run_id (:attr:`.link.Script.run_id`). Returns {epoch, offset}.
HIST_APPEND = _APPEND + r"""
TRUST = ARGV[6] == '1'
local epoch, top = history_append(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
                                  tonumber(ARGV[4]), ARGV[5], ARGV[7], time_ms())
return {epoch, top}
"""

#: KEYS: h hm; ARGV: candidate epoch, meta ttl ms for a new stream, since, limit (0: the position),
#: trust ('1': history_trust_persistence), run_id (:attr:`.link.Script.run_id`).
#: Returns {epoch, top, item, item, ...}: the kept items with offset > since, at most limit.
HIST_READ = _STREAM + r"""
TRUST = ARGV[5] == '1'
local h, hm = KEYS[1], KEYS[2]
local now = time_ms()
local epoch, top, meta_ttl, size, made = stream(h, hm, ARGV[1], tonumber(ARGV[2]), ARGV[6])
if not made and redis.call('PTTL', hm) < meta_ttl then redis.call('PEXPIRE', hm, meta_ttl) end
local out = {epoch, top}
local limit = tonumber(ARGV[4])
if limit == 0 then return out end
local first = trim_aged(h, now)
if not first then return out end
local f = tonumber(string.sub(first, E_REST_AT, string.find(first, E_FIELD_END, E_REST_AT, true) - 1))
local low = tonumber(ARGV[3]) + 1  -- the first offset read: after since, and among the last size
if size > 0 and top - size + 1 > low then low = top - size + 1 end
local start = math.max(0, low - f)
for _, v in ipairs(redis.call('LRANGE', h, start, start + limit - 1)) do out[#out + 1] = v end
return out
"""


def _derive(source: str, old: str, new: str, count: int = 1) -> str:
    """``source`` with ``old`` replaced by ``new``, checked to occur exactly ``count`` times: a change
    of the script derived from fails here, at import, not in a test that happens to need it."""
    found = source.count(old)
    if found != count:
        raise AssertionError(f"deriving a feature script: {old!r} occurs {found} times, not {count}")
    return source.replace(old, new)


#: Lua ``with_stamp(body, tail, epoch, offset)``: ``body`` (a message as :func:`~wsgi_channels.serialization.encode`
#: made it: a msgpack map) stamped as :func:`~wsgi_channels.serialization.with_keys` stamps it, byte for
#: byte: the map's header rewritten for one more pair (fixmap, map16 or map32, the smallest, as
#: msgpack packs it), the pairs as they are, then ``tail`` (the stamp's key and its list's start
#: up to the group, packed by the client: :meth:`.history.HistoryMixin._keep_command`), then
#: the epoch and the offset packed by ``cmsgpack`` (the smallest forms, as msgpack's).
STAMP_LUA = r"""
local function with_stamp(body, tail, epoch, offset)
  local b, n, at = string.byte(body, 1), 0, 2
  if b == 0xde then
    n, at = string.byte(body, 2) * 256 + string.byte(body, 3), 4
  elseif b == 0xdf then
    local b1, b2, b3, b4 = string.byte(body, 2, 5)
    n, at = ((b1 * 256 + b2) * 256 + b3) * 256 + b4, 6
  else
    n = b - 0x80
  end
  n = n + 1
  local head
  if n <= 15 then
    head = string.char(0x80 + n)
  elseif n <= 0xffff then
    head = string.char(0xde, math.floor(n / 256), n % 256)
  else
    head = string.char(0xdf, math.floor(n / 16777216), math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  end
  return head .. string.sub(body, at) .. tail .. cmsgpack.pack(epoch) .. cmsgpack.pack(offset)
end
"""

_FANOUT_FILTER = f"""
local function sidecar(prefix) return string.sub(prefix, 1, #SIDECAR) == SIDECAR end
local function prefix_body(prefix)
  if MODE == '{STAMPED}' and sidecar(prefix) then
    if not SBODY then SBODY = with_stamp(body, STAMP, EPOCH, TOP) end
    return SBODY
  end
  return body
end
if MODE == '{SIDECARS_ONLY}' then
  plain = {{}}
  local only = {{}}
  for i = 1, #prefixes, 4 do
    if sidecar(prefixes[i]) then
      for k = 0, 3 do only[#only + 1] = prefixes[i + k] end
    end
  end
  prefixes = only
end
"""

_FANOUT_HISTORY = _APPEND + STAMP_LUA + f"""
local MODE, SBODY = ARGV[9], ARGV[10]
local EPOCH, TOP, STAMP
local POSITION = MODE == '{KEEP_POSITION}'
if MODE == '{KEEP}' or POSITION then
  TRUST = ARGV[15] == '1'
  EPOCH, TOP = history_append(KEYS[4], KEYS[5], ARGV[11], tonumber(ARGV[12]), tonumber(ARGV[13]),
                              tonumber(ARGV[14]), body, ARGV[16], now_ms())
  STAMP, SBODY = SBODY, nil  -- the stamped copy is made for the first sidecar prefix, if any
  MODE = '{STAMPED}'
end
local function result(dropped)
  if POSITION then return dropped .. ' ' .. EPOCH .. ' ' .. TOP end
  return dropped
end
if MODE == '{STAMPED}' and not EPOCH and ARGV[12] then
  -- stamped copies of another server's stream: queued in offset order (see ORDER_WAIT)
  local offset, last = tonumber(ARGV[12]), redis.call('GET', KEYS[4])
  local same, at = false, 0
  if last then
    local sp = string.find(last, ' ', 1, true)
    same, at = string.sub(last, 1, sp - 1) == ARGV[11], tonumber(string.sub(last, sp + 1))
  end
  if ARGV[13] ~= '1' and offset > 1 and (not last or (same and at < offset - 1)) then return {ORDER_WAIT} end
  if not same or at < offset then redis.call('SET', KEYS[4], ARGV[11] .. ' ' .. offset, 'PX', ARGV[14]) end
end
"""

#: The fan-out script of :mod:`.scripts` (KEYS g gc gp, ARGV 1-8 the same) with ARGV[9] the mode and
#: ARGV[10] the stamped body: ``s`` queues ARGV[10] instead of the body on ``sidecar.*!``
#: prefixes, ``o`` queues the body on ``sidecar.*!`` prefixes only (the layer's own messages).
#: ``k`` first keeps the message in the history group's stream (KEYS h hm follow; ARGV 11-16:
#: candidate epoch, size, ttl ms, meta ttl ms, trust, run_id) and stamps the sidecars' copies with its offset:
#: ARGV[10] is then the stamp's packed key, list header and group (:data:`STAMP_LUA`), and the stamped
#: copy is made only when a ``sidecar.*!`` prefix gets one; ``p``: the same, answering with the
#: position too. Returns the members skipped as full, with ``p`` in one string ``'skipped epoch offset'``.
#: ``s`` with ARGV 11-14 (epoch, offset, '1' to force, ttl ms of the mark) and KEYS[4] (``P:hx:{group}``,
#: the latest ``epoch offset`` queued on this server): copies of a stream kept on another server
#: (several shards, or an encrypted layer: the client stamps them) are queued in offset order. A copy
#: whose predecessor in the same epoch has not been queued here yet is not queued: the answer is
#: :data:`ORDER_WAIT` and the caller sends it again, forced after a while (a publisher that died
#: between keeping its message and queueing its copies). The mark lives as long as the stream's meta.
FEATURE_FANOUT = _derive(_derive(_derive(_derive(
    _derive(FANOUT, "E_FIELD_END .. body", "E_FIELD_END .. prefix_body(prefix)", count=3),
    "local function now_ms() return tonumber(dl) - tonumber(exp) end\n",
    "local function now_ms() return tonumber(dl) - tonumber(exp) end\n" + _FANOUT_HISTORY),
    "local plain, prefixes = plan[2], plan[3]\n", "local plain, prefixes = plan[2], plan[3]\n" + _FANOUT_FILTER),
    "  if not plan then return 0 end\n", "  if not plan then return result(0) end\n"),
    "\nreturn dropped\n", "\nreturn result(dropped)\n")

_NOTICE_PUSH = r"""
local function push_notice(q, u, c, dl, exp, gexp, body)
  local n = redis.call('RPUSH', q, dl .. E_TARGETS .. c .. E_FIELD_END .. body)
  redis.call('PEXPIRE', q, exp)
  if n == 1 then
    redis.call('SET', u, dl, 'PX', gexp)
    redis.call('PUBLISH', q, '')
  end
end
"""

#: Modes of the join position in the notice scripts: read the stream here (the history lives on the
#: membership's server) or derive it from the order mark (the history lives elsewhere).
POSITION_LOCAL, POSITION_MARK = "l", "m"


def join_position(first_key: int) -> str:
    """Lua ``notice_body()``: the add notice's body (ARGV[8]), completed with the group's position
    at the membership when ARGV[9] asks for it (the body then ends where ``[epoch, offset]``'s
    items go: ``h`` is the notice's last key). ``KEYS[first_key]`` on:

    ``l`` (:data:`POSITION_LOCAL`): the group's stream is on this server (KEYS h hm; ARGV[10],
    ARGV[11], ARGV[12] the candidate epoch, meta ttl ms and run_id): the position is read as ``group_position``
    reads it (same epoch rule, the meta touched), in the script of the membership: every message
    numbered after it is queued after the membership (the history's script queues this server's
    copies in the same step), so it sees it.

    ``m`` (:data:`POSITION_MARK`): the stream lives on another server or slot (KEYS hx, this
    server's order mark of the group: the ``epoch offset`` of the latest stamped copy queued
    here; ARGV[10], ARGV[11] ``group_position`` read just before). Stamped copies are queued
    here in offset order, each moving the mark in the script that queues it
    (:data:`FEATURE_FANOUT`), so the mark is exactly where this membership cuts the stream: the
    copies up to it were queued before (the socket joined after those messages), every later
    one is queued after and sees it. No mark: no copy was queued here since the position was
    read (a copy would have set it), so that position is the cut. A mark of another epoch: no
    copy of the stream read was queued here yet, so it is cut at 0 (if the mark's stream is the
    newer one, the position read is already stale, and a resume from it reports ``epoch``).
    """
    return f"""
local function notice_body()
  local how, body = ARGV[9], ARGV[8]
  if not how then return body end
  local epoch, top
  if how == '{POSITION_LOCAL}' then
    local hm, meta_ttl, size, made = KEYS[{first_key + 1}], tonumber(ARGV[11])
    epoch, top, meta_ttl, size, made = stream(KEYS[{first_key}], hm, ARGV[10], meta_ttl, ARGV[12])
    if not made and redis.call('PTTL', hm) < meta_ttl then redis.call('PEXPIRE', hm, meta_ttl) end
  else
    epoch, top = ARGV[10], tonumber(ARGV[11])
    local last = redis.call('GET', KEYS[{first_key}])
    if last then
      local sp = string.find(last, ' ', 1, true)
      if string.sub(last, 1, sp - 1) == epoch then top = tonumber(string.sub(last, sp + 1)) else top = 0 end
    end
  end
  return body .. cmsgpack.pack(epoch) .. cmsgpack.pack(top)
end
"""


_ADD_BODY = _derive(GROUP_ADD[len(_COMMON):], "\nreturn 1\n", "\n")
assert GROUP_ADD.startswith(_COMMON)
assert _STREAM.startswith(LUA_CONSTANTS)
#: GROUP_ADD of a ``sidecar.*!`` channel in a history or presence group, which queues a notice on
#: the channel (whatever its capacity) when the membership is new, or always with ARGV[5] '2'.
#: KEYS: g gc gp m q u [h hm | hx]; ARGV: channel, group expiry ms, capacity, group, '1' or '2', the
#: notice's deadline (13 digits), expiry ms, the notice's body [, position mode, epoch, ms or offset
#: [, run_id]] (:func:`join_position`). Returns 1 for a new membership, else 0.
GROUP_ADD_NOTICE = _COMMON + _STREAM[len(LUA_CONSTANTS):] + _NOTICE_PUSH + join_position(7) \
    + "\nlocal was = redis.call('ZSCORE', KEYS[1], ARGV[1])\n" + _ADD_BODY + r"""
local new = (not was) or tonumber(was) <= now
if ARGV[5] == '2' or new then push_notice(KEYS[5], KEYS[6], c, ARGV[6], ARGV[7], gexp, notice_body()) end
if new then return 1 end
return 0
"""

#: GROUP_DISCARD of a ``sidecar.*!`` channel in a history or presence group: a notice when it was a
#: member. KEYS: g gc gp m q u; ARGV: channel, group, the notice's deadline, expiry ms, group
#: expiry ms, the notice's body. Returns 1 when it was a member.
GROUP_DISCARD_NOTICE = _COMMON + _NOTICE_PUSH + "\nlocal was = redis.call('ZSCORE', KEYS[1], ARGV[1])\n" \
    + _derive(GROUP_DISCARD, "\nreturn 1\n", "\n") + r"""
if was and tonumber(was) > common().now_ms() then
  push_notice(KEYS[5], KEYS[6], c, ARGV[3], ARGV[4], ARGV[5], ARGV[6])
  return 1
end
return 0
"""
