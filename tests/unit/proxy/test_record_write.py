"""The finalizer: a write recorded in etcd is never reported as failed afterwards."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from prometheus_client import CollectorRegistry

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.decisions import WriteResult
from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import ReplicationQueue
from gitquorum.cluster.repositories import RepositoryCache, RepositoryStore
from gitquorum.proxy.etcd_cluster_port import EtcdClusterPort
from gitquorum.proxy.metrics import ProxyMetrics
from gitquorum.proxy.routing import MutatorRoute

KEYS = Keyspace("unit")
NODES = ("n1", "n2", "n3")


class AllHealthy:
    """The health consensus: every node healthy."""

    def healthy(self, _virtual_storage: str) -> frozenset[str]:
        return frozenset(NODES)


class UnreachableQueue(ReplicationQueue):
    """A queue whose etcd requests time out, as during an etcd leader election."""

    async def enqueue(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("etcd txn: timed out after 3.0s")

    async def prepare_enqueue(self, *args: Any, **kwargs: Any) -> Any:
        # The jobs go into the outcome's txn; reading the queue for them fails.
        raise StoreUnavailable("etcd range: timed out after 3.0s")


async def test_a_job_that_cannot_be_queued_does_not_fail_a_recorded_write() -> None:
    store = MemoryStore(ManualClock())
    repos = RepositoryStore(store, KEYS, rng=random.Random(1))
    record = await repos.create("vs", "a.git", nodes=NODES, healthy=set(NODES))
    cache = RepositoryCache(store, KEYS)
    await cache.start()
    port = EtcdClusterPort(
        {"vs": NODES},
        {"vs": 3},
        repos,
        cache,
        health=AllHealthy(),  # type: ignore[arg-type]  # only its healthy() is used
        local_health=lambda _vs, _node: True,
        queue=UnreachableQueue(store, KEYS),
        metrics=ProxyMetrics(CollectorRegistry()),
    )
    assert record.primary is not None
    others = [n for n in NODES if n != record.primary]
    route = MutatorRoute(
        repository_id=record.repository_id,
        replica_path=record.replica_path,
        primary=record.primary,
        secondaries=tuple(others),
        replication_targets=(),
        transactional=True,
        generation=record.generation,
    )
    result = WriteResult(
        updated=frozenset({record.primary, others[0]}),
        outdated=frozenset({others[1]}),
        reason="committed",
    )
    async with asyncio.timeout(5):
        await port.record_write("vs", route, result)  # no exception: the write stands
    after = await repos.get("vs", record.repository_id)
    assert after.generation == record.generation + 1
    generations = dict(after.replicas)
    assert generations[record.primary] == generations[others[0]] == after.generation
    # The replica left behind is recorded as outdated: the reconciler finds it there.
    assert generations[others[1]] < after.generation
    await cache.close()
