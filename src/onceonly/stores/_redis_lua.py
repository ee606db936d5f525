"""The Lua scripts of the Redis store: each store operation is one script, one round trip.

They implement exactly the pure functions of ``records.py`` (claim_on, renew_on, complete_on,
release_allowed, resolve, next_token) on the Redis server, so each step is atomic and timed by
the server's clock (``TIME``, SPEC 14). Times are integer microseconds (exact in a Lua double
up to 2^53, i.e. for the next 250 years).

Keys of one record (they share the hash tag ``{id}``, so they sit in one Cluster slot):

- ``KEYS[1]`` ``<prefix>{<id>}``    hash: fp, st, tok, lu, ex, ru, ca, status, rep, tid, sid, w
  Expires by itself (PEXPIRE) at the end of retention, or, while in flight, an hour after the
  lease lapsed (an abandoned claim).
- ``KEYS[2]`` ``<prefix>{<id>}:r``  hash: hdr, body. Expires at the TTL: after it only the
  small tombstone above remains (SPEC 14, "no body").

``st`` is ``in_flight``, ``completed`` or ``unreplayable``; the tombstone state is derived
from the times, as ``records.resolve`` does. ``w`` marks a record someone waits on: completion
and release publish its key on the store's channel only then (SPEC 10), so an uncontended
request publishes nothing.
"""

from __future__ import annotations

_PRELUDE = """
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- records.resolve: the state at `now`, lapsed TTL and retention applied
local function resolve(st, ex, ru, now)
  if not st then return 'absent' end
  if (st == 'completed' or st == 'unreplayable') and now >= tonumber(ex) then st = 'tombstone' end
  if st == 'tombstone' and now >= tonumber(ru) then return 'absent' end
  return st
end
-- the record in a fixed field order (see redis.py FIELDS): no field names on the wire
local function snapshot(now)
  return {0, now,
          redis.call('HMGET', KEYS[1], 'fp', 'st', 'tok', 'lu', 'ex', 'ru', 'ca', 'status',
                     'rep', 'tid', 'sid'),
          redis.call('HMGET', KEYS[2], 'hdr', 'body')}
end
local function ms(us)
  local v = math.ceil(us / 1000)
  if v < 1 then return 1 end
  return v
end
"""

# ARGV: fingerprint, lease_us, abandoned_grace_us
# -> {1, token, expired_before, recovered, previous_fingerprint|false}
# |  {0, now, record fields, response fields}  (snapshot)
CLAIM = (
    _PRELUDE
    + """
local now = now_us()
local r = redis.call('HMGET', KEYS[1], 'st', 'tok', 'lu', 'ex', 'ru', 'fp')
local st = resolve(r[1], r[4], r[5], now)
local expired, recovered, prevfp = 0, 0, false
if st == 'in_flight' then
  -- only a retry of the same request takes over a lapsed lease (SPEC 9, records.claim_on)
  if now < tonumber(r[3]) or r[6] ~= ARGV[1] then
    return snapshot(now)
  end
  recovered, prevfp = 1, r[6]
elseif st == 'completed' or st == 'unreplayable' then
  return snapshot(now)
elseif st == 'tombstone' then
  expired, prevfp = 1, r[6]
end
-- records.next_token: the clock in microseconds, bumped past the previous token
local token = now
local prev = tonumber(r[2])
if prev and prev + 1 > token then token = prev + 1 end
local lease = tonumber(ARGV[2])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'st', 'in_flight', 'tok', token,
           'lu', now + lease, 'ca', now)
redis.call('PEXPIRE', KEYS[1], ms(lease + tonumber(ARGV[3])))
return {1, token, expired, recovered, prevfp}
"""
)

# ARGV: token, lease_us, abandoned_grace_us -> 1 | 0 (fenced out)
RENEW = (
    _PRELUDE
    + """
local r = redis.call('HMGET', KEYS[1], 'st', 'tok', 'lu')
if r[1] ~= 'in_flight' or tonumber(r[2]) ~= tonumber(ARGV[1]) then return 0 end
local now = now_us()
local lu = math.max(tonumber(r[3]), now + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'lu', lu)
redis.call('PEXPIRE', KEYS[1], ms(lu - now + tonumber(ARGV[3])))
return 1
"""
)

# ARGV: token, ttl_us, retention_us, replayable (1/0), status, headers json, body,
#       trace_id, span_id, channel -> 1 | 0 (fenced out)
COMPLETE = (
    _PRELUDE
    + """
local r = redis.call('HMGET', KEYS[1], 'st', 'tok', 'w')
if r[1] ~= 'in_flight' or tonumber(r[2]) ~= tonumber(ARGV[1]) then return 0 end
local now = now_us()
local ttl, retention = tonumber(ARGV[2]), tonumber(ARGV[3])
local st = 'completed'
if ARGV[4] == '0' then st = 'unreplayable' end
redis.call('HSET', KEYS[1], 'st', st, 'ex', now + ttl, 'ru', now + ttl + retention,
           'status', ARGV[5], 'rep', ARGV[4], 'tid', ARGV[8], 'sid', ARGV[9])
redis.call('HDEL', KEYS[1], 'w')
redis.call('PEXPIRE', KEYS[1], ms(ttl + retention))
if st == 'completed' then
  redis.call('HSET', KEYS[2], 'hdr', ARGV[6], 'body', ARGV[7])
  redis.call('PEXPIRE', KEYS[2], ms(ttl))
end
if r[3] then redis.call('PUBLISH', ARGV[10], KEYS[1]) end
return 1
"""
)

# ARGV: token, channel -> 1 | 0 (fenced out)
RELEASE = """
local r = redis.call('HMGET', KEYS[1], 'st', 'tok', 'w')
if r[1] ~= 'in_flight' or tonumber(r[2]) ~= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
if r[3] then redis.call('PUBLISH', ARGV[2], KEYS[1]) end
return 1
"""

# ARGV: channel -> number of keys deleted
DELETE = """
local w = redis.call('HGET', KEYS[1], 'w')
local n = redis.call('DEL', KEYS[1], KEYS[2])
if w then redis.call('PUBLISH', ARGV[1], KEYS[1]) end
return n
"""

# -> {0, now, record fields, response fields}  (snapshot)
GET = (
    _PRELUDE
    + """
return snapshot(now_us())
"""
)

# Mark the record watched and say how long its lease has left: microseconds, or -1 when the
# record is not in flight (so the waiter stops waiting).
WATCH = (
    _PRELUDE
    + """
local r = redis.call('HMGET', KEYS[1], 'st', 'lu')
if r[1] ~= 'in_flight' then return -1 end
redis.call('HSET', KEYS[1], 'w', 1)
local left = tonumber(r[2]) - now_us()
if left < 0 then return 0 end
return left
"""
)
