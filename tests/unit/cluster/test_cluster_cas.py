"""The compare-and-swap loop: races retried with a fresh read, bounded; nothing else retried."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from tenacity import wait_none

from gitquorum.cluster import repositories
from gitquorum.cluster.cas import RETRY, Retry, compare_and_swap, conflict, jittered_backoff
from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.errors import (
    Conflict,
    FailedPrecondition,
    LeaseExpired,
    StoreUnavailable,
)
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.repositories import RepositoryRecord, RepositoryStore, TxnNotApplied
from gitquorum.cluster.store import Compare, Op, TxnResult
from gitquorum.cluster.store_retry import StoreRetry

KEYS = Keyspace("unit")
NODES = ("n1", "n2", "n3")

Outcome = str | type[Exception]


class Script:
    """An attempt that plays ``outcomes`` in order: "race" loses, an exception
    class is raised, anything else is returned."""

    def __init__(self, outcomes: Sequence[Outcome]) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[int] = []
        self.waits: list[int] = []

    async def attempt(self, number: int) -> str | Retry:
        self.calls.append(number)
        outcome = self.outcomes[len(self.calls) - 1]
        if outcome == "race":
            return RETRY
        if isinstance(outcome, type):
            raise outcome("refused")
        return outcome

    async def backoff(self, number: int) -> None:
        self.waits.append(number)


@pytest.mark.parametrize(
    ("outcomes", "attempts", "expected", "calls", "waits"),
    [
        # first try wins: no wait
        (["done"], 5, "done", [0], []),
        # conflict then success: each lost race waits, then reads again
        (["race", "race", "done"], 5, "done", [0, 1, 2], [0, 1]),
        # success on the very last attempt
        (["race", "race", "done"], 3, "done", [0, 1, 2], [0, 1]),
        # gives up after N lost races, without waiting after the last
        (["race", "race", "race"], 3, Conflict, [0, 1, 2], [0, 1]),
        # a refused change is not a race: raised at once
        ([FailedPrecondition], 5, FailedPrecondition, [0], []),
        (["race", FailedPrecondition], 5, FailedPrecondition, [0, 1], [0]),
        # an unreachable store is not a race either (that is the retry policy's)
        ([StoreUnavailable], 5, StoreUnavailable, [0], []),
        (["race", LeaseExpired], 5, LeaseExpired, [0, 1], [0]),
    ],
)
async def test_compare_and_swap(
    outcomes: list[Outcome],
    attempts: int,
    expected: Outcome,
    calls: list[int],
    waits: list[int],
) -> None:
    script = Script(outcomes)
    if isinstance(expected, type):
        with pytest.raises(expected):
            await compare_and_swap(
                script.attempt,
                attempts=attempts,
                give_up=conflict("too many races"),
                backoff=script.backoff,
            )
    else:
        result = await compare_and_swap(
            script.attempt, attempts=attempts, give_up=conflict("x"), backoff=script.backoff
        )
        assert result == expected
    assert script.calls == calls
    assert script.waits == waits


async def test_give_up_may_return_a_value() -> None:
    script = Script(["race", "race"])
    result = await compare_and_swap(script.attempt, attempts=2, give_up=lambda: "gave up")
    assert result == "gave up"
    assert script.calls == [0, 1]


async def test_conflict_carries_the_message() -> None:
    with pytest.raises(Conflict, match="could not reserve"):
        await compare_and_swap(
            Script(["race"]).attempt, attempts=1, give_up=conflict("could not reserve")
        )


@pytest.mark.parametrize(("attempt", "bound"), [(0, 0.0), (1, 0.001), (5, 0.005), (50, 0.020)])
async def test_jittered_backoff_is_bounded(attempt: int, bound: float) -> None:
    class Recording(random.Random):
        def uniform(self, a: float, b: float) -> float:
            self.bounds = (a, b)
            return 0.0

    rng = Recording()
    await jittered_backoff(rng)(attempt)
    assert rng.bounds == (0, pytest.approx(bound))


# -- the repository record update built on it --------------------------------------


async def _created(store: MemoryStore) -> tuple[RepositoryStore, RepositoryRecord]:
    repos = RepositoryStore(store, KEYS, rng=random.Random(1), max_attempts=5)
    record = await repos.create("vs", "r.git", nodes=NODES, healthy=set(NODES))
    return repos, record


def _demote_n3(record: RepositoryRecord) -> RepositoryRecord:
    return record.with_replicas({**dict(record.replicas), "n3": record.generation - 1})


async def test_update_rereads_after_a_lost_race() -> None:
    store = MemoryStore(ManualClock())
    repos, record = await _created(store)
    key = KEYS.repository("vs", record.repository_id)
    seen: list[int] = []
    real_txn = store.txn

    async def racing_txn(
        compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        if len(seen) == 1:
            # Another writer bumps the generation between our read and our txn.
            await store.put(
                key,
                repositories.encode_record(
                    record.with_replicas(dict.fromkeys(NODES, 1), generation=1)
                ),
            )
        return await real_txn(compares, success, failure)

    def mutate(current: RepositoryRecord) -> RepositoryRecord:
        seen.append(current.generation)
        return _demote_n3(current)

    store.txn = racing_txn  # type: ignore[method-assign]
    updated = await repos.update("vs", record.repository_id, mutate)
    assert seen == [0, 1]  # decided again on the value the other writer left
    assert updated.generation == 1 and updated.replica_generation("n3") == 0


async def test_update_gives_up_after_max_attempts() -> None:
    store = MemoryStore(ManualClock())
    repos, record = await _created(store)
    calls = 0

    async def always_lost(
        compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        nonlocal calls
        calls += 1
        return TxnResult(False, store.revision)

    store.txn = always_lost  # type: ignore[method-assign]
    with pytest.raises(Conflict, match="too many concurrent updates"):
        await repos.update("vs", record.repository_id, _demote_n3)
    assert calls == repos.max_attempts


async def test_update_refusal_is_not_retried() -> None:
    store = MemoryStore(ManualClock())
    repos, record = await _created(store)
    calls = 0

    def refuse(_record: RepositoryRecord) -> RepositoryRecord:
        nonlocal calls
        calls += 1
        raise FailedPrecondition("no")

    with pytest.raises(FailedPrecondition):
        await repos.update("vs", record.repository_id, refuse)
    assert calls == 1


class LostAnswers:
    """A txn whose answer is lost ``times`` times, applied or not."""

    def __init__(self, store: MemoryStore, times: int, *, applied: bool) -> None:
        self.store = store
        self.real = store.txn
        self.times = times
        self.applied = applied
        self.calls = 0
        store.txn = self  # type: ignore[method-assign]

    async def __call__(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        self.calls += 1
        if self.calls <= self.times:
            if self.applied:
                await self.real(compares, success, failure)
            raise StoreUnavailable("etcd txn: timed out")
        return await self.real(compares, success, failure)


@pytest.fixture
def no_unavailable_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repositories, "UNAVAILABLE_WAIT", wait_none())


@pytest.mark.usefixtures("no_unavailable_wait")
@pytest.mark.parametrize(
    ("lost", "applied", "outcome", "txns"),
    [
        # the record provably did not change: tried again, up to 3 more times
        (1, False, "updated", 2),
        (3, False, "updated", 4),
        (4, False, TxnNotApplied, 4),
        # the txn went through although its answer was lost: recognised, not repeated
        (1, True, "updated", 1),
    ],
)
async def test_update_after_a_lost_answer(
    lost: int, applied: bool, outcome: str | type[Exception], txns: int
) -> None:
    store = MemoryStore(ManualClock())
    repos, record = await _created(store)
    fake = LostAnswers(store, lost, applied=applied)
    if isinstance(outcome, type):
        with pytest.raises(outcome):
            await repos.update("vs", record.repository_id, _demote_n3)
    else:
        updated = await repos.update("vs", record.repository_id, _demote_n3)
        assert updated.replica_generation("n3") == -1  # generation 0 - 1: missing
        assert updated.revision == store.revision
    assert fake.calls == txns


async def test_update_after_a_lost_answer_behind_another_change_is_planned_again() -> None:
    # Another change landed before the txn, which failed its compare, and the
    # answer was lost: the record's history shows the change after the read
    # is not ours, so the update is planned again on the new record (not
    # reported unknown, not applied twice).
    store = MemoryStore(ManualClock())
    repos, record = await _created(store)
    key = KEYS.repository("vs", record.repository_id)
    real_txn = store.txn
    calls = 0

    async def lost_while_someone_wrote(
        compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        nonlocal calls
        calls += 1
        if calls > 1:
            return await real_txn(compares, success, failure)
        await store.put(
            key,
            repositories.encode_record(record.with_replicas(dict.fromkeys(NODES, 1), generation=1)),
        )
        result = await real_txn(compares, success, failure)
        assert not result.succeeded
        raise StoreUnavailable("etcd txn: timed out")

    store.txn = lost_while_someone_wrote  # type: ignore[method-assign]
    updated = await repos.update("vs", record.repository_id, _demote_n3)
    assert calls == 2
    assert updated.generation == 1 and updated.replica_generation("n3") == 0
    assert (await repos.get("vs", record.repository_id)) == updated


# -- update_with: a txn that carries only extras and loses its answer ------------------


MARKER = "unit/marker"


def _extras_planner(calls: list[RepositoryRecord]) -> repositories.Planner:
    """Demote n3 if it is up to date; either way put a marker key (the extras)."""

    async def plan(
        record: RepositoryRecord,
    ) -> tuple[RepositoryRecord, repositories.TxnExtras]:
        calls.append(record)
        new = _demote_n3(record) if record.replica_generation("n3") == record.generation else record
        return new, repositories.TxnExtras(ops=(Op.put(MARKER, b"1"),))

    return plan


@pytest.mark.parametrize("applied", [False, True])
async def test_lost_extras_answer_with_the_record_unchanged_is_uncertain(applied: bool) -> None:
    store = MemoryStore(ManualClock())
    repos, record = await _created(store)
    record = await repos.update("vs", record.repository_id, _demote_n3)  # n3 behind
    fake = LostAnswers(store, 1, applied=applied)
    calls: list[RepositoryRecord] = []
    with pytest.raises(repositories.ExtrasUncertain) as raised:
        await repos.update_with("vs", record.repository_id, _extras_planner(calls))
    assert raised.value.record == record
    assert len(calls) == fake.calls == 1


@pytest.mark.parametrize("applied", [False, True])
async def test_lost_extras_answer_after_the_record_changed_plans_again(applied: bool) -> None:
    """A repair moves n3 up to date around the extras' txn whose answer is lost
    (before it: the txn fails on its compare; after it: the txn went through).
    The plan was taken on a record that is gone: it is taken again on the new
    one, which demotes n3, instead of reporting only the extras as uncertain."""
    store = MemoryStore(ManualClock())
    repos, record = await _created(store)
    record = await repos.increment_generation("vs", record.repository_id, NODES)
    behind = await repos.update("vs", record.repository_id, _demote_n3)
    key = KEYS.repository("vs", record.repository_id)
    real = store.txn
    txns = 0

    async def repair_then_lost(
        compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        nonlocal txns
        txns += 1
        if txns > 1:
            return await real(compares, success, failure)
        repaired = repositories.encode_record(record)  # n3 back at the repository's generation
        if applied:
            await real(compares, success, failure)
            await store.put(key, repaired)
        else:
            await store.put(key, repaired)
            assert not (await real(compares, success, failure)).succeeded
        raise StoreUnavailable("etcd txn: timed out")

    store.txn = repair_then_lost  # type: ignore[method-assign]
    calls: list[RepositoryRecord] = []
    updated = await repos.update_with("vs", record.repository_id, _extras_planner(calls))
    assert [c.replica_generation("n3") for c in calls] == [
        behind.replica_generation("n3"),
        record.generation,
    ]
    assert updated.replica_generation("n3") == record.generation - 1
    assert updated.revision == store.revision
    assert await store.get(MARKER) is not None
    assert txns == 2


async def test_lost_extras_answer_and_a_failed_read_raises_unavailable() -> None:
    store = MemoryStore(ManualClock())
    repos, record = await _created(store)
    record = await repos.update("vs", record.repository_id, _demote_n3)
    LostAnswers(store, 1, applied=False)

    async def unreachable(_key: str) -> None:
        raise StoreUnavailable("etcd range: timed out")

    real_get = store.get
    reads = 0

    async def get(key: str) -> object:
        nonlocal reads
        reads += 1
        return await (real_get(key) if reads == 1 else unreachable(key))

    store.get = get  # type: ignore[method-assign]
    # The read back is given up at once here (it retries for 10 s by default:
    # tests/unit/cluster/test_read_back.py).
    repos._read_back_retry = StoreRetry(attempts=1)
    with pytest.raises(StoreUnavailable) as raised:
        await repos.update_with("vs", record.repository_id, _extras_planner([]))
    assert not isinstance(raised.value, repositories.ExtrasUncertain)
