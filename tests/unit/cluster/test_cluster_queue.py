from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.errors import ClaimLost, LeaseExpired, StoreUnavailable
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import (
    ClaimedJob,
    JobState,
    JobType,
    QueueView,
    ReplicationJob,
    ReplicationQueue,
    queue_stats,
)
from gitquorum.cluster.store import OpKind

KEYS = Keyspace("unit")
MAX_ATTEMPTS = 3
TTL = 2.0


@dataclass
class Worker:
    name: str
    lease_id: int
    alive: bool = True
    claims: list[ClaimedJob] = field(default_factory=list)


async def make_queue(
    dead_retry_base: float = 60.0,
) -> tuple[ManualClock, MemoryStore, ReplicationQueue]:
    clock = ManualClock()
    store = MemoryStore(clock)
    queue = ReplicationQueue(
        store,
        KEYS,
        max_attempts=MAX_ATTEMPTS,
        backoff=1.0,
        clock=clock,
        dead_retry_base=dead_retry_base,
        # Seeded: the state machine below must replay an example exactly, and the
        # queue shuffles the head of the line when it claims.
        rng=random.Random(0),
    )
    return clock, store, queue


async def test_enqueue_deduplicates_pending_jobs() -> None:
    _, store, queue = await make_queue()
    a = await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n1")
    b = await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n1")
    c = await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n3")
    d = await queue.enqueue(JobType.DELETE_REPLICA, "vs", 1, "r.git", "n2")
    assert a.job_id == b.job_id and len({a.job_id, c.job_id, d.job_id}) == 3
    lease = await store.grant(TTL)
    claim = await queue.claim_next(Worker("w", lease.id))
    assert claim is not None and claim.job.job_id == a.job_id  # oldest first
    # In progress: an identical job is queued again (the running one may have
    # read its source before the write that caused this one).
    e = await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n1")
    assert e.job_id != a.job_id
    # Only one job per replica runs at a time.
    assert await queue.claim_next(Worker("w2", lease.id)) is None


async def test_retry_backoff_then_dead() -> None:
    clock, store, queue = await make_queue()
    lease = await store.grant(1000)
    worker = Worker("w", lease.id)
    job = await queue.enqueue(JobType.UPDATE, "vs", 7, "r.git", "n1", source_node="n2")
    delays = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        claim = await queue.claim_next(worker)
        assert claim is not None and claim.job.attempts == attempt
        failed = await queue.fail(claim, "boom")
        if attempt < MAX_ATTEMPTS:
            assert failed.state is JobState.FAILED
            delays.append(failed.not_before - clock.now())
            assert await queue.claim_next(worker) is None  # backing off
            clock.advance(failed.not_before - clock.now())
        else:
            assert failed.state is JobState.DEAD
    assert delays == [1.0, 2.0]
    assert await queue.claim_next(worker) is None
    [dead] = await queue.jobs()
    assert dead.job_id == job.job_id and dead.last_error == "boom"
    stats = queue_stats([dead], clock.now())
    assert stats.depth == {("vs", "n1", "dead"): 1}
    assert await queue.remove(dead)


async def test_crashed_worker_claim_is_recovered_after_lease_expiry() -> None:
    clock, store, queue = await make_queue()
    crashed = Worker("crashed", (await store.grant(TTL)).id)
    healthy = Worker("healthy", (await store.grant(1000)).id)
    await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n1", source_node="n2")
    claim = await queue.claim_next(crashed)
    assert claim is not None
    assert await queue.recover_orphans() == 0  # lock still held
    clock.advance(TTL + 0.1)  # no keep-alive: lease and lock expire
    assert await queue.claim_next(healthy) is None  # still in progress
    assert await queue.recover_orphans() == 1
    again = await queue.claim_next(healthy)
    assert again is not None and again.job.attempts == 2
    with pytest.raises(ClaimLost):
        await queue.ack(claim)  # the crashed worker resumed too late
    await queue.ack(again)
    assert await queue.jobs() == []
    with pytest.raises(LeaseExpired):
        await queue.enqueue(JobType.UPDATE, "vs", 2, "r.git", "n1")
        await queue.claim_next(crashed)


