"""A method's case is part of the request (found by the HTTP fuzzer, ``kit/fuzz.py``).

Method names are case-sensitive (RFC 9110 §9.1): ``post`` is not ``POST``, and an app may
route it apart (Starlette answers it 405). The fingerprint uppercased the method, so a
``post`` request with the key of a completed ``POST`` was answered with the ``POST``'s stored
result (and a ``POST`` retry with the 405 a ``post`` got) on every door. The gateway also sent
the upstream ``POST`` for a client's ``post`` (httpx uppercases methods), against its
contract of forwarding the method as received. Now a method that differs in case is another
request (422 with the same key), and the gateway forwards the method byte for byte.

The method stays covered whatever its case (``post`` is keyed like ``POST``): Django and
Werkzeug uppercase the method before routing, so for them ``post`` does run the POST view.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from kit.fuzz import DOORS, Door
from kit.servers import raw_request


@pytest.fixture(scope="module", params=sorted(DOORS))
def door(request: pytest.FixtureRequest) -> Iterator[Door]:
    with DOORS[request.param]() as running:
        yield running


def send(door: Door, method: str, key: str, fuzz_id: str) -> tuple[int, bytes]:
    wire = (
        f"{method} /h/ok HTTP/1.1\r\nHost: fuzz.test\r\nX-Fuzz-Id: {fuzz_id}\r\n"
        f"X-Principal: alice\r\nIdempotency-Key: {key}\r\nContent-Length: 2\r\n\r\n{{}}"
    ).encode()
    response = raw_request(door.url, wire)
    assert response is not None
    return response.status, response.body


@pytest.mark.parametrize(
    ("first", "then"), [("POST", "post"), ("post", "POST"), ("PATCH", "Patch")]
)
def test_a_method_in_another_case_is_another_request(door: Door, first: str, then: str) -> None:
    key = f"case-{door.kind}-{first}-{then}"
    status, body = send(door, first, key, f"{key}-1")
    assert status == 201
    assert json.loads(body)["id"] == f"{key}-1"
    status, body = send(door, then, key, f"{key}-2")
    assert status == 422, body  # not the first request's stored answer
    assert json.loads(body)["type"].rsplit(":", 1)[-1] == "key-mismatch"
    status, body = send(door, first, key, f"{key}-3")  # the real retry still replays
    assert (status, json.loads(body)["id"]) == (201, f"{key}-1")
    assert [e.fuzz_id for e in door.recorder.since(0) if e.key == key] == [f"{key}-1"]


def test_the_method_reaches_the_app_as_sent(door: Door) -> None:
    before = len(door.recorder.since(0))
    for n, method in enumerate(["post", "Post", "POST"]):
        status, body = send(door, method, f"as-sent-{door.kind}-{n}", f"as-sent-{n}")
        assert status == 201, body
    seen = door.recorder.since(before)
    method_of = {e.fuzz_id: e for e in seen}
    assert sorted(method_of) == ["as-sent-0", "as-sent-1", "as-sent-2"]
    # the three differ only by the method's case: the app saw three different requests
    assert len({e.digest for e in seen}) == 3
