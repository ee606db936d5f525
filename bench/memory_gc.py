"""How long a full garbage collection pauses a process whose memory store is full.

The memory store is bounded (100,000 records by default) and a server keeps it full. Every
full collection of the cyclic GC walks the objects it tracks, and a store whose records stay
tracked adds a pause to every request in flight at that moment (the memory variant's first-
execution p99 in ``bench/e2e.py``). This fills a store to its bound through claims and
completions, as traffic does, and reports the CPU time of a full collection (the least of
five) and the objects the GC tracks, then the cost of a claim and a completion at the bound.

Run: ``.venv/bin/python bench/memory_gc.py`` (``--records N`` to change the fill).
"""

from __future__ import annotations

import argparse
import gc
import time
import uuid

from retrysafe.stores import StoredResponse
from retrysafe.stores.memory import MemoryStore

RESPONSE = StoredResponse(201, (("content-type", "application/json"),), b'{"id": "ch_1"}')


def fill(store: MemoryStore, records: int) -> None:
    for _ in range(records):
        id = uuid.uuid4().hex
        claim = store.claim(id, "f" * 64, 60.0)
        assert store.complete(id, claim.token, RESPONSE, 86_400.0, 3_600.0)  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    store = MemoryStore(max_records=args.records)
    fill(store, args.records)
    gc.collect()
    gc.collect()  # the second untracks what the first saw before its contents
    pauses = []
    for _ in range(5):
        started = time.thread_time()
        gc.collect()
        pauses.append((time.thread_time() - started) * 1000)
    print(
        f"{len(store):,} records: a full collection takes {min(pauses):.1f} ms of CPU; "
        f"the GC tracks {len(gc.get_objects()):,} objects"
    )
    n = 20_000
    started = time.perf_counter()
    fill(store, n)  # at the bound: each new record evicts the oldest
    print(f"claim + complete at the bound: {(time.perf_counter() - started) / n * 1e6:.1f} µs")


if __name__ == "__main__":
    main()
