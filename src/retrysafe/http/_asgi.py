"""Pure ASGI idempotency middleware (no BaseHTTPMiddleware), after Starlette's GZipMiddleware.

The request's trip is the shared flow (``_flow.py``); this module performs its steps with ASGI
I/O. Per-request state lives in a :class:`_Responder`. The request body is buffered only for
keyed requests (to fingerprint it) and re-fed to the application as the very same
``http.request`` messages. Responses are forwarded message by message as the application sends
them; a copy is kept only while it fits the cache cap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from retrysafe import _lease as leases
from retrysafe._context import key_scope
from retrysafe._decide import Decision, Settlement
from retrysafe._engine import (
    AsyncHeartbeat,
    Ending,
    StoreTimer,
    aclaim_decision,
    afinish,
    aopen_unit,
    asettle_record,
    bound_unit,
)
from retrysafe._fingerprint import RawHeaders, RequestFacts, quoted_path, target_path
from retrysafe._lease import Lease
from retrysafe._outcomes import Outcome
from retrysafe._policy import Policy
from retrysafe._problems import ProblemResponse
from retrysafe._scopes import PrincipalKey
from retrysafe._shield import shielded
from retrysafe.errors import ClaimTakenOver
from retrysafe.http._exchange import Capture, Identity, taken_over, too_large
from retrysafe.http._flow import (
    RELEASE,
    Exchange,
    FailOpen,
    Forward,
    Respond,
    Run,
    Setup,
    admit_flow,
    adrive,
    commit_flow,
    open_flow,
    settle_flow,
)
from retrysafe.http._types import ASGIApp, Message, Receive, Scope, Send
from retrysafe.stores import AsyncStore, AtomicUnit
from retrysafe.telemetry import DEFAULT_TELEMETRY, NULL_OBSERVATION, Telemetry

STATE_KEY = "idempotency_key"
T = TypeVar("T")


class ASGIIdempotencyMiddleware(Setup):
    """Gives an ASGI app ``Idempotency-Key`` semantics (SPEC section 2).

    ``app.add_middleware(ASGIIdempotencyMiddleware, store=open_store(url), policy=Policy())``
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: AsyncStore,
        policy: Policy | None = None,
        telemetry: Telemetry | None = DEFAULT_TELEMETRY,
        atomic: bool = False,
    ) -> None:
        super().__init__(store, policy, telemetry, atomic)
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.policy.covers(scope["method"]):
            await self.app(scope, receive, send)
            return
        await _Responder(self, scope, receive, send).run()


def _user(user: object) -> str | None:
    """The authenticated user in ASGI ``scope["user"]`` (Starlette's AuthenticationMiddleware
    sets a ``BaseUser``), as a string ``user_scope`` can use, or None when not authenticated.

    ``identity`` names the user; Starlette's ``SimpleUser`` has only ``display_name``.
    """
    if user is None or isinstance(user, str):
        return user or None
    if getattr(user, "is_authenticated", False) is not True:
        return None
    for name in ("identity", "display_name"):
        try:
            value = getattr(user, name, None)
        except NotImplementedError:  # BaseUser's abstract properties
            continue
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


