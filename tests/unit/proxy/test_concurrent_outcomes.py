"""Concurrent write outcomes recorded through the finalizer against the in-memory store.

Replays the interleaving that used to empty the up-to-date set: write A ends
with only S1 known to hold it and moves the repository from g to g+1 with S1
alone; write B, routed at g, ends with a decided vote that nobody is known to
hold and names {S1, S2} outdated. Recorded against the current record, B
demoted S1 back to g, leaving no replica up to date.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence

import pytest

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.decisions import WriteResult, up_to_date_replicas
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.repositories import RepositoryCache, RepositoryRecord, RepositoryStore
from gitquorum.cluster.store import Compare, Op, OpKind, TxnResult
from gitquorum.proxy.etcd_cluster_port import EtcdClusterPort
from gitquorum.proxy.routing import MutatorRoute
from tests.unit.proxy.finalizer_parts import KEYS, NODES, memory_port


async def _port(store: MemoryStore) -> tuple[EtcdClusterPort, RepositoryRecord]:
    repos = RepositoryStore(store, KEYS, rng=random.Random(1))
    record = await repos.create("vs", "a.git", nodes=NODES, healthy=set(NODES))
    cache = RepositoryCache(store, KEYS)
    await cache.start()
    port = memory_port(store, repos, cache)
    return port, record


def _route(record: RepositoryRecord, primary: str, secondaries: tuple[str, ...]) -> MutatorRoute:
    return MutatorRoute(
        repository_id=record.repository_id,
        replica_path=record.replica_path,
        primary=primary,
        secondaries=secondaries,
        replication_targets=(),
        transactional=True,
        generation=record.generation,
    )


async def test_a_late_outcome_does_not_demote_a_replica_a_later_write_moved_on() -> None:
    store = MemoryStore(ManualClock())
    port, record = await _port(store)
    assert record.primary is not None
    p = record.primary
    s1, s2 = (n for n in NODES if n != p)
    g = record.generation
    # Both writes routed at generation g, to the same three replicas.
    route_a = _route(record, p, (s1, s2))
    route_b = _route(record, p, (s1, s2))
    async with asyncio.timeout(5):
        # A: the primary failed after the commit; only S1 provably holds the update.
        await port.record_write(
            "vs",
            route_a,
            WriteResult(frozenset({s1}), frozenset({p, s2}), "primary-failed-after-commit"),
        )
        # B: a decided vote, nobody known to hold it.
        await port.record_write(
            "vs", route_b, WriteResult(frozenset(), frozenset({s1, s2}), "primary-not-committed")
        )
    after = await port.repositories.get("vs", record.repository_id)
    assert after.generation == g + 1
    # S1 alone holds A: it must stay up to date.
    assert up_to_date_replicas(after) == {s1}
    await port.cache.close()


class RacingStore(MemoryStore):
    """Runs ``race`` once, just before the next txn that writes: another
    outcome landing between a finalizer's read and its txn."""

    race: Callable[[], Awaitable[object]] | None = None

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        if self.race is not None and any(op.kind is OpKind.PUT for op in success):
            race, self.race = self.race, None
            await race()
        return await super().txn(compares, success, failure)


def _jobs_by_target(store: MemoryStore) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key in store.dump(KEYS.jobs()):
        _vs, target, _rid, job_id = key[len(KEYS.jobs()) :].split("/")
        found.setdefault(target, []).append(job_id)
    return found


async def test_an_outcome_and_its_repair_jobs_are_one_txn() -> None:
    store = MemoryStore(ManualClock())
    port, record = await _port(store)
    assert record.primary is not None
    p = record.primary
    s1, s2 = (n for n in NODES if n != p)
    before = store.revision
    async with asyncio.timeout(5):
        await port.record_write(
            "vs",
            _route(record, p, (s1, s2)),
            WriteResult(frozenset({p, s1}), frozenset({s2}), "secondaries-outdated"),
        )
    after = await port.repositories.get("vs", record.repository_id)
    assert store.revision == before + 1  # one write: the record and the job together
    assert after.revision == store.revision
    (job,) = await port.queue.jobs()
    assert job.target_node == s2
    assert job.created_revision == after.revision
    await port.cache.close()


async def test_an_outcome_that_loses_the_race_is_computed_again_on_the_new_record() -> None:
    store = RacingStore(ManualClock())
    port, record = await _port(store)
    assert record.primary is not None
    p = record.primary
    s1, s2 = (n for n in NODES if n != p)
    g = record.generation
    route = _route(record, p, (s1, s2))

    async def write_a_lands_first() -> None:
        await port.record_write(
            "vs",
            route,
            WriteResult(frozenset({s1}), frozenset({p, s2}), "primary-failed-after-commit"),
        )

    store.race = write_a_lands_first
    async with asyncio.timeout(5):
        # B read the record at g and would demote s1 and s2; A lands before its txn.
        await port.record_write(
            "vs", route, WriteResult(frozenset(), frozenset({s1, s2}), "primary-not-committed")
        )
    after = await port.repositories.get("vs", record.repository_id)
    assert after.generation == g + 1
    assert up_to_date_replicas(after) == {s1}
    # A's jobs, not duplicated by B's second round.
    assert {t: len(ids) for t, ids in _jobs_by_target(store).items()} == {p: 1, s2: 1}
    await port.cache.close()


async def test_jobs_whose_txn_lost_its_answer_do_not_fail_the_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore(ManualClock())
    port, record = await _port(store)
    assert record.primary is not None
    p = record.primary
    s1, s2 = (n for n in NODES if n != p)
    # s2 is already outdated and has no job: the outcome changes no record,
    # its txn only carries s2's job.
    bumped = await port.repositories.increment_generation("vs", record.repository_id, [p, s1])
    store.fail_after_apply(1)
    async with asyncio.timeout(5):
        await port.record_write(
            "vs",
            _route(bumped, p, (s1,)),
            WriteResult(frozenset(), frozenset({s2}), "primary-not-committed"),
        )
    after = await port.repositories.get("vs", record.repository_id)
    assert after == bumped
    assert list(_jobs_by_target(store)) == [s2]  # applied; only its answer was lost
    assert "replication jobs may not be queued" in caplog.text
    await port.cache.close()
