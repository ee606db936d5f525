"""One request's trip through either middleware, written once: admit, claim, execute, settle.

The flows here decide everything - what the request needs, which problem answers it, what
to store, what telemetry sees - and *yield* the I/O they need done: read the body, claim the
key, settle the record, open or finish an atomic unit. Each I/O is a method of the
:class:`Exchange`, which each middleware's responder implements with its own I/O (the httpx
auth-flow pattern, as ``engine.claim_flow`` and ``client/_flow.py``): the ASGI one returns the
awaitable that performs it, which :func:`adrive` awaits and sends back in (an error is thrown
back in); the WSGI one performs it there and then, and :func:`drive` hands the result straight
back in (an error is raised in the flow itself). What is left in the middlewares is framework
I/O: reading the body, calling the application, forwarding and holding its answer.

    admit_flow ──> Forward | FailOpen | Respond | Run | None
                                                   └──> the middleware runs the handler, then
                                                        settle_flow (or, atomic: open_flow,
                                                        then commit_flow)

Speed (issue 17; a keyed request runs this on every call): the flow yields the I/O methods'
results, not step objects the middleware would dispatch on, the claim is part of the
admission's generator (no nested ``yield from``), and the verdicts are ``__slots__`` classes
(a NamedTuple's generated ``__new__`` costs twice as much). Measured with ``bench/run.py
--quick`` against step NamedTuples and a nested claim generator: see CHANGELOG.md.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from retrysafe._decide import (
    Complete,
    Execute,
    Keyed,
    Pass,
    Refuse,
    Release,
    Replay,
    Settlement,
    replay_headers,
)
from retrysafe._engine import Ending, StoreTimer, atomic_policy, require_atomic
from retrysafe._fingerprint import INLINE_JSON_LIMIT, RequestFacts
from retrysafe._keyring import Keyring
from retrysafe._lease import Lease
from retrysafe._outcomes import Outcome
from retrysafe._policy import Policy
from retrysafe._problems import ProblemResponse, store_unavailable
from retrysafe.errors import StoreError, StoreUnavailable
from retrysafe.http._exchange import (
    Capture,
    HeaderList,
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
from retrysafe.stores import AtomicUnit
from retrysafe.telemetry import NULL_OBSERVATION, Observation, Telemetry, observe

log = logging.getLogger("retrysafe")

# -- what the admission tells the middleware to do ---------------------------------------------


class Forward:
    """No key, none needed: hand the request (its body re-fed, if it was read) to the app."""

    __slots__ = ()


class FailOpen:
    """The store is down and the policy fails open: run the handler unprotected, then
    :meth:`Exchange.failed_open` with its status."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