class _Responder(Exchange):
    """One request's trip through the middleware: the flow's steps, performed with ASGI I/O."""

    __slots__ = ("app", "atomic", "messages", "receive", "scope", "send", "store")

    def __init__(self, mw: ASGIIdempotencyMiddleware, scope: Scope, receive: Receive, send: Send):
        Exchange.__init__(self, mw, RawHeaders(scope["headers"]))  # no super(): per request
        self.app, self.store, self.atomic = mw.app, mw.store, mw.atomic
        self.scope, self.receive, self.send = scope, receive, send
        self.messages: list[Message] = []  # the buffered request, re-fed to the app in order

    async def run(self) -> None:
        scope = self.scope
        verdict = await adrive(admit_flow(self, scope["method"], scope["path"]))
        if isinstance(verdict, Run):
            if self.atomic:
                await self._execute_atomic(verdict)
            else:
                await self._execute(verdict)
        elif isinstance(verdict, Respond):
            await self._respond(verdict)
        elif isinstance(verdict, Forward):  # nothing read: the app reads the server's receive
            await self.app(scope, self._receive if self.messages else self.receive, self.send)
        elif isinstance(verdict, FailOpen):
            await self._fail_open(verdict.key)
        # else None: the client left while uploading, nobody to answer

    def facts(self, body: bytes) -> RequestFacts:
        scope = self.scope
        raw_path = scope.get("raw_path")  # the path as sent: "%2F" is not "/" (SPEC 6)
        return RequestFacts(
            scope["method"],
            target_path(raw_path.decode("latin-1")) if raw_path else quoted_path(scope["path"]),
            scope.get("query_string", b"").decode("latin-1"),
            self.headers,
            body,
            _user(scope.get("user")),
        )

    # The flow's I/O: each returns the awaitable that performs it (not awaited here: one
    # coroutine less), which adrive awaits.

    def offload(self, call: Callable[[], T]) -> Awaitable[T]:
        return asyncio.to_thread(call)  # CPU work on a large body: off the event loop

    def load_principals(self) -> Awaitable[PrincipalKey]:
        return self.keyring.aload(self.store)

    def claim(self, ident: Identity, timer: StoreTimer | None) -> Awaitable[Decision]:
        return aclaim_decision(self.store, ident.id, ident.fingerprint, self.policy, timer)

    def settle_record(self, run: Run, settlement: Settlement) -> Awaitable[str]:
        return asettle_record(
            self.store, run.ident.id, run.token, settlement, self.policy, run.lease
        )

    def open_unit(self, run: Run) -> Awaitable[AtomicUnit]:
        ident = run.ident
        return aopen_unit(self.store, ident.id, run.token, ident.fingerprint, self.policy)

    def finish_unit(self, unit: AtomicUnit, settlement: Settlement) -> Awaitable[Ending]:
        return afinish(unit, self.store, settlement, self.policy)

    async def _fail_open(self, key: str) -> None:
        status = 500

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await self.send(message)

        try:
            await self._call_app(key, send)
        finally:
            self.failed_open(status)

    async def _execute(self, run: Run) -> None:
        """Run the handler, streaming its answer through, and settle the record.

        The answer's last body message goes out only once the record is settled: a client
        that has the whole answer can always get it again by replay, and no retry of a request
        it saw answered can run the handler again (were the process killed between the answer
        and the completion, the record would stay in flight until its lease lapsed).

        The response start is held until the first body message, so an answer sent in one
        body message (most are) can still be replaced when its result cannot be stored (the
        store stayed down through the retries): the client gets a 503 instead, not a success
        it would not retry. A streamed answer whose end cannot be stored loses its last body
        message instead, and the connection is aborted (docs/http-conformance.md).
        """
        capture = Capture(self.policy.max_cached_body)
        client_gone = False
        settled = False
        downstream = self.send
        held_start: Message | None = None
        heartbeat = AsyncHeartbeat(
            self.store, run.ident.id, run.token, self.policy, lease=run.lease
        ).begin()

        async def settle(kept: Capture | None) -> bool:
            nonlocal settled
            if settled:
                return True
            settled = True
            await heartbeat.end()
            stored: bool = await adrive(settle_flow(self, run, kept))
            return stored

        async def send(message: Message) -> None:
            nonlocal held_start, client_gone
            kind = message["type"]
            if kind == "http.response.start":
                capture.start_raw(message["status"], message.get("headers", ()))
                held_start = message  # sent with the first body message
                return
            if kind == "http.response.body":
                capture.chunk(message.get("body", b""))
                if not message.get("more_body", False):
                    capture.end()
                    if not await settle(capture):  # never present the answer as final
                        if held_start is None:  # it started: abort the connection
                            raise self.unfinished(run)
                        held_start = None
                        await self._respond(self.withhold(run))
                        return
            try:
                if held_start is not None:
                    start, held_start = held_start, None
                    await downstream(start)
                await downstream(message)
            except OSError:  # ASGI 2.4: send raises an OSError once the client has gone away
                client_gone = True
                raise

        try:
            try:
                await self._call_app(run.ident.key, send, run.lease)
            except BaseException as exc:
                # SPEC 12: an exception releases the claim so a retry runs again - unless the
                # client already received the whole response, which a retry must then see
                # again, or left mid-response (an ASGI 2.4 send error, or a server cancelling
                # the request once the answer had started): the handler ran, so its record
                # stays, unreplayable (SPEC 15), as when a 2.3 server stops the stream or a
                # WSGI server closes it early.
                cancelled = isinstance(exc, asyncio.CancelledError) and capture.status is not None
                keep = capture.finished or client_gone or cancelled
                await settle(capture if keep else None)
                raise
            try:
                if held_start is not None:  # an app that sent a start and returned: pass it on
                    await downstream(held_start)
            finally:
                await settle(capture)  # an app that returned without finishing its answer
        finally:  # a handler that raised before responding is a 500 to the client
            self.obs.executed(capture.status or 500)

    async def _execute_atomic(self, run: Run) -> None:
        """SPEC 13a: run the handler with its unit bound, commit, and only then answer.

        The response is held whole (not streamed) until the record commits with the
        handler's writes: a client must never see a result that a crash could still undo.
        The commit happens inside the application's send of its last body message, while the
        application still runs: what it holds for the request is still there (Django under
        ASGI commits on the thread its connection belongs to, before ``request_finished``
        closes it), and what it does once it answered (Starlette's background tasks) comes
        after the commit. An application that raises after sending its whole answer keeps it
        committed; one that raises before rolls its writes back and releases (SPEC 12).
        """
        opened = await adrive(open_flow(self, run))
        if isinstance(opened, Respond):
            await self._respond(opened)
            return
        unit = opened
        capture = Capture(self.policy.max_cached_body)
        held: list[Message] = []
        settled = False

        async def commit() -> None:
            problem = await adrive(commit_flow(self, run, unit, capture))
            if problem is not None:
                await self._respond(problem)
                return
            for message in held:
                await self.send(message)

        async def send(message: Message) -> None:
            nonlocal settled
            if settled:  # nothing follows the last body message (ASGI)
                return
            if message["type"] == "http.response.start":
                capture.start(
                    message["status"],
                    [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]],
                )
            elif message["type"] == "http.response.body":
                capture.chunk(message.get("body", b""))
                if not message.get("more_body", False):
                    capture.end()
            held.append(message)
            if capture.finished:
                settled = True
                await commit()

        try:
            try:
                with bound_unit(unit):
                    # The open transaction holds the record; once settled, nothing is left
                    # to renew.
                    idle = lambda: unit.holding or settled  # noqa: E731
                    beat = AsyncHeartbeat(
                        self.store, run.ident.id, run.token, self.policy, idle=idle, lease=run.lease
                    )
                    async with beat:
                        await self._call_app(run.ident.key, send, run.lease)
            except ClaimTakenOver:
                if not settled:  # else the refusal was the app's 500, already answered with 409
                    settled = True
                    await shielded(unit.aclose())
                    await self._respond(
                        self.refuse(taken_over(self.policy), Outcome.CONFLICT_IN_FLIGHT)
                    )
                return
            except BaseException:
                if not settled:  # SPEC 12: no whole answer yet, so the writes are undone
                    settled = True
                    await self.finish_unit(unit, RELEASE)
                raise
            if not settled:  # an app that returned without finishing its answer
                settled = True
                await commit()
        finally:
            self.obs.executed(capture.status or 500)

    async def _call_app(self, key: str, send: Send, lease: Lease | None = None) -> None:
        # request.state.idempotency_key (SPEC 19): a copy of the request's state with the key,
        # set in this request's scope (copying the whole scope cost more than the lookup).
        scope = self.scope
        state = scope.get("state")
        scope["state"] = {**state, STATE_KEY: key} if state else {STATE_KEY: key}
        obs = self.obs
        held = leases.bind(lease) if lease is not None else None  # retrysafe.lease_lost()
        try:
            with key_scope(key):
                if obs is NULL_OBSERVATION:  # nothing to activate: skip a no-op context manager
                    await self.app(scope, self._receive, send)
                else:
                    with obs.active():  # handler spans nest under ours; report_cost() works
                        await self.app(scope, self._receive, send)
        finally:
            if held is not None:
                leases.unbind(held)

    async def _receive(self) -> Message:
        if self.messages:
            return self.messages.pop(0)
        return await self.receive()

    async def read_body(self, limit: int, declared: int | None) -> bytes | ProblemResponse | None:
        """Buffer the request body (SPEC 16), keeping its messages to re-feed them (the flow
        checked ``declared`` already)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] != "http.request":  # http.disconnect: nobody to answer
                return None
            self.messages.append(message)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return too_large(self.policy, limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _respond(self, answer: Respond) -> None:
        await self.send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers],
            }
        )
        await self.send({"type": "http.response.body", "body": answer.body})
