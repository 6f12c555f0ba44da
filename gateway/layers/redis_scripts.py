"""The Lua scripts of the Redis channel layer, and the wire format of a queued element.

Every queued element is one Redis list element::

    <13-digit expiry, ms since the epoch><kind><name>\n<body>

=====  ====================================  ===============================================
kind   name                                   body
=====  ====================================  ===============================================
``n``  (empty)                                msgpack message, on a normal channel's queue
``c``  the process-specific channel           msgpack message from ``send`` (counted)
``g``  the group                              msgpack message from ``group_send``
``a``  the group                              ``<channel>,<joined ms>``: a membership was added
``d``  the group                              ``<channel>``: a membership was discarded
``f``  (empty)                                (empty): the layer was flushed
=====  ====================================  ===============================================

Keys (``P`` is the configured prefix):

* ``P:q:<channel>``: the queue of a normal channel (``mqtt.publish``);
* ``P:q:<name>!``: a process's inbox, for every channel ``<name>!...`` of that process;
* ``P:n:<name>!``: count hash: messages ``send`` put in that inbox and not yet received, by channel;
* ``P:g:<group>``: sorted set of the group's process-specific members, scored by join time (ms);
* ``P:gp:<group>``: hash inbox -> number of members the group has in that inbox;
* ``P:gn:<group>``: sorted set of the group's normal-channel members;
* ``P:ig:<name>!``: the groups an inbox has members in (to remove a dead process's memberships);
* ``P.epoch``: a random token set when the layer first meets the host: missing means Redis lost
  its data (restart without persistence);
* ``P.restoring``: hash of the inboxes that must re-add their memberships after such a loss;
* ``P.procs``: sorted set of inboxes by last heartbeat (ms); one silent for ``dead_after`` is dead.

``P.epoch``, ``P.restoring`` and ``P.procs`` are outside ``P:*``, so ``flush`` keeps them.

Fan-out: ``group_send`` pushes one small ``g`` element (group name + payload) to each inbox that
has members; the owning process expands it to its member channels from a membership cache kept
in step by ``a``/``d`` elements, which travel in the same ordered inbox as the messages. So the
cost of a group_send in Redis and on the wire is per process, not per member.

All scripts run by SHA (``EVALSHA``; redis-py loads a script again after a restart). With several
hosts, every key of a process-specific channel (its inbox, count hash, and the group sets holding
it) lives on the host its inbox hashes to, so each script touches one host.
"""

from __future__ import annotations

_PURGE = """
local function purge(q, now)
  local n = 0
  while true do
    local head = redis.call('LINDEX', q, 0)
    if not head or tonumber(string.sub(head, 1, 13)) > now then return n end
    redis.call('LPOP', q)
    n = n + 1
  end
end
"""

SEND = _PURGE + """
-- KEYS[1] queue, KEYS[2] count hash (used for process-specific channels only), KEYS[3] epoch
-- ARGV: now_ms, ttl_ms, capacity, element, channel ('' for a normal channel)
-- Returns {queued (0/1), expired messages dropped, epoch or false}.
local q = KEYS[1]
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local epoch = redis.call('GET', KEYS[3])
local purged = 0
if ARGV[5] == '' then
  purged = purge(q, now)
  if redis.call('LLEN', q) >= cap then return {0, purged, epoch} end
else
  local n = tonumber(redis.call('HGET', KEYS[2], ARGV[5]) or '0')
  if n >= cap then return {0, 0, epoch} end
  redis.call('HINCRBY', KEYS[2], ARGV[5], 1)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call('RPUSH', q, ARGV[4])
redis.call('PEXPIRE', q, ttl)
return {1, purged, epoch}
"""

GROUP_ADD = """
-- KEYS: group set, group inbox-count hash, inbox, inbox's group set, process set
-- ARGV: channel, now_ms, group_expiry_ms, ttl_ms, inbox, 'a' element, group
-- An inbox nobody heartbeats (its process never ran a receive loop, or died) joins the
-- process set here, so it is removed after dead_after like any dead process's.
local added = redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if added == 1 then redis.call('HINCRBY', KEYS[2], ARGV[5], 1) end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[7])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
redis.call('ZADD', KEYS[5], 'NX', ARGV[2], ARGV[5])
redis.call('RPUSH', KEYS[3], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return added
"""

