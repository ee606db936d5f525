"""Cost reporting and the small parts of Telemetry: validation, encoding, attempt parsing."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kit.telemetry import AuditLines, Otel
from retrysafe._outcomes import Outcome
from retrysafe._scopes import shared_scope
from retrysafe.telemetry import Telemetry, report_cost
from retrysafe.telemetry._cost import decode, encode, metering


def test_report_cost_outside_an_execution_is_a_no_op() -> None:
    assert report_cost(1.0) is False


@pytest.mark.parametrize(
    ("amount", "unit"),
    [
        (-1, "USD"),
        (math.nan, "USD"),
        (math.inf, "USD"),
        (True, "USD"),
        ("1", "USD"),
        (1, ""),
        (1, "US D"),
        (1, "a,b"),
        (1, "a=b"),
        (1, "\x00"),
    ],
)
def test_report_cost_rejects(amount: object, unit: str) -> None:
    with metering(), pytest.raises(ValueError, match="cost"):
        report_cost(amount, unit)  # type: ignore[arg-type]


def test_costs_add_up_per_unit_even_from_a_thread_pool() -> None:
    with metering() as meter, ThreadPoolExecutor(4) as pool:
        # Starlette runs sync endpoints like this: a copied context in a worker thread.
        futures = [pool.submit(copy_context().run, report_cost, 0.5, "USD") for _ in range(100)]
        assert all(f.result() for f in futures)
        assert report_cost(7, "tokens")
    assert meter.amounts == {"USD": 50.0, "tokens": 7.0}


units = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=8)
units = units.filter(lambda u: not any(c in u for c in ",="))


@given(st.dictionaries(units, st.floats(0, 1e12, allow_nan=False), max_size=4))
def test_encode_decode_round_trip(amounts: dict[str, float]) -> None:
    assert decode(encode(amounts)) == amounts


def test_decode_skips_garbage() -> None:
    assert decode("USD=1.5, junk, x=nan, y=-2, =3, tokens=10") == {"USD": 1.5, "tokens": 10.0}


@pytest.mark.parametrize(
    ("value", "attempt"),
    [("1", 1), (" 3 ", 3), ("0", None), ("-1", None), ("abc", None), ("99999999", None)],
)
def test_attempt_header(value: str, attempt: int | None) -> None:
    assert Telemetry().attempt_of([("idempotency-attempt", value)]) == attempt
    assert Telemetry(attempt_header="X-Try").attempt_of([("x-try", value)]) == attempt
    assert Telemetry(attempt_header=None).attempt_of([("idempotency-attempt", value)]) is None


def test_bad_key_mode() -> None:
    with pytest.raises(ValueError, match="key_mode"):
        Telemetry(key_mode="plain")  # type: ignore[arg-type]


def test_malformed_stored_ids_make_no_link(otel: Otel, audit_log: AuditLines) -> None:
    obs = otel.telemetry().observe("function", "charge")
    obs.link_to("not-hex", "0123")
    obs.link_to("0" * 32, "0" * 16)  # the invalid all-zero context
    obs.finish(Outcome.REPLAYED)
    (span,) = otel.ours()
    assert span.links == ()
    assert "linked_trace_id" not in audit_log.docs()[0]


def test_finish_twice_reports_once(otel: Otel, audit_log: AuditLines) -> None:
    obs = otel.telemetry().observe("tool", "search", span_name="execute_tool search")
    obs.finish(Outcome.EXECUTED)
    obs.finish(Outcome.STORE_ERROR)
    (span,) = otel.spans()
    assert span.name == "execute_tool search"
    assert [d["outcome"] for d in audit_log.docs()] == ["executed"]


def test_internal_headers_are_stored_never_replayed_never_taken_from_the_handler() -> None:
    from retrysafe import Policy
    from retrysafe._decide import Complete, replay_headers, settle

    policy = Policy(
        scope=shared_scope, replay_headers=frozenset({"content-type", "retrysafe-cost"})
    )
    headers = [("Content-Type", "text/plain"), ("Retrysafe-Cost", "USD=999")]  # from the handler
    done = settle(200, headers, b"ok", policy, internal=[("retrysafe-cost", "USD=0.5")])
    assert isinstance(done, Complete)
    assert done.response.headers == (("content-type", "text/plain"), ("retrysafe-cost", "USD=0.5"))
    assert [h for h in replay_headers(done.response) if h[0].startswith("retrysafe-")] == []