async def test_ack_drops_identical_jobs_queued_before_the_claim() -> None:
    _, store, queue = await make_queue()
    worker = Worker("w", (await store.grant(1000)).id)
    first = await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n1", source_node="n2")
    claim = await queue.claim_next(worker)
    assert claim is not None
    later = await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n1", source_node="n2")
    await queue.ack(claim)
    assert [j.job_id for j in await queue.jobs()] == [later.job_id]
    assert first.job_id != later.job_id


async def test_lost_answers_to_claim_ack_and_fail_are_resolved() -> None:
    _, store, queue = await make_queue()
    worker = Worker("w", (await store.grant(1000)).id)
    await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n1", source_node="n2")
    await queue.enqueue(JobType.UPDATE, "vs", 2, "r.git", "n1", source_node="n2")
    store.fail_after_apply(1)
    with pytest.raises(StoreUnavailable):
        await queue.claim_next(worker)
    # The claim went through unseen: the next call adopts it instead of
    # leaving the job locked for as long as this worker lives.
    adopted = await queue.claim_next(worker)
    assert adopted is not None and adopted.job.state is JobState.IN_PROGRESS
    store.fail_after_apply(1)
    await queue.ack(adopted)  # applied, answer lost, resolved by reading back
    other = await queue.claim_next(worker)
    assert other is not None and other.job.repository_id != adopted.job.repository_id
    store.fail_after_apply(1)
    failed = await queue.fail(other, "boom")
    assert failed.state is JobState.FAILED
    assert [j.state for j in await queue.jobs()] == [JobState.FAILED]


