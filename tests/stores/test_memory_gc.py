"""The memory store keeps its records out of the cyclic GC's sight (stores/memory.py).

A full collection walks every tracked object. Records kept as NamedTuples holding an Enum
member stay tracked for good, so a store at its bound made every full collection pause the
process for tens of milliseconds (bench/README.md). What the store holds must be untracked
once a collection has seen it, and must come back as the very record that was stored.
"""

from __future__ import annotations

import gc

from kit.store_claims import FP, OK, new_id
from retrysafe._records import Record, State, StoredResponse
from retrysafe.stores.memory import MemoryStore

FAR = 10_000.0


def _every_field_set() -> list[Record]:
    response = StoredResponse(
        201,
        (("Content-Type", "application/json"), ("Link", "</a>")),
        b'{"id": 1}',
        False,
        "t" * 32,
        "s" * 16,
    )
    values = {
        "id": "id-1",
        "fingerprint": FP,
        "token": 7,
        "lease_until": 1.5,
        "expires_at": 2.5,
        "retain_until": 3.5,
        "response": response,
        "created_at": 0.5,
        "phase": "charged",
    }
    assert set(values) | {"state"} == set(Record._fields), "a new Record field: set it here"
    return [Record(state=state, **values) for state in State]


def test_a_stored_record_comes_back_whole_in_every_state() -> None:
    from retrysafe.stores.memory import _pack, _unpack

    for record in _every_field_set():
        back = _unpack(_pack(record))
        assert back == record
        assert back.state is record.state
        assert type(back.response) is StoredResponse


def test_records_held_by_the_store_are_not_tracked_by_the_gc() -> None:
    store = MemoryStore(clock=lambda: 1000.0)
    ids = [new_id() for _ in range(50)]
    for n, id in enumerate(ids):
        claim = store.claim(id, FP, FAR)
        if n % 2:  # half completed (with a response), half still in flight
            assert store.complete(id, claim.token, OK, FAR, FAR)  # type: ignore[union-attr]
    # Twice: a collection untracks a tuple only once everything in it is untracked, and may
    # see the outer tuple (the response) before the inner ones (its headers).
    gc.collect()
    gc.collect()
    held = list(store._records.values())
    assert len(held) == len(ids)
    tracked = [row for row in held if gc.is_tracked(row)]
    assert tracked == [], f"{len(tracked)} of {len(held)} records still tracked by the GC"
    # And what the store answers is still the record it was given.
    done = store.get(ids[1])
    assert done is not None
    assert (done.state, done.response) == (State.COMPLETED, OK)