GROUP_DISCARD = """
-- KEYS: group set, group inbox-count hash, inbox, inbox's group set
-- ARGV: channel, inbox, 'd' element, ttl_ms, group
-- The 'd' notice is pushed even when Redis has no such member (a discard repeated, or Redis
-- lost its data): the owning process drops the channel from its cache when it reads it, after
-- every group message queued before it.
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 and redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('SREM', KEYS[4], ARGV[5])
end
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return removed
"""

GROUP_SEND = _PURGE + """
-- KEYS: group set, group inbox-count hash, normal-member set, epoch, restoring hash, process set
-- ARGV: now_ms, group_expiry_ms, ttl_ms, g element, normal element, queue key prefix,
--       inbox limit, default capacity, group, inbox-groups key prefix, dead_after_ms,
--       then (lua pattern, capacity) pairs for normal channels
-- Returns {'noepoch'} or {'restoring'} (nothing queued: Redis lost its data and the processes
-- have not all re-added their memberships), else {'ok', epoch, name, why, name, why, ...} for
-- every member that missed the message: why is 'c' (channel full), 'i' (inbox full) or
-- 'x' (inbox full and its process has not heartbeated for dead_after: it is dead).
local epoch = redis.call('GET', KEYS[4])
if not epoch then return {'noepoch'} end
if redis.call('EXISTS', KEYS[5]) == 1 then return {'restoring'} end
local now = tonumber(ARGV[1])
local cutoff = now - tonumber(ARGV[2])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
if #old > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  for _, ch in ipairs(old) do
    local box = string.sub(ch, 1, string.find(ch, '!', 1, true))
    if redis.call('HINCRBY', KEYS[2], box, -1) <= 0 then
      redis.call('HDEL', KEYS[2], box)
      redis.call('SREM', ARGV[10] .. box, ARGV[9])
    end
  end
end
local ttl = tonumber(ARGV[3])
local qp = ARGV[6]
local limit = tonumber(ARGV[7])
local dead = now - tonumber(ARGV[11])
local out = {'ok', epoch}
for _, box in ipairs(redis.call('HKEYS', KEYS[2])) do
  local q = qp .. box
  if redis.call('LLEN', q) < limit then
    redis.call('RPUSH', q, ARGV[4])
    redis.call('PEXPIRE', q, ttl)
  else
    local seen = redis.call('ZSCORE', KEYS[6], box)
    out[#out + 1] = box
    out[#out + 1] = (seen and tonumber(seen) < dead) and 'x' or 'i'
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', cutoff)
local normal = redis.call('ZRANGE', KEYS[3], 0, -1)
local defcap = tonumber(ARGV[8])
for _, ch in ipairs(normal) do
  local q = qp .. ch
  purge(q, now)
  local cap = defcap
  for j = 12, #ARGV, 2 do
    if string.find(ch, ARGV[j]) then
      cap = tonumber(ARGV[j + 1])
      break
    end
  end
  if redis.call('LLEN', q) < cap then
    redis.call('RPUSH', q, ARGV[5])
    redis.call('PEXPIRE', q, ttl)
  else
    out[#out + 1] = ch
    out[#out + 1] = 'c'
  end
end
return out
"""

# KEYS[1] count hash; ARGV: channel, n, channel, n, ...
UNCOUNT = """
local k = KEYS[1]
for i = 1, #ARGV, 2 do
  local v = redis.call('HINCRBY', k, ARGV[i], -tonumber(ARGV[i + 1]))
  if v <= 0 then redis.call('HDEL', k, ARGV[i]) end
end
return 0
"""

# ARGV: key glob, queue key prefix, 'f' element, ttl_ms, inbox-count hash prefix. Deletes every
# key of the layer, then leaves one 'f' element in the inbox of every process that had queued
# messages or group members, so it drops its buffers and membership cache.
FLUSH = """
local keys = redis.call('KEYS', ARGV[1])
local boxes = {}
for _, k in ipairs(keys) do
  if string.find(k, ARGV[5], 1, true) == 1 then
    for _, box in ipairs(redis.call('HKEYS', k)) do boxes[box] = true end
  elseif string.sub(k, -1) == '!' and string.find(k, ARGV[2], 1, true) == 1 then
    boxes[string.sub(k, #ARGV[2] + 1)] = true
  end
end
for i = 1, #keys, 5000 do
  redis.call('DEL', unpack(keys, i, math.min(i + 4999, #keys)))
end
for box in pairs(boxes) do
  redis.call('RPUSH', ARGV[2] .. box, ARGV[3])
  redis.call('PEXPIRE', ARGV[2] .. box, ARGV[4])
end
return #keys
"""

