"""Small helpers shared by the store tests (no fixtures here: those live in tests/conftest.py).

Durations are ``kit.tick`` multiples. A test about time (it moves the clock with
``kit.advance``) gives the deadlines it observes *half-integer* tick counts while the clock
only ever moves by whole ticks, so no observation lands exactly on a deadline: the tests mean
the same thing on a fake clock and on a real server clock. On a real clock an observation that
a deadline is still ahead is made inside ``kit.within``. Every other lease, TTL and retention
is ``FAR`` (both in tests/kit/stores.py).
"""

from __future__ import annotations

import uuid

from retrysafe._records import Claimed, ClaimResult, Existing, StoredResponse

LEASE = 2.5  # ticks: the lease of a test about one lapsing (or not, within it)
FP = "fp-original"
OTHER_FP = "fp-other"

OK = StoredResponse(201, (("Content-Type", "application/json"),), b'{"id": 1}')


def new_id(label: str = "id") -> str:
    """A fresh record id, unique even on a store shared with other tests."""
    return f"{label}-{uuid.uuid4().hex}"


def claimed(result: ClaimResult) -> Claimed:
    assert isinstance(result, Claimed), f"expected Claimed, got {result!r}"
    return result


def first_claim(result: ClaimResult) -> Claimed:
    """``result`` claimed the key as if it had never been seen: nothing expired, nothing to
    recover, no earlier fingerprint."""
    c = claimed(result)
    assert (c.expired_before, c.recovered, c.previous_fingerprint) == (False, False, None)
    return c


def existing(result: ClaimResult) -> Existing:
    assert isinstance(result, Existing), f"expected Existing, got {result!r}"
    return result