class Respond:
    """Send this answer (a problem, or a replay); telemetry already has it."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


class Run:
    """Run the handler under the claim, then settle it (:func:`settle_flow`, or for an atomic
    middleware :func:`open_flow` first and :func:`commit_flow` at the end)."""

    __slots__ = ("ident", "lease", "token")

    def __init__(self, ident: Identity, token: int, lease: Lease) -> None:
        self.ident, self.token, self.lease = ident, token, lease


Verdict = Forward | FailOpen | Respond | Run | None  # None: the client left while uploading
# What a flow yields is whatever the responder's I/O method returned (an awaitable under ASGI,
# the result under WSGI); what it is sent back is that I/O's result.
Flow = Generator[Any, Any, Any]

FORWARD = Forward()
RELEASE = Release()
_NEEDS_BODY = (ReadBody, Keyed)  # built once: ``ReadBody | Keyed`` makes a union per use


class Setup:
    """What a middleware fixes in ``__init__``, the same for ASGI and WSGI."""

    def __init__(
        self, store: object, policy: Policy | None, telemetry: Telemetry | None, atomic: bool
    ) -> None:
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


class Exchange:
    """One request's state as the flows see it, and the I/O they yield: each middleware's
    responder is one, and implements the I/O methods below with its own I/O - returning the
    awaitable that performs it (ASGI, :func:`adrive`), or performing it (WSGI, :func:`drive`)."""

    __slots__ = ("body", "headers", "key_headers", "keyring", "obs", "policy", "telemetry")

    def __init__(self, setup: Setup, headers: HeaderList) -> None:
        self.policy, self.telemetry = setup.policy, setup.telemetry
        self.key_headers, self.keyring = setup.key_headers, setup.keyring
        self.headers = headers  # decoded only where read
        self.body: bytes | None = None
        self.obs: Observation = NULL_OBSERVATION

    # -- what the framework knows, and the I/O the flows yield -----------------------------------

    def facts(self, body: bytes) -> RequestFacts:
        """The request's facts for its fingerprint and scope."""
        raise NotImplementedError

    def read_body(self, limit: int, declared: int | None) -> Any:
        """Read the request body, at most ``limit`` bytes (``declared`` by Content-Length, if
        sent). Result: the bytes; a problem (over the limit, cut short); None: the client left."""
        raise NotImplementedError

    def offload(self, call: Callable[[], Any]) -> Any:
        """Run ``call`` where it cannot stall other requests (an event loop: a thread); result:
        its result. Parsing or hashing a large body is CPU work the loop must not wait on."""
        raise NotImplementedError

    def load_principals(self) -> Any:
        """Load (or create) the deployment's principal secret from the store; result: the
        ``PrincipalKey``. Asked once per process."""
        raise NotImplementedError

    def claim(self, ident: Identity, timer: StoreTimer | None) -> Any:
        """Claim the request's key and wait out a duplicate in flight; result: the decision."""
        raise NotImplementedError

    def settle_record(self, run: Run, settlement: Settlement) -> Any:
        """Complete or release the claim (retried within the lease); result: None."""
        raise NotImplementedError

    def open_unit(self, run: Run) -> Any:
        """Open the atomic unit of the claim (SPEC 13a); result: the unit."""
        raise NotImplementedError

    def finish_unit(self, unit: AtomicUnit, settlement: Settlement) -> Any:
        """Commit or roll back the atomic unit as ``settlement`` says; result: its Ending."""
        raise NotImplementedError

    # -- answers ------------------------------------------------------------------------------

    def refuse(self, problem: ProblemResponse, outcome: Outcome = Outcome.REJECTED) -> Respond:
        """Answer with ``problem``, reported as ``outcome``."""
        self.obs.finish(outcome, problem.status)
        return Respond(problem.status, problem.headers, problem.body)

    def failed_open(self, status: int) -> None:
        """The unprotected handler of a :class:`FailOpen` answered ``status``."""
        self.obs.finish(Outcome.STORE_ERROR, status)

    # The handler ran, but its result could not be stored (the store stayed down through the
    # retries): the answer must not go out as final, since a retry would not see it again.

    def withhold(self, run: Run) -> Respond:
        """Nothing was sent yet: a 503 in place of the answer."""
        self.obs.executed(503)
        problem = unstored(self.policy, run.lease.expires - time.monotonic())
        return Respond(problem.status, problem.headers, problem.body)

    def unfinished(self, run: Run) -> StoreUnavailable:
        """Bytes went out already: the error that fails the response, so the server aborts
        the connection and the client retries."""
        self.obs.executed(503)
        return StoreUnavailable(
            f"the result of idempotency record {run.ident.id[:12]} could not be stored; the "
            "end of its answer was withheld so the client does not take it for final"
        )


def admit_flow(ex: Exchange, method: str, path: str) -> Flow:
    """What to do with a covered request: forward it, answer it, or run it under a claim."""
    policy, headers = ex.policy, ex.headers
    admission = look(policy, method, path, headers, keys=ex.key_headers)
    if isinstance(admission, Pass):  # nothing read: the app reads the body itself
        return FORWARD
    ex.obs = observe(ex.telemetry, method, path, headers)
    if isinstance(admission, _NEEDS_BODY):
        limit = read_limit(admission, policy)
        try:
            declared = declared_length(headers)
        except InvalidLength as exc:  # servers refuse these first; a lenient one may not
            return ex.refuse(malformed_body(policy, str(exc)))
        if declared is not None and declared > limit:
            return ex.refuse(too_large(policy, limit))
        read = yield ex.read_body(limit, declared)
        if read is None:  # nobody to answer
            return None
        if isinstance(read, ProblemResponse):
            return ex.refuse(read)
        ex.body = read
    if isinstance(admission, ReadBody):
        body = ex.body or b""
        look_again = functools.partial(
            look, policy, method, path, headers, body, keys=ex.key_headers
        )
        if len(body) > INLINE_JSON_LIMIT:  # parsing it would stall a loop
            admission = yield ex.offload(look_again)
        else:
            admission = look_again()
    # isinstance, the hot case first: a class pattern (``case Keyed(key)``) costs several
    # times an isinstance and an attribute read (MATCH_CLASS looks up ``__match_args__``).
    if not isinstance(admission, Keyed):
        if isinstance(admission, Pass):
            return FORWARD
        if isinstance(admission, Refuse):
            return ex.refuse(refusal(admission, policy), admission.outcome)
        raise AssertionError(f"unexpected admission {admission!r}")  # pragma: no cover
    # The claim, in this generator rather than a nested one (``yield from``: a frame more to
    # start and to pass every step through).
    key, obs = admission.key, ex.obs
    facts = ex.facts(ex.body or b"")
    claimed_at = time.monotonic()  # the lease began no earlier
    try:
        principals = ex.keyring.current or (yield ex.load_principals())
        if len(facts.body) > policy.inline_fingerprint_limit:  # hashing it would stall a loop
            ident = yield ex.offload(functools.partial(identify, key, facts, policy, principals))
        else:
            ident = identify(key, facts, policy, principals)
        if isinstance(ident, Refuse):
            return ex.refuse(refusal(ident, policy), ident.outcome)
        obs.keyed(key, ident.scope, ident.fingerprint)
        # No store timer when telemetry is off: nothing would read the times.
        decision = yield ex.claim(ident, None if obs is NULL_OBSERVATION else obs.store_time)
    except StoreError as exc:
        if policy.fail_open:
            log.warning("idempotency store unavailable, failing open: %s", exc)
            return FailOpen(key)
        log.error("idempotency store unavailable, failing closed: %s", exc)
        return ex.refuse(store_unavailable(policy, exc), Outcome.STORE_ERROR)
    if isinstance(decision, Execute):
        obs.decided(decision.outcome, decision.previous)
        lease = Lease(ident.id, claimed_at, policy.lease_s, obs.lease_lost)
        return Run(ident, decision.token, lease)
    if isinstance(decision, Replay):
        response = decision.response
        obs.replayed(response)
        obs.finish(decision.outcome, response.status)
        return Respond(response.status, replay_headers(response), response.body)
    if isinstance(decision, Refuse):
        return ex.refuse(refusal(decision, policy), decision.outcome)
    raise AssertionError(f"unexpected decision {decision!r}")  # pragma: no cover