# KEYS: group set, group inbox-count hash, inbox's group set
# ARGV: inbox, group_expiry_ms, group, then channel, joined_ms pairs.
# Re-adds one inbox's memberships of one group after Redis lost them, keeping the join times.
READD = """
local n = 0
for i = 4, #ARGV, 2 do
  n = n + redis.call('ZADD', KEYS[1], 'NX', ARGV[i + 1], ARGV[i])
end
if n > 0 then redis.call('HINCRBY', KEYS[2], ARGV[1], n) end
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return n
"""

KEEP = """
-- One process's periodic visit to one host: learn the data epoch, heartbeat its inboxes,
-- remove the processes that stopped heartbeating.
-- KEYS: epoch, restoring hash, process set
-- ARGV: new epoch token, known epoch ('' if none), now_ms, dead_after_ms, restore_timeout_ms,
--       key prefix (P:), own inbox count, own inboxes..., then the peers this process saw alive
-- An epoch that is missing means Redis lost its data (or is new). The process that notices
-- first and had seen the old epoch lists itself and every peer it saw alive in the restoring
-- hash; each removes itself once it has re-added its memberships, and group_send waits while
-- the hash exists (it expires after restore_timeout: a peer that died meanwhile cannot hold
-- group_send for longer).
-- Returns {epoch, own inboxes that were (re-)added to the process set, peers alive,
--          processes still restoring, dead inbox, memberships removed, messages dropped, ...}
local P = ARGV[6]
local now = tonumber(ARGV[3])
local nown = tonumber(ARGV[7])
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  if ARGV[2] ~= '' and #ARGV > 7 then
    for i = 8, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], 1) end
    redis.call('PEXPIRE', KEYS[2], ARGV[5])
  end
end
local added = {}
for i = 8, 7 + nown do
  if redis.call('ZADD', KEYS[3], now, ARGV[i]) == 1 then added[#added + 1] = ARGV[i] end
end
local out = {epoch, added, {}, redis.call('HLEN', KEYS[2])}
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[4]))
for _, box in ipairs(dead) do
  local members = 0
  for _, g in ipairs(redis.call('SMEMBERS', P .. 'ig:' .. box)) do
    redis.call('HDEL', P .. 'gp:' .. g, box)
    local set = P .. 'g:' .. g
    for _, ch in ipairs(redis.call('ZRANGE', set, 0, -1)) do
      if string.sub(ch, 1, #box) == box then
        redis.call('ZREM', set, ch)
        members = members + 1
      end
    end
  end
  local q = P .. 'q:' .. box
  local dropped = 0
  for _, e in ipairs(redis.call('LRANGE', q, 0, -1)) do
    local kind = string.sub(e, 14, 14)
    if (kind == 'g' or kind == 'c') and tonumber(string.sub(e, 1, 13)) > now then dropped = dropped + 1 end
  end
  redis.call('DEL', q, P .. 'n:' .. box, P .. 'ig:' .. box)
  redis.call('ZREM', KEYS[3], box)
  out[#out + 1] = box
  out[#out + 1] = members
  out[#out + 1] = dropped
end
out[3] = redis.call('ZRANGEBYSCORE', KEYS[3], now - tonumber(ARGV[4]), '+inf')
return out
"""

_LUA_MAGIC = set("^$()%.[]*+-?")


def glob_to_lua(pattern: str) -> str:
    """An anchored Lua pattern matching what ``fnmatch`` matches for a channel name.

    Channel names only hold ``[A-Za-z0-9_.!-]``, so ``*``, ``?`` and ``[...]`` classes suffice.
    ``*`` is ``.*`` (greedy with backtracking in Lua, like fnmatch).
    """
    out = ["^"]
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end == -1:
                out.append("%[")
            else:
                body = pattern[i + 1 : end]
                negate = body.startswith("!")
                if negate:
                    body = body[1:]
                klass = "".join(("%" + ch) if ch in "%]^" else ch for ch in body)
                out.append("[" + ("^" if negate else "") + klass + "]")
                i = end
        elif c in _LUA_MAGIC:
            out.append("%" + c)
        else:
            out.append(c)
        i += 1
    out.append("$")
    return "".join(out)

