"""The dead-letter queue in Redis (``_backend.DLQBackend``).

Layout under the key prefix (default ``retrysafe:dlq:``)::

    {prefix}e:{id}        a hash: the entry's fields (``claim`` and ``last_status`` "" = none)
    {prefix}all           a sorted set of every id, scored by parking order ({prefix}seq)
    {prefix}s:{state}     a sorted set per state, the same scores: listing and counting by state
    {prefix}seq           the parking counter

Every change of state is one Lua script (SPEC 25): it checks the entry's state and claim token
and moves the id between the per-state sets in one atomic step, so of two replayers racing
for an entry exactly one claims it, and a replayer whose lease lapsed cannot settle it. Times
are the queue's clock, passed in (see ``_backend.py``); floats travel as ``repr`` strings
so they come back bit for bit. Entries never expire on their own: ``purge`` removes them.

Redis Cluster is not supported: the per-state sets span every entry, so they cannot share a
slot with the entries' hashes. Connections and URL options follow the Redis store
(``stores/redis.py``): a bounded blocking pool, per-command timeouts, no automatic retries.

    redis://[user:password@]host:6379/0?prefix=retrysafe:dlq:&pool_size=4&timeout=2
    rediss://host:6380/0?ssl_cert_reqs=required        TLS
"""

from __future__ import annotations

from retrysafe._extras import require

require("redis", "the Redis dead-letter queue", "redis")


from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from retrysafe._driver_errors import translated
from retrysafe.client.dlq._entries import DeadLetter, EntryState, Settlement
from retrysafe.client.dlq._rows import COLUMNS, entry_of, row_of
from retrysafe.errors import ConfigurationError
from retrysafe.stores.url import redacted_url, split_options

URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "prefix": str,  # key prefix, default "retrysafe:dlq:"
    "pool_size": int,  # connections in the pool, default 4 (replays are paced)
    "timeout": float,  # seconds per command (socket timeout), default 2
    "connect_timeout": float,  # seconds per connect, default 1
}
_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError,)

# KEYS: entry hash, {prefix}all, {prefix}s:parked, {prefix}seq. ARGV: id, then field pairs.
_INSERT = """
local seq = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], 'seq', seq, unpack(ARGV, 2))
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
return seq
"""

# Move the entry (KEYS[1], id ARGV[2]) to state ARGV[3] and set the pairs ARGV[4...]:
# shared tail of the state-changing scripts. ARGV[1] is the prefix.
_MOVE = """
local function move(from, to)
  local seq = redis.call('HGET', KEYS[1], 'seq')
  redis.call('ZREM', ARGV[1] .. 's:' .. from, ARGV[2])
  redis.call('ZADD', ARGV[1] .. 's:' .. to, seq, ARGV[2])
end
"""

# ARGV: prefix, id, token, force ("1"/"0"), now, lease_until. Returns 1 if claimed.
_CLAIM = (
    _MOVE
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'not_before', 'replay_by')
local state, now = f[1], tonumber(ARGV[5])
if not state then return 0 end
local not_before, replay_by = tonumber(f[2]), tonumber(f[3])
local due = (state == 'parked' and (ARGV[4] == '1' or not_before <= now or replay_by < now))
  or (state == 'replaying' and not_before <= now)
if not due then return 0 end
redis.call('HSET', KEYS[1], 'state', 'replaying', 'claim', ARGV[3], 'not_before', ARGV[6],
  'updated_at', ARGV[5])
move(state, 'replaying')
return 1
"""
)

# ARGV: prefix, id, token, new state, then field pairs; bumps 'replays' by ARGV[#ARGV] and
# keeps last_status unless a new one is given. Writes only under the caller's claim (fencing).
_SETTLE = (
    _MOVE
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'claim')
if f[1] ~= 'replaying' or f[2] ~= ARGV[3] then return 0 end
local pairs_ = {}
for i = 5, #ARGV - 1 do pairs_[#pairs_ + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'claim', '', unpack(pairs_))
redis.call('HINCRBY', KEYS[1], 'replays', tonumber(ARGV[#ARGV]))
move('replaying', ARGV[4])
return 1
"""
)

# KEYS: {prefix}all. ARGV: prefix, states... Deletes their entries; returns how many.
_PURGE = """
local n = 0
for i = 2, #ARGV do
  local set = ARGV[1] .. 's:' .. ARGV[i]
  local ids = redis.call('ZRANGE', set, 0, -1)
  for _, id in ipairs(ids) do
    redis.call('DEL', ARGV[1] .. 'e:' .. id)
    redis.call('ZREM', KEYS[1], id)
    n = n + 1
  end
  redis.call('DEL', set)
end
return n
"""


def _f(x: float) -> str:
    return repr(float(x))


