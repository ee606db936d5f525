"""RFC 9457 problem details for the errors of the idempotency layer (SPEC rule 18)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from retrysafe._policy import Policy, Problem
from retrysafe.errors import StoreError, StoreFull

TITLES = {
    Problem.MISSING_KEY: "Idempotency-Key header required",
    Problem.MALFORMED_KEY: "Malformed Idempotency-Key",
    Problem.MISMATCH: "Idempotency-Key reused with a different request",
    Problem.IN_FLIGHT: "Request with this Idempotency-Key still in progress",
    Problem.UNREPLAYABLE: "Original response cannot be replayed",
    Problem.STORE_UNAVAILABLE: "Idempotency store unavailable",
    Problem.BODY_TOO_LARGE: "Request body too large",
    Problem.MALFORMED_BODY: "Request body cut short or mis-framed",
    Problem.UNSCOPED: "Idempotency-Key sent without identifiable credentials",
}

CONTENT_TYPE = "application/problem+json"


def problem_slug(type_uri: str) -> str:
    """The problem's name at the end of its ``type`` URI, whatever the base.

    The base is configurable (``Policy.problem_base_uri``): the default is a URN
    (``urn:retrysafe:problem:in-flight``), an operator may choose an ``https://…/problems/`` URL,
    so the name is what follows the last ``:`` or ``/``.
    """
    trimmed = type_uri.rstrip("/:")
    return trimmed[max(trimmed.rfind("/"), trimmed.rfind(":")) + 1 :]


@dataclass(frozen=True, slots=True)
class ProblemResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def render(
    problem: Problem, detail: str, policy: Policy, *, retry_after: float | None = None
) -> ProblemResponse:
    """The HTTP response for ``problem``: status from the policy, a distinct ``type`` URI."""
    status = policy.problem_status[problem]
    doc = {
        "type": policy.problem_base_uri + problem.value,
        "title": TITLES[problem],
        "status": status,
        "detail": detail,
    }
    body = json.dumps(doc, ensure_ascii=False).encode("utf-8")
    headers = [("content-type", CONTENT_TYPE), ("content-length", str(len(body)))]
    if retry_after is not None:
        headers.append(("retry-after", str(max(1, math.ceil(retry_after)))))
    return ProblemResponse(status, headers, body)


def store_unavailable(policy: Policy, exc: StoreError | None = None) -> ProblemResponse:
    """503: the store cannot be reached (or is full of requests in flight), so nothing ran."""
    if isinstance(exc, StoreFull):  # reachable, but every record it may hold is in flight
        detail = (
            f"the idempotency {exc.what} is full of requests still in flight, so the request "
            "was not processed; retry with the same key"
        )
    else:
        detail = (
            "the idempotency store cannot be reached, so the request was not processed; "
            "retry with the same key"
        )
    return render(
        Problem.STORE_UNAVAILABLE, detail, policy, retry_after=policy.unavailable_retry_after_s
    )