class QueueMachine(RuleBasedStateMachine):
    """Random enqueue/claim/ack/fail/crash/expire/recover sequences against the invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        # Dead jobs retried within seconds, so that examples reach their retries.
        self.clock, self.store, self.queue = self.run(make_queue(dead_retry_base=1.0))
        # State of each job at the last check: a dead job may vanish into another.
        self.last_state: dict[str, JobState] = {}
        self.workers: list[Worker] = []
        self.enqueued: dict[str, tuple[object, int]] = {}  # job id -> (change, created_revision)
        self.acked: dict[str, int] = {}
        self.ack_marks: list[tuple[object, int]] = []  # (change, claim revision)
        self.active: dict[tuple[str, int], tuple[Worker, ClaimedJob]] = {}

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()

    @initialize()
    def start_workers(self) -> None:
        for _ in range(2):
            self.add_worker()
        # Start with work in flight so short examples reach the interesting states.
        for repo in (1, 2):
            self.enqueue(repo, "n1", JobType.UPDATE, "n3")
        self.claim(0)

    @rule()
    def add_worker(self) -> None:
        lease = self.run(self.store.grant(TTL))
        self.workers.append(Worker(f"w{len(self.workers)}", lease.id))

    @rule(
        repo=st.integers(1, 3),
        node=st.sampled_from(["n1", "n2"]),
        kind=st.sampled_from([JobType.UPDATE, JobType.DELETE_REPLICA]),
        source=st.sampled_from(["n3", "n4"]),
    )
    def enqueue(self, repo: int, node: str, kind: JobType, source: str) -> None:
        src = source if kind is JobType.UPDATE else None
        job = self.run(self.queue.enqueue(kind, "vs", repo, f"r{repo}", node, source_node=src))
        self.enqueued.setdefault(job.job_id, ((kind, src, node, repo), job.created_revision))

    def lease_alive(self, worker: Worker) -> bool:
        return self.run(self.store.time_to_live(worker.lease_id)) > 0

    @rule(index=st.integers(0, 5))
    def claim(self, index: int) -> None:
        worker = self.workers[index % len(self.workers)]
        if not worker.alive or not self.lease_alive(worker):
            return
        claim = self.run(self.queue.claim_next(worker))
        if claim is None:
            return
        replica = (claim.job.target_node, claim.job.repository_id)
        holder = self.active.get(replica)
        # Never two claims at once: the previous holder must be gone (lease expired).
        assert holder is None or not self.lease_alive(holder[0]), (replica, holder)
        event("claimed over an expired claim" if holder else "claimed")
        if claim.job.attempts > MAX_ATTEMPTS:
            event("retried a dead job")
        self.active[replica] = (worker, claim)
        worker.claims.append(claim)

    def _finish(self, index: int, succeed: bool, zombie: bool) -> None:
        candidates = [w for w in self.workers if w.claims and w.alive != zombie]
        if not candidates:
            return
        worker = candidates[index % len(candidates)]
        claim = worker.claims.pop(0)
        valid = (
            self.lease_alive(worker)
            and self.active.get((claim.job.target_node, claim.job.repository_id), (None, None))[1]
            is claim
        )
        try:
            if succeed:
                self.run(self.queue.ack(claim))
                self.acked[claim.job.job_id] = self.acked.get(claim.job.job_id, 0) + 1
                job = claim.job
                self.ack_marks.append(
                    (
                        (job.type, job.source_node, job.target_node, job.repository_id),
                        claim.claim_revision,
                    )
                )
            else:
                self.run(self.queue.fail(claim, "failed"))
        except ClaimLost:
            event("claim lost")
            assert not valid
        else:
            event("acked" if succeed else "failed")
            assert valid
        replica = (claim.job.target_node, claim.job.repository_id)
        if self.active.get(replica, (None, None))[1] is claim:
            del self.active[replica]

    @rule(index=st.integers(0, 5), succeed=st.booleans())
    def finish(self, index: int, succeed: bool) -> None:
        self._finish(index, succeed, zombie=False)

    @rule(index=st.integers(0, 5), succeed=st.booleans())
    def zombie_finishes(self, index: int, succeed: bool) -> None:
        """A crashed (paused) worker wakes up and reports."""
        self._finish(index, succeed, zombie=True)

    @precondition(lambda self: sum(w.alive for w in self.workers) > 1)
    @rule(index=st.integers(0, 5))
    def crash(self, index: int) -> None:
        alive = [w for w in self.workers if w.alive]
        alive[index % len(alive)].alive = False

    @precondition(lambda self: any(w.alive and w.claims for w in self.workers))
    @rule()
    def crash_holder_and_expire(self) -> None:
        """The interesting path, made frequent: a worker dies holding claims."""
        holder = next(w for w in self.workers if w.alive and w.claims)
        holder.alive = False
        if not any(w.alive for w in self.workers):
            self.add_worker()
        self.advance(2.5)
        self.recover()

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5]))
    def advance(self, seconds: float) -> None:
        # Live workers renew every half second, like their lease keepers would.
        for _ in range(int(seconds / 0.5)):
            for worker in self.workers:
                if worker.alive:
                    self.run(self.store.keep_alive(worker.lease_id))
            self.clock.advance(0.5)

    @rule()
    def recover(self) -> None:
        if self.run(self.queue.recover_orphans()):
            event("recovered an orphan")

    @invariant()
    def attempts_and_states(self) -> None:
        # Dead jobs are retried, one attempt at a time: only they go past MAX_ATTEMPTS.
        for job in self.run(self.queue.jobs()):
            if job.state is JobState.DEAD:
                assert job.attempts >= MAX_ATTEMPTS
            if job.state in (JobState.FAILED, JobState.READY):
                assert job.attempts < MAX_ATTEMPTS

    @invariant()
    def at_most_one_dead_job_per_replica(self) -> None:
        dead = [
            (job.target_node, job.repository_id)
            for job in self.run(self.queue.jobs())
            if job.state is JobState.DEAD
        ]
        assert len(dead) == len(set(dead)), dead

    @invariant()
    def one_in_flight_per_replica(self) -> None:
        jobs = self.run(self.queue.jobs())
        locks = {kv.key for kv in self.run(self.store.range(KEYS.locks(), prefix=True)).kvs}
        running: dict[tuple[str, int], int] = {}
        for job in jobs:
            lock = KEYS.lock(job.virtual_storage, job.target_node, job.repository_id)
            if job.state is JobState.IN_PROGRESS and lock in locks:
                key = (job.target_node, job.repository_id)
                running[key] = running.get(key, 0) + 1
        assert all(count == 1 for count in running.values())

    @invariant()
    def no_job_lost_or_done_twice(self) -> None:
        jobs = self.run(self.queue.jobs())
        present = {job.job_id for job in jobs}
        dead_replicas = {(j.target_node, j.repository_id) for j in jobs if j.state is JobState.DEAD}
        for job_id, (change, created) in self.enqueued.items():
            if job_id in present or job_id in self.acked:
                continue
            if any(c == change and rev > created for c, rev in self.ack_marks):
                continue
            # Only a dead job may go otherwise: absorbed by the replica's newer
            # dead job (still there), or removed by a later success on its replica.
            assert self.last_state.get(job_id) is JobState.DEAD, job_id
            event("a dead job went without its own ack")
            _kind, _source, node, repo = change  # type: ignore[misc]
            assert (node, repo) in dead_replicas or any(
                c[2:] == (node, repo) and rev > created  # type: ignore[index]
                for c, rev in self.ack_marks
            ), job_id
        assert all(count == 1 for count in self.acked.values())
        self.last_state = {job.job_id: job.state for job in jobs}


QueueMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_queue_machine = QueueMachine.TestCase


@pytest.mark.parametrize("with_view", [False, True])
async def test_concurrent_workers_drain_everything_once(with_view: bool) -> None:
    clock = ManualClock()
    store = MemoryStore(clock, interleave=random.Random(3))
    queue = ReplicationQueue(store, KEYS, clock=clock, rng=random.Random(3))
    for repo in range(30):
        for target in ("n1", "n2"):
            await queue.enqueue(JobType.UPDATE, "vs", repo, f"r{repo}", target, source_node="n3")
    done: dict[str, int] = {}
    running: set[tuple[str, int]] = set()

    async def work(name: str) -> None:
        worker = Worker(name, (await store.grant(1000)).id)
        mine = queue
        view = None
        if with_view:
            view = QueueView(store, KEYS)
            await view.start()
            mine = ReplicationQueue(store, KEYS, clock=clock, rng=random.Random(name), view=view)
        for _ in range(10_000):
            claim = await mine.claim_next(worker)
            if claim is None:
                if not await queue.jobs():
                    break
                await asyncio.sleep(0)  # a stale view catches up
                continue
            replica = (claim.job.target_node, claim.job.repository_id)
            assert replica not in running
            running.add(replica)
            await asyncio.sleep(0)
            running.discard(replica)
            await mine.ack(claim)
            done[claim.job.job_id] = done.get(claim.job.job_id, 0) + 1
        if view is not None:
            await view.close()

    await asyncio.gather(*(work(f"w{i}") for i in range(3)))
    assert len(done) == 60 and set(done.values()) == {1}
    assert await queue.jobs() == []


class LateStore(MemoryStore):
    """A store whose next writing txn times out unapplied and can be applied later, as
    a txn held by a paused etcd member reaches the leader once it resumes."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.hold_next = False
        self.held: list[tuple[object, object, object]] = []

    async def txn(self, compares, success, failure=()):  # type: ignore[no-untyped-def]
        # The next write (the claim), not a read.
        if self.hold_next and any(op.kind is OpKind.PUT for op in success):
            self.hold_next = False
            self.held.append((compares, success, failure))
            raise StoreUnavailable("etcd txn: timed out after 3.0s (held, not applied yet)")
        return await super().txn(compares, success, failure)

    async def apply_held(self) -> bool:
        compares, success, failure = self.held.pop(0)
        return (await super().txn(compares, success, failure)).succeeded  # type: ignore[arg-type]


