"""Fixtures of the backend tests: every server-backed store, a real Redis Cluster included."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import redis_available, redis_cluster, require

BACKENDS = ["redis", "postgres"]


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three ``redis-server --cluster-enabled yes`` processes on free loopback ports."""
    require("Redis Cluster", redis_available())
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


@pytest.fixture(params=[*BACKENDS, "redis-cluster"])
def bkit(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    store_kinds: dict[str, Callable[[Path], Any]],
    redis_kit_at: Callable[[str, str], Any],
) -> Iterator[Any]:
    """A kit for each server-backed store (a conftest StoreKit)."""
    if request.param == "redis-cluster":
        made = redis_kit_at(request.getfixturevalue("cluster_url"), "redis-cluster")
    else:
        made = store_kinds[request.param](tmp_path)
    try:
        yield made
    finally:
        made.close()
