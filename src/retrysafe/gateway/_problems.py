"""RFC 9457 problems the gateway answers itself: requests it refuses (400), upstream failures
(502, 504).

Same shape as the middleware's problems (``retrysafe._problems``), with their own ``type`` URIs
under the same base. The 502s and 504s are 5xx, so the middleware never stores them (SPEC 12):
the claim is released and a retry with the same key reaches the upstream again. The 400s come
before the middleware: nothing is claimed.
"""

from __future__ import annotations

import enum
import json

from retrysafe._policy import PROBLEM_BASE_URI
from retrysafe._problems import CONTENT_TYPE, ProblemResponse


class UpstreamProblem(enum.Enum):
    UNREACHABLE = ("upstream-unreachable", 502, "Upstream unreachable")
    FAILED = ("upstream-failed", 502, "Upstream failed")
    TIMEOUT = ("upstream-timeout", 504, "Upstream timed out")

    def __init__(self, slug: str, status: int, title: str) -> None:
        self.slug, self.status, self.title = slug, status, title


def gateway_problem(problem: UpstreamProblem | RequestProblem, detail: str) -> ProblemResponse:
    doc = {
        "type": PROBLEM_BASE_URI + problem.slug,
        "title": problem.title,
        "status": problem.status,
        "detail": detail,
    }
    body = json.dumps(doc).encode()
    headers = [("content-type", CONTENT_TYPE), ("content-length", str(len(body)))]
    return ProblemResponse(problem.status, headers, body)


class RequestProblem(enum.Enum):
    """Requests the gateway refuses before anything is claimed or forwarded."""

    PATH = ("path-refused", 400, "Request path refused")
    FRAMING = ("framing-refused", 400, "Request framing refused")

    def __init__(self, slug: str, status: int, title: str) -> None:
        self.slug, self.status, self.title = slug, status, title


def request_problem(problem: RequestProblem, detail: str) -> ProblemResponse:
    """The refusal, with ``Connection: close``: whatever the client sent after this request's
    head (a body, or bytes meant to be read as a second request) is never read."""
    answer = gateway_problem(problem, detail)
    return ProblemResponse(answer.status, [*answer.headers, ("connection", "close")], answer.body)
