"""The generation-lag gauge's pure computation."""

from __future__ import annotations

from gitquorum.cluster.reports import generation_lag_by_node
from gitquorum.cluster.repositories import RepositoryRecord


def record(
    rid: int, generation: int, replicas: dict[str, int], assigned: tuple[str, ...]
) -> RepositoryRecord:
    return RepositoryRecord(
        rid, "vs", f"r{rid}", assigned[0], assigned, generation, tuple(sorted(replicas.items()))
    )


def test_lag_is_the_worst_replica_per_node() -> None:
    records = [
        record(1, 5, {"n1": 5, "n2": 3}, ("n1", "n2", "n3")),
        record(2, 9, {"n1": 9, "n2": 8, "n3": 1}, ("n1", "n2", "n3")),
    ]
    lag = generation_lag_by_node(records)
    # n3 misses repository 1 entirely (counts as generation + 1 = 6) and is 8 behind on 2.
    assert lag == {("vs", "n1"): 0, ("vs", "n2"): 2, ("vs", "n3"): 8}


def test_unassigned_replicas_do_not_count() -> None:
    lag = generation_lag_by_node([record(1, 4, {"n1": 4, "n9": 0}, ("n1",))])
    assert lag == {("vs", "n1"): 0}
