"""The memory store's deadline heap stays bounded by the records it holds (stores/memory.py).

A record dropped before its deadline - evicted at the bound, released, deleted - leaves its
heap entry behind until that deadline, which may be a day or an hour away. A store at its
bound under steady traffic would grow that heap by an entry per new key: memory the bound
does not count. The heap may hold stale entries, but never more than about twice the records.
"""

from __future__ import annotations

import random

from kit.store_claims import FP, OK, new_id
from retrysafe._records import Claimed
from retrysafe.stores.memory import MemoryStore

DAY = 86_400.0
RECORDS = 50
BOUND = 2 * RECORDS + 1024 + 1  # the rebuild threshold, plus the entry pushed after it


def test_evicting_at_the_bound_does_not_grow_the_heap() -> None:
    now = [1000.0]
    store = MemoryStore(max_records=RECORDS, clock=lambda: now[0])
    for _ in range(5_000):
        now[0] += 0.01  # traffic: each key claimed a little after the one before
        id = new_id()
        claim = store.claim(id, FP, 60.0)
        assert isinstance(claim, Claimed)
        assert store.complete(id, claim.token, OK, DAY, DAY)
    assert len(store) == RECORDS
    # Uniform TTLs: the evicted records' entries were at the top and went with them, no
    # rebuild needed.
    assert len(store._deadlines) <= 2 * RECORDS


def test_mixed_ttls_and_releases_keep_the_heap_bounded() -> None:
    rng = random.Random(7)
    store = MemoryStore(max_records=RECORDS, clock=lambda: 1000.0)
    most = 0
    for n in range(10_000):
        id = new_id()
        claim = store.claim(id, FP, 60.0)
        assert isinstance(claim, Claimed)
        if n % 3 == 0:  # released (a 5xx): its entry is due an hour after the lease
            assert store.release(id, claim.token)
        else:
            assert store.complete(id, claim.token, OK, rng.uniform(60.0, DAY), DAY)
        most = max(most, len(store._deadlines))
    assert most <= BOUND, f"the heap reached {most} entries for {len(store)} records"
    # Every live record still has its entry: each expires when it should.
    live = dict(store._records)
    assert {id for _, id in store._deadlines} >= set(live)
