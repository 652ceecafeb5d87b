from __future__ import annotations

import asyncio
import random

from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.reports import dataloss
from gitquorum.cluster.repositories import RepositoryCache, RepositoryStore
from tests.harness.etcd import EtcdCluster
from tests.integration.cluster.conftest import StoreFactory
from tests.integration.cluster.polling import eventually

NODES = ("n1", "n2", "n3")


async def test_fifty_concurrent_generation_bumps_lose_nothing(
    etcd1: EtcdCluster, make_store: StoreFactory, keys: Keyspace
) -> None:
    # Five clients, as if five proxies finalized writes to one repository at once.
    clients = [RepositoryStore(make_store(etcd1), keys, rng=random.Random(i)) for i in range(5)]
    record = await clients[0].create("vs", "hot.git", nodes=NODES, healthy=set(NODES))
    results = await asyncio.gather(
        *(clients[i % 5].increment_generation("vs", record.repository_id, NODES) for i in range(50))
    )
    final = await clients[0].get("vs", record.repository_id)
    assert final.generation == 50
    assert dict(final.replicas) == {"n1": 50, "n2": 50, "n3": 50}
    assert sorted(r.generation for r in results) == list(range(1, 51))


async def test_cache_follows_another_proxys_writes(
    etcd1: EtcdCluster, make_store: StoreFactory, keys: Keyspace
) -> None:
    writer = RepositoryStore(make_store(etcd1), keys, rng=random.Random(1))
    for i in range(30):
        await writer.create(
            "vs", f"warm/{i}.git", nodes=NODES, healthy={"n1"}, replication_factor=2
        )
    cache = RepositoryCache(make_store(etcd1), keys, page_size=7)  # several pages
    await cache.start()
    assert len(cache) == 30
    record = await writer.create("vs", "new.git", nodes=NODES, healthy={"n2"})
    bumped = await writer.increment_generation("vs", record.repository_id, ["n2"])
    async with asyncio.timeout(5):
        await cache.wait_for_revision(bumped.revision)
    assert cache.get("vs", "new.git") == bumped
    # The primary's node goes down: the repository is unavailable (only n2 is current).
    lost = dataloss(cache.records(), {"vs": {"n1", "n3"}})
    assert [e.record.relative_path for e in lost] == ["new.git"]
    await writer.delete("vs", record.repository_id)
    await eventually(lambda: cache.get("vs", "new.git") is None, 5, "the delete in the cache")
    await cache.close()
