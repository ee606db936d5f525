"""Policy: defaults, validation, durations, replay headers, scopes (SPEC 2, 5, 8, 10-18)."""

from __future__ import annotations

import dataclasses
import math
import re
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrysafe._fingerprint import RequestFacts
from retrysafe._policy import (
    DEFAULT_STATUS,
    NEVER_REPLAYED,
    PROBLEM_BASE_URI,
    REPLAYED_HEADERS,
    Policy,
    Problem,
    seconds,
    storage_id,
)
from retrysafe._scopes import authorization_scope
from retrysafe.errors import ConfigurationError


def facts(*headers: tuple[str, str]) -> RequestFacts:
    return RequestFacts("POST", "/x", "", headers, b"")


# -- defaults named by SPEC -------------------------------------------------------------------


def test_defaults_are_the_ones_spec_names() -> None:
    p = Policy()
    assert p.methods == frozenset({"POST", "PATCH"})  # SPEC 2
    assert p.header_names == ("Idempotency-Key",)  # SPEC 1
    assert p.required is False  # SPEC 11
    assert (p.key_min_length, p.key_max_length, p.uuid_only) == (1, 255, False)  # SPEC 3
    assert p.body_mode == "bytes"  # SPEC 6
    assert p.ttl_s == 24 * 3600  # SPEC 14
    assert p.retention_s == 7 * 24 * 3600
    assert p.lease_s == 60  # SPEC 13
    assert p.heartbeat_s == 20  # a third of the lease
    assert p.wait_s == 5  # SPEC 10
    assert p.max_body == 10 * 1024 * 1024  # SPEC 16
    assert p.max_cached_body == 1024 * 1024  # SPEC 15
    assert p.store_server_errors is False  # SPEC 12
    assert p.fail_open is False  # SPEC 17
    assert p.replay_headers == REPLAYED_HEADERS  # SPEC 8
    assert {
        "content-type",
        "location",
        "content-location",
        "etag",
        "last-modified",
        "link",
        "content-encoding",
        "content-language",
        "content-disposition",
    } == REPLAYED_HEADERS
    assert dict(p.problem_status) == dict(DEFAULT_STATUS)
    assert p.problem_base_uri == PROBLEM_BASE_URI


def test_policy_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Policy().ttl = 5  # type: ignore[misc]


def test_replace_returns_a_validated_copy() -> None:
    base = Policy()
    changed = base.replace(ttl=10, methods=frozenset({"put"}))
    assert changed.ttl_s == 10
    assert changed.methods == {"PUT"}
    assert base.ttl_s == 24 * 3600
    with pytest.raises(ConfigurationError, match="lease must be positive"):
        base.replace(lease=0)


# -- durations: seconds or timedelta ----------------------------------------------------------

DURATIONS = [
    ("ttl", "ttl_s"),
    ("retention", "retention_s"),
    ("lease", "lease_s"),
    ("wait", "wait_s"),
    ("in_flight_retry_after", "in_flight_retry_after_s"),
    ("unavailable_retry_after", "unavailable_retry_after_s"),
]


@pytest.mark.parametrize(("name", "prop"), DURATIONS)
def test_duration_as_float_int_or_timedelta(name: str, prop: str) -> None:
    assert getattr(Policy(**{name: 7.5}), prop) == 7.5
    assert getattr(Policy(**{name: 7}), prop) == 7.0
    assert getattr(Policy(**{name: timedelta(seconds=7, milliseconds=500)}), prop) == 7.5
    assert isinstance(getattr(Policy(**{name: 7}), prop), float)


def test_heartbeat_as_float_or_timedelta() -> None:
    assert Policy(heartbeat=5).heartbeat_s == 5.0
    assert Policy(heartbeat=timedelta(seconds=5)).heartbeat_s == 5.0
    assert Policy(lease=30).heartbeat_s == 10.0


