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
* ``P:gn:<group>``: sorted set of the group's normal-channel members.

Fan-out: ``group_send`` pushes one small ``g`` element (group name + payload) to each inbox that
has members; the owning process expands it to its member channels from a membership cache kept
in step by ``a``/``d`` elements, which travel in the same ordered inbox as the messages. So the
cost of a group_send in Redis and on the wire is per process, not per member.

All scripts run by SHA (``EVALSHA``; redis-py loads a script again after a restart). With several
hosts, every key of a process-specific channel (its inbox, count hash, and the group sets holding
it) lives on the host its inbox hashes to, so each script touches one host.
"""

from __future__ import annotations

import re

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
-- KEYS[1] queue, KEYS[2] count hash (process-specific channels only)
-- ARGV: now_ms, ttl_ms, capacity, element, channel
local q = KEYS[1]
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local purged = 0
if #KEYS == 1 then
  purged = purge(q, now)
  if redis.call('LLEN', q) >= cap then return {0, purged} end
else
  local n = tonumber(redis.call('HGET', KEYS[2], ARGV[5]) or '0')
  if n >= cap then return {0, 0} end
  redis.call('HINCRBY', KEYS[2], ARGV[5], 1)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call('RPUSH', q, ARGV[4])
redis.call('PEXPIRE', q, ttl)
return {1, purged}
"""

GROUP_ADD = """
-- KEYS: group set, group inbox-count hash, inbox
-- ARGV: channel, now_ms, group_expiry_ms, ttl_ms, inbox, 'a' element
local added = redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if added == 1 then redis.call('HINCRBY', KEYS[2], ARGV[5], 1) end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return added
"""

GROUP_DISCARD = """
-- KEYS: group set, group inbox-count hash, inbox; ARGV: channel, inbox, 'd' element, ttl_ms
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then redis.call('HDEL', KEYS[2], ARGV[2]) end
  redis.call('RPUSH', KEYS[3], ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
return removed
"""

GROUP_SEND = _PURGE + """
-- KEYS: group set, group inbox-count hash, normal-member set
-- ARGV: now_ms, group_expiry_ms, ttl_ms, g element, normal element, queue key prefix,
--       inbox limit, default capacity, then (lua pattern, capacity) pairs for normal channels
local now = tonumber(ARGV[1])
local cutoff = now - tonumber(ARGV[2])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
if #old > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  for _, ch in ipairs(old) do
    local box = string.sub(ch, 1, string.find(ch, '!', 1, true))
    if redis.call('HINCRBY', KEYS[2], box, -1) <= 0 then redis.call('HDEL', KEYS[2], box) end
  end
end
local ttl = tonumber(ARGV[3])
local qp = ARGV[6]
local limit = tonumber(ARGV[7])
local full = {}
for _, box in ipairs(redis.call('HKEYS', KEYS[2])) do
  local q = qp .. box
  if redis.call('LLEN', q) < limit then
    redis.call('RPUSH', q, ARGV[4])
    redis.call('PEXPIRE', q, ttl)
  else
    full[#full + 1] = box
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', cutoff)
local normal = redis.call('ZRANGE', KEYS[3], 0, -1)
local defcap = tonumber(ARGV[8])
for _, ch in ipairs(normal) do
  local q = qp .. ch
  purge(q, now)
  local cap = defcap
  for j = 9, #ARGV, 2 do
    if string.find(ch, ARGV[j]) then
      cap = tonumber(ARGV[j + 1])
      break
    end
  end
  if redis.call('LLEN', q) < cap then
    redis.call('RPUSH', q, ARGV[5])
    redis.call('PEXPIRE', q, ttl)
  else
    full[#full + 1] = ch
  end
end
return full
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

# KEYS: group set, group inbox-count hash; ARGV: inbox, group_expiry_ms, then channel, joined_ms pairs.
# Re-adds one inbox's memberships of one group after Redis lost them, keeping the join times.
READD = """
local n = 0
for i = 3, #ARGV, 2 do
  n = n + redis.call('ZADD', KEYS[1], 'NX', ARGV[i + 1], ARGV[i])
end
if n > 0 then redis.call('HINCRBY', KEYS[2], ARGV[1], n) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return n
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


_STAMP_WIDTH = 13
CHANNEL_LIST = re.compile(rb"[^,\n]+")
