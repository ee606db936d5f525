"""The request/response model both server adapters share; no I/O here either.

An adapter turns its framework's request into plain values, asks :func:`look` what to do,
reads the body when told to, and feeds the response it forwards through a :class:`Capture`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from retrysafe._decide import Admission, Keyed, Pass, Refuse, Settlement, admit, settle
from retrysafe._fingerprint import RequestFacts, view_of
from retrysafe._outcomes import Outcome
from retrysafe._policy import Policy, Problem, storage_id
from retrysafe._problems import ProblemResponse, render
from retrysafe._scopes import PrincipalKey, wants

HeaderList = Sequence[tuple[str, str]]
RawHeaderList = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class ReadBody:
    """The key may be in the JSON body (``policy.body_field``): read it, then look again."""


class KeyHeaders:
    """The policy's key header names, lowercased once: finding them in a request is then one
    dict lookup per request header, or one search per name in a :class:`HeaderView` (adapters
    build this in ``__init__``)."""

    __slots__ = ("_count", "_index", "_names")

    def __init__(self, policy: Policy) -> None:
        self._index = {name.lower(): i for i, name in enumerate(policy.header_names)}
        self._names = tuple(self._index)
        self._count = len(policy.header_names)

    def values(self, headers: HeaderList) -> list[list[str]]:
        """For each key header name, in policy order, the values of every line carrying it."""
        view = view_of(headers)
        if view is not None:  # the adapters' headers: nothing decoded but the keys
            return [view.lines(name) for name in self._names]
        found: list[list[str]] = [[] for _ in range(self._count)]
        index = self._index
        for k, v in headers:
            i = index.get(k.lower())
            if i is not None:
                found[i].append(v)
        return found


def look(
    policy: Policy,
    method: str,
    path: str,
    headers: HeaderList,
    body: bytes | None = None,
    *,
    keys: KeyHeaders | None = None,
) -> Admission | ReadBody:
    """Admission of a request; the body is needed only to find a key in a body field."""
    values = (keys or KeyHeaders(policy)).values(headers)
    body_key = None
    field = policy.body_field
    if field and policy.covers(method) and not any(values):
        if body is None:
            return ReadBody()
        found = _body_field(body, field)
        if found:
            if len(found) > 1 or not isinstance(found[0], str):
                return Refuse(
                    Problem.MALFORMED_KEY,
                    f"the {field!r} body field must be one JSON string holding the "
                    f"idempotency key, not {_json_kind(found)}",
                    Outcome.REJECTED,
                )
            body_key = found[0]
            if len(body) > policy.body_limit:  # read up to max_body to find the key
                return Refuse(Problem.BODY_TOO_LARGE, _too_large(policy), Outcome.REJECTED)
    return admit(method, path, values, policy, body_key)


def read_limit(admission: Keyed | ReadBody, policy: Policy) -> int:
    """How much request body to buffer: up to ``max_body`` to look for a key in it (SPEC 16),
    up to ``policy.body_limit`` for a keyed request, whose body is fingerprinted."""
    return policy.max_body if isinstance(admission, ReadBody) else policy.body_limit


class _Members(list[tuple[str, object]]):
    """A JSON object's members in order, a repeated name kept (json.loads' object_pairs_hook)."""


def _body_field(body: bytes, name: str) -> list[object]:
    """Every value of the top-level member ``name`` of a JSON object body (none if the body
    is no JSON object; several if the object repeats the name)."""
    try:
        doc = json.loads(body, object_pairs_hook=_Members)
    # RecursionError: nesting deeper than the stack, which is not a key either.
    except (ValueError, RecursionError):
        return []
    return [v for k, v in doc if k == name] if isinstance(doc, _Members) else []


def _json_kind(found: list[object]) -> str:
    if len(found) > 1:
        return f"{len(found)} members of that name"
    value = found[0]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    return (
        "an array" if isinstance(value, list) and not isinstance(value, _Members) else "an object"
    )


class InvalidLength(ValueError):
    """A Content-Length that is not a non-negative decimal integer (``str()`` says so)."""


def declared_length(headers: HeaderList) -> int | None:
    """The Content-Length the client declared, None if it declared none.

    Raises :class:`InvalidLength` for any other value: the body's end is then unknown, so
    nothing read from it could be trusted to be the whole body.
    """
    view = view_of(headers)
    if view is not None:
        value = view.first("content-length")
    else:
        value = next((v for k, v in headers if k.lower() == "content-length"), None)
    if value is None:
        return None
    digits = value.strip(" \t")
    if digits.isascii() and digits.isdigit():  # isdigit() alone admits "²"
        return int(digits)
    raise InvalidLength(
        f"Content-Length {value[:40]!r} is not a non-negative decimal integer, so the end of "
        "the request body is unknown; nothing was processed"
    )


def malformed_body(policy: Policy, detail: str) -> ProblemResponse:
    return render(Problem.MALFORMED_BODY, detail, policy)


def cut_short(policy: Policy, received: int, declared: int | None) -> ProblemResponse:
    """The body ended before its framing said it would (the client went away mid-upload)."""
    expected = f"of the {declared} bytes its Content-Length declares" if declared else ""
    return malformed_body(
        policy,
        f"the request body ended after {received} bytes {expected}".rstrip()
        + "; nothing was processed and nothing stored - send the whole request again with "
        "the same key",
    )


def too_large(policy: Policy, limit: int | None = None) -> ProblemResponse:
    """413: the body is over ``limit`` bytes (default: what a keyed request may send)."""
    return render(Problem.BODY_TOO_LARGE, _too_large(policy, limit), policy)


def _too_large(policy: Policy, limit: int | None = None) -> str:
    limit = policy.body_limit if limit is None else limit
    if limit < policy.max_body:
        why = (
            "the most this endpoint canonicalizes as JSON to check idempotency keys "
            "(Policy.max_json_body)"
        )
    else:
        why = "the most this endpoint buffers to check idempotency keys (Policy.max_body)"
    return f"the request body exceeds {limit} bytes, {why}"


def unstored(policy: Policy, lease_left: float) -> ProblemResponse:
    """The handler ran, but its result could not be stored even after retries: its answer is
    withheld, so the client does not take for final what a retry would not see again.

    ``Retry-After`` covers what is left of the claim's lease (``lease_left`` seconds): until it
    lapses a retry would only get 409 in flight; after it, the retry takes the key over."""
    return render(
        Problem.STORE_UNAVAILABLE,
        "the request was processed, but the idempotency store could not record its result, "
        "so the answer is withheld; retry with the same key after the Retry-After delay (the "
        "operation then runs again: make it safe to repeat, or use atomic completion)",
        policy,
        retry_after=max(policy.unavailable_retry_after_s, lease_left),
    )


def taken_over(policy: Policy) -> ProblemResponse:
    """An atomic attempt fenced out at commit (SPEC 13a): 409 in flight with Retry-After."""
    return render(
        Problem.IN_FLIGHT,
        "this attempt's claim on the idempotency key lapsed and a retry took it over; nothing "
        "this attempt wrote was committed - retry after the Retry-After delay to get the result",
        policy,
        retry_after=max(1.0, policy.in_flight_retry_after_s),
    )


def refusal(refuse: Refuse, policy: Policy) -> ProblemResponse:
    return render(refuse.problem, refuse.detail, policy, retry_after=refuse.retry_after)


class Identity(NamedTuple):  # built on every keyed request: a tuple costs a third of a dataclass
    """Where a keyed request lives in the store and what it must match."""

    key: str
    id: str
    fingerprint: str
    scope: str = ""  # the principal id (a keyed hash), for telemetry; never the credential


def identify(
    key: str, facts: RequestFacts, policy: Policy, principals: PrincipalKey
) -> Identity | Refuse:
    """The request's identity, or a refusal when the scope cannot tell who sent it."""
    principal = policy.scope(facts)
    if principal is None:
        return Refuse(
            Problem.UNSCOPED,
            f"this request carries an idempotency key but not what this endpoint uses to tell "
            f"whose key it is ({wants(policy.scope)}); send it with credentials, or without "
            "the key. Operators: choose who owns keys with Policy(scope=...), see "
            "retrysafe._scopes",
            Outcome.REJECTED,
        )
    scope = principals.id_of(principal)
    return Identity(key, storage_id(scope, key), policy.fingerprint_of(facts), scope)


