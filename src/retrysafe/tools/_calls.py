"""One keyed call through the engine: claim, then replay, refuse, or run and settle (SPEC 28).

The same engine as the HTTP side: :func:`retrysafe._engine.claim_flow` decides (driven by
``run_flow``/``arun_flow``), a heartbeat renews the lease while the function runs, and the
result is completed (or the claim released) with the fencing token. Everything that is not
I/O - what to store, what a stored record means, which error a refusal is - lives in
:class:`CallSpec` and is shared by the sync and async drivers, which are the thin edges.

A result is stored as ``StoredResponse(200, (("content-type", media type),), bytes)``; an
exception listed in ``store_exceptions`` as status 500 with :data:`EXCEPTION_MEDIA_TYPE`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from retrysafe._context import key_scope
from retrysafe._decide import Complete, Execute, Refuse, Release, Replay, Settlement
from retrysafe._engine import (
    AsyncHeartbeat,
    Ending,
    Heartbeat,
    afinish,
    aopen_unit,
    arun_flow,
    asettle_record,
    bound_unit,
    claim_flow,
    finish,
    open_unit,
    require_atomic,
    run_flow,
    settle_record,
)
from retrysafe._outcomes import Outcome
from retrysafe._policy import Policy, Problem
from retrysafe._records import StoredResponse
from retrysafe.errors import (
    ClaimTakenOver,
    ConfigurationError,
    IdempotencyConflict,
    KeyMismatch,
    SerializationError,
    StillInFlight,
    StoreError,
    Unreplayable,
)
from retrysafe.stores import AsyncStore, AtomicUnit, Store
from retrysafe.telemetry import DEFAULT_TELEMETRY, Observation, Telemetry, observe_call
from retrysafe.tools._receivers import identity, receiver_of
from retrysafe.tools._serializer import DEFAULT_SERIALIZER, Serializer, _class_path, _resolve

log = logging.getLogger("retrysafe")

EXCEPTION_MEDIA_TYPE = "application/vnd.retrysafe.exception+json"


@dataclass(frozen=True, slots=True)
class Call:
    """Where one call lives in the store: its key, storage id and fingerprint."""

    key: str
    id: str
    fingerprint: str
    run_id: str | None = None  # the agent run of a tool call (telemetry: gen_ai.conversation.id)


@dataclass(slots=True)
class CallSpec:
    """Everything a decorator fixed when it wrapped ``fn``; the sans-I/O half of a call."""

    fn: Callable[..., Any]
    store: Store | AsyncStore
    policy: Policy
    serializer: Serializer = DEFAULT_SERIALIZER
    store_exceptions: tuple[type[BaseException], ...] = ()
    ignore_args: frozenset[str] = frozenset()
    validate_return: bool = True
    # Telemetry (SPEC 31-34): the operation name, and the tool name for agent tools.
    telemetry: Telemetry | None = DEFAULT_TELEMETRY
    operation: str = ""
    tool: str | None = None
    atomic: bool = False  # SPEC 13a: run in the store's transaction, commit with the record
    signature: inspect.Signature = field(init=False)
    # A method's ``self``/``cls`` parameter: its identity is part of the call (_receivers.py),
    # unless ``ignore_args`` names it. None for plain functions and staticmethods.
    receiver: str | None = field(init=False, default=None)
    _return_checked: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.signature = inspect.signature(self.fn)
        params = set(self.signature.parameters)
        receiver = receiver_of(self.fn)
        if receiver is not None:
            params.add(receiver)  # a bound method's signature no longer shows it
            if receiver not in self.ignore_args:
                self.receiver = receiver
                if inspect.ismethod(self.fn):  # the instance is known now: fail at decoration
                    identity(self.fn.__self__, self.name)
        unknown = self.ignore_args - params
        if unknown:
            raise ConfigurationError(
                f"ignore_args names {sorted(unknown)}, which {self.name} does not take"
            )
        for exc_type in self.store_exceptions:
            if not (isinstance(exc_type, type) and issubclass(exc_type, Exception)):
                raise ConfigurationError(
                    f"store_exceptions must be Exception subclasses, not {exc_type!r}"
                )
            _class_path(exc_type)  # replays must find the class again
        if self.atomic:
            require_atomic(self.store)

    @property
    def name(self) -> str:
        """The function's qualified name, ``module.qualname`` (part of derived keys)."""
        return f"{self.fn.__module__}.{self.fn.__qualname__}"

    def arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The bound arguments with defaults applied, minus ``ignore_args`` (TypeError if bad);
        a method's receiver is replaced by its identity (InstanceIdentityRequired if none)."""
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        found = {k: v for k, v in bound.arguments.items() if k not in self.ignore_args}
        if self.receiver is not None:
            fn = self.fn
            obj = fn.__self__ if inspect.ismethod(fn) else found[self.receiver]
            found[self.receiver] = identity(obj, self.name)
        return found

    def check_return(self) -> None:
        """``validate_return``: refuse before running when the annotation cannot be stored."""
        if self._return_checked or not self.validate_return:
            return
        check = getattr(self.serializer, "check_type", None)
        if check is not None:
            try:
                hints = typing.get_type_hints(self.fn, include_extras=True)
            except Exception:  # unresolvable forward references: check the actual result only
                hints = {}
            if "return" in hints:
                check(hints["return"])
        self._return_checked = True

    # -- what a stored record means ------------------------------------------------------

    def replayed(self, response: StoredResponse, call: Call) -> Any:
        """The stored result, or the stored exception raised again."""
        media = dict(response.headers).get("content-type")
        if response.status == 500 and media == EXCEPTION_MEDIA_TYPE:
            raise self._stored_exception(response.body, call)
        if media != self.serializer.media_type:
            raise SerializationError(
                f"the result stored under key {call.key!r} was written as {media!r}, but this "
                f"function's serializer reads {self.serializer.media_type!r}"
            )
        return self.serializer.loads(response.body)

    def _stored_exception(self, body: bytes, call: Call) -> BaseException:
        doc: Any = DEFAULT_SERIALIZER.loads(body)
        allowed = self.store_exceptions

        def check(cls: type) -> bool:
            return issubclass(cls, allowed) if allowed else False

        cls: Any = _resolve(doc["type"], check, "stored exception listed in store_exceptions")
        try:
            error: BaseException = cls(*doc["args"])
        except Exception as exc:
            raise SerializationError(
                f"cannot rebuild stored exception {doc['type']} for key {call.key!r}: {exc}"
            ) from exc
        return error

    def refused(self, refuse: Refuse, call: Call) -> IdempotencyConflict:
        """The typed error for a refusal (mismatch, still in flight, unreplayable)."""
        match refuse.problem:
            case Problem.MISMATCH:
                return KeyMismatch(
                    f"{self.name}: key {call.key!r} was already used with different arguments; "
                    "use a new key for a new operation",
                    key=call.key,
                )
            case Problem.IN_FLIGHT:
                return StillInFlight(
                    f"{self.name}: a call with key {call.key!r} is still running after waiting "
                    f"{self.policy.wait_s:g} s; retry later to get its result",
                    key=call.key,
                    retry_after=refuse.retry_after or 1.0,
                )
            case Problem.UNREPLAYABLE:
                return Unreplayable(
                    f"{self.name}: the call with key {call.key!r} ran, but its result could not "
                    "be stored, so it cannot be replayed; it will not run again until the "
                    "record expires",
                    key=call.key,
                )
        raise AssertionError(f"unexpected refusal {refuse!r}")  # pragma: no cover

    # -- what to store -------------------------------------------------------------------

    def on_result(self, value: object, call: Call) -> tuple[Settlement, SerializationError | None]:
        """Complete with the serialized result; if it cannot be kept, complete unreplayable.

        The function has run, so its side effect happened: releasing would let a retry run it
        again. Like a response too large to keep (SPEC 15), the record is completed as
        unreplayable, and this call raises the error so the bug is seen at once.
        """
        try:
            body = self.serializer.dumps(value)
        except SerializationError as exc:
            return Complete(StoredResponse(200, (), b"", replayable=False)), exc
        except Exception as exc:  # a custom serializer's own error type
            error = SerializationError(f"{self.name}: result could not be serialized: {exc}")
            error.__cause__ = exc
            return Complete(StoredResponse(200, (), b"", replayable=False)), error
        if len(body) > self.policy.max_cached_body:
            log.warning(
                "%s: result of %d bytes exceeds max_cached_body; stored as unreplayable",
                self.name,
                len(body),
            )
            return Complete(StoredResponse(200, (), b"", replayable=False)), None
        headers = (("content-type", self.serializer.media_type),)
        return Complete(StoredResponse(200, headers, body)), None

    def on_exception(self, exc: BaseException) -> Settlement:
        """SPEC 28: an exception releases the claim, unless it is listed to be stored."""
        if not self.store_exceptions or not isinstance(exc, self.store_exceptions):
            return Release()
        try:
            body = DEFAULT_SERIALIZER.dumps({"type": _class_path(type(exc)), "args": exc.args})
        except SerializationError as err:
            log.warning("%s: cannot store exception %r (%s); releasing", self.name, exc, err)
            return Release()
        return Complete(StoredResponse(500, (("content-type", EXCEPTION_MEDIA_TYPE),), body))

    # -- store faces ---------------------------------------------------------------------

    def sync_store(self) -> Store:
        if not isinstance(self.store, Store):
            raise ConfigurationError(f"{self.name} is a sync function but its store is async-only")
        return self.store

    def async_store(self) -> AsyncStore:
        if not isinstance(self.store, AsyncStore):
            raise ConfigurationError(f"{self.name} is async but its store has no async face")
        return self.store


