"""A replication job records nothing once the claim behind it is lost.

A worker whose lease is lost stops its job (the ReplicateRepository call is
cancelled); a worker that did not notice in time (a process paused past its
lease resumes with the copy done) has its generation update refused, because
the update is one txn with "the claim is still held". Either way the job is
neither recorded nor acknowledged: the worker that took it over owns it.

Over the in-memory store with a manual clock: advancing the store's clock past
the lease TTL expires the lease (as etcd does for a paused proxy), and the
leader's orphan recovery plus another worker's claim take the job over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import pytest
from prometheus_client import CollectorRegistry

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.errors import ClaimLost
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import ClaimedJob, JobState, JobType, ReplicationQueue
from gitquorum.cluster.repositories import RepositoryCache, RepositoryStore
from gitquorum.cluster.store import Op, TxnResult
from gitquorum.gitaly import repository_pb2
from gitquorum.proxy.channels import NodeChannels
from gitquorum.proxy.replication import ReplicationMetrics, ReplicationWorkers, Replicator

KEYS = Keyspace("unit")
NODES = ("n1", "n2", "n3")
TTL = 5.0


class HookStore(MemoryStore):
    """Runs ``before_txn`` (once) before the next txn: a concurrent change."""

    before_txn: Callable[[], Awaitable[None]] | None = None

    async def txn(
        self, compares: Sequence[Any], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        hook, self.before_txn = self.before_txn, None
        if hook is not None:
            await hook()
        return await super().txn(compares, success, failure)


class FakeNode:
    """The target node's ReplicateRepository: each call runs until ``release`` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.cancelled = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def replicate(self, _request: object, **_kwargs: object) -> object:
        self.calls += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return repository_pb2.ReplicateRepositoryResponse()


class Replicating(Protocol):
    """A fake target node: what its ReplicateRepository does."""

    async def replicate(self, request: Any, **kwargs: object) -> object: ...


class _Channel:
    def __init__(self, node: Replicating) -> None:
        self.node = node

    def unary_unary(self, method: str, *_args: object, **_kwargs: object) -> object:
        return self.node.replicate if method.endswith("/ReplicateRepository") else None

    def unary_stream(self, *_args: object, **_kwargs: object) -> None:
        return None

    stream_unary = stream_stream = unary_stream


class FakeChannels:
    """NodeChannels whose every node is ``node`` (only ReplicateRepository answers)."""

    def __init__(self, node: Replicating) -> None:
        self.node = node

    def channel(self, _name: str) -> _Channel:
        return _Channel(self.node)

    def url(self, name: str) -> str:
        return f"tcp://{name}.invalid:1"

    def forward_metadata(
        self, incoming: Sequence[tuple[str, str]] | None, extra: Sequence[tuple[str, str]] = ()
    ) -> list[tuple[str, str]]:
        return [*(incoming or ()), *extra]


@dataclass
class Worker:
    name: str
    lease_id: int


@dataclass
class Setup:
    clock: ManualClock
    store: HookStore
    repos: RepositoryStore
    queue: ReplicationQueue
    cache: RepositoryCache
    node: FakeNode
    replicator: Replicator
    repository_id: int

    async def n3(self) -> int:
        record = await self.repos.get("vs", self.repository_id)
        return record.replica_generation("n3")

    async def claim(self, name: str) -> ClaimedJob:
        lease = await self.store.grant(TTL)
        claim = await self.queue.claim_next(Worker(name, lease.id))
        assert claim is not None
        return claim

    async def take_over(self, claim: ClaimedJob) -> ClaimedJob:
        """The claim's lease expires (its worker paused), the leader's orphan
        recovery re-readies the job and another worker claims it."""
        self.clock.advance(TTL + 1)
        assert await self.queue.recover_orphans() == 1
        taken = await self.claim("p2/0")
        assert taken.job.job_id == claim.job.job_id
        return taken


