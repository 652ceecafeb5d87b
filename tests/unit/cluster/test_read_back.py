"""A record change whose txn answer was lost while etcd elected a leader: the
record is read back as soon as etcd answers again, so the change is known to
be applied (or not) instead of being reported as an unknown outcome."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.repositories import RepositoryStore
from gitquorum.cluster.store_retry import StoreRetry

KEYS = Keyspace("unit")
NODES = ("n1", "n2", "n3")


class ElectingStore(MemoryStore):
    """The next txn is applied but its answer lost, and etcd stays unavailable
    for the first ``reads_failing`` reads after it."""

    def __init__(self) -> None:
        super().__init__(ManualClock())
        self.reads_failing = 0
        self.armed = 0  # reads that fail after the next txn

    async def txn(self, compares: Any, success: Any, failure: Any = ()) -> Any:
        if self.armed:
            self.reads_failing, self.armed = self.armed, 0
            self.fail_after_apply(1)
        return await super().txn(compares, success, failure)

    async def get(self, key: str) -> Any:
        if self.reads_failing:
            self.reads_failing -= 1
            raise StoreUnavailable("etcd range: timed out after 3.0s")
        return await super().get(key)


async def _store(retry_attempts: int) -> tuple[ElectingStore, RepositoryStore, int]:
    store = ElectingStore()
    repos = RepositoryStore(store, KEYS, rng=random.Random(1))
    record = await repos.create("vs", "a.git", nodes=NODES, healthy=set(NODES))

    async def no_wait(_seconds: float) -> None:
        return None

    repos._read_back_retry = StoreRetry(attempts=retry_attempts, sleep=no_wait)
    return store, repos, record.repository_id


async def test_a_lost_answer_is_settled_by_reading_back_once_etcd_answers() -> None:
    store, repos, rid = await _store(retry_attempts=5)
    store.armed = 2  # the election outlasts the txn and two reads
    after = await repos.increment_generation("vs", rid, NODES)
    assert after.generation == 1
    assert (await repos.get("vs", rid)).generation == 1  # applied once, not twice


async def test_an_outage_longer_than_the_read_back_still_says_it_is_unknown() -> None:
    store, repos, rid = await _store(retry_attempts=2)
    store.armed = 5
    with pytest.raises(StoreUnavailable):
        await repos.increment_generation("vs", rid, NODES)