def _unsettled(spec: CallSpec, call: Call, exc: StoreError) -> None:
    # The function ran; its result still goes to the caller. The claim stays in flight
    # until its lease lapses, after which a retry runs again (outcome "recovered").
    log.error("%s: could not settle record %s: %s", spec.name, call.id[:12], exc)


def _fail_open(spec: CallSpec, exc: StoreError) -> None:
    if not spec.policy.fail_open:
        raise exc
    log.warning("%s: idempotency store unavailable, running unprotected: %s", spec.name, exc)


def _observe(spec: CallSpec, call: Call) -> Observation:
    obs = observe_call(
        spec.telemetry, spec.operation or spec.name, tool=spec.tool, run_id=call.run_id
    )
    obs.keyed(call.key, "", call.fingerprint)
    return obs


def _taken_over(spec: CallSpec, call: Call, ending: Ending | None) -> None:
    if ending is Ending.TAKEN_OVER:
        raise ClaimTakenOver(
            f"{spec.name}: the claim on key {call.key!r} lapsed and another call took it over; "
            "nothing this call wrote in its atomic transaction was committed - retry to get "
            "the result",
            key=call.key,
            retry_after=1.0,
        )


# -- one call as a generator of I/O steps, driven by a sync and an async driver ---------------
# The flow decides everything (what a decision means, what to settle, which error to raise,
# what telemetry sees); the drivers only perform the step they are handed and send back its
# result, or throw its exception in (the httpx auth-flow pattern, as _engine.py).