@pytest.fixture
async def setup() -> Any:
    clock = ManualClock()
    store = HookStore(clock)
    repos = RepositoryStore(store, KEYS)
    record = await repos.create("vs", "r.git", nodes=NODES, healthy=set(NODES))
    rid = record.repository_id
    # n3 missed a write: it is at generation 0, the repository at 1.
    await repos.increment_generation("vs", rid, ["n1", "n2"])
    queue = ReplicationQueue(store, KEYS, clock=clock)
    await queue.enqueue(JobType.UPDATE, "vs", rid, "r.git", "n3", source_node="n1")
    cache = RepositoryCache(store, KEYS)
    await cache.start()
    node = FakeNode()
    replicator = Replicator(
        repos,
        cache,
        cast(NodeChannels, FakeChannels(node)),
        lambda _vs: frozenset(NODES),
    )
    yield Setup(clock, store, repos, queue, cache, node, replicator, rid)
    await cache.close()


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``predicate`` (real time: the workers' idle waits are real) with a deadline."""
    for _ in range(int(within / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not reached within {within}s")


def claims_lost(metrics: ReplicationMetrics) -> float:
    return float(metrics.claims_lost._value.get())


# -- the guarded generation update --------------------------------------------------------


async def test_generation_update_is_refused_once_the_claim_was_taken_over(setup: Setup) -> None:
    claim = await setup.claim("p1/0")
    taken = await setup.take_over(claim)
    before = await setup.repos.get("vs", setup.repository_id)
    with pytest.raises(ClaimLost):
        await setup.repos.set_replica_generation(
            "vs", setup.repository_id, "n3", 1, claim=claim.guard
        )
    after = await setup.repos.get("vs", setup.repository_id)
    assert after.revision == before.revision, "the record changed under a lost claim"
    # The new holder records its own copy.
    record = await setup.repos.set_replica_generation(
        "vs", setup.repository_id, "n3", 1, claim=taken.guard
    )
    assert record.replica_generation("n3") == 1


async def test_a_concurrent_record_change_does_not_end_a_held_claims_update(setup: Setup) -> None:
    claim = await setup.claim("p1/0")

    async def write() -> None:
        await setup.repos.increment_generation("vs", setup.repository_id, ["n1", "n2"])

    setup.store.before_txn = write
    record = await setup.repos.set_replica_generation(
        "vs", setup.repository_id, "n3", 1, claim=claim.guard
    )
    assert record.generation == 2 and record.replica_generation("n3") == 1


async def test_replicator_records_nothing_when_its_job_was_taken_over_mid_copy(
    setup: Setup,
) -> None:
    claim = await setup.claim("p1/0")
    run = asyncio.ensure_future(setup.replicator.run(claim))
    async with asyncio.timeout(5):
        await setup.node.started.wait()
    await setup.take_over(claim)
    # The copy ends after the takeover (a paused proxy resuming).
    setup.node.release.set()
    with pytest.raises(ClaimLost):
        await run
    assert await setup.n3() == 0


# -- the worker ---------------------------------------------------------------------------


def workers_for(setup: Setup, clock: ManualClock) -> tuple[ReplicationWorkers, ReplicationMetrics]:
    metrics = ReplicationMetrics(CollectorRegistry())
    workers = ReplicationWorkers(
        "p1",
        setup.queue,
        setup.replicator,
        lambda: [("vs", "n3")],
        metrics,
        workers=1,
        lease_ttl=TTL,
        clock=clock,
    )
    return workers, metrics


async def test_worker_cancels_its_job_when_the_lease_is_lost(setup: Setup) -> None:
    workers, metrics = workers_for(setup, setup.clock)
    await workers.start()
    try:
        async with asyncio.timeout(5):
            await setup.node.started.wait()
        # The process was paused past the lease: its keeper finds the deadline passed.
        setup.clock.advance(TTL + 1)
        await until(lambda: setup.node.cancelled == 1)
        await until(lambda: claims_lost(metrics) == 1)
    finally:
        await workers.close(0)
    assert setup.node.calls == 1
    assert await setup.n3() == 0
    # Neither acknowledged nor failed: still in progress, for orphan recovery.
    [job] = await setup.queue.jobs()
    assert job.state is JobState.IN_PROGRESS and job.worker == "p1/0"
    assert await setup.queue.recover_orphans() == 1


async def test_worker_whose_update_is_refused_neither_records_nor_acknowledges(
    setup: Setup,
) -> None:
    # The keeper's clock stands still: the worker does not notice the loss
    # before its copy returns (as after a SIGCONT, when the answer comes first).
    workers, metrics = workers_for(setup, ManualClock())
    await workers.start()
    try:
        async with asyncio.timeout(5):
            await setup.node.started.wait()
        claim_worker = (await setup.queue.jobs())[0].worker
        assert claim_worker == "p1/0"
        lock = KEYS.lock("vs", "n3", setup.repository_id)
        [kv] = (await setup.store.range(lock)).kvs
        own = ClaimedJob((await setup.queue.jobs())[0], lock, kv.create_revision, kv.lease)
        await setup.take_over(own)
        setup.node.release.set()
        await until(lambda: claims_lost(metrics) == 1)
    finally:
        await workers.close(0)
    assert await setup.n3() == 0
    # The job belongs to the worker that took it over, untouched.
    [job] = await setup.queue.jobs()
    assert job.state is JobState.IN_PROGRESS and job.worker == "p2/0"
