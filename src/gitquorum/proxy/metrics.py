"""Metrics of the proxy's request path."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

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
