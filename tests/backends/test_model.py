"""Random operation sequences on a server store, checked against the in-memory reference.

Hypothesis drives the same sequence of claims, completions, renewals, releases and deletions
(with current and stale tokens, two fingerprints, and "let every lease lapse" steps) through a
real server store and through MemoryStore on a fake clock moved by the same amounts. Answers
must agree in kind, flags, state, fingerprint and stored response; tokens must agree up to
renaming (the real store mints them from its own clock).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit.stores import STORE_KINDS
from retrysafe.records import Claimed, Existing, Record, StoredResponse
from retrysafe.stores.memory import MemoryStore

LEASE = 0.3  # seconds; a "lapse" step sleeps past it, other steps take milliseconds
TTL = 600.0
KEYS = ["k1", "k2"]
FPS = ["fa", "fb"]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("claim"), st.sampled_from(KEYS), st.sampled_from(FPS)),
        st.tuples(st.just("complete"), st.sampled_from(KEYS), st.booleans(), st.booleans()),
        st.tuples(st.just("renew"), st.sampled_from(KEYS), st.booleans()),
        st.tuples(st.just("release"), st.sampled_from(KEYS), st.booleans()),
        st.tuples(st.just("delete"), st.sampled_from(KEYS)),
        st.tuples(st.just("get"), st.sampled_from(KEYS)),
        st.just(("lapse",)),
    ),
    min_size=1,
    max_size=14,
).filter(lambda seq: sum(op[0] == "lapse" for op in seq) <= 2)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _shape(record: Record | None, names: dict[int, int]) -> Any:
    if record is None:
        return None
    return (record.state, record.fingerprint, names.get(record.token), record.response)


@pytest.mark.parametrize("kind", ["redis", "postgres"])
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=ops)
def test_server_store_agrees_with_the_reference(kind, sequence, tmp_path):
    kit = STORE_KINDS[kind](tmp_path)
    real = kit.store
    clock = Clock()
    model = MemoryStore(clock=clock)
    # Tokens per store, in the order they were minted; names map them to a shared index.
    minted: dict[str, list[int]] = {"real": [], "model": []}
    names: dict[str, dict[int, int]] = {"real": {}, "model": {}}
    held: dict[str, int] = {}  # key -> index of the latest token handed out for it
    prefix = uuid.uuid4().hex[:6]
    try:
        for op in sequence:
            if op[0] == "lapse":
                time.sleep(LEASE * 1.3)
                clock.now += LEASE * 1.3
                continue
            key = f"{prefix}{op[1]}"
            answers = []
            for side, store in (("real", real), ("model", model)):
                tokens = minted[side]
                index = held.get(op[1])
                token = tokens[index] if index is not None else 1
                match op:
                    case ("claim", _, fp):
                        result = store.claim(key, fp, LEASE)
                        if isinstance(result, Claimed):
                            names[side][result.token] = len(tokens)
                            tokens.append(result.token)
                            answer: Any = (
                                "claimed",
                                result.expired_before,
                                result.recovered,
                                result.previous_fingerprint,
                            )
                        else:
                            assert isinstance(result, Existing)
                            answer = ("existing", _shape(result.record, names[side]))
                    case ("complete", _, current, replayable):
                        response = StoredResponse(201, (("etag", "x"),), b"body", replayable)
                        used = token if current else token - 1
                        answer = store.complete(key, used, response, TTL, TTL)
                    case ("renew", _, current):
                        answer = store.renew(key, token if current else token - 1, LEASE)
                    case ("release", _, current):
                        answer = store.release(key, token if current else token - 1)
                    case ("delete", _):
                        answer = store.delete(key)
                    case ("get", _):
                        answer = _shape(store.get(key), names[side])
                answers.append(answer)
            assert answers[0] == answers[1], (op, answers)
            if op[0] == "claim" and answers[0][0] == "claimed":
                held[op[1]] = len(minted["real"]) - 1
    finally:
        kit.close()