async def _claim_answer_lost() -> tuple[LateStore, ReplicationQueue, Worker, ReplicationJob]:
    """A queued job whose claim timed out unapplied (held by the store)."""
    clock = ManualClock()
    store = LateStore(clock)
    queue = ReplicationQueue(store, KEYS, max_attempts=MAX_ATTEMPTS, clock=clock)
    worker = Worker("w", (await store.grant(1000)).id)
    job = await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n1", source_node="n2")
    store.hold_next = True
    with pytest.raises(StoreUnavailable):
        await queue.claim_next(worker)
    return store, queue, worker, job


async def test_a_claim_applied_after_its_answer_was_lost_never_locks_a_job_for_good() -> None:
    # CI seed 1920727581: a worker's claim timed out while an etcd member was
    # paused, was not found when the worker looked, then reached the leader:
    # the job stayed locked by that worker's live lease and never ran.
    store, queue, worker, job = await _claim_answer_lost()
    revision = (await queue.jobs())[0].revision
    # The worker looks for the lost claim, finds nothing, and sends the same
    # claim again: the job is its own now, whatever targets it asks for.
    claim = await queue.claim_next(worker, targets=[("vs", "n3")])
    assert claim is not None and claim.job.job_id == job.job_id
    assert claim.job.state is JobState.IN_PROGRESS and claim.job.attempts == 1
    # The held claim arrives now: it must not apply.
    assert await store.apply_held() is False
    await queue.ack(claim)
    assert await queue.jobs() == []
    assert revision < claim.claim_revision


