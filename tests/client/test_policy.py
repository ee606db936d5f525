"""RetryPolicy and Retry-After parsing, with no transport (SPEC 21, 22)."""

from __future__ import annotations

import random
import statistics
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from retrysafe import ConfigurationError
from retrysafe.client import Failure, RetryPolicy, classify_error, retry_after

NOW = 1_800_000_000.0


@pytest.mark.parametrize("retry", [0, 1, 2, 3, 4, 8])
def test_full_jitter_is_uniform_below_the_exponential_ceiling(retry: int) -> None:
    policy = RetryPolicy()  # base 0.5 s, cap 8 s
    ceiling = min(8.0, 0.5 * 2**retry)
    rng = random.Random(20261127 + retry)
    samples = [policy.backoff(retry, rng) for _ in range(20_000)]
    assert all(0.0 <= s <= ceiling for s in samples)
    # U(0, c): mean c/2, standard deviation c/sqrt(12); 20k samples pin both within a few %.
    assert statistics.fmean(samples) == pytest.approx(ceiling / 2, rel=0.03)
    assert statistics.pstdev(samples) == pytest.approx(ceiling / 12**0.5, rel=0.03)
    # Full jitter covers the whole range: some pauses near zero, some near the ceiling.
    assert min(samples) < 0.01 * ceiling
    assert max(samples) > 0.99 * ceiling
    deciles = [
        sum(1 for s in samples if k * ceiling / 10 <= s < (k + 1) * ceiling / 10) for k in range(10)
    ]
    assert all(1800 <= d <= 2200 for d in deciles)


def test_backoff_is_deterministic_for_a_seed() -> None:
    policy = RetryPolicy()
    a = [policy.backoff(n, random.Random(1)) for n in range(5)]
    b = [policy.backoff(n, random.Random(1)) for n in range(5)]
    assert a == b


def test_policy_is_immutable_and_validated() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.attempts = 5  # type: ignore[misc]
    assert policy.replace(attempts=5).attempts == 5
    assert policy.attempts == 3
    with pytest.raises(ConfigurationError):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigurationError):
        RetryPolicy(deadline=0)
    assert RetryPolicy(keyed_methods=frozenset({"post"})).wants_key("POST")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("x"), Failure.NEVER_SENT),
        (httpx.ConnectTimeout("x"), Failure.NEVER_SENT),
        (httpx.PoolTimeout("x"), Failure.NEVER_SENT),
        (httpx.ReadTimeout("x"), Failure.MAYBE_PROCESSED),
        (httpx.WriteTimeout("x"), Failure.MAYBE_PROCESSED),
        (httpx.ReadError("x"), Failure.MAYBE_PROCESSED),
        (httpx.RemoteProtocolError("x"), Failure.MAYBE_PROCESSED),
        (httpx.LocalProtocolError("x"), Failure.FATAL),
        (httpx.UnsupportedProtocol("x"), Failure.FATAL),
    ],
)
def test_classification(exc: Exception, kind: Failure) -> None:
    assert classify_error(exc) is kind


def headers(**values: str) -> httpx.Headers:
    return httpx.Headers({k.replace("_", "-"): v for k, v in values.items()})


def test_retry_after_forms() -> None:
    assert retry_after(headers(retry_after="120"), NOW) == 120.0
    assert retry_after(headers(retry_after=" 3 "), NOW) == 3.0
    when = format_datetime(datetime.fromtimestamp(NOW + 90, UTC), usegmt=True)
    assert retry_after(headers(retry_after=when), NOW) == pytest.approx(90.0)
    past = format_datetime(datetime.fromtimestamp(NOW - 90, UTC), usegmt=True)
    assert retry_after(headers(retry_after=past), NOW) == 0.0
    assert retry_after(headers(retry_after_ms="250"), NOW) == 0.25
    assert retry_after(headers(retry_after_ms="250", retry_after="9"), NOW) == 0.25
    assert retry_after(headers(), NOW) is None


@pytest.mark.parametrize("bad", ["soon", "-5", "1.5e3x", "", "Mon, 99 Foo 2026"])
def test_unparseable_retry_after_is_ignored(bad: str) -> None:
    assert retry_after(headers(retry_after=bad), NOW) is None


@pytest.mark.parametrize("bad", ["nan", "-1", "inf", "x"])
def test_unparseable_retry_after_ms_falls_back(bad: str) -> None:
    assert retry_after(headers(retry_after_ms=bad, retry_after="4"), NOW) == 4.0
