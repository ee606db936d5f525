"""Pure ASGI idempotency middleware (no BaseHTTPMiddleware), after Starlette's GZipMiddleware.

Configuration is fixed in ``__init__``; per-request state lives in a :class:`_Responder`.
The request body is buffered only for keyed requests (to fingerprint it) and re-fed to the
application as the very same ``http.request`` messages. Responses are forwarded message by
message as the application sends them; a copy is kept only while it fits the cache cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from retrysafe import lease as leases
from retrysafe._shield import shielded
from retrysafe.context import key_scope
from retrysafe.decide import (
    Complete,
    Execute,
    Keyed,
    Pass,
    Refuse,
    Release,
    Replay,
    replay_headers,
)
from retrysafe.engine import (
    AsyncHeartbeat,
    Ending,
    aclaim_decision,
    afinish,
    aopen_unit,
    asettle_record,
    atomic_policy,
    bound_unit,
    require_atomic,
)
from retrysafe.errors import ClaimTakenOver, StoreError, StoreUnavailable
from retrysafe.fingerprint import (
    INLINE_JSON_LIMIT,
    RawHeaders,
    RequestFacts,
    quoted_path,
    target_path,
)
from retrysafe.http._exchange import (
    Capture,
    Identity,
    InvalidLength,
    KeyHeaders,
    ReadBody,
    declared_length,
    identify,
    look,
    malformed_body,
    read_limit,
    refusal,
    taken_over,
    too_large,
    unstored,
)
from retrysafe.http.types import ASGIApp, Message, Receive, Scope, Send
from retrysafe.keyring import Keyring
from retrysafe.lease import Lease
from retrysafe.outcomes import Outcome
from retrysafe.policy import Policy
from retrysafe.problems import ProblemResponse, store_unavailable
from retrysafe.stores.base import AsyncStore, AtomicUnit
from retrysafe.telemetry.observe import DEFAULT_TELEMETRY, NULL_OBSERVATION, Telemetry, observe

log = logging.getLogger("retrysafe")
STATE_KEY = "idempotency_key"
_NEEDS_BODY = (ReadBody, Keyed)  # built once: ``ReadBody | Keyed`` makes a union per use


class ASGIIdempotencyMiddleware:
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
        self.app = app
        self.store = store
        self.policy = policy or Policy()
        self.telemetry = telemetry  # spans, metrics, audit log (SPEC 31-34); None: off
        # SPEC 13a: handlers write in the store's transaction (retrysafe.atomic) and the record
        # commits with them; responses are then held until that commit.
        self.atomic = atomic
        if atomic:
            require_atomic(store)
            self.policy = atomic_policy(self.policy)  # no key, no transaction: a 400, not a 500
        self.key_headers = KeyHeaders(self.policy)
        self.keyring = Keyring(self.policy.secret)

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


class _Responder:
    """One request's trip through the middleware."""

    __slots__ = (
        "app",
        "atomic",
        "body",
        "headers",
        "key_headers",
        "keyring",
        "messages",
        "obs",
        "policy",
        "receive",
        "scope",
        "send",
        "store",
        "telemetry",
        "withheld",
    )

    def __init__(self, mw: ASGIIdempotencyMiddleware, scope: Scope, receive: Receive, send: Send):
        self.app, self.store, self.policy, self.atomic = mw.app, mw.store, mw.policy, mw.atomic
        self.scope, self.receive, self.send = scope, receive, send
        self.headers = RawHeaders(scope["headers"])  # decoded only where read
        self.key_headers, self.keyring = mw.key_headers, mw.keyring
        self.messages: list[Message] = []  # the buffered request, re-fed to the app in order
        self.body: bytes | None = None
        self.telemetry, self.obs = mw.telemetry, NULL_OBSERVATION
        self.withheld = False  # the answer was replaced by a 503: its result was not stored

    async def run(self) -> None:
        method, path = self.scope["method"], self.scope["path"]
        admission = look(self.policy, method, path, self.headers, keys=self.key_headers)
        if isinstance(admission, Pass):  # nothing buffered: the app reads the server's receive
            await self.app(self.scope, self.receive, self.send)
            return
        self.obs = observe(self.telemetry, method, path, self.headers)
        if isinstance(admission, _NEEDS_BODY) and not await self._read_body(
            read_limit(admission, self.policy)
        ):
            return
        if isinstance(admission, ReadBody):
            body = self.body or b""
            if len(body) > INLINE_JSON_LIMIT:  # parsing it would stall the loop
                admission = await asyncio.to_thread(
                    look, self.policy, method, path, self.headers, body, keys=self.key_headers
                )
            else:
                admission = look(
                    self.policy, method, path, self.headers, body, keys=self.key_headers
                )
        # isinstance, the hot case first: a class pattern (``case Keyed(key)``) costs several
        # times an isinstance and an attribute read (MATCH_CLASS looks up ``__match_args__``).
        if isinstance(admission, Keyed):
            await self._keyed(admission.key)
        elif isinstance(admission, Pass):
            await self.app(self.scope, self._receive, self.send)
        elif isinstance(admission, Refuse):
            await self._problem(refusal(admission, self.policy), admission.outcome)
        else:  # pragma: no cover - look() never asks twice
            raise AssertionError(f"unexpected admission {admission!r}")

    async def _keyed(self, key: str) -> None:
        scope, body = self.scope, self.body or b""
        raw_path = scope.get("raw_path")  # the path as sent: "%2F" is not "/" (SPEC 6)
        facts = RequestFacts(
            scope["method"],
            target_path(raw_path.decode("latin-1")) if raw_path else quoted_path(scope["path"]),
            scope.get("query_string", b"").decode("latin-1"),
            self.headers,
            body,
            _user(scope.get("user")),
        )
        obs = self.obs
        # No store timer when telemetry is off: nothing would read the times.
        timer = None if obs is NULL_OBSERVATION else obs.store_time
        claimed_at = time.monotonic()  # the lease began no earlier
        try:
            principals = self.keyring.current or await self.keyring.aload(self.store)
            if len(body) > self.policy.inline_fingerprint_limit:  # hashing it would stall the loop
                ident = await asyncio.to_thread(identify, key, facts, self.policy, principals)
            else:
                ident = identify(key, facts, self.policy, principals)
            if isinstance(ident, Refuse):
                await self._problem(refusal(ident, self.policy), ident.outcome)
                return
            obs.keyed(key, ident.scope, ident.fingerprint)
            decision = await aclaim_decision(
                self.store, ident.id, ident.fingerprint, self.policy, timer
            )
        except StoreError as exc:
            if self.policy.fail_open:
                log.warning("idempotency store unavailable, failing open: %s", exc)
                await self._fail_open(key)
                return
            log.error("idempotency store unavailable, failing closed: %s", exc)
            await self._problem(store_unavailable(self.policy, exc), Outcome.STORE_ERROR)
            return
        if isinstance(decision, Execute):  # not a class pattern: see run()
            token, outcome = decision.token, decision.outcome
            obs.decided(outcome, decision.previous)
            capture = Capture(self.policy.max_cached_body)
            lease = Lease(ident.id, claimed_at, self.policy.lease_s, obs.lease_lost)
            try:
                if self.atomic:
                    await self._execute_atomic(ident, token, capture, lease)
                else:
                    await self._execute(ident, token, capture, lease)
            finally:  # a handler that raised before responding is a 500 to the client
                obs.finish(outcome, 503 if self.withheld else capture.status or 500)
        elif isinstance(decision, Replay):
            response = decision.response
            obs.replayed(response)
            obs.finish(decision.outcome, response.status)
            await self.send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [
                        (k.encode("latin-1"), v.encode("latin-1"))
                        for k, v in replay_headers(response)
                    ],
                }
            )
            await self.send({"type": "http.response.body", "body": response.body})
        elif isinstance(decision, Refuse):
            await self._problem(refusal(decision, self.policy), decision.outcome)
        else:  # pragma: no cover - aclaim_decision waits out every Wait itself
            raise AssertionError(f"unexpected decision {decision!r}")

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
            self.obs.finish(Outcome.STORE_ERROR, status)

    async def _execute(self, ident: Identity, token: int, capture: Capture, lease: Lease) -> None:
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
        client_gone = False
        settled = False
        downstream = self.send
        held_start: Message | None = None
        heartbeat = AsyncHeartbeat(self.store, ident.id, token, self.policy, lease=lease).begin()

        async def settle(kept: Capture | None) -> bool:
            nonlocal settled
            if settled:
                return True
            settled = True
            await heartbeat.end()
            return await self._settle(ident, token, kept, lease)

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
                    if not await settle(capture):
                        await self._withhold(held_start is not None, ident, lease)
                        held_start = None
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
            await self._call_app(ident.key, send, lease)
        except BaseException as exc:
            # SPEC 12: an exception releases the claim so a retry runs again - unless the
            # client already received the whole response, which a retry must then see again,
            # or left mid-response (an ASGI 2.4 send error, or a server cancelling the request
            # once the answer had started): the handler ran, so its record stays, unreplayable
            # (SPEC 15), as when a 2.3 server stops the stream or a WSGI server closes it early.
            cancelled = isinstance(exc, asyncio.CancelledError) and capture.status is not None
            keep = capture.finished or client_gone or cancelled
            await settle(capture if keep else None)
            raise
        try:
            if held_start is not None:  # an app that sent a start and returned: pass it on
                await downstream(held_start)
        finally:
            await settle(capture)  # an app that returned without finishing its answer

    async def _withhold(self, unstarted: bool, ident: Identity, lease: Lease) -> None:
        """The answer's result could not be stored: never present the answer as final.

        Before the response started, the client gets a 503 problem (``unstored``) in its
        place; after, the last body message is not sent and the request fails, so the server
        aborts the connection and the client sees a broken response, which it retries.
        """
        if unstarted:
            self.withheld = True
            left = lease.expires - time.monotonic()
            problem = unstored(self.policy, left)
            await self.send(
                {
                    "type": "http.response.start",
                    "status": problem.status,
                    "headers": [(k.encode(), v.encode()) for k, v in problem.headers],
                }
            )
            await self.send({"type": "http.response.body", "body": problem.body})
            return
        raise StoreUnavailable(
            f"the result of idempotency record {ident.id[:12]} could not be stored; the end of "
            "its streamed answer was withheld so the client does not take it for final"
        )

    async def _execute_atomic(
        self, ident: Identity, token: int, capture: Capture, lease: Lease
    ) -> None:
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
        try:
            unit = await aopen_unit(self.store, ident.id, token, ident.fingerprint, self.policy)
        except StoreError as exc:
            log.error("idempotency store unavailable, failing closed: %s", exc)
            with contextlib.suppress(StoreError):  # the lease lapses if this fails too
                await shielded(self.store.arelease(ident.id, token))
            await self._problem(store_unavailable(self.policy, exc), Outcome.STORE_ERROR)
            return
        held: list[Message] = []
        settled = False

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
                await self._commit_atomic(ident, unit, capture, held)

        try:
            with bound_unit(unit):
                # The open transaction holds the record; once settled, nothing is left to renew.
                idle = lambda: unit.holding or settled  # noqa: E731
                beat = AsyncHeartbeat(
                    self.store, ident.id, token, self.policy, idle=idle, lease=lease
                )
                async with beat:
                    await self._call_app(ident.key, send, lease)
        except ClaimTakenOver:
            if not settled:  # else the refusal was the app's 500, already answered with a 409
                settled = True
                await shielded(unit.aclose())
                await self._problem(taken_over(self.policy), Outcome.CONFLICT_IN_FLIGHT)
            return
        except BaseException:
            if not settled:  # SPEC 12: no whole answer yet, so the writes are undone
                settled = True
                await afinish(unit, self.store, Release(), self.policy)
            raise
        if not settled:  # an app that returned without finishing its answer
            settled = True
            await self._commit_atomic(ident, unit, capture, held)

    async def _commit_atomic(
        self, ident: Identity, unit: AtomicUnit, capture: Capture, held: list[Message]
    ) -> None:
        """Settle ``unit`` as the captured answer says, then send that answer (or a problem
        saying why it cannot stand)."""
        obs = self.obs
        settlement = capture.settlement(self.policy, obs.trace_ids, obs.stored_headers())
        started = time.perf_counter()
        try:
            ending = await afinish(unit, self.store, settlement, self.policy)
        except StoreError as exc:
            log.error("could not commit idempotency record %s: %s", ident.id[:12], exc)
            await self._problem(store_unavailable(self.policy, exc), Outcome.STORE_ERROR)
            return
        obs.store_time("complete", time.perf_counter() - started)
        if ending is Ending.TAKEN_OVER:
            log.warning("idempotency record %s was taken over; writes rolled back", ident.id[:12])
            await self._problem(taken_over(self.policy), Outcome.CONFLICT_IN_FLIGHT)
            return
        for message in held:
            await self.send(message)

    async def _settle(
        self, ident: Identity, token: int, capture: Capture | None, lease: Lease
    ) -> bool:
        """Settle the record (retried within the lease); False if a result to keep could not
        be stored, so the answer must not go out as final."""
        obs = self.obs
        settlement = (
            capture.settlement(self.policy, obs.trace_ids, obs.stored_headers())
            if capture is not None
            else Release()
        )
        started = time.perf_counter()
        try:
            name = await asettle_record(self.store, ident.id, token, settlement, self.policy, lease)
        except StoreError as exc:
            log.error("could not settle idempotency record %s: %s", ident.id[:12], exc)
            # An unreleased failure stays a failure: only a result to keep is withheld.
            return not isinstance(settlement, Complete)
        if obs is not NULL_OBSERVATION:
            obs.store_time(name, time.perf_counter() - started)
        return True

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

    async def _read_body(self, limit: int) -> bool:
        """Buffer the request body (SPEC 16); False if the request was answered or abandoned."""
        try:
            declared = declared_length(self.headers)
        except InvalidLength as exc:  # servers refuse these first; a lenient one may not
            await self._problem(malformed_body(self.policy, str(exc)))
            return False
        if declared is not None and declared > limit:
            await self._problem(too_large(self.policy, limit))
            return False
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] != "http.request":  # http.disconnect: nobody to answer
                return False
            self.messages.append(message)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._problem(too_large(self.policy, limit))
                return False
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        self.body = b"".join(chunks)
        return True

    async def _problem(self, problem: ProblemResponse, outcome: Outcome = Outcome.REJECTED) -> None:
        self.obs.finish(outcome, problem.status)
        await self.send(
            {
                "type": "http.response.start",
                "status": problem.status,
                "headers": [(k.encode(), v.encode()) for k, v in problem.headers],
            }
        )
        await self.send({"type": "http.response.body", "body": problem.body})
