"""The request/response model both server adapters share; no I/O here either.

An adapter turns its framework's request into plain values, asks :func:`look` what to do,
reads the body when told to, and feeds the response it forwards through a :class:`Capture`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from onceonly.decide import Admission, Keyed, Pass, Refuse, Settlement, admit, settle
from onceonly.fingerprint import RequestFacts
from onceonly.outcomes import Outcome
from onceonly.policy import Policy, Problem, storage_id
from onceonly.problems import ProblemResponse, render

HeaderList = Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class ReadBody:
    """The key may be in the JSON body (``policy.body_field``): read it, then look again."""


def look(
    policy: Policy, method: str, path: str, headers: HeaderList, body: bytes | None = None
) -> Admission | ReadBody:
    """Admission of a request; the body is needed only to find a key in a body field."""
    values = [[v for k, v in headers if k.lower() == name.lower()] for name in policy.header_names]
    body_key = None
    if policy.body_field and policy.covers(method) and not any(values):
        if body is None:
            return ReadBody()
        body_key = _body_field(body, policy.body_field)
    return admit(method, path, values, policy, body_key)


def _body_field(body: bytes, name: str) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    value = doc.get(name) if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


def declared_length(headers: HeaderList) -> int | None:
    """The Content-Length the client declared, if it is a plain non-negative integer."""
    for k, v in headers:
        if k.lower() == "content-length":
            v = v.strip()
            return int(v) if v.isdigit() else None
    return None


def too_large(policy: Policy) -> ProblemResponse:
    return render(
        Problem.BODY_TOO_LARGE,
        f"the request body exceeds {policy.max_body} bytes, the most this endpoint buffers "
        "to check idempotency keys",
        policy,
    )


def unavailable(policy: Policy) -> ProblemResponse:
    return render(
        Problem.STORE_UNAVAILABLE,
        "the idempotency store cannot be reached, so the request was not processed; "
        "retry with the same key",
        policy,
        retry_after=policy.unavailable_retry_after_s,
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


@dataclass(frozen=True, slots=True)
class Identity:
    """Where a keyed request lives in the store and what it must match."""

    key: str
    id: str
    fingerprint: str
    scope: str = ""  # the scope hash, for telemetry (never the credential)


def identify(key: str, facts: RequestFacts, policy: Policy) -> Identity:
    scope = policy.scope(facts)
    return Identity(key, storage_id(scope, key), policy.fingerprint_of(facts), scope)


@dataclass(slots=True)
class Capture:
    """Watches a response go by and keeps a copy of it while it fits the cache cap."""

    max_body: int
    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    overflow: bool = False
    finished: bool = False

    def start(self, status: int, headers: HeaderList) -> None:
        self.status = status
        self.headers = list(headers)
        if any(
            k.lower() == "content-type" and v.lower().startswith("text/event-stream")
            for k, v in headers
        ):
            self.overflow = True  # an event stream's meaning is its timing: never replayed

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
        keep = self.finished and not self.overflow
        body = b"".join(self.chunks) if keep else None
        return settle(self.status, self.headers, body, policy, trace=trace, internal=internal)


__all__ = [
    "Capture",
    "Identity",
    "Keyed",
    "Outcome",
    "Pass",
    "ReadBody",
    "Refuse",
    "declared_length",
    "identify",
    "look",
    "refusal",
    "taken_over",
    "too_large",
    "unavailable",
]
