"""The Redis store: one record, many machines, one round trip per operation.

Each operation is one ``EVALSHA`` of a Lua script (``_redis_lua.py``) that runs the rules of
``_records.py`` on the server, atomically and on the server's clock (SPEC 36).
A script missing on the server (``NOSCRIPT``, after a restart or ``SCRIPT FLUSH``) is sent
once in full (``EVAL``), which loads it again, so a replay costs one round trip and a first
execution two (claim, complete).

Records expire by themselves (``SET … PX``): no sweeper. The two keys of a record (layout
``v2``, ``_redis_lua.py``) share the hash tag ``{id}``, so Redis Cluster (``redis+cluster://``)
works unchanged. Waiting duplicates
are woken by pub/sub on one channel per prefix (``_wake.py``), with polling as the fallback.

Two faces, two clients:

- The sync face (and pub/sub, ``stats``, the ``client`` property for admin) uses redis-py: a
  bounded pool (``pool_size``; a caller waits at most ``pool_timeout`` for a connection),
  ``timeout`` as the socket timeout, ``connect_timeout`` per connect.
- The async face on a single server uses ``_redis_wire.Wire``: one pipelined connection per
  event loop shared by all its coroutines, one timer per connection bounding every command
  by ``timeout``, ``connect_timeout`` per connect (about a third of a redis.asyncio round
  trip's cost, bench/README.md; the module says why not redis.asyncio). On a cluster the
  async face stays on redis.asyncio's cluster client (it follows the slot map), each
  operation under one ``asyncio.timeout`` of ``pool_timeout + timeout``.

Either way an outage answers StoreUnavailable (SPEC 17, a 503) in bounded time, and a
connection interrupted mid-command is dropped, never read again. No command is retried
automatically: a retried claim whose first attempt did land would find its own claim. After
the server returns, the next command connects again.

URL forms (options in the query string, see :data:`URL_OPTIONS`)::

    redis://[user:password@]host:6379/0?prefix=retrysafe:&pool_size=50&timeout=2
    rediss://host:6380/0?ssl_cert_reqs=required        TLS
    redis+cluster://host:7000?prefix=...                Redis Cluster (any node as seed)
    rediss+cluster://host:7000                          Redis Cluster over TLS
"""

from __future__ import annotations

from retrysafe._extras import require

require("redis", "the Redis store", "redis")


import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from retrysafe._driver_errors import caught, translated, unavailable
from retrysafe._records import (
    Claimed,
    ClaimResult,
    Existing,
    Previous,
    Record,
    State,
    StoredResponse,
    taken_over,
)
from retrysafe.errors import ConfigurationError, StoreError, StoreUnavailable
from retrysafe.stores import _redis_lua as lua
from retrysafe.stores._notify import Notifier
from retrysafe.stores._perloop import PerLoop
from retrysafe.stores._redis_wire import Endpoint, ReplyError, Script, Wire
from retrysafe.stores._stats import KeyStats, tally
from retrysafe.stores._urlopts import as_bool, redacted_url, split_options
from retrysafe.stores._wake import Listener, awatch_loop, watch_loop

# An abandoned claim (holder died, nobody retried) expires this long after its lease lapsed;
# until then a retry is reported as "recovered" (as in MemoryStore and SQLiteStore).
ABANDONED_GRACE = 3600.0
# The key layout's name, part of every key (``_redis_lua.py``): keys of an older layout are
# never read, so an upgrade starts from empty records (docs/stores.md, "Upgrading").
LAYOUT = "v2"
DEFAULT_URL = "redis://127.0.0.1:6379/0"

URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "prefix": str,  # key prefix, default "retrysafe:" (no braces: the hash tag is the id)
    "pool_size": int,  # sync pool size (per node on a cluster), default 50
    "pool_timeout": float,  # seconds to wait for a free pooled connection, default = timeout
    "timeout": float,  # seconds per command, default 2
    "connect_timeout": float,  # seconds per connect, default 1
    "listen": as_bool,  # pub/sub wake-ups for waiting duplicates, default true
}

# RedisClusterException is no RedisError: a cluster client that found no cluster raises it.
_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,
    ReplyError,
)
_CAUGHT = caught(_ERRORS)
Client = redis.Redis | redis.cluster.RedisCluster


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


class _Side:
    """The sync client and the scripts registered on it (redis-py ``Script`` objects, which
    send ``EVALSHA`` and reload on ``NOSCRIPT``; their replies are untyped RESP values)."""

    def __init__(self, client: Client) -> None:
        self.client: Any = client
        self.claim: Any = client.register_script(lua.CLAIM)
        self.renew: Any = client.register_script(lua.RENEW)
        self.complete: Any = client.register_script(lua.COMPLETE)
        self.release: Any = client.register_script(lua.RELEASE)
        self.delete: Any = client.register_script(lua.DELETE)
        self.get: Any = client.register_script(lua.GET)
        self.watch: Any = client.register_script(lua.WATCH)