@dataclass(frozen=True, slots=True)
class _Claim:
    """Run the engine's claim loop; the reply is its :class:`Decision`."""


@dataclass(frozen=True, slots=True)
class _Unprotected:
    """The store is down and the policy fails open: run the function unguarded."""


@dataclass(frozen=True, slots=True)
class _OpenUnit:
    """Open the atomic unit of the claim (SPEC 13a); the reply is the unit."""

    token: int


@dataclass(frozen=True, slots=True)
class _Run:
    """Run the function under the key, with a heartbeat (and the unit bound, if atomic)."""

    token: int
    unit: AtomicUnit | None


@dataclass(frozen=True, slots=True)
class _Settle:
    """Complete or release the claim in the store (reply: None). A store error is logged by
    the driver, not raised: the function has run and its result goes to the caller."""

    token: int
    what: Settlement


@dataclass(frozen=True, slots=True)
class _Finish:
    """Commit or roll back the atomic unit as ``what`` says (reply: its :class:`Ending`)."""

    unit: AtomicUnit
    what: Settlement


_Step = _Claim | _Unprotected | _OpenUnit | _Run | _Settle | _Finish
_CallFlow = typing.Generator[_Step, Any, Any]


def call_flow(spec: CallSpec, call: Call, obs: Observation) -> _CallFlow:
    """One keyed call: claim, then replay, refuse, or run and settle (SPEC 28, 13a)."""
    try:
        decision = yield _Claim()
    except StoreError as exc:
        obs.finish(Outcome.STORE_ERROR)
        _fail_open(spec, exc)
        return (yield _Unprotected())
    match decision:
        case Replay(response):
            obs.replayed(response)
            obs.finish(decision.outcome, response.status)
            return spec.replayed(response, call)
        case Refuse():
            obs.finish(decision.outcome)
            raise spec.refused(decision, call)
        case Execute(token, outcome):
            obs.decided(outcome, decision.previous)
            unit = (yield _OpenUnit(token)) if spec.atomic else None
            try:
                value = yield _Run(token, unit)
            except BaseException as exc:
                taken = unit is not None and isinstance(exc, ClaimTakenOver)
                yield from _settle(token, Release() if taken else spec.on_exception(exc), unit, obs)
                obs.executed(409 if unit is not None and unit.lost else 500)
                raise
            settlement, error = spec.on_result(value, call)
            ending = yield from _settle(token, settlement, unit, obs)
            obs.executed(409 if ending is Ending.TAKEN_OVER else 200)
            _taken_over(spec, call, ending)
            if error is not None:
                raise error
            return value
    raise AssertionError(f"unexpected decision {decision!r}")  # pragma: no cover