def test_seconds_helper() -> None:
    assert seconds(timedelta(minutes=2)) == 120.0
    assert seconds(1) == 1.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ttl": 0}, "ttl must be positive"),
        ({"ttl": -1}, "ttl must be positive"),
        ({"ttl": timedelta(0)}, "ttl must be positive"),
        ({"lease": 0}, "lease must be positive"),
        ({"lease": timedelta(seconds=-5)}, "lease must be positive"),
        ({"wait": -0.1}, "wait must not be negative"),
        ({"in_flight_retry_after": -1}, "in_flight_retry_after must not be negative"),
        ({"unavailable_retry_after": -1}, "unavailable_retry_after must not be negative"),
        ({"retention": -1}, "retention must not be negative"),
        ({"ttl": math.nan}, "ttl must be finite"),
        ({"ttl": math.inf}, "ttl must be finite"),
        ({"lease": math.inf}, "lease must be finite"),
        ({"wait": math.nan}, "wait must be finite"),
        ({"retention": math.nan}, "retention must be finite"),
        ({"heartbeat": math.nan}, "heartbeat must be finite"),
        ({"ttl": "60 seconds"}, "ttl: '60 seconds' is not a duration"),
        ({"lease": True}, "lease must be a number of seconds, a timedelta or a string"),
        ({"heartbeat": 0}, "heartbeat must be positive and shorter than the lease"),
        ({"heartbeat": 60}, "heartbeat must be positive and shorter than the lease"),
        ({"heartbeat": 5, "lease": 4}, "heartbeat must be positive and shorter than the lease"),
        ({"header_names": ()}, "header_names needs at least one header name"),
        ({"header_names": "Idempotency-Key"}, "header_names must be a collection"),
        ({"header_names": ("Idempotency-Key", "")}, "header_names must be a collection"),
        (
            {"header_names": ("Idempotency-Key", "idempotency-key")},
            "header_names lists the same header twice",
        ),
        ({"methods": "POST"}, "methods must be a collection"),
        ({"replay_headers": "etag"}, "replay_headers must be a collection"),
        ({"key_min_length": 0}, "key_min_length <= key_max_length"),
        ({"key_min_length": 10, "key_max_length": 9}, "got 10 and 9"),
        ({"key_max_length": 256}, "<= 255"),
        ({"body_mode": "xml"}, "body_mode must be 'bytes' or 'json', not 'xml'"),
        ({"max_body": -1}, "max_body must not be negative: -1"),
        ({"max_json_body": -1}, "max_json_body must not be negative: -1"),
        ({"max_cached_body": -1}, "max_cached_body must not be negative: -1"),
        ({"problem_status": {Problem.MISMATCH: 200}}, "key-mismatch must be 4xx or 5xx: 200"),
        ({"problem_status": {Problem.IN_FLIGHT: 600}}, "request-in-flight must be 4xx or 5xx"),
        ({"problem_status": {"key-mismatch": 409}}, "problem_status keys must be Problem"),
        ({"required": "yes"}, "required must be True, False or a callable"),
        ({"replay_headers": frozenset({"Set-Cookie"})}, "may not include set-cookie"),
    ],
)
def test_every_invalid_setting_has_a_clear_message(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)) as info:
        Policy(**changes)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_zero_wait_and_retention_are_allowed() -> None:
    assert Policy(wait=0).wait_s == 0
    assert Policy(retention=0).retention_s == 0


# -- replay headers (SPEC 8) ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(NEVER_REPLAYED))
def test_replay_headers_refuse_every_never_replayed_header(name: str) -> None:
    for spelling in (name, name.upper(), name.title()):
        with pytest.raises(ConfigurationError, match=re.escape(name)):
            Policy(replay_headers=REPLAYED_HEADERS | {spelling})


def test_never_replayed_covers_spec_8() -> None:
    assert {"set-cookie", "date", "x-request-id", "ratelimit-remaining"} <= NEVER_REPLAYED
    assert "idempotent-replayed" in NEVER_REPLAYED  # added on replay, never stored twice
    assert not NEVER_REPLAYED & REPLAYED_HEADERS


def test_replay_headers_are_lower_cased() -> None:
    assert Policy(replay_headers=frozenset({"X-Custom", "ETag"})).replay_headers == {
        "x-custom",
        "etag",
    }


def test_the_refusal_names_all_forbidden_headers() -> None:
    with pytest.raises(ConfigurationError, match="date, set-cookie"):
        Policy(replay_headers=frozenset({"Set-Cookie", "Date", "ETag"}))


