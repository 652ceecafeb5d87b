"""The finalizer: a write recorded in etcd is never reported as failed afterwards."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.decisions import WriteResult, up_to_date_replicas
from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import ReplicationQueue
from gitquorum.cluster.repositories import RepositoryCache, RepositoryStore
from gitquorum.cluster.store import OpKind
from gitquorum.proxy.routing import MutatorRoute
from tests.unit.proxy.finalizer_parts import KEYS, NODES, memory_port


class UnreachableQueue(ReplicationQueue):
    """A queue whose etcd requests time out, as during an etcd leader election."""

    async def enqueue(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("etcd txn: timed out after 3.0s")

    async def prepare_enqueue(self, *args: Any, **kwargs: Any) -> Any:
        # The jobs go into the outcome's txn; reading the queue for them fails.
        raise StoreUnavailable("etcd range: timed out after 3.0s")


async def test_a_job_that_cannot_be_queued_does_not_fail_a_recorded_write() -> None:
    store = MemoryStore(ManualClock())
    repos = RepositoryStore(store, KEYS, rng=random.Random(1))
    record = await repos.create("vs", "a.git", nodes=NODES, healthy=set(NODES))
    cache = RepositoryCache(store, KEYS)
    await cache.start()
    port = memory_port(store, repos, cache, UnreachableQueue(store, KEYS))
    assert record.primary is not None
    others = [n for n in NODES if n != record.primary]
    route = MutatorRoute(
        repository_id=record.repository_id,
        replica_path=record.replica_path,
        primary=record.primary,
        secondaries=tuple(others),
        replication_targets=(),
        transactional=True,
        generation=record.generation,
    )
    result = WriteResult(
        updated=frozenset({record.primary, others[0]}),
        outdated=frozenset({others[1]}),
        reason="committed",
    )
    async with asyncio.timeout(5):
        await port.record_write("vs", route, result)  # no exception: the write stands
    after = await repos.get("vs", record.repository_id)
    assert after.generation == record.generation + 1
    generations = dict(after.replicas)
    assert generations[record.primary] == generations[others[0]] == after.generation
    # The replica left behind is recorded as outdated: the reconciler finds it there.
    assert generations[others[1]] < after.generation
    await cache.close()


class RepairDuringJobsTxn(MemoryStore):
    """The first txn that queues jobs without changing a record: a repair lands
    (before it, or after it when ``applied``) and the txn's answer is lost."""

    def __init__(self, *, applied: bool) -> None:
        super().__init__(ManualClock())
        self.repair: Callable[[], Awaitable[None]] | None = None  # armed by the test
        self.applied = applied

    async def txn(self, compares: Any, success: Any, failure: Any = ()) -> Any:
        keys = [op.key for op in success if op.kind is OpKind.PUT]
        repair = self.repair
        if repair is None or not keys or any("/repositories/" in k for k in keys):
            return await super().txn(compares, success, failure)
        self.repair = None
        if self.applied:
            await super().txn(compares, success, failure)
            await repair()
        else:
            await repair()
            assert not (await super().txn(compares, success, failure)).succeeded
        raise StoreUnavailable("etcd txn: timed out")


@pytest.mark.parametrize("applied", [False, True], ids=["txn-failed", "txn-applied"])
async def test_a_lost_jobs_txn_around_a_repair_plans_the_outcome_again(applied: bool) -> None:
    """Write B, routed at generation 1, holds nobody and names n2 and n3 outdated,
    both behind: the record needs no change, only jobs. A repair that read
    generation 1 (and may have fetched before B landed on n3) moves n3 up to
    date around that txn, whose answer is lost. The outcome must be planned
    again on the new record: n3 may hold part of B, so it is demoted and
    repaired, and no job is queued twice."""
    store = RepairDuringJobsTxn(applied=applied)
    repos = RepositoryStore(store, KEYS, rng=random.Random(1))
    record = await repos.create("vs", "a.git", nodes=NODES, healthy=set(NODES))
    record = await repos.increment_generation("vs", record.repository_id, NODES)
    route = MutatorRoute(
        repository_id=record.repository_id,
        replica_path=record.replica_path,
        primary="n1",
        secondaries=("n3",),
        replication_targets=("n2",),
        transactional=True,
        generation=record.generation,
    )
    await repos.mark_outdated("vs", record.repository_id, ["n2"])
    await repos.mark_outdated("vs", record.repository_id, ["n3"])  # the verifier: n3 behind
    cache = RepositoryCache(store, KEYS)
    await cache.start()
    port = memory_port(store, repos, cache)

    async def repair() -> None:  # read generation 1, copied from n1
        await repos.set_replica_generation("vs", record.repository_id, "n3", 1)

    store.repair = repair
    result = WriteResult(frozenset(), frozenset({"n2", "n3"}), "primary-not-committed")
    async with asyncio.timeout(5):
        await port.record_write("vs", route, result)
    after = await repos.get("vs", record.repository_id)
    assert store.repair is None, "the repair ran"
    assert after.generation == 1
    assert up_to_date_replicas(after) == {"n1"}
    jobs = await ReplicationQueue(store, KEYS).jobs("vs")
    assert sorted(job.target_node for job in jobs) == ["n2", "n3"]
    await cache.close()