async def test_a_lost_claim_that_lands_while_it_is_looked_for_is_adopted() -> None:
    store, queue, worker, job = await _claim_answer_lost()
    assert await store.apply_held() is True  # landed before the worker looked
    adopted = await queue.claim_next(worker, targets=[("vs", "n3")])
    assert adopted is not None and adopted.job.job_id == job.job_id
    assert adopted.job.state is JobState.IN_PROGRESS


async def test_a_lost_claim_on_a_job_taken_meanwhile_is_dropped_and_cannot_apply() -> None:
    store, queue, worker, job = await _claim_answer_lost()
    other = Worker("other", (await store.grant(1000)).id)
    taken = await queue.claim_next(other)  # another worker's claim changes the job
    assert taken is not None and taken.job.job_id == job.job_id
    assert await queue.claim_next(worker) is None  # nothing to adopt, nothing to claim
    assert await store.apply_held() is False
    await queue.ack(taken)
    assert await queue.jobs() == []


async def test_a_lost_claim_outlives_another_jobs_lock_only_if_fenced() -> None:
    # The review of the re-claim: the lock is the replica's, not the job's. A
    # lost claim of a dead job D, a pending job P of the same replica claimed
    # meanwhile by another worker: once P's lock goes, the lost txn (lock
    # absent, D unchanged) would apply and lock D on the first worker's live
    # lease for good. D is written again unchanged instead.
    clock = ManualClock()
    store = LateStore(clock)
    queue = ReplicationQueue(
        store, KEYS, max_attempts=2, clock=clock, dead_retry_base=10.0, backoff=0.0
    )
    first = Worker("w1", (await store.grant(1000)).id)
    second = Worker("w2", (await store.grant(1000)).id)
    dead = await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n1", source_node="n2")
    for _attempt in range(2):
        claim = await queue.claim_next(first)
        assert claim is not None
        await queue.fail(claim, "boom")
    assert [j.state for j in await queue.jobs()] == [JobState.DEAD]
    clock.advance(11.0)  # the dead job is due again
    store.hold_next = True
    with pytest.raises(StoreUnavailable):
        await queue.claim_next(first)
    pending = await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n1", source_node="n3")
    taken = await queue.claim_next(second)  # pending jobs go before a dead one
    assert taken is not None and taken.job.job_id == pending.job_id
    assert await queue.claim_next(first) is None  # looks for its lost claim
    await queue.fail(taken, "boom")  # releases the lock; P failed, D untouched
    assert await store.apply_held() is False
    states = {j.job_id: j.state for j in await queue.jobs()}
    assert states[dead.job_id] is JobState.DEAD
    assert store.dump(KEYS.locks()) == {}
