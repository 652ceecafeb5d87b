"""The state age: exported at scrape time, and reads refused past ``stale_read_limit``.

The cache and the port read one manual clock, so the limit is crossed by hand.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from prometheus_client import CollectorRegistry

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import ReplicationQueue
from gitquorum.cluster.repositories import RepositoryCache, RepositoryStore
from gitquorum.errors import Unavailable
from gitquorum.proxy.etcd_cluster_port import EtcdClusterPort
from gitquorum.proxy.metrics import ProxyMetrics

KEYS = Keyspace("unit")
NODES = ("n1", "n2", "n3")
LIMIT = 5.0


class AllHealthy:
    def healthy(self, _virtual_storage: str) -> frozenset[str]:
        return frozenset(NODES)


def _gauge(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("gitquorum_cluster_state_age_seconds")


async def test_state_age_is_exported_and_reads_are_refused_past_the_limit() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    repos = RepositoryStore(store, KEYS, rng=random.Random(1))
    record = await repos.create("vs", "a.git", nodes=NODES, healthy=set(NODES))
    cache = RepositoryCache(store, KEYS, clock=clock)
    await cache.start()
    registry = CollectorRegistry()
    port = EtcdClusterPort(
        {"vs": NODES},
        {"vs": 3},
        repos,
        cache,
        health=AllHealthy(),  # type: ignore[arg-type]  # only its healthy() is used
        local_health=lambda _vs, _node: True,
        queue=ReplicationQueue(store, KEYS),
        metrics=ProxyMetrics(registry),
        stale_read_limit=LIMIT,
        clock=clock,
    )
    try:
        assert _gauge(registry) == 0.0

        # Within the limit: served, and the gauge grows at scrape time with no update.
        clock.advance(LIMIT - 0.1)
        assert _gauge(registry) == pytest.approx(LIMIT - 0.1)
        assert port.lookup("vs", "a.git") is not None

        # A watch event is contact with etcd: the age starts again from zero.
        changed = await repos.mark_outdated("vs", record.repository_id, ["n3"])
        async with asyncio.timeout(5):
            await cache.wait_for_revision(changed.revision)
        assert _gauge(registry) == 0.0
        clock.advance(LIMIT)
        assert port.lookup("vs", "a.git") is not None  # exactly the limit: still served

        # Past the limit: refused with UNAVAILABLE, for known and unknown repositories alike.
        clock.advance(0.5)
        for path in ("a.git", "missing.git"):
            with pytest.raises(Unavailable, match=r"cluster state is stale: no contact with etcd"):
                port.lookup("vs", path)
        assert _gauge(registry) == pytest.approx(LIMIT + 0.5)
    finally:
        await cache.close()


async def test_no_limit_no_refusal_but_the_age_is_still_exported() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    cache = RepositoryCache(store, KEYS, clock=clock)
    await cache.start()
    registry = CollectorRegistry()
    port = EtcdClusterPort(
        {"vs": NODES},
        {"vs": 3},
        RepositoryStore(store, KEYS),
        cache,
        health=AllHealthy(),  # type: ignore[arg-type]
        local_health=lambda _vs, _node: True,
        queue=ReplicationQueue(store, KEYS),
        metrics=ProxyMetrics(registry),
        clock=clock,
    )
    try:
        clock.advance(3600)
        assert port.lookup("vs", "a.git") is None
        assert _gauge(registry) == pytest.approx(3600)
    finally:
        await cache.close()
