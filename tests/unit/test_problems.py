"""RFC 9457 problem responses (SPEC rule 18, _problems.py)."""

from __future__ import annotations

import json

import pytest

from retrysafe._policy import Policy, Problem
from retrysafe._problems import CONTENT_TYPE, TITLES, render


def document(problem: Problem, policy: Policy | None = None) -> dict[str, object]:
    response = render(problem, "what went wrong", policy or Policy())
    doc = json.loads(response.body)
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("problem", list(Problem))
def test_problem_document_has_the_rfc9457_members(problem: Problem) -> None:
    response = render(problem, "what went wrong", Policy())
    doc = json.loads(response.body)
    assert doc == {
        "type": f"urn:retrysafe:problem:{problem.value}",
        "title": TITLES[problem],
        "status": response.status,
        "detail": "what went wrong",
    }
    headers = dict(response.headers)
    assert headers["content-type"] == "application/problem+json" == CONTENT_TYPE
    assert headers["content-length"] == str(len(response.body))
    assert "retry-after" not in headers
    assert len(response.headers) == len(headers)  # no header twice


def test_every_problem_has_a_distinct_type_and_title() -> None:
    types = {document(p)["type"] for p in Problem}
    titles = {TITLES[p] for p in Problem}
    assert len(types) == len(titles) == len(Problem) == 9
    assert set(TITLES) == set(Problem)


@pytest.mark.parametrize(
    ("problem", "status"),
    [
        (Problem.MISSING_KEY, 400),
        (Problem.MALFORMED_KEY, 400),
        (Problem.MISMATCH, 422),
        (Problem.IN_FLIGHT, 409),
        (Problem.UNREPLAYABLE, 409),
        (Problem.STORE_UNAVAILABLE, 503),
        (Problem.BODY_TOO_LARGE, 413),
        (Problem.MALFORMED_BODY, 400),
    ],
)
def test_default_status(problem: Problem, status: int) -> None:
    response = render(problem, "d", Policy())
    assert response.status == status
    assert json.loads(response.body)["status"] == status


def test_status_comes_from_the_policy() -> None:
    policy = Policy(problem_status={Problem.MISMATCH: 409, Problem.STORE_UNAVAILABLE: 500})
    for problem, status in ((Problem.MISMATCH, 409), (Problem.STORE_UNAVAILABLE, 500)):
        response = render(problem, "d", policy)
        assert response.status == status
        assert json.loads(response.body)["status"] == status


def test_type_uri_base_is_configurable() -> None:
    policy = Policy(problem_base_uri="https://api.example.com/errors/")
    doc = document(Problem.MISMATCH, policy)
    assert doc["type"] == "https://api.example.com/errors/key-mismatch"


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(0, "1"), (0.001, "1"), (1, "1"), (1.0, "1"), (1.2, "2"), (4.99, "5"), (5, "5"), (120, "120")],
)
def test_retry_after_is_whole_seconds_rounded_up_at_least_one(
    retry_after: float, header: str
) -> None:
    response = render(Problem.IN_FLIGHT, "d", Policy(), retry_after=retry_after)
    assert dict(response.headers)["retry-after"] == header
    assert header.isdigit()  # RFC 9110 delay-seconds: digits only


def test_retry_after_for_the_unavailable_default() -> None:
    policy = Policy()
    response = render(
        Problem.STORE_UNAVAILABLE, "d", policy, retry_after=policy.unavailable_retry_after_s
    )
    assert response.status == 503
    assert dict(response.headers)["retry-after"] == "5"


def test_detail_is_json_escaped_and_utf8() -> None:
    detail = 'quote " backslash \\ newline \n snowman \u2603'
    response = render(Problem.MALFORMED_KEY, detail, Policy())
    assert json.loads(response.body.decode("utf-8"))["detail"] == detail


def test_rendered_header_lists_are_not_shared() -> None:
    policy = Policy()
    one = render(Problem.MISMATCH, "a", policy)
    one.headers.append(("x", "y"))
    two = render(Problem.MISMATCH, "a", policy)
    assert ("x", "y") not in two.headers
