from __future__ import annotations

import pytest
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
    dead = {"virtual_storage": "vs", "target_node": "n2"}
    assert sample(registry, "gitquorum_replication_queue_dead_jobs", dead) == 1
    # A drained target disappears instead of lingering.
    metrics.update_queue(queue_stats([], now=200.0))
    assert b"gitquorum_replication_queue_depth{" not in generate_latest(registry)
    assert sample(registry, "gitquorum_replication_queue_dead_jobs", dead) is None


def _job(job_id: str, target: str, state: JobState, vs: str = "vs") -> ReplicationJob:
    return ReplicationJob(job_id, JobType.UPDATE, vs, int(job_id), "r", target, "n1", state, 3)


@pytest.mark.parametrize(
    ("jobs", "dead"),
    [
        pytest.param([], {}, id="no jobs: no series"),
        pytest.param(
            [_job("1", "n2", JobState.READY), _job("2", "n2", JobState.IN_PROGRESS)],
            {("vs", "n2"): 0},
            id="busy target without dead jobs: 0",
        ),
        pytest.param(
            [_job("1", "n2", JobState.DEAD), _job("2", "n2", JobState.DEAD)],
            {("vs", "n2"): 2},
            id="one per replica, counted",
        ),
        pytest.param(
            [
                _job("1", "n2", JobState.DEAD),
                _job("2", "n3", JobState.FAILED),
                _job("3", "n2", JobState.DEAD, vs="other"),
            ],
            {("vs", "n2"): 1, ("vs", "n3"): 0, ("other", "n2"): 1},
            id="by virtual storage and target node",
        ),
    ],
)
def test_queue_stats_count_dead_jobs_per_target(
    jobs: list[ReplicationJob], dead: dict[tuple[str, str], int]
) -> None:
    assert queue_stats(jobs, now=0.0).dead == dead


def test_two_instances_do_not_collide_in_separate_registries() -> None:
    ClusterMetrics(CollectorRegistry())
    ClusterMetrics(CollectorRegistry())


def test_verification_conflicts_per_virtual_storage() -> None:
    registry = CollectorRegistry()
    metrics = ClusterMetrics(registry, proxy="p1")
    agreed = RepositoryRecord(1, "vs", "a", "n1", ("n1", "n2"), 2, (("n1", 2), ("n2", 2)))
    disagree = RepositoryRecord(
        2, "vs", "b", "n1", ("n1", "n2"), 2, (("n1", 2), ("n2", 2)), conflict=("n1", "n2")
    )
    metrics.update_repositories(
        [agreed, disagree], {"vs": {"n1", "n2"}}, virtual_storages=["vs", "other"]
    )
    name = "gitquorum_verification_conflicts"
    assert sample(registry, name, {"virtual_storage": "vs"}) == 1
    # Listed virtual storages read 0, not absent, so the alert can resolve.
    assert sample(registry, name, {"virtual_storage": "other"}) == 0
    metrics.update_repositories([agreed], {"vs": {"n1", "n2"}}, virtual_storages=["vs"])
    assert sample(registry, name, {"virtual_storage": "vs"}) == 0