def _settle(
    token: int, what: Settlement, unit: AtomicUnit | None, obs: Observation
) -> typing.Generator[_Step, Any, Ending | None]:
    """A settle step with the trace ids and cost kept in the record, and timed."""
    what = obs.annotate(what)
    started = time.perf_counter()
    ending: Ending | None = yield (_Settle(token, what) if unit is None else _Finish(unit, what))
    obs.settled(what, time.perf_counter() - started)
    return ending


def call_sync(spec: CallSpec, call: Call, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Drive :func:`call_flow` for a sync function."""
    store = spec.sync_store()
    obs = _observe(spec, call)
    flow = call_flow(spec, call, obs)
    try:
        step = next(flow)
        while True:
            try:
                match step:
                    case _Claim():
                        claim = claim_flow(call.id, call.fingerprint, spec.policy)
                        reply: Any = run_flow(claim, store, obs.store_time)
                    case _Unprotected():
                        with key_scope(call.key):
                            reply = spec.fn(*args, **kwargs)
                    case _OpenUnit(token):
                        reply = open_unit(store, call.id, token, call.fingerprint, spec.policy)
                    case _Run(token, unit):
                        beat = Heartbeat(store, call.id, token, spec.policy, idle=_idle(unit))
                        with key_scope(call.key), bound_unit(unit), obs.active(), beat:
                            reply = spec.fn(*args, **kwargs)
                    case _Settle(token, what):
                        reply = None
                        try:
                            settle_record(store, call.id, token, what, spec.policy)
                        except StoreError as exc:
                            _unsettled(spec, call, exc)
                    case _Finish(unit, what):
                        reply = finish(unit, store, what, spec.policy)
            except BaseException as exc:
                step = flow.throw(exc)
            else:
                step = flow.send(reply)
    except StopIteration as done:
        return done.value


async def call_async(
    spec: CallSpec, call: Call, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Drive :func:`call_flow` for an async function (the twin of :func:`call_sync`)."""
    store = spec.async_store()
    obs = _observe(spec, call)
    flow = call_flow(spec, call, obs)
    try:
        step = next(flow)
        while True:
            try:
                match step:
                    case _Claim():
                        claim = claim_flow(call.id, call.fingerprint, spec.policy)
                        reply: Any = await arun_flow(claim, store, obs.store_time)
                    case _Unprotected():
                        with key_scope(call.key):
                            reply = await spec.fn(*args, **kwargs)
                    case _OpenUnit(token):
                        opened = aopen_unit(store, call.id, token, call.fingerprint, spec.policy)
                        reply = await opened
                    case _Run(token, unit):
                        beat = AsyncHeartbeat(store, call.id, token, spec.policy, idle=_idle(unit))
                        with key_scope(call.key), bound_unit(unit), obs.active():
                            async with beat:
                                reply = await spec.fn(*args, **kwargs)
                    case _Settle(token, what):
                        reply = None
                        try:
                            await asettle_record(store, call.id, token, what, spec.policy)
                        except StoreError as exc:
                            _unsettled(spec, call, exc)
                    case _Finish(unit, what):
                        reply = await afinish(unit, store, what, spec.policy)
            except BaseException as exc:
                step = flow.throw(exc)
            else:
                step = flow.send(reply)
    except StopIteration as done:
        return done.value


def _idle(unit: AtomicUnit | None) -> Callable[[], bool] | None:
    # An atomic function's open transaction holds the record itself: no renewal needed then.
    return (lambda: unit.holding) if unit is not None else None


Keyer = Callable[[CallSpec, tuple[Any, ...], dict[str, Any]], Call]


def wrap(spec: CallSpec, keyer: Keyer) -> Callable[..., Any]:
    """The wrapper around ``spec.fn``: same signature, sync or async like the original."""
    fn = spec.fn
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            spec.check_return()
            return await call_async(spec, keyer(spec, args, kwargs), args, kwargs)

        return async_wrapper

    @functools.wraps(fn)
    def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
        spec.check_return()
        return call_sync(spec, keyer(spec, args, kwargs), args, kwargs)

    return sync_wrapper