def _settlement(ex: Exchange, capture: Capture | None) -> Settlement:
    """What to store of the answer ``capture`` saw (None: the handler failed, release)."""
    if capture is None:
        return RELEASE
    obs = ex.obs
    return capture.settlement(ex.policy, obs.trace_ids, obs.stored_headers())


def settle_flow(ex: Exchange, run: Run, capture: Capture | None) -> Flow:
    """Settle the claim as ``capture`` says; returns False if a result to keep could not be
    stored, so the answer must not go out as final."""
    settlement = _settlement(ex, capture)
    started = time.perf_counter()
    try:
        yield ex.settle_record(run, settlement)
    except StoreError as exc:
        log.error("could not settle idempotency record %s: %s", run.ident.id[:12], exc)
        # An unreleased failure stays a failure: only a result to keep is withheld.
        return not isinstance(settlement, Complete)
    obs = ex.obs
    if obs is not NULL_OBSERVATION:  # telemetry off: no clock to read, nobody to tell
        obs.settled(settlement, time.perf_counter() - started)
    return True


def open_flow(ex: Exchange, run: Run) -> Flow:
    """Open the atomic unit of ``run``; returns it, or the 503 to answer when the store failed
    (the claim is then released)."""
    try:
        return (yield ex.open_unit(run))
    except StoreError as exc:
        log.error("idempotency store unavailable, failing closed: %s", exc)
        yield from settle_flow(ex, run, None)  # the lease lapses if this fails too
        return ex.refuse(store_unavailable(ex.policy, exc), Outcome.STORE_ERROR)


def commit_flow(ex: Exchange, run: Run, unit: AtomicUnit, capture: Capture) -> Flow:
    """Commit ``unit`` with the answer ``capture`` saw (SPEC 13a); returns None when the answer
    may go out, else the problem to answer instead (the store failed, or the claim was taken
    over and the handler's writes rolled back)."""
    settlement = _settlement(ex, capture)
    started = time.perf_counter()
    try:
        ending = yield ex.finish_unit(unit, settlement)
    except StoreError as exc:
        log.error("could not commit idempotency record %s: %s", run.ident.id[:12], exc)
        return ex.refuse(store_unavailable(ex.policy, exc), Outcome.STORE_ERROR)
    ex.obs.settled(settlement, time.perf_counter() - started)
    if ending is Ending.TAKEN_OVER:
        log.warning("idempotency record %s was taken over; writes rolled back", run.ident.id[:12])
        return ex.refuse(taken_over(ex.policy), Outcome.CONFLICT_IN_FLIGHT)
    return None


# -- the drivers -----------------------------------------------------------------------------


def drive(flow: Flow) -> Any:
    """Run ``flow`` to its end with sync I/O (each I/O method performed it already and gave
    its result, or raised in the flow); returns what the flow returns."""
    try:
        result = next(flow)
        while True:
            result = flow.send(result)
    except StopIteration as done:
        return done.value


async def adrive(flow: Flow) -> Any:
    """Run ``flow`` to its end with async I/O: await each awaitable it yields, send the result
    back in (or throw the error in); returns what the flow returns."""
    try:
        pending: Awaitable[Any] = next(flow)
        while True:
            try:
                result = await pending
            except BaseException as exc:
                pending = flow.throw(exc)
            else:
                pending = flow.send(result)
    except StopIteration as done:
        return done.value
