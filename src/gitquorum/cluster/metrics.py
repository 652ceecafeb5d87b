"""Prometheus metrics of the cluster layer (``gitquorum_*``).

State gauges (queue depth, dead replication jobs, outdated replicas,
unavailable repositories, node health, leadership) are exported by a custom
collector from snapshots that the owner refreshes (``update_*``), so a scrape
never sees half of an update and label sets that disappear (a drained target)
vanish from the output. The etcd latency histogram and error counter are
ordinary metrics fed by the store (:class:`~gitquorum.cluster.etcd_store.StoreObserver`).

Pass a ``CollectorRegistry`` to keep tests apart; the default is the global
registry, where one ``ClusterMetrics`` per process may exist.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gitquorum.cluster.health import HealthMap
from gitquorum.cluster.queue import QueueStats
from gitquorum.cluster.reports import (
    conflicts_by_virtual_storage,
    generation_lag_by_node,
    outdated_by_node,
    unavailable_by_virtual_storage,
)
from gitquorum.cluster.repositories import RepositoryRecord

ETCD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class ClusterMetrics(Collector):
    def __init__(self, registry: CollectorRegistry | None = None, *, proxy: str = "") -> None:
        self.proxy = proxy
        registry = registry if registry is not None else REGISTRY
        self.etcd_latency = Histogram(
            "gitquorum_etcd_request_duration_seconds",
            "Duration of etcd requests made by the cluster layer",
            ["operation"],
            buckets=ETCD_BUCKETS,
            registry=registry,
        )
        self.etcd_errors = Counter(
            "gitquorum_etcd_request_errors_total",
            "etcd requests that failed, by operation and error",
            ["operation", "error"],
            registry=registry,
        )
        self._lock = threading.Lock()
        self._queue = QueueStats()
        self._outdated: dict[tuple[str, str], int] = {}
        self._generation_lag: dict[tuple[str, str], int] = {}
        self._unavailable: dict[str, int] = {}
        self._conflicts: dict[str, int] = {}
        self._local: dict[tuple[str, str], bool] = {}
        self._consensus: dict[tuple[str, str], bool] = {}
        self._leader = False
        registry.register(self)

    # -- store observer ----------------------------------------------------------

    def observe_store_request(self, operation: str, seconds: float, error: str | None) -> None:
        self.etcd_latency.labels(operation).observe(seconds)
        if error is not None:
            self.etcd_errors.labels(operation, error).inc()

    # -- snapshot updates ----------------------------------------------------------

    def update_queue(self, stats: QueueStats) -> None:
        with self._lock:
            self._queue = stats

    def update_repositories(
        self,
        records: Iterable[RepositoryRecord],
        healthy: Mapping[str, AbstractSet[str]],
        virtual_storages: Iterable[str] = (),
    ) -> None:
        """Outdated replicas per node, and unavailable repositories and repositories
        whose replicas disagree per virtual storage."""
        snapshot = tuple(records)
        outdated = {key: len(ids) for key, ids in outdated_by_node(snapshot).items()}
        virtual_storages = tuple(virtual_storages)
        unavailable = dict.fromkeys(virtual_storages, 0)
        unavailable.update(unavailable_by_virtual_storage(snapshot, healthy))
        lag = generation_lag_by_node(snapshot)
        conflicts = dict.fromkeys(virtual_storages, 0)
        conflicts.update(conflicts_by_virtual_storage(snapshot))
        with self._lock:
            self._conflicts = conflicts
            self._outdated = outdated
            self._unavailable = unavailable
            self._generation_lag = lag

    def update_health(
        self,
        local: HealthMap | None = None,
        consensus: Mapping[str, AbstractSet[str]] | None = None,
        nodes: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """Node health as this proxy sees it and as the majority sees it.

        ``nodes`` (virtual storage -> nodes) lists every configured node so the
        consensus gauge reports 0 for nodes nobody sees healthy."""
        with self._lock:
            if local is not None:
                self._local = {
                    (vs, node): ok for vs, members in local.items() for node, ok in members.items()
                }
            if consensus is not None:
                known = {(vs, n) for vs, members in (nodes or {}).items() for n in members}
                known.update(self._local)
                known.update((vs, n) for vs, members in consensus.items() for n in members)
                self._consensus = {(vs, n): n in consensus.get(vs, frozenset()) for vs, n in known}

    def set_leader(self, leading: bool) -> None:
        with self._lock:
            self._leader = leading

    # -- collector -------------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            queue, outdated, unavailable = self._queue, self._outdated, self._unavailable
            generation_lag = self._generation_lag
            conflicts = self._conflicts
            local, consensus, leader = self._local, self._consensus, self._leader
        depth = GaugeMetricFamily(
            "gitquorum_replication_queue_depth",
            "Replication jobs by target node and state",
            labels=["virtual_storage", "target_node", "state"],
        )
        for (vs, target, state), count in sorted(queue.depth.items()):
            depth.add_metric([vs, target, state], count)
        yield depth
        age = GaugeMetricFamily(
            "gitquorum_replication_queue_oldest_pending_seconds",
            "Age of the oldest replication job not yet done, per target node",
            labels=["virtual_storage", "target_node"],
        )
        for (vs, target), seconds in sorted(queue.oldest_pending_age.items()):
            age.add_metric([vs, target], seconds)
        yield age
        dead = GaugeMetricFamily(
            "gitquorum_replication_queue_dead_jobs",
            "Replicas on the target node whose replication job failed every attempt "
            "(one dead job each, retried with a backoff of up to an hour)",
            labels=["virtual_storage", "target_node"],
        )
        for (vs, target), count in sorted(queue.dead.items()):
            dead.add_metric([vs, target], count)
        yield dead
        stale = GaugeMetricFamily(
            "gitquorum_outdated_replicas",
            "Assigned replicas behind their repository's generation, per node",
            labels=["virtual_storage", "storage"],
        )
        for (vs, node), count in sorted(outdated.items()):
            stale.add_metric([vs, node], count)
        yield stale
        lag = GaugeMetricFamily(
            "gitquorum_replica_generation_lag",
            "Most generations any assigned replica on the node is behind (missing: generation+1)",
            labels=["virtual_storage", "storage"],
        )
        for (vs, node), behind in sorted(generation_lag.items()):
            lag.add_metric([vs, node], behind)
        yield lag
        down = GaugeMetricFamily(
            "gitquorum_unavailable_repositories",
            "Repositories with no healthy, up-to-date, assigned replica",
            labels=["virtual_storage"],
        )
        for vs, count in sorted(unavailable.items()):
            down.add_metric([vs], count)
        yield down
        disagree = GaugeMetricFamily(
            "gitquorum_verification_conflicts",
            "Repositories whose up-to-date replicas the verifier found different with no "
            "majority among them: nothing is repaired until an operator chooses one",
            labels=["virtual_storage"],
        )
        for vs, count in sorted(conflicts.items()):
            disagree.add_metric([vs], count)
        yield disagree
        health = GaugeMetricFamily(
            "gitquorum_node_healthy",
            "1 if the node is healthy as this proxy sees it (view=local) "
            "or by at least half of the live proxies (view=consensus)",
            labels=["virtual_storage", "storage", "view"],
        )
        for (vs, node), ok in sorted(local.items()):
            health.add_metric([vs, node, "local"], float(ok))
        for (vs, node), ok in sorted(consensus.items()):
            health.add_metric([vs, node, "consensus"], float(ok))
        yield health
        lead = GaugeMetricFamily(
            "gitquorum_leader", "1 if this proxy is the cluster leader", labels=["proxy"]
        )
        lead.add_metric([self.proxy], float(leader))
        yield lead
