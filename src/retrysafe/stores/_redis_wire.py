"""A lean asyncio channel to one Redis server: the async face's hot path.

Why not redis.asyncio: on this project's benchmark machine one redis.asyncio round trip costs
about 3× what the socket and the server do (bench/README.md "Peers"): a pool checkout (a
condition lock) per command, a connection wrapper, a stream reader, per-command option
handling. coredis (anyio) and valkey-glide (a Rust core behind a thread hop) measured slower
still. A plain ``asyncio.Protocol`` with hiredis packing and parsing costs about a third:

- **one connection per event loop**, shared by every coroutine on that loop: requests are
  written as they come (pipelined) and replies, which Redis sends in request order, resolve
  the oldest waiting future (FIFO). No pool, no checkout.
- **one timer per connection** bounds every request (``timeout``): it is armed for the
  oldest unanswered request and re-armed for the next one when it fires, so a request costs
  no timer of its own. When the oldest request is overdue the connection is dropped and
  every waiting request fails (``TimeoutError``): a reply that comes late can never answer a
  later request, because that connection is never read again.
- any error on the connection (reset, EOF, a protocol error) fails every waiting request
  the same way; the next request opens a new connection (``connect_timeout``): a restarted
  server is simply reconnected to, and nothing is retried by itself (a retried claim whose
  first attempt landed would find its own claim).

The handshake honours the URL as redis-py reads it (``redis.connection.parse_url``):
``username``/``password`` (``AUTH``), the database (``SELECT``), ``client_name`` and, for
``rediss://``, the ``ssl_*`` options. Redis Cluster, pub/sub, the sync face and admin commands
stay on redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import hiredis
from redis.connection import parse_url

from retrysafe.errors import ConfigurationError
from retrysafe.stores._urlopts import redacted_url

# hiredis' stub types the argument as a 1-tuple; it takes any tuple of str/bytes/int/float.
_pack = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)


class ReplyError(Exception):
    """An error reply from the server (``-ERR …``, ``-NOSCRIPT …``, ``-BUSY …``)."""


class Script(NamedTuple):
    """A Lua script and its SHA1 (what ``EVALSHA`` names it by)."""

    source: bytes
    sha: bytes

    @classmethod
    def of(cls, source: str) -> Script:
        raw = source.encode()
        return cls(raw, hashlib.sha1(raw, usedforsecurity=False).hexdigest().encode())


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect: the parts of a ``redis://`` / ``rediss://`` URL we use."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    client_name: str | None
    ssl: ssl.SSLContext | None

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        try:
            opts = parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ConfigurationError(f"Redis URL {redacted_url(url)!r}: {exc}") from exc
        return cls(
            host=opts.get("host", "localhost"),
            port=int(opts.get("port", 6379)),
            db=int(opts.get("db", 0)),
            username=opts.get("username"),
            password=opts.get("password"),
            client_name=opts.get("client_name"),
            ssl=_ssl_context(opts) if url.lower().startswith("rediss://") else None,
        )


def _ssl_context(opts: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context for ``rediss://``, from redis-py's ``ssl_*`` URL options (same defaults:
    certificates required, host name checked)."""
    modes = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    reqs = str(opts.get("ssl_cert_reqs", "required")).lower()
    if reqs not in modes:
        raise ConfigurationError(f"ssl_cert_reqs={reqs!r}: use none, optional or required")
    context = ssl.create_default_context()
    context.check_hostname = modes[reqs] != ssl.CERT_NONE and bool(
        opts.get("ssl_check_hostname", True)
    )
    context.verify_mode = modes[reqs]
    try:
        if opts.get("ssl_certfile"):
            context.load_cert_chain(
                opts["ssl_certfile"], opts.get("ssl_keyfile"), opts.get("ssl_password")
            )
        if opts.get("ssl_ca_certs") or opts.get("ssl_ca_path") or opts.get("ssl_ca_data"):
            context.load_verify_locations(
                opts.get("ssl_ca_certs"), opts.get("ssl_ca_path"), opts.get("ssl_ca_data")
            )
        if opts.get("ssl_ciphers"):
            context.set_ciphers(opts["ssl_ciphers"])
    except OSError as exc:  # ssl.SSLError is one too: a missing or unreadable file, a bad key
        raise ConfigurationError(f"Redis TLS options: {exc}; check the ssl_* URL options") from exc
    return context