_SCRIPTS = {
    name: Script.of(source)
    for name, source in [
        ("claim", lua.CLAIM),
        ("renew", lua.RENEW),
        ("complete", lua.COMPLETE),
        ("release", lua.RELEASE),
        ("delete", lua.DELETE),
        ("get", lua.GET),
        ("watch", lua.WATCH),
    ]
}


class _ClusterFace:
    """The async face on Redis Cluster: redis.asyncio's cluster client, which routes each
    script to its slot's node and reloads a script on ``NOSCRIPT``."""

    def __init__(self, client: redis.asyncio.cluster.RedisCluster, op_timeout: float) -> None:
        self._client = client
        self._op_timeout = op_timeout
        self._scripts = {name: client.register_script(s.source) for name, s in _SCRIPTS.items()}

    async def evalsha(self, name: str, keys: list[str], args: list[Any]) -> Any:
        async with asyncio.timeout(self._op_timeout):  # a connection, then the command
            return await self._scripts[name](keys=keys, args=args)

    async def aclose(self) -> None:
        await self._client.aclose()


class _WireFace:
    """The async face on one server: the lean channel (``_redis_wire.py``)."""

    def __init__(self, wire: Wire) -> None:
        self._wire = wire

    def evalsha(self, name: str, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        return self._wire.evalsha(_SCRIPTS[name], keys, args)  # no coroutine frame of our own

    async def aclose(self) -> None:
        await self._wire.aclose()


AsyncFace = _ClusterFace | _WireFace


__all__ = ["DEFAULT_URL", "RedisStore"]


class RedisStore:
    """Idempotency records in Redis or Redis Cluster; sync and async faces in one object."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = "retrysafe:",
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
            raise ConfigurationError(f"not a Redis store URL: {redacted_url(url)!r}")
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
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        # The async cluster face's bound per operation (see module doc): a connection, then a
        # command. Without a socket_timeout redis.asyncio runs no timer of its own per command.
        self._op_timeout = self._pool_timeout + timeout
        self._akwargs = {**self._kwargs, "socket_timeout": None}
        self._what = f"Redis store {self._redacted()}"
        self._endpoint = None if self.cluster else Endpoint.from_url(self._driver_url)
        # Clients are made on first use: a cluster client reads the topology when made, and
        # an application must be able to start while its store is down.
        self._sync: _Side | None = None
        self._sync_lock = threading.Lock()
        self._async: PerLoop[AsyncFace] = PerLoop(self._make_async)
        self._notifier = Notifier()
        self._listener = (
            Listener(f"retrysafe-redis-{prefix}", self._subscription, self._notifier)
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

    def _not_a_cluster_said(self, make: Callable[[], Client]) -> Client:
        """``make()``; a ``redis+cluster://`` URL naming a plain Redis says so, and what to use."""
        try:
            return make()
        except redis.exceptions.RedisClusterException as exc:
            if "cluster mode is not enabled" not in str(exc).lower():
                raise
            raise StoreUnavailable(
                f"{self._what}: the server is not a Redis Cluster node (cluster mode is not "
                "enabled); for a single Redis server use redis:// instead of redis+cluster://"
            ) from exc

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
                    self._sync = _Side(self._not_a_cluster_said(self._make_client))
                side = self._sync
        return side

    async def _make_async(self) -> AsyncFace:
        if self._endpoint is None:
            client = redis.asyncio.cluster.RedisCluster.from_url(
                self._driver_url, max_connections=self._pool_size, **self._akwargs
            )
            return _ClusterFace(client, self._op_timeout)
        return _WireFace(Wire(self._endpoint, self._timeout, self._connect_timeout, self._what))

    def _keys(self, id: str) -> list[str]:
        key = f"{self.prefix}{LAYOUT}{{{id}}}"
        return [key, f"{key}:r"]

    def _id_of(self, key: str) -> str:
        return key[len(self.prefix) + len(LAYOUT) + 1 : -1]

    def _subscription(self) -> Iterator[str | None]:
        # redis-py types pubsub() in some releases and not in others
        pubsub = self.client.pubsub(  # type: ignore[no-untyped-call,unused-ignore]
            ignore_subscribe_messages=True
        )
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
        return _claim_result(id, reply, lease)

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
            _, now, raw, response = self._s().get(keys=self._keys(id))
        return _record(id, int(now), raw, response)

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
        """Records per state now, by the server's clock (admin: ``retrysafe keys stats``).

        SCANs the prefix's record keys (never ``KEYS``, which blocks the server) and reads
        each (a short string) in pipelined batches; stops after ``limit`` records and then
        says so (``complete=False``). Keys expire by themselves, so nothing past its retention
        is left to count.
        """
        client = self.client
        pattern = f"{_glob(self.prefix)}{LAYOUT}{{*}}"  # records only: responses end in ":r"
        with translated(self._what, _ERRORS):
            secs, micros = client.time()
            now = int(secs) * 1_000_000 + int(micros)
            states: list[str] = []
            batch: list[str] = []
            complete = True

            def flush() -> None:
                pipe = client.pipeline(transaction=False)
                for key in batch:
                    pipe.get(key)
                states.extend(_state_at(raw, now).value for raw in pipe.execute())
                batch.clear()

            for key in client.scan_iter(match=pattern, count=1000, _type="STRING"):
                if len(states) + len(batch) >= limit:
                    complete = False
                    break
                batch.append(key.decode() if isinstance(key, bytes) else key)
                if len(batch) >= 500:
                    flush()
            if batch:
                flush()
        return tally(states, complete=complete)

    def drop_keys(self) -> int:
        """Delete every key under the prefix, of any layout (tests and uninstall: the
        counterpart of ``PostgresStore.drop_schema``); returns how many were deleted.

        SCANs (never ``KEYS``) and ``UNLINK``s in pipelined batches, one key per command, so
        it also works on a cluster, where a record's keys share a slot but records do not.
        """
        client = self.client
        dropped = 0
        batch: list[Any] = []

        def flush() -> int:
            pipe = client.pipeline(transaction=False)
            for key in batch:
                pipe.unlink(key)
            gone = sum(int(n) for n in pipe.execute())
            batch.clear()
            return gone

        with translated(self._what, _ERRORS):
            for key in client.scan_iter(match=f"{_glob(self.prefix)}*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    dropped += flush()
            if batch:
                dropped += flush()
        return dropped

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
        return _claim_result(id, await self._aeval("claim", self._keys(id), args), lease)

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
        _, now, raw, response = await self._aeval("get", self._keys(id), [])
        return _record(id, int(now), raw, response)

    async def awatch(self, id: str, timeout: float) -> None:
        if self._listener is not None:
            self._listener.ensure_started()
        await awatch_loop(self._notifier, id, timeout, lambda: self._alease_left(id))

    async def adelete(self, id: str) -> bool:
        found = int(await self._aeval("delete", self._keys(id), [self.channel])) > 0
        self._notifier.notify(id)
        return found

    async def aclose(self) -> None:
        face = self._async.pop_current()
        if face is not None:
            with translated(self._what, _ERRORS):
                await face.aclose()
        await asyncio.to_thread(self.close)

    # -- internals -----------------------------------------------------------------------

    async def _aeval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run one of the scripts on this loop's async face (bounded: see module doc)."""
        try:  # ``translated``, spelt out: this runs once or twice per request
            face = self._async.current() or await self._async.get()
            return await face.evalsha(script, keys, args)
        except StoreUnavailable:
            raise
        except _CAUGHT as exc:
            raise unavailable(self._what, exc) from exc

    def _lease_left(self, id: str) -> float | None:
        with translated(self._what, _ERRORS):
            left = int(self._s().watch(keys=self._keys(id)[:1]))
        return None if left < 0 else left / 1_000_000

    async def _alease_left(self, id: str) -> float | None:
        left = int(await self._aeval("watch", self._keys(id)[:1], []))
        return None if left < 0 else left / 1_000_000


# -- replies <-> records (shared by both faces) -------------------------------------------

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Memo(Generic[K, V]):
    """``make(key)``, remembered: an application answers with a handful of distinct header
    sets, and each request would otherwise pay a JSON encode (completion) or parse and a
    tuple per header (replay), 2 µs or so. Bounded: emptied when full. Values are immutable."""

    def __init__(self, make: Callable[[K], V], size: int = 1024) -> None:
        self._make = make
        self._size = size
        self._made: dict[K, V] = {}

    def __call__(self, key: K) -> V:
        try:
            value = self._made.get(key)
        except TypeError:  # not hashable after all (lists where tuples belong): no memo
            return self._make(key)
        if value is None:
            value = self._make(key)
            if len(self._made) >= self._size:
                self._made.clear()
            self._made[key] = value
        return value


_json_of = _Memo[tuple[tuple[str, str], ...], bytes](
    lambda h: json.dumps([list(x) for x in h]).encode()
)
_headers_of = _Memo[bytes, tuple[tuple[str, str], ...]](
    lambda raw: tuple((str(k), str(v)) for k, v in json.loads(raw))
)


def _renew_args(token: int, lease: float) -> list[int]:
    return [token, _us(lease), _us(ABANDONED_GRACE)]


def _complete_args(
    token: int, response: StoredResponse, ttl: float, retention: float, channel: str
) -> list[int | str | bytes]:
    return [
        token,
        _us(ttl),
        _us(retention),
        "c" if response.replayable else "u",
        _response_value(token, response),
        channel,
    ]


def _glob(prefix: str) -> str:
    """``prefix`` as a literal in a SCAN ``MATCH`` pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in prefix)


# -- the response key: "<token> <status> <trace id|-> <span id|-> <headers length>\n",
# then the headers as JSON, then the body (nothing of either for an unreplayable result).


def _response_value(token: int, response: StoredResponse) -> bytes:
    if response.replayable:
        headers, body = _json_of(response.headers), response.body
    else:
        headers, body = b"", b""
    head = (
        f"{token} {response.status} {response.trace_id or '-'} {response.span_id or '-'} "
        f"{len(headers)}\n"
    )
    return b"".join((head.encode(), headers, body))


def _stored(token: int, replayable: bool, raw: bytes | None) -> StoredResponse | None:
    """The response in ``raw`` if it is the one of the record holding ``token``, else None
    (gone, or left by an earlier claim of the key: never replayed)."""
    if raw is None:
        return None
    head, _, rest = raw.partition(b"\n")
    tok, status, tid, sid, size = head.split(b" ")
    if int(tok) != token:
        return None
    length = int(size)
    return StoredResponse(
        int(status),
        _headers_of(rest[:length]) if length else (),
        rest[length:],
        replayable,
        None if tid == b"-" else tid.decode(),
        None if sid == b"-" else sid.decode(),
    )


# -- the record key (``_redis_lua.py``): "<st><ex>,<ru>,<tok>,<lu>,<ca>,<fp>" ---------------

_STATES = {
    ord("i"): State.IN_FLIGHT,
    ord("w"): State.IN_FLIGHT,
    ord("c"): State.COMPLETED,
    ord("u"): State.UNREPLAYABLE,
}


def _claim_result(id: str, reply: list[Any], lease: float) -> ClaimResult:
    if int(reply[0]) == 1:
        _, token, expired, recovered, previous, ptok, pca, pend, now_us = reply
        was = None
        if expired or recovered:
            now, ended = int(now_us) / 1_000_000, int(pend) / 1_000_000
            created = int(pca) / 1_000_000
            was = (
                taken_over(int(ptok), created, ended, now, lease)
                if recovered
                else Previous(int(ptok), created, ended, now)
            )
        return Claimed(
            int(token),
            expired_before=bool(expired),
            recovered=bool(recovered),
            previous_fingerprint=None if previous is None else bytes(previous).decode(),
            previous=was,
        )
    now = int(reply[1])
    record = _record(id, now, reply[2], reply[3])
    if record is None:  # the script only answers "existing" for a live record
        raise StoreError(f"Redis store: record {id[:12]} vanished inside its own claim")
    return Existing(record, now / 1_000_000)


def _record(id: str, now: int, raw: bytes | None, response: bytes | None) -> Record | None:
    """The record as ``records.resolve`` sees it at ``now`` (server microseconds); None when
    absent. ``response`` is the response key's value (None when gone or not read)."""
    if raw is None:
        return None
    state = _STATES[raw[0]]
    ex, ru, tok, lu, ca, fp = raw[1:].split(b",", 5)
    expires, retain, token = int(ex), int(ru), int(tok)
    stored = None
    if state is not State.IN_FLIGHT:
        if now >= retain:
            return None
        if now >= expires:
            state = State.TOMBSTONE  # the body has expired with its key
        else:
            stored = _stored(token, state is State.COMPLETED, response)
            if stored is None:
                raise StoreError(
                    f"Redis store: the stored response of {id[:12]} is missing before its TTL; "
                    "run Redis with maxmemory-policy noeviction"
                )
    return Record(
        id,
        fp.decode(),
        state,
        token,
        int(lu) / 1_000_000,
        expires / 1_000_000,
        retain / 1_000_000,
        stored,
        int(ca) / 1_000_000,
    )


def _state_at(raw: bytes | None, now: int) -> State:
    """``records.resolve`` on a raw record string (times in microseconds)."""
    if raw is None:
        return State.ABSENT  # expired between SCAN and GET
    state = _STATES[raw[0]]
    if state is State.IN_FLIGHT:
        return state
    ex, ru, _ = raw[1:].split(b",", 2)
    if now >= int(ru):
        return State.ABSENT
    return State.TOMBSTONE if now >= int(ex) else state
