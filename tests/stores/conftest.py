"""Fixtures of the store tests: a real three-node Redis Cluster for the kits that ask for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kit.store_servers import redis_available, redis_cluster, require


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three ``redis-server --cluster-enabled yes`` processes on free loopback ports (one
    cluster per xdist worker, started the first time a test of that worker asks for it)."""
    require("Redis Cluster", redis_available())
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url