class RedisDLQ:
    """Dead letters in Redis (one server, or a primary with replicas; not Cluster)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "retrysafe:dlq:",
        pool_size: int = 4,
        timeout: float = 2.0,
        connect_timeout: float = 1.0,
    ) -> None:
        clean, o = split_options(url, URL_OPTIONS)
        scheme = clean.partition("://")[0].lower()
        if scheme not in ("redis", "rediss"):
            raise ConfigurationError(
                "a Redis DLQ takes redis:// or rediss:// URLs (not Cluster), "
                f"not {redacted_url(url)!r}"
            )
        self.prefix = o.get("prefix", prefix)
        pool_size = o.get("pool_size", pool_size)
        timeout = o.get("timeout", timeout)
        connect_timeout = o.get("connect_timeout", connect_timeout)
        if pool_size < 1 or timeout <= 0 or connect_timeout <= 0:
            raise ConfigurationError("Redis DLQ: pool_size, timeout, connect_timeout must be > 0")
        where = clean.partition("://")[2].rpartition("@")[2].partition("?")[0]
        self._what = f"dead-letter queue {scheme}://{where}"  # no password, no options"
        self._pool = redis.BlockingConnectionPool.from_url(
            clean,
            max_connections=pool_size,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            # No automatic retries: a retried claim whose first attempt landed would find the
            # entry claimed (by itself) and leave it until the lease lapses.
            retry=Retry(NoBackoff(), 0),
        )
        self.client = redis.Redis(connection_pool=self._pool)
        self._insert = self.client.register_script(_INSERT)
        self._claim = self.client.register_script(_CLAIM)
        self._settle = self.client.register_script(_SETTLE)
        self._purge = self.client.register_script(_PURGE)

    def _entry_key(self, entry_id: str) -> str:
        return f"{self.prefix}e:{entry_id}"

    def _state_key(self, state: EntryState) -> str:
        return f"{self.prefix}s:{state.value}"

    def insert(self, e: DeadLetter) -> None:
        pairs: list[Any] = []
        for name, value in zip(COLUMNS, row_of(e), strict=True):
            pairs += [name, _stored(value)]
        pairs += ["claim", ""]
        keys = [
            self._entry_key(e.id),
            f"{self.prefix}all",
            self._state_key(e.state),
            f"{self.prefix}seq",
        ]
        with translated(self._what, _ERRORS):
            self._insert(keys=keys, args=[e.id, *pairs])

    def get(self, entry_id: str) -> DeadLetter | None:
        with translated(self._what, _ERRORS):
            fields: Any = self.client.hgetall(self._entry_key(entry_id))
        return _entry(fields) if fields else None

    def entries(self, state: EntryState | None, limit: int, offset: int = 0) -> list[DeadLetter]:
        index = f"{self.prefix}all" if state is None else self._state_key(state)
        with translated(self._what, _ERRORS):
            ids: Any = self.client.zrange(index, offset, offset + limit - 1)
            pipe = self.client.pipeline(transaction=False)
            for raw in ids:
                pipe.hgetall(self._entry_key(raw.decode()))
            rows = pipe.execute()
        return [_entry(fields) for fields in rows if fields]  # purged since the listing: gone

    def count(self, states: Sequence[EntryState]) -> int:
        with translated(self._what, _ERRORS):
            pipe = self.client.pipeline(transaction=True)  # one snapshot of every set
            for state in states:
                pipe.zcard(self._state_key(state))
            return sum(int(n) for n in pipe.execute())

    def purge(self, states: Sequence[EntryState]) -> int:
        with translated(self._what, _ERRORS):
            n = self._purge(
                keys=[f"{self.prefix}all"], args=[self.prefix, *(s.value for s in states)]
            )
        return int(n)

    def claim(
        self, entry_id: str, token: str, *, force: bool, now: float, lease_until: float
    ) -> bool:
        args = [self.prefix, entry_id, token, "1" if force else "0", _f(now), _f(lease_until)]
        with translated(self._what, _ERRORS):
            return bool(self._claim(keys=[self._entry_key(entry_id)], args=args))

    def release(self, entry_id: str, token: str, *, not_before: float, now: float) -> None:
        pairs = ["not_before", _f(not_before), "updated_at", _f(now)]
        args = [self.prefix, entry_id, token, EntryState.PARKED.value, *pairs, 0]
        with translated(self._what, _ERRORS):
            self._settle(keys=[self._entry_key(entry_id)], args=args)

    def settle(self, s: Settlement) -> None:
        pairs = ["updated_at", _f(s.now), "not_before", _f(s.not_before), "last_error", s.detail]
        if s.status is not None:
            pairs += ["last_status", str(s.status)]
        args = [self.prefix, s.id, s.token, s.state.value, *pairs, int(s.counted)]
        with translated(self._what, _ERRORS):
            self._settle(keys=[self._entry_key(s.id)], args=args)

    def close(self) -> None:
        self._pool.disconnect()


def _stored(value: object) -> bytes | str:
    """A field value as Redis keeps it: floats as ``repr``, None as ""."""
    if value is None:
        return ""
    if isinstance(value, float):
        return _f(value)
    if isinstance(value, bytes):
        return value
    return str(value)


def _entry(fields: Any) -> DeadLetter:
    """An HGETALL reply (bytes names and values) -> an entry."""

    def text(name: str) -> str:
        return str(fields[name.encode()].decode())

    row: list[Any] = [fields[b"body"] if name == "body" else text(name) for name in COLUMNS]
    status = row[COLUMNS.index("last_status")]
    row[COLUMNS.index("last_status")] = int(status) if status else None
    return entry_of(row)
