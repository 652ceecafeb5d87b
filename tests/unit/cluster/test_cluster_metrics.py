from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from gitquorum.cluster.metrics import ClusterMetrics
from gitquorum.cluster.queue import JobState, JobType, ReplicationJob, queue_stats
from gitquorum.cluster.repositories import RepositoryRecord


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float | None:
    return registry.get_sample_value(name, labels)


def test_cluster_metrics_export() -> None:
    registry = CollectorRegistry()
    metrics = ClusterMetrics(registry, proxy="p1")
    jobs = [
        ReplicationJob("a", JobType.UPDATE, "vs", 1, "r", "n2", "n1", created_at=100.0),
        ReplicationJob("b", JobType.UPDATE, "vs", 2, "r", "n2", "n1", JobState.DEAD, 3, 50.0),
    ]
    metrics.update_queue(queue_stats(jobs, now=160.0))
    records = [
        RepositoryRecord(1, "vs", "a", "n1", ("n1", "n2"), 2, (("n1", 2), ("n2", 1))),
        RepositoryRecord(2, "vs", "b", "n2", ("n2",), 1, (("n2", 1),)),
    ]
    metrics.update_repositories(records, {"vs": {"n1"}}, virtual_storages=["vs", "empty"])
    metrics.update_health({"vs": {"n1": True, "n2": False}}, {"vs": {"n1"}})
    metrics.set_leader(True)
    metrics.observe_store_request("txn", 0.002, None)
    metrics.observe_store_request("txn", 0.5, "unavailable")

    assert (
        sample(
            registry,
            "gitquorum_replication_queue_depth",
            {"virtual_storage": "vs", "target_node": "n2", "state": "ready"},
        )
        == 1
    )
    assert (
        sample(
            registry,
            "gitquorum_replication_queue_depth",
            {"virtual_storage": "vs", "target_node": "n2", "state": "dead"},
        )
        == 1
    )
    assert (
        sample(
            registry,
            "gitquorum_replication_queue_oldest_pending_seconds",
            {"virtual_storage": "vs", "target_node": "n2"},
        )
        == 60.0
    )
    assert (
        sample(registry, "gitquorum_outdated_replicas", {"virtual_storage": "vs", "storage": "n2"})
        == 1
    )
    assert sample(registry, "gitquorum_unavailable_repositories", {"virtual_storage": "vs"}) == 1
    assert sample(registry, "gitquorum_unavailable_repositories", {"virtual_storage": "empty"}) == 0
    assert (
        sample(
            registry,
            "gitquorum_node_healthy",
            {"virtual_storage": "vs", "storage": "n2", "view": "local"},
        )
        == 0
    )
    assert (
        sample(
            registry,
            "gitquorum_node_healthy",
            {"virtual_storage": "vs", "storage": "n1", "view": "consensus"},
        )
        == 1
    )
    assert (
        sample(
            registry,
            "gitquorum_node_healthy",
            {"virtual_storage": "vs", "storage": "n2", "view": "consensus"},
        )
        == 0
    )
    assert sample(registry, "gitquorum_leader", {"proxy": "p1"}) == 1
    assert (
        sample(registry, "gitquorum_etcd_request_duration_seconds_count", {"operation": "txn"}) == 2
    )
    assert (
        sample(
            registry,
            "gitquorum_etcd_request_errors_total",
            {"operation": "txn", "error": "unavailable"},
        )
        == 1
    )
    # A drained target disappears instead of lingering.
    metrics.update_queue(queue_stats([], now=200.0))
    assert b"gitquorum_replication_queue_depth{" not in generate_latest(registry)


def test_two_instances_do_not_collide_in_separate_registries() -> None:
    ClusterMetrics(CollectorRegistry())
    ClusterMetrics(CollectorRegistry())
