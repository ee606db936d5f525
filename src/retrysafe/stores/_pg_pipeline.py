"""The PostgreSQL store's async request path: statements pipelined on a few connections.

Each statement of the request path is one autocommit statement (``_postgres_sql.py``). Run
through psycopg's cursor, each cost a served worker about 170 µs of CPU under load (a cursor,
the prepare manager, the adapters, and a send and a wait of its own: bench/README.md), more
than the bare request itself. Here they go through libpq's pipeline mode, reached through
``psycopg.pq`` (psycopg's public low-level layer):

- each statement is a Bind/Execute of a statement prepared once per connection, followed by
  a Sync of its own: still its own implicit transaction, and an error aborts only it;
- a statement for an idle connection leaves at once; those queued behind statements in flight
  leave together at the end of the loop's turn, in one write; the replies are read, in order,
  by a reader callback as they arrive: no task, no cursor, no wait per statement.

A loop gets up to ``size`` connections, made on demand. A statement goes to an idle connection
when there is one, and a new connection opens while every connection has statements in flight:
a statement that waits on a row lock holds up only the few queued behind it on its connection.
Write statements commit one after another on one connection (each waits for its WAL flush), so
first executions under load spread over several connections and the server commits them in
groups. Nothing runs between requests, and a connection registers its socket with the loop only
while it has statements in flight, so a pipeline abandoned with its loop leaves nothing behind.

Parameters go as text (``bytes`` as binary), typed by the server from the statement; the row
comes back in binary and is decoded by column type (the few types the statements return).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import re
import struct
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import psycopg
from psycopg import pq
from psycopg.errors import error_from_result
from psycopg.pq.abc import PGresult

Row = tuple[Any, ...]

_NAMED = re.compile(rb"%\((\w+)\)s")
_BINARY = pq.Format.BINARY
_OK_ROWS, _OK, _SYNC = (
    pq.ExecStatus.TUPLES_OK,
    pq.ExecStatus.COMMAND_OK,
    pq.ExecStatus.PIPELINE_SYNC,
)


class Compiled:
    """A statement in libpq's form: ``$n`` placeholders, the parameter names in order, and the
    name it is prepared under (derived from its text: one name per statement and table)."""

    __slots__ = ("name", "names", "text")

    def __init__(self, statement: bytes) -> None:
        order: list[str] = []

        def number(match: re.Match[bytes]) -> bytes:
            name = match.group(1).decode()
            if name not in order:
                order.append(name)
            return b"$%d" % (order.index(name) + 1)

        text = _NAMED.sub(number, statement)
        if b"%s" in text or b"%%" in text:
            raise ValueError("pipelined statements take named parameters only, and no '%%'")
        self.text = text
        self.names = tuple(order)
        self.name = b"retrysafe_" + hashlib.sha256(text).hexdigest()[:24].encode()


@cache
def compiled(statement: bytes) -> Compiled:
    """The statement compiled once (the store's statements are rendered once, too)."""
    return Compiled(statement)


def _params(c: Compiled, params: Mapping[str, Any]) -> tuple[list[bytes | None], list[int]]:
    values: list[bytes | None] = []
    formats: list[int] = []
    for name in c.names:
        value = params[name]
        if value is None:
            values.append(None)
            formats.append(0)
        elif value is True or value is False:
            values.append(b"t" if value else b"f")
            formats.append(0)
        elif isinstance(value, int | str):
            values.append(str(value).encode())
            formats.append(0)
        elif isinstance(value, bytes | bytearray | memoryview):
            values.append(bytes(value))
            formats.append(1)  # binary: bytea as it is, no escaping
        else:
            raise TypeError(f"parameter {name!r}: cannot send a {type(value).__name__}")
    return values, formats


_INT8, _INT4, _INT2 = struct.Struct("!q"), struct.Struct("!i"), struct.Struct("!h")


def _text(raw: bytes) -> str:
    return raw.decode()


# Binary column values by type OID: the types the store's statements return.
_DECODE: dict[int, Callable[[bytes], Any]] = {
    16: lambda raw: raw == b"\x01",  # boolean
    17: bytes,  # bytea
    19: _text,  # name
    20: lambda raw: _INT8.unpack(raw)[0],  # bigint
    21: lambda raw: _INT2.unpack(raw)[0],  # smallint
    23: lambda raw: _INT4.unpack(raw)[0],  # integer
    25: _text,  # text
    114: _text,  # json
    1043: _text,  # varchar
    2278: lambda raw: None,  # void (pg_notify)
}


def _first_row(result: PGresult) -> Row | None:
    if result.status == _OK_ROWS:
        if not result.ntuples:
            return None
        row: list[Any] = []
        for col in range(result.nfields):
            raw = result.get_value(0, col)
            if raw is None:
                row.append(None)
                continue
            decode = _DECODE.get(result.ftype(col))
            if decode is None:
                raise psycopg.InterfaceError(
                    f"pipelined statement: no decoder for column type oid {result.ftype(col)}"
                )
            row.append(decode(raw))
        return tuple(row)
    if result.status == _OK:
        return None
    raise error_from_result(result)


class _Entry:
    """One statement (or a prepare) in flight: who waits for it, and its result so far.

    A statement sent right behind its own prepare keeps that entry: if the prepare failed
    (a missing table, say), the caller is told why, not that the statement does not exist."""

    __slots__ = ("future", "prepare", "prepared", "result")

    def __init__(
        self,
        future: asyncio.Future[Row | None] | None,
        prepared: bytes | None = None,
        prepare: _Entry | None = None,
    ) -> None:
        self.future = future
        self.prepared = prepared
        self.prepare = prepare
        self.result: PGresult | None = None


class Pipe:
    """One connection in pipeline mode, driven by the loop's reader and writer callbacks."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], prepare: bool) -> None:
        self.conn = conn
        self.inflight: collections.deque[_Entry] = collections.deque()
        self.broken: BaseException | None = None
        self._pg = conn.pgconn
        self._prepare = prepare
        self._prepared: set[bytes] = set()
        self._loop = asyncio.get_running_loop()
        self._fd = self._pg.socket
        self._flush_due = False
        self._reading = False
        self._pg.nonblocking = 1
        self._pg.enter_pipeline_mode()

    def send(self, c: Compiled, params: Mapping[str, Any]) -> asyncio.Future[Row | None]:
        """Queue the statement; the future gets its first row (None: no row)."""
        if self.broken is not None:
            raise self.broken
        values, formats = _params(c, params)
        pg, idle, prepare = self._pg, not self.inflight, None
        try:
            if not self._prepare:
                pg.send_query_params(c.text, values, None, formats, _BINARY)
            else:
                if c.name not in self._prepared:
                    pg.send_prepare(c.name, c.text)
                    pg.pipeline_sync()
                    prepare = _Entry(None, c.name)
                    self.inflight.append(prepare)
                    self._prepared.add(c.name)
                pg.send_query_prepared(c.name, values, formats, _BINARY)
            pg.pipeline_sync()
        except psycopg.Error as exc:
            lost = self._lost(exc)
            self.fail(lost)
            raise lost from exc
        future: asyncio.Future[Row | None] = self._loop.create_future()
        self.inflight.append(_Entry(future, prepare=prepare))
        if idle:  # out at once: a round trip costs two turns of the loop, as any await does
            self._flush()
        elif not self._flush_due:  # busy: one write for all queued in this turn of the loop
            self._flush_due = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_due = False
        if self.broken is not None:
            return
        try:
            if self._pg.flush():
                self._loop.add_writer(self._fd, self._writable)
        except psycopg.Error as exc:
            self.fail(exc)
            return
        if not self._reading:
            self._reading = True
            self._loop.add_reader(self._fd, self._readable)

    def _writable(self) -> None:
        try:
            if not self._pg.flush():
                self._loop.remove_writer(self._fd)
        except psycopg.Error as exc:
            self.fail(exc)

    def _readable(self) -> None:
        pg, inflight = self._pg, self.inflight
        try:
            pg.consume_input()
            while inflight and not pg.is_busy():
                result = pg.get_result()
                if result is None:  # the end of one statement's results
                    continue
                entry = inflight[0]
                if result.status != _SYNC:
                    if entry.result is None:
                        entry.result = result
                    continue
                inflight.popleft()
                self._settle(entry)
        except psycopg.Error as exc:
            self.fail(exc)
            return
        if not inflight:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _settle(self, entry: _Entry) -> None:
        result, future = entry.result, entry.future
        if future is None:  # a prepare: if it failed, prepare again next time
            if result is not None and result.status != _OK and entry.prepared is not None:
                self._prepared.discard(entry.prepared)
            return
        if future.done():  # its caller was cancelled: the statement ran all the same
            return
        failed = entry.prepare.result if entry.prepare is not None else None
        if failed is not None and failed.status != _OK:
            result = failed
        try:
            future.set_result(None if result is None else _first_row(result))
        except psycopg.Error as exc:
            future.set_exception(exc)

    def _lost(self, exc: psycopg.Error) -> psycopg.Error:
        """What a failed send means: libpq leaves pipeline mode when the connection breaks,
        and then words its error "connection not in pipeline mode"; say it was lost."""
        if self._pg.status == pq.ConnStatus.OK:
            return exc
        why = self._pg.get_error_message() or str(exc)
        return psycopg.OperationalError(f"connection to the server lost: {why.strip()}")

    def fail(self, exc: BaseException) -> None:
        """The connection broke: every statement in flight fails with ``exc``."""
        self.broken = exc
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._pg.finish()  # the socket closes now, not when the connection is collected
        while self.inflight:
            future = self.inflight.popleft().future
            if future is not None and not future.done():
                future.set_exception(exc)


class Pipeline:
    """Up to ``size`` pipelined connections of one event loop."""

    def __init__(self, conninfo: str, kwargs: dict[str, Any], size: int, prepare: bool) -> None:
        self._conninfo = conninfo
        self._kwargs = kwargs
        self._size = size
        self._prepare = prepare
        self._pipes: list[Pipe] = []
        self._opening = 0
        self._opened: list[asyncio.Future[None]] = []  # callers waiting for a connection

    async def one(self, statement: bytes, params: Mapping[str, Any]) -> Row | None:
        """Run one statement; its first row, or None."""
        c = compiled(statement)
        pipe = self._pick()
        while pipe is None:
            if self._pipes_and_opening() < self._size:
                pipe = await self._open()
            else:  # every connection is still being opened: wait for one
                opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._opened.append(opened)
                await opened
                pipe = self._pick()
        return await pipe.send(c, params)

    def _pipes_and_opening(self) -> int:
        return len(self._pipes) + self._opening

    def _pick(self) -> Pipe | None:
        """An idle connection; else None while another may open; else the least busy."""
        best: Pipe | None = None
        for pipe in self._pipes:
            if pipe.broken is not None:
                continue
            if not pipe.inflight:
                return pipe
            if best is None or len(pipe.inflight) < len(best.inflight):
                best = pipe
        self._pipes = [pipe for pipe in self._pipes if pipe.broken is None]
        if best is None or self._pipes_and_opening() < self._size:
            return None
        return best

    async def _open(self) -> Pipe:
        self._opening += 1
        try:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, **self._kwargs)
            pipe = Pipe(conn, self._prepare)
            self._pipes.append(pipe)
            return pipe
        finally:
            self._opening -= 1
            waiting, self._opened = self._opened, []
            for opened in waiting:
                if not opened.done():
                    opened.set_result(None)

    async def close(self) -> None:
        pipes, self._pipes = self._pipes, []
        for pipe in pipes:
            pipe.fail(psycopg.OperationalError("the store was closed"))
            await pipe.conn.close()
