"""The Redis store: one record, many machines, one round trip per operation.

Each operation is one ``EVALSHA`` of a Lua script (``_redis_lua.py``) that runs the rules of
``records.py`` on the server, atomically and on the server's clock (DESIGN "store contract").
redis-py's ``register_script`` sends ``EVALSHA`` and reloads a script on ``NOSCRIPT`` (after a
server restart or ``SCRIPT FLUSH``), so a replay costs one round trip and a first execution
two (claim, complete).

Records expire by themselves (``PEXPIRE``): no sweeper. The two keys of a record share the
hash tag ``{id}``, so Redis Cluster (``redis+cluster://``) works unchanged. Waiting duplicates
are woken by pub/sub on one channel per prefix (``_wake.py``), with polling as the fallback.

Connections come from a bounded pool (``pool_size``; a caller waits at most ``pool_timeout``
for one); ``timeout`` bounds each command and ``connect_timeout`` each connect, so an outage
answers StoreUnavailable (SPEC 17, a 503) in bounded time. The sync face bounds a command by
the socket's own timeout. The async face does not give redis-py a ``socket_timeout``: with one,
redis-py runs every write under ``asyncio.wait_for`` (a new task per command on Python 3.11)
and every read under its own ``asyncio.timeout`` (some 15-20 µs a replay, bench/README.md).
Instead each async store operation runs under one ``asyncio.timeout`` of ``pool_timeout + timeout``
(a connection, then the command); when it fires, redis-py drops the interrupted connection
(never reused with a reply still in flight) and the caller gets StoreUnavailable.

No command is retried automatically: a retried claim whose first attempt did land would find
its own claim. After the server returns, the pool's next connection simply succeeds.

URL forms (options in the query string, see :data:`URL_OPTIONS`)::

    redis://[user:password@]host:6379/0?prefix=onceonly:&pool_size=50&timeout=2
    rediss://host:6380/0?ssl_cert_reqs=required        TLS
    redis+cluster://host:7000?prefix=...                Redis Cluster (any node as seed)
    rediss+cluster://host:7000                          Redis Cluster over TLS
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from onceonly.errors import ConfigurationError, StoreError
from onceonly.records import Claimed, ClaimResult, Existing, Record, State, StoredResponse
from onceonly.stores import _redis_lua as lua
from onceonly.stores._errors import translated
from onceonly.stores._notify import Notifier
from onceonly.stores._perloop import PerLoop
from onceonly.stores._redis_pack import hiredis_packing
from onceonly.stores._stats import KeyStats, tally
from onceonly.stores._urlopts import as_bool, split_options
from onceonly.stores._wake import Listener, awatch_loop, watch_loop

# An abandoned claim (holder died, nobody retried) expires this long after its lease lapsed;
# until then a retry is reported as "recovered" (as in MemoryStore and SQLiteStore).
ABANDONED_GRACE = 3600.0
DEFAULT_URL = "redis://127.0.0.1:6379/0"

URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "prefix": str,  # key prefix, default "onceonly:" (no braces: the hash tag is the id)
    "pool_size": int,  # connections per pool (per node on a cluster), default 50
    "pool_timeout": float,  # seconds to wait for a free connection, default = timeout
    "timeout": float,  # seconds per command (socket timeout), default 2
    "connect_timeout": float,  # seconds per connect, default 1
    "listen": as_bool,  # pub/sub wake-ups for waiting duplicates, default true
}

_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError,)
Client = redis.Redis | redis.cluster.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


class _Side:
    """A client (sync, or one loop's async client) and the scripts registered on it.

    Attributes are ``Any``: the same names hold ``Script`` or ``AsyncScript`` objects, whose
    replies are untyped RESP values either way.
    """

    def __init__(self, client: Client | AsyncClient) -> None:
        self.client: Any = client
        self.claim: Any = client.register_script(lua.CLAIM)
        self.renew: Any = client.register_script(lua.RENEW)
        self.complete: Any = client.register_script(lua.COMPLETE)
        self.release: Any = client.register_script(lua.RELEASE)
        self.delete: Any = client.register_script(lua.DELETE)
        self.get: Any = client.register_script(lua.GET)
        self.watch: Any = client.register_script(lua.WATCH)


class RedisStore:
    """Idempotency records in Redis or Redis Cluster; sync and async faces in one object."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = "onceonly:",
        pool_size: int = 50,
        pool_timeout: float | None = None,
        timeout: float = 2.0,
        connect_timeout: float = 1.0,
        listen: bool = True,
    ) -> None:
        clean, options = split_options(url, URL_OPTIONS)
        prefix = options.get("prefix", prefix)
        pool_size = options.get("pool_size", pool_size)
        timeout = options.get("timeout", timeout)
        connect_timeout = options.get("connect_timeout", connect_timeout)
        pool_timeout = options.get("pool_timeout", pool_timeout)
        listen = options.get("listen", listen)
        if "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                f"Redis key prefix {prefix!r} must not contain braces: the record id is the "
                "hash tag that keeps a record's keys in one Cluster slot"
            )
        if pool_size < 1 or timeout <= 0 or connect_timeout <= 0:
            raise ConfigurationError("Redis store: pool_size, timeout, connect_timeout must be > 0")
        scheme, _, rest = clean.partition("://")
        self.cluster = scheme.lower().endswith("+cluster")
        if scheme.lower() not in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
            raise ConfigurationError(f"not a Redis store URL: {url!r}")
        self.url = url
        self.prefix = prefix
        self.channel = f"{prefix}done"
        self._driver_url = f"{scheme.lower().removesuffix('+cluster')}://{rest}"
        self._kwargs: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": connect_timeout,
            # No automatic retries: an outage must answer in bounded time, and a retried
            # claim whose first attempt landed would find its own claim (see module doc).
            "retry": Retry(NoBackoff(), 0),
        }
        self._pool_size = pool_size
        self._pool_timeout = timeout if pool_timeout is None else pool_timeout
        # The async face's bound per operation (see module doc): a connection, then a command.
        self._op_timeout = self._pool_timeout + timeout
        self._akwargs = {**self._kwargs, "socket_timeout": None}
        self._what = f"Redis store {self._redacted()}"
        # Clients are made on first use: a cluster client reads the topology when made, and
        # an application must be able to start while its store is down.
        self._sync: _Side | None = None
        self._sync_lock = threading.Lock()
        self._async: PerLoop[_Side] = PerLoop(self._make_async)
        self._notifier = Notifier()
        self._listener = (
            Listener(f"onceonly-redis-{prefix}", self._subscription, self._notifier)
            if listen
            else None
        )
        self._closed = threading.Event()

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        return cls(url)

    # -- clients -------------------------------------------------------------------------

    def _redacted(self) -> str:
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"

    def _make_client(self) -> Client:
        if self.cluster:
            return redis.cluster.RedisCluster.from_url(
                self._driver_url, max_connections=self._pool_size, **self._kwargs
            )
        pool = redis.BlockingConnectionPool.from_url(
            self._driver_url,
            max_connections=self._pool_size,
            timeout=self._pool_timeout,
            **self._kwargs,
        )
        return redis.Redis(connection_pool=pool)

    @property
    def client(self) -> Client:
        """The synchronous redis-py client (admin and tests)."""
        client: Client = self._s().client
        return client

    def _s(self) -> _Side:
        side = self._sync
        if side is None:
            with self._sync_lock, translated(self._what, _ERRORS):
                if self._sync is None:
                    self._sync = _Side(self._make_client())
                side = self._sync
        return side

    async def _make_async(self) -> _Side:
        client: AsyncClient
        if self.cluster:
            client = redis.asyncio.cluster.RedisCluster.from_url(
                self._driver_url, max_connections=self._pool_size, **self._akwargs
            )
        else:
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self._driver_url,
                max_connections=self._pool_size,
                timeout=self._pool_timeout,
                **self._akwargs,
            )
            pool.connection_class = hiredis_packing(pool.connection_class)
            client = redis.asyncio.Redis(connection_pool=pool)
        return _Side(client)

    def _keys(self, id: str) -> list[str]:
        key = f"{self.prefix}{{{id}}}"
        return [key, f"{key}:r"]

    def _id_of(self, key: str) -> str:
        return key[len(self.prefix) + 1 : -1]

    def _subscription(self) -> Iterator[str | None]:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(self.channel)
            yield None
            while not self._closed.is_set():
                message = pubsub.get_message(timeout=0.25)
                if message is None or message.get("type") != "message":
                    yield None
                    continue
                yield self._id_of(bytes(message["data"]).decode())
        finally:
            pubsub.close()

    # -- sync ----------------------------------------------------------------------------

    def claim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        with translated(self._what, _ERRORS):
            reply = self._s().claim(
                keys=self._keys(id), args=[fingerprint, _us(lease), _us(ABANDONED_GRACE)]
            )
        return _claim_result(id, reply)

    def renew(self, id: str, token: int, lease: float) -> bool:
        with translated(self._what, _ERRORS):
            reply = self._s().renew(keys=self._keys(id)[:1], args=_renew_args(token, lease))
        return bool(reply)

    def complete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool:
        args = _complete_args(token, response, ttl, retention, self.channel)
        with translated(self._what, _ERRORS):
            reply = self._s().complete(keys=self._keys(id), args=args)
        if reply:
            self._notifier.notify(id)  # waiters in this process need not wait for pub/sub
        return bool(reply)

    def release(self, id: str, token: int) -> bool:
        with translated(self._what, _ERRORS):
            reply = self._s().release(keys=self._keys(id), args=[token, self.channel])
        if reply:
            self._notifier.notify(id)
        return bool(reply)

    def get(self, id: str) -> Record | None:
        with translated(self._what, _ERRORS):
            _, now, fields, response = self._s().get(keys=self._keys(id))
        return _record(id, int(now), fields, response)

    def watch(self, id: str, timeout: float) -> None:
        if self._listener is not None:
            self._listener.ensure_started()
        watch_loop(self._notifier, id, timeout, lambda: self._lease_left(id))

    def delete(self, id: str) -> bool:
        with translated(self._what, _ERRORS):
            found = int(self._s().delete(keys=self._keys(id), args=[self.channel])) > 0
        self._notifier.notify(id)
        return found

    def stats(self, limit: int = 100_000) -> KeyStats:
        """Records per state now, by the server's clock (admin: ``onceonly keys stats``).

        SCANs the prefix's record keys (never ``KEYS``, which blocks the server) and reads
        three small fields of each in pipelined batches; stops after ``limit`` records and
        then says so (``complete=False``). Keys expire by themselves, so nothing past its
        retention is left to count.
        """
        client = self.client
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix) + "{*}"
        with translated(self._what, _ERRORS):
            secs, micros = client.time()
            now = int(secs) * 1_000_000 + int(micros)
            states: list[str] = []
            batch: list[str] = []
            complete = True

            def flush() -> None:
                pipe = client.pipeline(transaction=False)
                for key in batch:
                    pipe.hmget(key, "st", "ex", "ru")
                for st, ex, ru in pipe.execute():
                    states.append(_resolve(st, ex, ru, now))
                batch.clear()

            for key in client.scan_iter(match=pattern, count=1000, _type="HASH"):
                if len(states) + len(batch) >= limit:
                    complete = False
                    break
                batch.append(key.decode() if isinstance(key, bytes) else key)
                if len(batch) >= 500:
                    flush()
            if batch:
                flush()
        return tally(states, complete=complete)

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            self._listener.stop()
        side, self._sync = self._sync, None
        if side is not None:
            with translated(self._what, _ERRORS):
                side.client.close()
        self._async.clear()  # their loops may be gone; sockets close with them

    # -- async ---------------------------------------------------------------------------

    async def aclaim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        args = [fingerprint, _us(lease), _us(ABANDONED_GRACE)]
        return _claim_result(id, await self._aeval("claim", self._keys(id), args))

    async def arenew(self, id: str, token: int, lease: float) -> bool:
        return bool(await self._aeval("renew", self._keys(id)[:1], _renew_args(token, lease)))

    async def acomplete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool:
        args = _complete_args(token, response, ttl, retention, self.channel)
        if reply := await self._aeval("complete", self._keys(id), args):
            self._notifier.notify(id)
        return bool(reply)

    async def arelease(self, id: str, token: int) -> bool:
        if reply := await self._aeval("release", self._keys(id), [token, self.channel]):
            self._notifier.notify(id)
        return bool(reply)

    async def aget(self, id: str) -> Record | None:
        _, now, fields, response = await self._aeval("get", self._keys(id), [])
        return _record(id, int(now), fields, response)

    async def awatch(self, id: str, timeout: float) -> None:
        if self._listener is not None:
            self._listener.ensure_started()
        await awatch_loop(self._notifier, id, timeout, lambda: self._alease_left(id))

    async def adelete(self, id: str) -> bool:
        found = int(await self._aeval("delete", self._keys(id), [self.channel])) > 0
        self._notifier.notify(id)
        return found

    async def aclose(self) -> None:
        side = self._async.pop_current()
        if side is not None:
            with translated(self._what, _ERRORS):
                await side.client.aclose()
        await asyncio.to_thread(self.close)

    # -- internals -----------------------------------------------------------------------

    async def _side(self) -> _Side:
        with translated(self._what, _ERRORS):
            return await self._async.get()

    async def _aeval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run one of the side's scripts under the operation's deadline (see module doc)."""
        side = await self._side()
        with translated(self._what, _ERRORS):
            async with asyncio.timeout(self._op_timeout):
                return await getattr(side, script)(keys=keys, args=args)

    def _lease_left(self, id: str) -> float | None:
        with translated(self._what, _ERRORS):
            left = int(self._s().watch(keys=self._keys(id)[:1]))
        return None if left < 0 else left / 1_000_000

    async def _alease_left(self, id: str) -> float | None:
        left = int(await self._aeval("watch", self._keys(id)[:1], []))
        return None if left < 0 else left / 1_000_000


# -- replies <-> records (shared by both faces) -------------------------------------------


def _renew_args(token: int, lease: float) -> list[int]:
    return [token, _us(lease), _us(ABANDONED_GRACE)]


def _complete_args(
    token: int, response: StoredResponse, ttl: float, retention: float, channel: str
) -> list[int | str | bytes]:
    return [
        token,
        _us(ttl),
        _us(retention),
        1 if response.replayable else 0,
        response.status,
        json.dumps([list(h) for h in response.headers]) if response.replayable else "[]",
        response.body if response.replayable else b"",
        response.trace_id or "",
        response.span_id or "",
        channel,
    ]


def _claim_result(id: str, reply: list[Any]) -> ClaimResult:
    if int(reply[0]) == 1:
        _, token, expired, recovered, previous = reply
        return Claimed(
            int(token),
            expired_before=bool(expired),
            recovered=bool(recovered),
            previous_fingerprint=None if previous is None else bytes(previous).decode(),
        )
    now = int(reply[1])
    record = _record(id, now, reply[2], reply[3])
    if record is None:  # the script only answers "existing" for a live record
        raise StoreError(f"Redis store: record {id[:12]} vanished inside its own claim")
    return Existing(record, now / 1_000_000)


def _int(value: bytes | None) -> int:
    return 0 if value is None else int(value)


def _record(
    id: str, now: int, fields: list[bytes | None], stored: list[bytes | None]
) -> Record | None:
    """The record as ``records.resolve`` sees it at ``now``; None when absent.

    ``fields`` come in the order of the scripts' ``snapshot``: fp, st, tok, lu, ex, ru, ca,
    status, rep, tid, sid; ``stored`` is hdr, body (absent past the TTL).
    """
    fp, st, tok, lu, ex, ru, ca, status, _, tid, sid = fields
    if fp is None or st is None:
        return None
    state = State(st.decode())
    expires, retain = _int(ex), _int(ru)
    response = None
    if state is not State.IN_FLIGHT:
        if now >= retain:
            return None
        if now >= expires:
            state = State.TOMBSTONE  # the body has expired with its key
        else:
            headers, body = stored
            replayable = state is State.COMPLETED
            if replayable and body is None:
                raise StoreError(
                    f"Redis store: the stored response of {id[:12]} is missing before its TTL; "
                    "run Redis with maxmemory-policy noeviction"
                )
            response = StoredResponse(
                _int(status),
                tuple((str(k), str(v)) for k, v in json.loads(headers or b"[]")),
                body or b"",
                replayable,
                tid.decode() if tid else None,
                sid.decode() if sid else None,
            )
    return Record(
        id,
        fp.decode(),
        state,
        _int(tok),
        _int(lu) / 1_000_000,
        expires / 1_000_000,
        retain / 1_000_000,
        response,
        _int(ca) / 1_000_000,
    )


def _resolve(st: bytes | None, ex: bytes | None, ru: bytes | None, now: int) -> str:
    """``records.resolve`` on the raw fields of a record hash (times in microseconds)."""
    if st is None:
        return State.ABSENT.value  # expired between SCAN and HMGET
    state = st.decode()
    if state in ("completed", "unreplayable") and now >= int(ex or 0):
        state = State.TOMBSTONE.value
    if state == State.TOMBSTONE.value and now >= int(ru or 0):
        return State.ABSENT.value
    return state
