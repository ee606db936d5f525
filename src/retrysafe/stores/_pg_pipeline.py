"""The PostgreSQL store's async request path: statements pipelined on a few connections.

Each statement of the request path is one autocommit statement (``_postgres_sql.py``). Run
through psycopg's cursor, each cost a served worker about 170 µs of CPU under load (a cursor,
the prepare manager, the adapters, and a send and a wait of its own: bench/README.md), more
than the bare request itself. Here they go through libpq's pipeline mode, reached through
``psycopg.pq`` (psycopg's public low-level layer), as a Bind/Execute of a statement prepared
once per connection. The replies are read in order by a reader callback as they arrive: no
task, no cursor and no wait per statement.

A statement sent to an idle connection leaves at once. Those sent while others are in flight
leave together at the end of the loop's turn, as one *batch* closed by one Sync: one write,
one wake-up of the server process, one commit (:class:`Pipe` says why that stays invisible).

A loop gets up to ``size`` connections, made on demand. A new one opens only when the least
busy connection has ``_GROW`` statements waiting. Nothing runs between requests, and a
connection registers its socket with the loop only while it has statements in flight, so a
pipeline abandoned with its loop leaves nothing behind.

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
        elif isinstance(value, int):  # %d: an IntEnum's number, never its name
            values.append(b"%d" % value)
            formats.append(0)
        elif isinstance(value, str):
            values.append(value.encode())
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
    """One statement (or a prepare) sent: who waits for it, and its result so far.

    A statement keeps what it was sent with (to send it again alone when its batch failed)
    and the prepare sent for it: if that failed (a missing table, say), the caller is told
    why, not that the statement does not exist."""

    __slots__ = ("compiled", "formats", "future", "key", "prepare", "prepared", "result", "values")

    def __init__(
        self,
        future: asyncio.Future[Row | None] | None,
        compiled: Compiled | None = None,
        values: list[bytes | None] | None = None,
        formats: list[int] | None = None,
        key: str = "",
        prepared: bytes | None = None,
    ) -> None:
        self.future = future
        self.compiled = compiled
        self.values = values
        self.formats = formats
        self.key = key
        self.prepared = prepared
        self.prepare: _Entry | None = None
        self.result: PGresult | None = None


def _by_key(entry: _Entry) -> str:
    return entry.key


def _failed(result: PGresult | None) -> bool:
    return result is not None and result.status not in (_OK_ROWS, _OK)


class Pipe:
    """One connection in pipeline mode, driven by the loop's reader and writer callbacks.

    Statements go out in *batches*, each closed by one Sync: a statement sent to an idle
    connection is a batch of its own, sent at once; those sent while others are in flight
    wait for the end of the loop's turn and leave together. A batch is one implicit
    transaction (PostgreSQL's rule for the statements before a Sync), which is what makes it
    cheap: one write, one wake-up of the server process, one commit and WAL flush for all.
    What that would change is made not to matter:

    - a result is handed over only at the batch's Sync, when its commit is known;
    - if any statement of a batch fails, the batch is rolled back whole, and each of its
      statements is sent again alone: a statement's own error reaches only its caller, and
      the others run as if never batched;
    - a batch's row locks are held until its commit, so its statements are sent in order of
      their key (every statement locks only its own key's rows): all batches, on every
      connection and in every process, take locks in one order and cannot deadlock.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any], prepare: bool) -> None:
        self.conn = conn
        self.load = 0  # statements sent or queued, not yet answered
        self.broken: BaseException | None = None
        self._batches: collections.deque[list[_Entry]] = collections.deque()
        self._queued: list[_Entry] = []
        self._pg = conn.pgconn
        self._prepare = prepare
        self._prepared: set[bytes] = set()
        self._loop = asyncio.get_running_loop()
        self._fd = self._pg.socket
        self._reading = False
        self._pg.nonblocking = 1
        self._pg.enter_pipeline_mode()

    def send(self, c: Compiled, params: Mapping[str, Any]) -> asyncio.Future[Row | None]:
        """Queue the statement; the future gets its first row (None: no row)."""
        if self.broken is not None:
            raise self.broken
        values, formats = _params(c, params)
        future: asyncio.Future[Row | None] = self._loop.create_future()
        entry = _Entry(future, c, values, formats, str(params.get("id", "")))
        self.load += 1
        if self.load == 1:  # idle: out at once (a round trip costs two turns of the loop)
            self._send([entry])
        else:
            if not self._queued:
                self._loop.call_soon(self._send_queued)
            self._queued.append(entry)
        return future

    def _send_queued(self) -> None:
        queued, self._queued = self._queued, []
        if queued and self.broken is None:
            queued.sort(key=_by_key)  # one lock order for every batch (see the class)
            self._send(queued)

    def _send(self, batch: list[_Entry]) -> None:
        """Send ``batch`` and its Sync (which flushes: one write), and read its replies."""
        pg = self._pg
        try:
            # First the prepares the batch needs, each a batch of its own (its error is its
            # own), all before the batch's first statement: a Sync sent among the statements
            # would close the batch there.
            for entry in batch if self._prepare else ():
                c = entry.compiled
                assert c is not None
                if c.name not in self._prepared:
                    pg.send_prepare(c.name, c.text)
                    pg.pipeline_sync()
                    entry.prepare = _Entry(None, prepared=c.name)
                    self._batches.append([entry.prepare])
                    self._prepared.add(c.name)
            for entry in batch:
                c = entry.compiled
                assert c is not None
                if self._prepare:
                    pg.send_query_prepared(c.name, entry.values, entry.formats, _BINARY)
                else:
                    pg.send_query_params(c.text, entry.values, None, entry.formats, _BINARY)
            self._batches.append(batch)
            pg.pipeline_sync()
            if pg.flush():  # 1: the socket took only part of it: the rest when writable
                self._loop.add_writer(self._fd, self._writable)
        except psycopg.Error as exc:
            self.fail(self._lost(exc))
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
        pg, batches = self._pg, self._batches
        try:
            pg.consume_input()
            while batches and not pg.is_busy():
                result = pg.get_result()
                if result is None:  # the end of one statement's results
                    continue
                batch = batches[0]
                if result.status != _SYNC:
                    for entry in batch:  # one result per statement, in the order sent
                        if entry.result is None:
                            entry.result = result
                            break
                    continue
                batches.popleft()
                self._settle(batch)
        except psycopg.Error as exc:
            self.fail(exc)
            return
        if not batches and self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _settle(self, batch: list[_Entry]) -> None:
        if len(batch) > 1 and any(_failed(entry.result) for entry in batch):
            again = [entry for entry in batch if not entry.future or not entry.future.done()]
            self.load -= len(batch) - len(again)
            for entry in again:  # rolled back whole: each alone now (see the class)
                entry.result = entry.prepare = None
                self._send([entry])
            return
        for entry in batch:
            future, result = entry.future, entry.result
            if future is None:  # a prepare: if it failed, prepare again next time
                if _failed(result) and entry.prepared is not None:
                    self._prepared.discard(entry.prepared)
                continue
            self.load -= 1
            if future.done():  # its caller was cancelled: the statement ran all the same
                continue
            if entry.prepare is not None and _failed(entry.prepare.result):
                result = entry.prepare.result
            try:
                future.set_result(None if result is None else _first_row(result))
            except Exception as exc:  # an error result, or a row it cannot decode: the
                future.set_exception(exc)  # caller's, never the reader's (it would hang)

    def _lost(self, exc: psycopg.Error) -> psycopg.Error:
        """What a failed send means: libpq leaves pipeline mode when the connection breaks,
        and then words its error "connection not in pipeline mode"; say it was lost."""
        if self._pg.status == pq.ConnStatus.OK:
            return exc
        why = self._pg.get_error_message() or str(exc)
        return psycopg.OperationalError(f"connection to the server lost: {why.strip()}")

    def fail(self, exc: BaseException) -> None:
        """The connection broke: every statement sent or queued fails with ``exc``."""
        if self.broken is not None:
            return
        self.broken = exc
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._pg.finish()  # the socket closes now, not when the connection is collected
        entries = [entry for batch in self._batches for entry in batch] + self._queued
        self._batches.clear()
        self._queued = []
        self.load = 0
        for entry in entries:
            if entry.future is not None and not entry.future.done():
                entry.future.set_exception(exc)


# A loop opens another connection only once the least busy one has this many statements
# sent or queued: until then, more statements make its batches larger, which costs less than
# another connection (in process, 10 tasks' replays cost 45 µs of CPU each on one connection,
# 85 µs when each statement found an idle connection of its own: bench/README.md). It also
# bounds how many statements one waiting on a row lock holds up before new ones go elsewhere.
# End to end, 1, 4 and 16 measured alike (the served worker then shares two cores with the
# database and the load generator).
_GROW = 8


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
            if not pipe.load:
                return pipe
            if best is None or pipe.load < best.load:
                best = pipe
        self._pipes = [pipe for pipe in self._pipes if pipe.broken is None]
        if best is None or (best.load >= _GROW and self._pipes_and_opening() < self._size):
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
