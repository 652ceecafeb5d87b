"""A replica-loss nemesis re-reads the record after its kill: a wipe of a
replica that the writes cut short by the kill left as the repository's only
up-to-date copy is not made (seed 745480504: the last copy wiped, the
repository stuck), and the fault then excuses nothing."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gitquorum.cluster.repositories import RepositoryRecord
from tests.faults import disk


def _record(**replicas: int) -> RepositoryRecord:
    return RepositoryRecord(
        1, "default", "r.git", "n3", tuple(sorted(replicas)), max(replicas.values()),
        tuple(sorted(replicas.items())),
    )  # fmt: skip


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disk, "SETTLE_S", 0.3)
    monkeypatch.setattr(disk, "SETTLE_MAX_S", 1.5)


def _run(*records: RepositoryRecord) -> Any:
    """A run whose record reads return ``records`` in turn, then the last."""
    queue = list(records)

    def record(_repo: str) -> RepositoryRecord:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return SimpleNamespace(record=record)


async def test_a_replica_left_the_only_up_to_date_copy_after_the_kill_is_not_spare() -> None:
    both = _record(n1=5, n2=6, n3=6)
    alone = _record(n1=5, n2=5, n3=6)  # an outcome recorded after the kill demoted n2
    assert not await disk.ReplicaLoss._still_spare(_run(both, alone), "r.git", "n3")


async def test_a_replica_with_another_up_to_date_one_stays_spare() -> None:
    both = _record(n1=5, n2=6, n3=6)
    assert await disk.ReplicaLoss._still_spare(_run(both), "r.git", "n3")


async def test_an_unreachable_etcd_leaves_the_picks_word() -> None:
    def unreachable(_repo: str) -> RepositoryRecord:
        raise RuntimeError("no etcd member answered")

    assert await disk.ReplicaLoss._still_spare(SimpleNamespace(record=unreachable), "r.git", "n3")
