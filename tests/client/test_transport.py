"""SPEC 20-22, 26, 27 through both transports, on a scripted network (httpx.MockTransport)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from kit.client_harness import Harness, Script, problem, reply
from retrysafe import KeyMismatch, derive_key
from retrysafe._context import key_scope
from retrysafe.client import (
    CallFailed,
    CallReport,
    KeyMismatchResponse,
    RetriesExhausted,
    RetryDeferred,
    RetryPolicy,
)
from retrysafe.testing import set_testing

ATTEMPT = "idempotency-attempt"


def report(response: httpx.Response) -> CallReport:
    info = response.extensions["retrysafe"]
    assert isinstance(info, CallReport)
    return info


def test_post_gets_one_uuid4_key_and_identical_bytes_on_every_attempt(flavor: str) -> None:
    net = Script(reply(503), reply(502), reply(201, body=b"ok"))
    h = Harness(flavor, net)
    response = h.post(json={"amount": 100, "currency": "EUR"}, headers={"X-Trace": "t1"})
    assert response.status_code == 201
    assert len(net.seen) == 3
    keys = {r.headers["idempotency-key"] for r in net.seen}
    assert len(keys) == 1
    key = keys.pop()
    assert uuid.UUID(key).version == 4
    assert [r.headers[ATTEMPT] for r in net.seen] == ["1", "2", "3"]
    # Everything but the attempt number is the same, byte for byte.
    shapes = {
        (
            r.method,
            str(r.url),
            r.content,
            tuple((k, v) for k, v in r.headers.raw if k.lower() != b"idempotency-attempt"),
        )
        for r in net.seen
    }
    assert len(shapes) == 1
    info = report(response)
    assert (info.key, info.attempts, info.replayed, info.outcome) == (key, 3, False, "succeeded")
    assert [a.status for a in info.history] == [503, 502, 201]


def test_a_key_the_caller_set_is_kept_in_either_form(flavor: str) -> None:
    net = Script(reply(201))
    h = Harness(flavor, net)
    h.post(headers={"Idempotency-Key": "order-42"})
    response = h.post(headers={"Idempotency-Key": '"order-43"'})
    assert [r.headers["idempotency-key"] for r in net.seen] == ["order-42", '"order-43"']
    assert report(response).key == "order-43"


def test_safe_methods_get_no_key(flavor: str) -> None:
    net = Script(reply(200))
    response = Harness(flavor, net).request("GET", "http://api.test/charges")
    assert "idempotency-key" not in net.seen[0].headers
    assert report(response).key is None


def test_keys_are_derived_from_the_current_key_one_per_request(flavor: str) -> None:
    net = Script(reply(201))
    h = Harness(flavor, net)
    for _ in range(2):  # a re-run of the same keyed operation re-derives the same keys
        with key_scope("tool-key"):
            h.post()
            h.post()
            h.request("GET", "http://api.test/x")  # not keyed: uses no number
            h.post(headers={"Idempotency-Key": "mine"})  # the caller's own key wins
            h.post()
    sent = [r.headers.get("idempotency-key") for r in net.seen]
    first = [derive_key("tool-key", "1"), derive_key("tool-key", "2"), None, "mine"]
    first.append(derive_key("tool-key", "3"))
    assert sent == first + first
    h.post()  # outside any operation: a fresh random key
    assert uuid.UUID(net.seen[-1].headers["idempotency-key"]).version == 4


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses_are_retried(flavor: str, status: int) -> None:
    net = Script(reply(status), reply(200))
    response = Harness(flavor, net).post()
    assert response.status_code == 200
    assert len(net.seen) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_client_errors_are_never_retried(flavor: str, status: int) -> None:
    net = Script(reply(status, body=b"no"))
    response = Harness(flavor, net).post()
    assert response.status_code == status
    assert len(net.seen) == 1
    assert report(response).outcome == "rejected"


def test_a_server_key_mismatch_raises_and_is_not_retried(flavor: str) -> None:
    net = Script(problem(422, "key-mismatch"))
    with pytest.raises(KeyMismatchResponse) as caught:
        Harness(flavor, net).post(headers={"Idempotency-Key": "k-1"})
    assert len(net.seen) == 1
    err = caught.value
    assert isinstance(err, KeyMismatch)
    assert isinstance(err, httpx.HTTPStatusError)
    assert err.key == "k-1"
    assert err.response.status_code == 422


def test_mismatch_can_be_returned_instead(flavor: str) -> None:
    net = Script(problem(422, "key-mismatch"))
    h = Harness(flavor, net, retry=RetryPolicy(raise_on_mismatch=False))
    response = h.post()
    assert response.status_code == 422
    assert report(response).outcome == "rejected"


def test_in_flight_409_waits_then_gets_the_replay(flavor: str) -> None:
    net = Script(
        problem(409, "request-in-flight", **{"retry-after": "2"}),
        reply(201, {"idempotent-replayed": "true"}, b"charged"),
    )
    h = Harness(flavor, net)
    response = h.post()
    assert response.content == b"charged"
    assert len(net.seen) == 2
    assert h.time.sleeps[0] >= 2.0
    info = report(response)
    assert (info.replayed, info.outcome, info.attempts) == (True, "replayed", 2)


def test_an_unreplayable_409_is_terminal(flavor: str) -> None:
    net = Script(problem(409, "unreplayable"))
    response = Harness(flavor, net).post()
    assert response.status_code == 409
    assert len(net.seen) == 1


def test_exhaustion_raises_with_key_history_and_last_response(flavor: str) -> None:
    net = Script(reply(503, body=b"down"))
    with pytest.raises(RetriesExhausted) as caught:
        Harness(flavor, net).post(headers={"Idempotency-Key": "k-9"})
    err = caught.value
    assert isinstance(err, httpx.TransportError)  # code catching httpx errors keeps working
    assert isinstance(err, CallFailed)
    assert err.key == "k-9"
    assert len(net.seen) == 3
    assert [a.number for a in err.attempts] == [1, 2, 3]
    assert err.last_response is not None
    assert err.last_response.content == b"down"  # the body was read before it was kept
    assert err.parked is None


def test_connect_errors_are_retried_even_without_a_key(flavor: str) -> None:
    net = Script(httpx.ConnectError("refused"), reply(200))
    h = Harness(flavor, net, retry=RetryPolicy(keyed_methods=frozenset()))
    assert h.post().status_code == 200
    assert "idempotency-key" not in net.seen[0].headers
    assert len(net.seen) == 2


def test_maybe_processed_errors_need_a_key_or_an_idempotent_method(flavor: str) -> None:
    unkeyed = Harness(
        flavor,
        Script(httpx.ReadTimeout("slow"), reply(200)),
        retry=RetryPolicy(keyed_methods=frozenset()),
    )
    with pytest.raises(httpx.ReadTimeout):
        unkeyed.post()
    keyed = Script(httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("reset"), reply(200))
    assert Harness(flavor, keyed).post().status_code == 200
    assert len(keyed.seen) == 3
    put = Script(httpx.ReadError("reset"), reply(200))
    assert Harness(flavor, put).request("PUT", "http://api.test/x", content=b"v").status_code == 200


def test_a_5xx_for_an_unsafe_request_is_returned_not_retried(flavor: str) -> None:
    net = Script(reply(500))
    h = Harness(flavor, net, retry=RetryPolicy(keyed_methods=frozenset()))
    response = h.post()
    assert response.status_code == 500
    assert len(net.seen) == 1
    assert report(response).outcome == "failed"


def test_local_errors_are_not_retried(flavor: str) -> None:
    net = Script(httpx.UnsupportedProtocol("nope"), reply(200))
    with pytest.raises(httpx.UnsupportedProtocol):
        Harness(flavor, net).post()
    assert len(net.seen) == 1


def test_retry_after_seconds_is_a_floor(flavor: str) -> None:
    net = Script(reply(429, {"retry-after": "7"}), reply(200))
    h = Harness(flavor, net)
    h.post()
    assert h.time.sleeps == [7.0]


def test_retry_after_http_date(flavor: str) -> None:
    h_time = Harness(flavor, Script(reply(200))).time
    when = datetime.fromtimestamp(h_time.wall() + 12, UTC)
    net = Script(reply(503, {"retry-after": format_datetime(when, usegmt=True)}), reply(200))
    h = Harness(flavor, net, time=h_time)
    h.post()
    assert 11.0 <= h.time.sleeps[0] <= 12.0  # the date has one-second resolution


def test_retry_after_ms(flavor: str) -> None:
    net = Script(reply(503, {"retry-after-ms": "1500", "retry-after": "9"}), reply(200))
    h = Harness(flavor, net, retry=RetryPolicy(base=0.0))
    h.post()
    assert h.time.sleeps == [1.5]


def test_retry_after_above_the_cap_defers(flavor: str) -> None:
    net = Script(reply(503, {"retry-after": "3600"}), reply(200))
    h = Harness(flavor, net)
    with pytest.raises(RetryDeferred) as caught:
        h.post()
    assert len(net.seen) == 1
    assert caught.value.not_before == pytest.approx(h.time.wall() + 3600)
    assert h.time.sleeps == []


def test_the_deadline_stops_retries(flavor: str) -> None:
    net = Script(reply(503, {"retry-after": "20"}), reply(200))
    h = Harness(flavor, net, retry=RetryPolicy(deadline=10.0))
    with pytest.raises(RetriesExhausted, match="deadline"):
        h.post()
    assert len(net.seen) == 1


def test_attempts_get_timeouts_bounded_by_the_deadline(flavor: str) -> None:
    net = Script(reply(503, {"retry-after": "4"}), reply(200))
    h = Harness(flavor, net, retry=RetryPolicy(deadline=10.0))
    h.post(timeout=httpx.Timeout(30.0, connect=2.0))
    first, second = (r.extensions["timeout"] for r in net.seen)
    assert first["read"] == pytest.approx(10.0)
    assert first["connect"] == 2.0
    assert second["read"] == pytest.approx(6.0)  # 10 s deadline - 4 s already waited


def test_backoff_pauses_stay_within_full_jitter_bounds(flavor: str) -> None:
    net = Script(reply(503))
    h = Harness(flavor, net, retry=RetryPolicy(attempts=6, base=0.5, cap=2.0, deadline=None))
    with pytest.raises(RetriesExhausted) as caught:
        h.post()
    ceilings = [0.5, 1.0, 2.0, 2.0, 2.0]
    assert len(h.time.sleeps) == 5
    for slept, ceiling in zip(h.time.sleeps, ceilings, strict=True):
        assert 0.0 <= slept <= ceiling
    assert [a.wait for a in caught.value.attempts[:-1]] == h.time.sleeps


def test_testing_mode_removes_sleeps_and_caps_attempts(flavor: str) -> None:
    net = Script(reply(503, {"retry-after": "5"}))
    h = Harness(flavor, net)
    with set_testing(True, attempts=2), pytest.raises(RetriesExhausted):
        h.post()
    assert len(net.seen) == 2
    assert h.time.sleeps == []
    # Restored on exit: the policy's 3 attempts and real pauses again.
    with pytest.raises(RetriesExhausted):
        h.post()
    assert len(net.seen) == 5
    assert len(h.time.sleeps) == 2


def test_set_testing_as_a_call_stays_on_until_turned_off(flavor: str) -> None:
    net = Script(reply(503))
    h = Harness(flavor, net)
    set_testing(True)
    try:
        with pytest.raises(RetriesExhausted):
            h.post()
        assert len(net.seen) == 1
    finally:
        set_testing(False)