class _Connection(asyncio.Protocol):
    """One socket: requests go out as they come, replies resolve futures in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, what: str) -> None:
        self._loop = loop
        self._timeout = timeout
        self._what = what
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCP and SSL transports implement the
        # transport interface without deriving from (or registering with) asyncio.Transport,
        # and an assertion failing here (inside the loop's callback, so only logged) left
        # the connection without its transport: every command under uvloop failed.
        self._transport = cast(asyncio.Transport, transport)

    def request(self, frame: bytes) -> asyncio.Future[Any]:
        """Send one packed command; the future gets its reply (or the connection's error)."""
        future = self._loop.create_future()
        if self.closed or self._transport is None:
            future.set_exception(ConnectionError(f"{self._what}: connection closed"))
            return future
        deadline = self._loop.time() + self._timeout
        self._pending.append((future, deadline))
        self._transport.write(frame)
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._check)
        return future

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        pending = self._pending
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                future = pending.popleft()[0]  # IndexError: a reply nobody asked for
                if future.done():  # its caller was cancelled: the reply is dropped
                    continue
                if isinstance(reply, ReplyError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            self.fail(ConnectionError(f"{self._what}: protocol error: {exc!r}"))

    def _check(self) -> None:
        """The connection's one timer: fail everything if the oldest request is overdue."""
        self._timer = None
        if self.closed or not self._pending:
            return
        deadline = self._pending[0][1]
        if self._loop.time() + 0.001 >= deadline:  # call_at may fire a hair early
            self.fail(TimeoutError(f"{self._what}: no reply within {self._timeout} s"))
        else:
            self._timer = self._loop.call_at(deadline, self._check)

    def fail(self, error: Exception) -> None:
        """Drop the connection and fail every waiting request with ``error``'s kind."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()  # never read again: no late reply can be mismatched
        while self._pending:
            future = self._pending.popleft()[0]
            if not future.done():
                future.set_exception(type(error)(*error.args))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed and not self._pending:
            return  # our own fail() or close()
        reason = f"{type(exc).__name__}: {exc}" if exc else "closed by the server"
        self.fail(ConnectionError(f"{self._what}: connection lost ({reason})"))

    def close(self) -> None:
        """Close after the writes already queued (replies still on the way are dropped)."""
        self.closed = True
        if self._transport is not None:
            self._transport.close()


class Wire:
    """The channel of one event loop: a connection made on first use and after a failure."""

    def __init__(
        self, endpoint: Endpoint, timeout: float, connect_timeout: float, what: str
    ) -> None:
        self._endpoint = endpoint
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._what = what
        self._conn: _Connection | None = None
        self._opening: asyncio.Task[_Connection] | None = None

    async def call(self, *args: Any) -> Any:
        """One command, one reply (a :class:`ReplyError` for an error reply)."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._open()
        return await conn.request(_pack(args))

    async def evalsha(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """``EVALSHA``; after a ``NOSCRIPT`` (server restart, ``SCRIPT FLUSH``) one ``EVAL``,
        which loads the script for the next time."""
        conn = self._conn  # ``call``, inlined: one coroutine frame fewer per operation
        if conn is None or conn.closed:
            conn = await self._open()
        try:
            return await conn.request(_pack((b"EVALSHA", script.sha, len(keys), *keys, *args)))
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.call(b"EVAL", script.source, len(keys), *keys, *args)

    async def _open(self) -> _Connection:
        # One connect at a time per loop, shared by every caller that needs it; a caller
        # that is cancelled does not cancel the connect for the others.
        opening = self._opening
        if opening is None:
            opening = self._opening = asyncio.get_running_loop().create_task(self._connect())
            opening.add_done_callback(self._opened)
        return await asyncio.shield(opening)

    def _opened(self, task: asyncio.Task[_Connection]) -> None:
        self._opening = None
        if not task.cancelled() and task.exception() is None:
            self._conn = task.result()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        ep = self._endpoint
        conn = _Connection(loop, self._timeout, self._what)
        async with asyncio.timeout(self._connect_timeout):
            await loop.create_connection(
                lambda: conn,
                ep.host,
                ep.port,
                ssl=ep.ssl,
                server_hostname=ep.host if ep.ssl is not None else None,
            )
            try:
                handshake = []
                if ep.password is not None:
                    auth = (ep.username, ep.password) if ep.username else (ep.password,)
                    handshake.append(conn.request(_pack((b"AUTH", *auth))))
                if ep.db:
                    handshake.append(conn.request(_pack((b"SELECT", ep.db))))
                if ep.client_name:
                    name = (b"CLIENT", b"SETNAME", ep.client_name)
                    handshake.append(conn.request(_pack(name)))
                await asyncio.gather(*handshake)  # retrieves every error, not just the first
            except BaseException:
                conn.fail(ConnectionError(f"{self._what}: handshake failed"))
                raise
        return conn

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