# -- methods, required, status codes ----------------------------------------------------------


def test_methods_are_upper_cased_and_matched_case_insensitively() -> None:
    p = Policy(methods=frozenset({"post", "Put"}))
    assert p.methods == {"POST", "PUT"}
    assert p.covers("post")
    assert p.covers("PUT")
    assert not p.covers("PATCH")


def test_methods_accept_any_collection() -> None:
    assert Policy(methods=["post"]).methods == {"POST"}  # type: ignore[arg-type]
    assert Policy(methods=frozenset()).methods == frozenset()  # covers nothing: a kill switch


def test_required_as_bool_or_callable() -> None:
    assert not Policy().requires_key("POST", "/x")
    assert Policy(required=True).requires_key("POST", "/x")
    rule = Policy(required=lambda method, path: method == "POST" and path.startswith("/pay"))
    assert rule.requires_key("POST", "/pay/1")
    assert not rule.requires_key("POST", "/other")
    assert not rule.requires_key("PATCH", "/pay/1")


def test_problem_status_is_merged_over_the_defaults() -> None:
    p = Policy(problem_status={Problem.MISMATCH: 409})
    assert p.problem_status[Problem.MISMATCH] == 409
    assert p.problem_status[Problem.IN_FLIGHT] == 409
    assert set(p.problem_status) == set(Problem)
    assert DEFAULT_STATUS[Problem.MISMATCH] == 422  # the defaults are not touched


def test_default_problem_statuses() -> None:
    assert dict(DEFAULT_STATUS) == {
        Problem.MISSING_KEY: 400,
        Problem.MALFORMED_KEY: 400,
        Problem.MISMATCH: 422,
        Problem.IN_FLIGHT: 409,
        Problem.UNREPLAYABLE: 409,
        Problem.STORE_UNAVAILABLE: 503,
        Problem.BODY_TOO_LARGE: 413,
        Problem.MALFORMED_BODY: 400,
        Problem.UNSCOPED: 400,
    }


@pytest.mark.parametrize(
    ("status", "stored", "stored_with_5xx"),
    [
        (200, True, True),
        (404, True, True),
        (408, False, False),  # "try again" statuses are released (release_statuses)
        (425, False, False),
        (429, False, False),
        (499, True, True),
        (500, False, True),
        (503, False, True),
    ],
)
def test_should_store(status: int, stored: bool, stored_with_5xx: bool) -> None:
    assert Policy().should_store(status) is stored
    assert Policy(store_server_errors=True).should_store(status) is stored_with_5xx


def test_a_5xx_asking_to_come_back_is_never_stored() -> None:
    assert Policy(store_server_errors=True).should_store(503, retry_after=True) is False
    assert Policy(store_server_errors=True).should_store(503) is True
    assert Policy().should_store(404, retry_after=True) is True  # only 5xx and release_statuses


# -- scopes and storage ids (SPEC 5) ----------------------------------------------------------


def test_default_scope_is_authorization() -> None:
    assert Policy().scope is authorization_scope


def test_scope_must_be_callable() -> None:
    with pytest.raises(ConfigurationError, match="scope must be a callable"):
        Policy(scope="Authorization")  # type: ignore[arg-type]


def test_a_short_secret_is_refused_and_never_shown() -> None:
    with pytest.raises(ConfigurationError, match="at least 32 characters"):
        Policy(secret="hunter2")
    policy = Policy(secret="s" * 32)
    assert "s" * 32 not in repr(policy)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40), st.text(min_size=1, max_size=40))
def test_storage_id_hides_the_key_and_separates_scopes(s1: str, s2: str, key: str) -> None:
    sid = storage_id(s1, key)
    assert re.fullmatch("[0-9a-f]{64}", sid)
    assert sid != key
    assert sid == storage_id(s1, key)
    if s1 != s2:
        assert storage_id(s2, key) != sid


def test_storage_id_separates_scope_and_key_boundaries() -> None:
    assert storage_id("ab", "c") != storage_id("a", "bc")
    assert storage_id("anonymous", "k") != storage_id("anonymous", "K")
