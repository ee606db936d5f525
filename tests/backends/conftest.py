"""Fixtures of the backend tests: every server-backed store, a real Redis Cluster included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.store_servers import redis_available, redis_cluster, require
from kit.stores import STORE_KINDS, StoreKit, redis_kit

BACKENDS = ["redis", "postgres"]


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three ``redis-server --cluster-enabled yes`` processes on free loopback ports."""
    require("Redis Cluster", redis_available())
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


@pytest.fixture(params=[*BACKENDS, "redis-cluster"])
def bkit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreKit]:
    """A kit for each server-backed store, the Redis Cluster included."""
    if request.param == "redis-cluster":
        made = redis_kit(request.getfixturevalue("cluster_url"), "redis-cluster")
    else:
        made = STORE_KINDS[request.param](tmp_path)
    try:
        yield made
    finally:
        made.close()
