"""The finalizer's real parts over the in-memory store, for its unit tests."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from gitquorum.cluster.intents import IntentStore
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import ReplicationQueue
from gitquorum.cluster.repositories import RepositoryCache, RepositoryStore
from gitquorum.proxy.etcd_cluster_port import EtcdClusterPort
from gitquorum.proxy.metrics import ProxyMetrics

KEYS = Keyspace("unit")
NODES = ("n1", "n2", "n3")


class AllHealthy:
    """The health consensus: every node healthy."""

    def healthy(self, _virtual_storage: str) -> frozenset[str]:
        return frozenset(NODES)


def memory_port(
    store: MemoryStore,
    repos: RepositoryStore,
    cache: RepositoryCache,
    queue: ReplicationQueue | None = None,
    virtual_storage: str = "vs",
    intents: IntentStore | None = None,
) -> EtcdClusterPort:
    """The etcd cluster port over ``store``, every node healthy and reachable."""
    return EtcdClusterPort(
        {virtual_storage: NODES},
        {virtual_storage: 3},
        repos,
        cache,
        health=AllHealthy(),  # type: ignore[arg-type]  # only its healthy() is used
        local_health=lambda _vs, _node: True,
        queue=queue if queue is not None else ReplicationQueue(store, KEYS),
        metrics=ProxyMetrics(CollectorRegistry()),
        intents=intents,
        proxy_name="p1",
    )
