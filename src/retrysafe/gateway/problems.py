"""RFC 9457 problems the gateway answers when the upstream fails (502, 504).

Same shape as the middleware's problems (``retrysafe.problems``), with their own ``type`` URIs
under the same base. They are 5xx, so the middleware never stores them (SPEC 12): the claim
is released and a retry with the same key reaches the upstream again.
"""

from __future__ import annotations

import enum
import json

from retrysafe.policy import PROBLEM_BASE_URI
from retrysafe.problems import CONTENT_TYPE, ProblemResponse


class UpstreamProblem(enum.Enum):
    UNREACHABLE = ("upstream-unreachable", 502, "Upstream unreachable")
    FAILED = ("upstream-failed", 502, "Upstream failed")
    TIMEOUT = ("upstream-timeout", 504, "Upstream timed out")

    def __init__(self, slug: str, status: int, title: str) -> None:
        self.slug, self.status, self.title = slug, status, title


def upstream_problem(problem: UpstreamProblem, detail: str) -> ProblemResponse:
    doc = {
        "type": PROBLEM_BASE_URI + problem.slug,
        "title": problem.title,
        "status": problem.status,
        "detail": detail,
    }
    body = json.dumps(doc).encode()
    headers = [("content-type", CONTENT_TYPE), ("content-length", str(len(body)))]
    return ProblemResponse(problem.status, headers, body)
