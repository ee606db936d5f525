"""Server time per store operation on Redis: what each Lua script costs inside the server.

    python bench/redis_scripts.py [--n 2000]

Runs each operation ``n`` times through ``RedisStore``'s sync face (first claims of new keys,
renewals, completions, replays, releases) and reads the server's own timing of every
``EVALSHA`` from the slow log, switched to log everything for the run (its threshold and
length are put back afterwards). Entries are picked by this run's key prefix, so other
clients of the same server do not count. Figures are the median and mean of the server's
microseconds per call, and the calls per script (``redis.call``s, from the script text).

The slow log measures the command alone: no network, no client. Compare layouts by running
this file from each checkout (``PYTHONPATH=<checkout>/src``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import uuid
from collections.abc import Callable

import redis

from retrysafe.stores import Claimed, StoredResponse
from retrysafe.stores import _redis_lua as lua
from retrysafe.stores._redis_wire import Script
from retrysafe.stores.redis import RedisStore

REDIS_URL = os.environ.get("RETRYSAFE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RESPONSE = StoredResponse(201, (("content-type", "application/json"),), b'{"id": "ch_1"}' * 4)


def timed(admin: redis.Redis, prefix: str, script: str, run: Callable[[], None]) -> list[int]:
    """Server µs of each EVALSHA of ``script`` on ``prefix``'s keys while ``run`` runs."""
    admin.slowlog_reset()
    run()
    entries = admin.slowlog_get(num=-1)[::-1]  # the slow log lists the newest first
    marker = prefix.encode()
    return [
        int(e["duration"])
        for e in entries
        if e["command"].startswith(b"EVALSHA " + Script.of(script).sha) and marker in e["command"]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    n = args.n
    prefix = f"bs{uuid.uuid4().hex[:8]}:"
    store = RedisStore(REDIS_URL, prefix=prefix, listen=False)
    admin = redis.Redis.from_url(REDIS_URL)
    saved = admin.config_get("slowlog-*")
    ids = [f"k{i}" for i in range(n)]
    tokens: dict[str, int] = {}
    released = [f"r{i}" for i in range(n)]
    released_tokens: dict[str, int] = {}

    def claim_all(keys: list[str], into: dict[str, int]) -> None:
        for id in keys:
            claimed = store.claim(id, "fp", 60)
            assert isinstance(claimed, Claimed)
            into[id] = claimed.token

    def first() -> None:
        claim_all(ids, tokens)

    def renew() -> None:
        for id in ids:
            assert store.renew(id, tokens[id], 60)

    def complete() -> None:
        for id in ids:
            assert store.complete(id, tokens[id], RESPONSE, 600, 600)

    def replay() -> None:
        for id in ids:
            assert not isinstance(store.claim(id, "fp", 60), Claimed)

    def release() -> None:
        for id in released:
            assert store.release(id, released_tokens[id])

    store.claim("warm", "fp", 60)  # connection and scripts loaded, not timed
    try:
        admin.config_set("slowlog-log-slower-than", 0)
        admin.config_set("slowlog-max-len", 100 * n)  # room for other clients' commands too
        print(f"Redis server µs per EVALSHA, {n} calls each (slow log):")
        print(f"{'operation':<22}{'median':>8}{'mean':>8}{'calls':>8}")
        claim_all(released, released_tokens)  # untimed: only the releases count
        for name, script, run in [
            ("claim (new key)", lua.CLAIM, first),
            ("renew", lua.RENEW, renew),
            ("complete", lua.COMPLETE, complete),
            ("claim (replay)", lua.CLAIM, replay),
            ("release", lua.RELEASE, release),
        ]:
            durations = timed(admin, prefix, script, run)
            print(
                f"{name:<22}{statistics.median(durations):>8.1f}"
                f"{statistics.fmean(durations):>8.1f}{len(durations):>8}"
            )
    finally:
        for key, value in saved.items():
            admin.config_set(key, value)
        for key in admin.scan_iter(match=f"{prefix}*", count=1000):
            admin.delete(key)
        store.close()
        admin.close()


if __name__ == "__main__":
    main()
