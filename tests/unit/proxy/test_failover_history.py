"""The leader's failover leaves an account of each primary change in the history log."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gitquorum.cluster.errors import Conflict
from gitquorum.cluster.history import FAILOVER, History
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.repositories import RepositoryRecord
from gitquorum.proxy.leader_tasks import LeaderTasks

KEYS = Keyspace("unit")
# n1 is primary and down; n2 and n3 are up to date.
DOWN = RepositoryRecord(
    1, "vs", "a.git", "n1", ("n1", "n2", "n3"), 5, (("n1", 5), ("n2", 5), ("n3", 5))
)
LOST = RepositoryRecord(2, "vs", "b.git", "n1", ("n1", "n2"), 5, (("n1", 5), ("n2", 4)))
RACED = RepositoryRecord(3, "vs", "c.git", "n1", ("n1", "n2"), 5, (("n1", 5), ("n2", 5)))


class Repositories:
    async def set_primary(
        self, vs: str, rid: int, node: str, *, expected: str | None, fence: Any
    ) -> RepositoryRecord:
        record = {1: DOWN, 3: RACED}[rid]
        if rid == 3:
            raise Conflict("someone else moved it first")
        return replace(record, primary=node)


class Cache:
    def records(self, _vs: str | None = None) -> tuple[RepositoryRecord, ...]:
        return (DOWN, LOST, RACED)


class Health:
    def add_listener(self, _callback: Any) -> None:
        pass

    def healthy(self, _vs: str) -> frozenset[str]:
        return frozenset({"n2", "n3"})


class Counter:
    def labels(self, *_labels: str) -> Counter:
        return self

    def inc(self) -> None:
        pass


class Metrics:
    failovers = Counter()


class Election:
    token = None


async def test_each_failover_is_recorded_once_and_only_when_it_happened() -> None:
    store = MemoryStore()
    history = History(store, KEYS, writer="proxy1")
    tasks = LeaderTasks(
        Election(),  # type: ignore[arg-type]
        Repositories(),  # type: ignore[arg-type]
        Cache(),  # type: ignore[arg-type]
        Health(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        Metrics(),  # type: ignore[arg-type]
        None,
        history=history,
    )
    assert await tasks.failover_once() == 1
    [event] = await history.events()
    assert (event.kind, event.repository_id, event.relative_path) == (FAILOVER, 1, "a.git")
    assert event.old == "n1" and event.new in {"n2", "n3"}
    assert event.by == "proxy1" and event.reason == "primary-unhealthy"
    # LOST has no valid candidate and RACED lost its compare-and-swap: no entry for either.
