"""Metrics of the proxy's request path."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gitquorum.metrics import LATENCY_BUCKETS, RpcMetrics


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rpc = RpcMetrics(registry, "proxy")
        self.reads = Counter(
            "gitquorum_read_distribution_total",
            "Accessor RPCs routed, by virtual storage and the node that served them.",
            ["virtual_storage", "node"],
            registry=registry,
        )
        self._reads: dict[tuple[str, str], Any] = {}
        self.transactions = Counter(
            "gitquorum_transactions_total",
            "Mutator transactions by outcome (committed, secondaries-outdated, "
            "primary-not-committed, primary-failed-before-commit, primary-failed-after-commit, "
            "no-votes, primary-only, primary-failed).",
            ["outcome"],
            registry=registry,
        )
        self.vote_latency = Histogram(
            "gitquorum_transaction_vote_duration_seconds",
            "Time from a node's vote to the decision it waited for.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.failovers = Counter(
            "gitquorum_failovers_total",
            "Primaries changed, by virtual storage and reason.",
            ["virtual_storage", "reason"],
            registry=registry,
        )
        self.write_holds = Histogram(
            "gitquorum_write_hold_seconds",
            "Time writes waited while an outdated replica took its last catch-up copy.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.watch_lag = Histogram(
            "gitquorum_cluster_watch_lag_seconds",
            "Time from etcd acknowledging a repository record change this proxy made to its "
            "own watch-fed cache applying it: how far a cache trails etcd.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.intent_latency = Histogram(
            "gitquorum_write_intent_seconds",
            "Time a write's first COMMIT waited for its intent to be put in etcd "
            "(the record that lets the verifier settle what an unfinished write leaves).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.verifier_verdicts = Counter(
            "gitquorum_verifier_verdicts_total",
            "Verdicts the verifier stored, by virtual storage and kind: majority (replicas "
            "differing from the majority demoted and repaired), unfinished-write (replicas "
            "differing by unfinished writes settled), conflict (no majority: nothing "
            "repaired), conflict-cleared.",
            ["virtual_storage", "verdict"],
            registry=registry,
        )
        self.state_age = StateAge(registry)
        self.read_retries = Counter(
            "gitquorum_read_retries_total",
            "Accessor RPCs sent again to another up-to-date replica because their node "
            "failed before any response message went to the client.",
            registry=registry,
        )
        self.read_last_resort = Counter(
            "gitquorum_read_last_resort_total",
            "Accessor RPCs served by an up-to-date replica that is not healthy for this proxy, "
            "because no up-to-date replica was (reads.last_resort).",
            registry=registry,
        )
        self.read_replicas_missing = Counter(
            "gitquorum_read_replicas_missing_total",
            "Accessor RPCs whose replica, recorded up to date, was missing on its node's disk "
            "(the node answered 'repository not found'); the read went to the next up-to-date "
            "replica, or was refused UNAVAILABLE when none was left.",
            ["storage"],
            registry=registry,
        )
        self.read_hedges = Counter(
            "gitquorum_read_hedges_total",
            "Unary accessor RPCs sent to a second replica because the first had not answered "
            "within its hedge delay (result=sent), and those the second replica answered "
            "first (result=won).",
            ["result"],
            registry=registry,
        )
        for result in ("sent", "won"):
            self.read_hedges.labels(result)
        self.node_ejections = Counter(
            "gitquorum_node_ejections_total",
            "Times this proxy took a node out of its read set for failing reads or losing "
            "hedges several times in a row (outlier detection).",
            ["node"],
            registry=registry,
        )
        self.immediate_probes = Counter(
            "gitquorum_health_immediate_probes_total",
            "Health checks made out of turn because a node's connection failed, by "
            "virtual storage, node, trigger (connection-lost, rpc-failed, peer-view) and "
            "result (healthy, unhealthy).",
            ["virtual_storage", "node", "trigger", "result"],
            registry=registry,
        )
        self.write_retries = Counter(
            "gitquorum_write_retries_total",
            "Writes whose primary could not be connected to before anything was sent, "
            "by virtual storage and result: retried (sent to the primary after the "
            "failover, or to the same primary once its connection came back), gave-up (neither "
            "within the deadline; answered UNAVAILABLE).",
            ["virtual_storage", "result"],
            registry=registry,
        )

    def read_served(self, virtual_storage: str, node: str) -> None:
        """Count an accessor routed to ``node``: its labelled child looked up once."""
        key = (virtual_storage, node)
        child = self._reads.get(key)
        if child is None:
            child = self._reads[key] = self.reads.labels(virtual_storage, node)
        child.inc()

    def observe_immediate_probe(
        self, virtual_storage: str, node: str, trigger: str, ok: bool
    ) -> None:
        result = "healthy" if ok else "unhealthy"
        self.immediate_probes.labels(virtual_storage, node, trigger, result).inc()


class StateAge(Collector):
    """``gitquorum_cluster_state_age_seconds``, read from its source at scrape time.

    A value kept up to date by a task would stop moving exactly when the
    proxy's event loop or etcd stalls; computed on scrape, it keeps growing.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._source: Callable[[], float] | None = None
        registry.register(self)

    def follow(self, source: Callable[[], float]) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        source = self._source
        if source is None:
            return
        age = GaugeMetricFamily(
            "gitquorum_cluster_state_age_seconds",
            "Seconds since this proxy's repository cache last heard from etcd (a watch event "
            "or progress notification); reads are refused beyond stale_read_limit.",
        )
        age.add_metric([], source())
        yield age
