"""bench/run.py still runs, and the round-trip contract it reports holds (SPEC 36)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.sqlite import SQLiteStore

BENCH = Path(__file__).resolve().parents[2] / "bench" / "run.py"  # conftest's bench loads it


async def test_memory_store_round_trips_are_two_then_one(bench: ModuleType) -> None:
    assert await bench.round_trips(MemoryStore()) == (2.0, 1.0)


async def test_sqlite_store_round_trips_are_two_then_one(bench: ModuleType, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "trips.db")
    try:
        assert await bench.round_trips(store) == (2.0, 1.0)
    finally:
        store.close()


async def test_cached_replays_make_no_store_round_trip(bench: ModuleType, tmp_path: Path) -> None:
    # The local replay cache: a first execution still costs two calls, a replay none.
    assert await bench.round_trips(MemoryStore(), cached=True) == (2.0, 0.0)
    store = SQLiteStore(tmp_path / "cached.db")
    try:
        assert await bench.round_trips(store, cached=True) == (2.0, 0.0)
    finally:
        store.close()


async def test_every_variant_answers_and_is_timed(bench: ModuleType, tmp_path: Path) -> None:
    variants = bench.variants(tmp_path)
    results = await bench.measure(variants, 1, True)
    assert set(results) == {
        "bare",
        "memory-first",
        "memory-replay",
        "sqlite-first",
        "sqlite-replay",
        "memory+cache-replay",
        "sqlite+cache-replay",
    }
    runs = [run for per_variant in results.values() for run in per_variant]
    assert len(runs) == 7
    assert all(run.wall_us > 0 and run.cpu_us > 0 for run in runs)
    assert bench.ratio_to_bare(results, "bare", "cpu_us") == 1.0


async def test_replay_variant_really_replays(bench: ModuleType) -> None:
    app = bench.guarded_app(MemoryStore())
    scope = bench.scope_for("bench-key")
    statuses = [await bench.call(app, scope) for _ in range(3)]
    assert statuses == [201, 201, 201]
    assert len(app.store) == 1  # one record, completed once, replayed twice
