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
from gitquorum.cluster.repositories import (
    RepositoryRecord,
    RepositoryStore,
    TxnExtras,
    decode_record,
    encode_record,
)
from gitquorum.cluster.store import Op
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


class BusyStore(ElectingStore):
    """Around the next record txn, another proxy records a failover of the
    same repository to n2 on the record as it finds it, before or after the
    txn; the txn's answer is lost."""

    def __init__(self) -> None:
        super().__init__()
        self.other_key: str | None = None
        self.other_first = False

    async def _failover(self, key: str) -> None:
        kv = await super().get(key)
        assert kv is not None
        await super().put(key, kv.value.replace(b'"primary":"n1"', b'"primary":"n2"'))

    async def txn(self, compares: Any, success: Any, failure: Any = ()) -> Any:
        key, self.other_key = self.other_key, None
        if key is None:
            return await super().txn(compares, success, failure)
        if self.other_first:
            await self._failover(key)
        result = await super().txn(compares, success, failure)
        if not self.other_first:
            await self._failover(key)
        raise StoreUnavailable(f"etcd txn: timed out after 3.0s (applied: {result.succeeded})")


async def _busy(other_first: bool) -> tuple[BusyStore, RepositoryStore, int, str]:
    store = BusyStore()
    repos = RepositoryStore(store, KEYS, rng=random.Random(1))
    record = await repos.create("vs", "a.git", nodes=NODES, healthy=set(NODES))
    key = KEYS.repository("vs", record.repository_id)
    assert record.primary == "n1"
    store.other_key = key
    store.other_first = other_first
    return store, repos, record.repository_id, key


async def test_a_lost_answer_followed_by_another_change_is_known_applied() -> None:
    """The txn applied, then another change of the record landed before the
    read back: the change after the txn's read is ours, so the update is
    known to be applied, once."""
    _store, repos, rid, _key = await _busy(other_first=False)
    after = await repos.increment_generation("vs", rid, NODES)
    assert after.generation == 1
    now = await repos.get("vs", rid)
    assert (now.generation, now.primary) == (1, "n2")


async def test_a_lost_answer_after_another_change_is_planned_again() -> None:
    """Another change landed first and the txn failed its compare: nothing of
    ours applied, so the update is planned again on the new record and
    applied once."""
    store, repos, rid, key = await _busy(other_first=True)
    after = await repos.increment_generation("vs", rid, NODES)
    assert after.generation == 1
    kv = await store.get(key)
    assert kv is not None and kv.mod_revision == after.revision
    now = await repos.get("vs", rid)
    assert (now.generation, now.primary) == (1, "n2")


async def test_a_lost_answer_whose_history_is_compacted_stays_unknown() -> None:
    """When the versions in between are compacted away nothing can be known:
    the outcome stays unknown rather than guessed."""
    store, repos, rid, _key = await _busy(other_first=False)
    real_txn = store.txn

    async def txn_then_compact(compares: Any, success: Any, failure: Any = ()) -> Any:
        try:
            return await real_txn(compares, success, failure)
        finally:
            await store.compact(store.revision)

    store.txn = txn_then_compact  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await repos.increment_generation("vs", rid, NODES)


async def test_an_identical_change_by_another_writer_is_not_taken_for_ours() -> None:
    """Two writes routed at one generation that reached the same replicas
    compute the same record. The other's txn applied first, ours failed its
    compare and its answer was lost: the value after our read is the one we
    wrote, but not our txn's (its extras, here a marker key, are not at that
    revision), so ours is planned again rather than taken as applied with its
    extras never written."""
    store = ElectingStore()
    repos = RepositoryStore(store, KEYS, rng=random.Random(1))
    record = await repos.create("vs", "a.git", nodes=NODES, healthy=set(NODES))
    rid = record.repository_id
    key = KEYS.repository("vs", rid)
    real_txn = store.txn
    rounds: list[int] = []

    def bump(current: RepositoryRecord) -> RepositoryRecord:
        return current.with_replicas(
            {n: current.generation + 1 for n in NODES}, generation=current.generation + 1
        )

    async def plan(current: RepositoryRecord) -> tuple[RepositoryRecord, TxnExtras]:
        rounds.append(current.generation)
        return bump(current), TxnExtras(ops=(Op.put("unit/ours", str(len(rounds)).encode()),))

    async def other_first(compares: Any, success: Any, failure: Any = ()) -> Any:
        store.txn = real_txn  # type: ignore[method-assign]
        kv = await store.get(key)
        assert kv is not None
        same = encode_record(bump(decode_record("vs", rid, kv.value, kv.mod_revision)))
        await store.txn([], [Op.put(key, same), Op.put("unit/theirs", b"1")])
        result = await real_txn(compares, success, failure)
        assert not result.succeeded
        raise StoreUnavailable("etcd txn: timed out after 3.0s")

    store.txn = other_first  # type: ignore[method-assign]
    after = await repos.update_with("vs", rid, plan)
    assert rounds == [0, 1]  # planned again on the other's record
    assert after.generation == 2
    ours = await store.get("unit/ours")
    assert ours is not None and ours.mod_revision == after.revision
