"""The Lua scripts of the Redis store: each store operation is one script, one round trip.

They implement exactly the pure functions of ``_records.py`` (claim_on, renew_on, complete_on,
release_allowed, resolve, next_token) on the Redis server, so each step is atomic and timed by
the server's clock (``TIME``, SPEC 14). Times are integer microseconds (exact in a Lua double
up to 2^53, i.e. for the next 250 years).

Keys of one record (layout ``v2``; they share the hash tag ``{id}``, so they sit in one
Cluster slot):

- ``KEYS[1]`` ``<prefix>v2{<id>}``    the record, one string::

      <st><ex>,<ru>,<tok>,<lu>,<ca>,<fp>

  ``st`` is one letter: ``i`` in flight, ``w`` in flight and waited on, ``c`` completed,
  ``u`` unreplayable; ``ex``/``ru`` (TTL end, retention end; 0 while in flight), ``tok``,
  ``lu`` (lease until) and ``ca`` (created at) are decimal microseconds; the fingerprint comes
  last, so it may hold any byte. Expires by itself at the end of retention, or, while in
  flight, an hour after the lease lapsed (an abandoned claim).
- ``KEYS[2]`` ``<prefix>v2{<id>}:r``  the stored response, built by ``redis.py``: a header
  line that names the token it belongs to, then headers and body. Expires just after the TTL:
  after it only the small record above remains, as a tombstone (SPEC 14, "no body").

Why strings, not hashes: a script's cost on the server is mostly its ``redis.call``s (2.5 to
8 µs each on the benchmark machine, bench/README.md), and one string takes one ``GET`` to read
and one ``SET … PX`` to write with its expiry, where a hash took ``HMGET``, ``HSET``,
``PEXPIRE`` and, on a new claim, a ``DEL`` of both keys. A claim no longer deletes the old
response: it carries its token, and ``redis.py`` never answers with a response whose token is
not the record's.

The tombstone state is derived from the times, as ``records.resolve`` does. ``w`` makes
completion and release publish the record's key on the store's channel (SPEC 10), so an
uncontended request publishes nothing.
"""

from __future__ import annotations

_PRELUDE = """
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- the record string -> st, ex, ru, tok, lu, ca, fp (numbers but st and fp)
local function parse(v)
  local st, ex, ru, tok, lu, ca, fp =
    string.match(v, '^(%a)(%d+),(%d+),(%d+),(%d+),(%d+),(.*)$')
  return st, tonumber(ex), tonumber(ru), tonumber(tok), tonumber(lu), tonumber(ca), fp
end
local function record(st, ex, ru, tok, lu, ca, fp)
  return string.format('%s%d,%d,%d,%d,%d,', st, ex, ru, tok, lu, ca) .. fp
end
-- milliseconds for PX, rounded up and one more: a key outlives the time it stands for (the
-- server may date PX from the script's start, a hair before our TIME)
local function ms(us)
  return math.ceil(us / 1000) + 1
end
"""

# ARGV: fingerprint, lease_us, abandoned_grace_us
# -> {1, token, expired_before, recovered, previous_fingerprint|false,
#     previous token, previous created_at, previous end (expires_at or lease_until), now}
# |  {0, now, record, response|false}  (the live record, as it stands)
CLAIM = (
    _PRELUDE
    + """
local now = now_us()
local v = redis.call('GET', KEYS[1])
local expired, recovered, prevfp, token = 0, 0, false, now
local prevtok, prevca, prevend = 0, 0, 0
if v then
  local st, ex, ru, tok, lu, ca, fp = parse(v)
  if st == 'i' or st == 'w' then
    -- only a retry of the same request takes over a lapsed lease (SPEC 9, records.claim_on)
    if now < lu or fp ~= ARGV[1] then return {0, now, v, false} end
    recovered, prevfp, prevtok, prevca, prevend = 1, fp, tok, ca, lu
  elseif now < ex then
    return {0, now, v, redis.call('GET', KEYS[2])}
  elseif now < ru then
    expired, prevfp, prevtok, prevca, prevend = 1, fp, tok, ca, ex
  end
  -- records.next_token: the clock in microseconds, bumped past the previous token
  if tok + 1 > token then token = tok + 1 end
end
local lease = tonumber(ARGV[2])
redis.call('SET', KEYS[1], record('i', 0, 0, token, now + lease, now, ARGV[1]),
           'PX', ms(lease + tonumber(ARGV[3])))
return {1, token, expired, recovered, prevfp, prevtok, prevca, prevend, now}
"""
)

# ARGV: token, lease_us, abandoned_grace_us -> 1 | 0 (fenced out)
RENEW = (
    _PRELUDE
    + """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local st, ex, ru, tok, lu, ca, fp = parse(v)
if (st ~= 'i' and st ~= 'w') or tok ~= tonumber(ARGV[1]) then return 0 end
local now = now_us()
lu = math.max(lu, now + tonumber(ARGV[2]))
redis.call('SET', KEYS[1], record(st, 0, 0, tok, lu, ca, fp), 'PX',
           ms(lu - now + tonumber(ARGV[3])))
return 1
"""
)

# ARGV: token, ttl_us, retention_us, state letter ('c' or 'u'), response, channel
# -> 1 | 0 (fenced out)
COMPLETE = (
    _PRELUDE
    + """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local st, ex, ru, tok, lu, ca, fp = parse(v)
if (st ~= 'i' and st ~= 'w') or tok ~= tonumber(ARGV[1]) then return 0 end
local now = now_us()
local ttl, retention = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('SET', KEYS[1], record(ARGV[4], now + ttl, now + ttl + retention, tok, lu, ca, fp),
           'PX', ms(ttl + retention))
redis.call('SET', KEYS[2], ARGV[5], 'PX', ms(ttl))
if st == 'w' then redis.call('PUBLISH', ARGV[6], KEYS[1]) end
return 1
"""
)

# ARGV: token, channel -> 1 | 0 (fenced out)
RELEASE = (
    _PRELUDE
    + """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local st, ex, ru, tok = parse(v)
if (st ~= 'i' and st ~= 'w') or tok ~= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
if st == 'w' then redis.call('PUBLISH', ARGV[2], KEYS[1]) end
return 1
"""
)

# ARGV: channel -> 1 if get would have returned a record, else 0 (a key lives a hair past its
# retention, see ms: in that hair the record is already gone to callers)
DELETE = (
    _PRELUDE
    + """
local v = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
if not v then return 0 end
local st, ex, ru = parse(v)
if st == 'w' then redis.call('PUBLISH', ARGV[1], KEYS[1]) end
if st == 'i' or st == 'w' or now_us() < ru then return 1 end
return 0
"""
)

# -> {0, now, record|false, response|false}
GET = (
    _PRELUDE
    + """
return {0, now_us(), redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}
"""
)

# Mark the record waited on and say how long its lease has left: microseconds, or -1 when the
# record is not in flight (so the waiter stops waiting).
WATCH = (
    _PRELUDE
    + """
local v = redis.call('GET', KEYS[1])
if not v then return -1 end
local st, ex, ru, tok, lu = parse(v)
if st == 'i' then
  redis.call('SET', KEYS[1], 'w' .. string.sub(v, 2), 'KEEPTTL')
elseif st ~= 'w' then
  return -1
end
local left = lu - now_us()
if left < 0 then return 0 end
return left
"""
)