@functools.lru_cache(maxsize=16)
def _raw_names(names: frozenset[str]) -> frozenset[bytes]:
    return frozenset(name.encode("latin-1") for name in names)


class Capture:
    """Watches a response go by and keeps a copy of it while it fits the cache cap.

    Response headers are kept as the server adapter got them (ASGI: raw bytes) and decoded
    only when the response is settled, and then only the allow-listed ones (SPEC 8).
    """

    __slots__ = (
        "chunks",
        "finished",
        "headers",
        "max_body",
        "overflow",
        "raw",
        "retry_after",
        "size",
        "status",
    )

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.status: int | None = None
        self.headers: HeaderList = ()
        self.raw: RawHeaderList | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.finished = False
        self.retry_after = False  # the answer asks the client to come back (never stored)

    def start(self, status: int, headers: HeaderList) -> None:
        self.status = status
        self.headers = list(headers)
        for k, v in headers:
            name = k.lower()
            if name == "content-type" and v.lower().startswith("text/event-stream"):
                self.overflow = True  # an event stream's meaning is its timing: never replayed
            elif name == "retry-after":
                self.retry_after = True

    def start_raw(self, status: int, headers: RawHeaderList) -> None:
        """:meth:`start` for ASGI's (bytes, bytes) headers, without decoding them yet."""
        self.status = status
        self.raw = headers
        for k, v in headers:
            name = k.lower()
            if name == b"content-type" and v.lower().startswith(b"text/event-stream"):
                self.overflow = True
            elif name == b"retry-after":
                self.retry_after = True

    def chunk(self, data: bytes) -> None:
        self.size += len(data)
        if self.overflow:
            return
        if self.size > self.max_body:
            self.overflow = True
            self.chunks = []
            return
        if data:
            self.chunks.append(data)

    def end(self) -> None:
        self.finished = True

    def settlement(
        self,
        policy: Policy,
        trace: tuple[str, str] | None = None,
        internal: HeaderList = (),
    ) -> Settlement:
        asks = self.retry_after
        if not self.finished or self.overflow:
            return settle(
                self.status, (), None, policy, trace=trace, internal=internal, retry_after=asks
            )
        headers = self.headers
        if self.raw is not None:  # decode only what settle() may keep
            wanted = _raw_names(policy.replay_headers)
            headers = [
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in self.raw
                if k.lower() in wanted
            ]
        body = b"".join(self.chunks)
        return settle(
            self.status, headers, body, policy, trace=trace, internal=internal, retry_after=asks
        )


__all__ = [
    "Capture",
    "Identity",
    "InvalidLength",
    "KeyHeaders",
    "Keyed",
    "Outcome",
    "Pass",
    "ReadBody",
    "Refuse",
    "cut_short",
    "declared_length",
    "identify",
    "look",
    "malformed_body",
    "read_limit",
    "refusal",
    "taken_over",
    "too_large",
    "unstored",
]
