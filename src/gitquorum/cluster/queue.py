"""The replication queue: jobs that bring outdated replicas up to date.

Keys (see ``docs/keyspace.md``):

* ``jobs/<vs>/<target>/<repo id>/<job id>`` -> JSON job, no lease.
* ``locks/<vs>/<target>/<repo id>`` -> ``{"job":..,"worker":..}`` on the claiming
  worker's lease.

Semantics (at-least-once, one at a time per replica):

* **enqueue** de-duplicates: if a pending (ready or failed) job with the same
  type and source already exists for the same target replica, that job is
  returned instead. The check and the insert are one txn guarded by "nothing
  under this replica's job prefix changed since I read it".
* **claim** is one txn: create the lock key *if absent*, attached to the
  worker's lease, and move the job to ``in_progress`` (attempts + 1). Hence at
  most one job is in flight per (target node, repository) across all proxies.
  Within a replica, jobs run oldest first.
* **heartbeat** is the worker's lease keep-alive: there is no per-job
  heartbeat. The worker must stop running jobs when its lease is lost
  (``LeaseKeeper.lost``), which happens before etcd expires the lease.
  What a job records about its replica goes in a txn guarded by
  :attr:`ClaimedJob.guard` ("this claim is still held"), so a worker paused
  past its lease, whose job was meanwhile taken over, records nothing.
* **ack** (success) deletes the job and the lock, and drops identical pending
  jobs created before the claim (their work is included). **fail** releases
  the lock and makes the job ``failed`` with exponential backoff
  (``not_before``), or ``dead`` once it used ``max_attempts`` attempts (default 3).
  Both are guarded by the lock's create_revision: a worker whose lease expired
  cannot acknowledge (:class:`ClaimLost`).
* **dead jobs** stay bounded and are retried, never left to pile up: at most
  one dead job exists per (target node, repository), because the txn that
  makes a job dead deletes the other dead jobs of that replica (at most
  ``MAX_ABSORBED`` of them, the rest in further txns: etcd's txn size limit)
  and is guarded by "nothing under this replica's job prefix changed since I
  read it". A dead job is claimed again, after every pending job of its replica,
  once its ``not_before`` has passed: ``DEAD_RETRY_BASE`` after it first died,
  twice as long after each further death, at most ``DEAD_RETRY_CAP``. A success
  (its own, or any later repair of the same replica) removes it.
* **recovery**: when a worker dies its lease expires and its lock keys vanish;
  :meth:`ReplicationQueue.recover_orphans` (run periodically, e.g. by the
  leader) returns ``in_progress`` jobs without their lock to ``ready`` (or
  ``dead`` when out of attempts).

Cost: without a view, a claim reads the job and lock prefixes of the targets
asked for (linear in that backlog). With a started :class:`QueueView` (watch-fed
jobs and locks) a claim is one txn and an ack one more; the view may lag, which
costs at most a failed compare and a retry, never correctness.
"""

from __future__ import annotations

import enum
import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from gitquorum import log
from gitquorum.cluster.cas import RETRY, Retry, compare_and_swap, conflict
from gitquorum.cluster.clock_rules import job_due
from gitquorum.cluster.errors import (
    ClaimLost,
    Compacted,
    FailedPrecondition,
    LeaseExpired,
    StoreUnavailable,
)
from gitquorum.cluster.keys import Keyspace, check_name, replica_path
from gitquorum.cluster.mirror import PrefixMirror
from gitquorum.cluster.store import (
    Compare,
    EventType,
    KeyValue,
    Op,
    RangeResult,
    Store,
    WatchEvent,
)

logger = log.get("gitquorum.queue")


class JobType(enum.StrEnum):
    UPDATE = "update"
    CREATE = "create"
    DELETE_REPLICA = "delete_replica"


class JobState(enum.StrEnum):
    READY = "ready"
    IN_PROGRESS = "in_progress"
    FAILED = "failed"
    DEAD = "dead"


PENDING = frozenset({JobState.READY, JobState.FAILED})

# Jobs that bring a replica up to date: once one of them succeeded, any other
# for the same replica has nothing left to do.
REPAIR_TYPES = frozenset({JobType.UPDATE, JobType.CREATE})

# A dead job is retried, not dropped: its replica still needs the repair. The
# first retry comes DEAD_RETRY_BASE seconds after the job died, each further
# one twice as late as the one before, at most DEAD_RETRY_CAP apart. For a
# repository that receives no writes, a target that stays broken (a full disk)
# then costs one attempt and a few etcd writes an hour. A write still queues a
# fresh job beside the dead one (de-duplication skips only pending jobs): it
# runs its attempts, dies and absorbs the dead one. A busy repository's broken
# target thus keeps at most two jobs (one pending, one dead), but costs up to
# about one attempt a second while writes keep coming. A target that is
# fixed catches up at its next retry, at once after a write, or when the leader
# makes the dead job due because the target or a source came back.
DEAD_RETRY_BASE = 60.0
DEAD_RETRY_CAP = 3600.0

# etcd refuses a txn with more than 128 operations in one branch
# (``--max-txn-ops``), and a replica can hold hundreds of dead jobs left by
# older versions (one per reconciler pass). The txn that acknowledges a job or
# makes it dead deletes at most this many of its replica's other jobs; the rest
# are deleted afterwards in txns of the same size. Left behind by a crash, they
# are harmless: the replica's next death or success absorbs them.
MAX_ABSORBED = 100


@dataclass(frozen=True, slots=True)
class ReplicationJob:
    job_id: str
    type: JobType
    virtual_storage: str
    repository_id: int
    relative_path: str
    target_node: str
    source_node: str | None = None
    state: JobState = JobState.READY
    attempts: int = 0
    created_at: float = 0.0
    not_before: float = 0.0
    correlation_id: str = ""
    # Seconds the writer meant the job to wait from its write (``not_before``
    # minus the writer's clock then): a claimer also counts it on its own
    # monotonic clock, so a writer's skewed wall clock cannot delay the job
    # further (``clock_rules.job_due``). None: written without one.
    delay: float | None = None
    worker: str = ""
    last_error: str = ""
    # Store revisions: of the last change, and of creation (queue order).
    revision: int = 0
    created_revision: int = 0

    @property
    def replica_path(self) -> str:
        return replica_path(self.repository_id)

    def same_change(self, other: ReplicationJob) -> bool:
        return (
            self.type == other.type
            and self.source_node == other.source_node
            and self.virtual_storage == other.virtual_storage
            and self.target_node == other.target_node
            and self.repository_id == other.repository_id
        )


def encode_job(job: ReplicationJob) -> bytes:
    value: dict[str, object] = {
        "type": str(job.type),
        "path": job.relative_path,
        "source": job.source_node,
        "state": str(job.state),
        "attempts": job.attempts,
        "created_at": round(job.created_at, 3),
        "not_before": round(job.not_before, 3),
    }
    if job.delay is not None:
        value["delay"] = round(job.delay, 3)
    for name, item in (
        ("correlation_id", job.correlation_id),
        ("worker", job.worker),
        ("error", job.last_error),
    ):
        if item:
            value[name] = item
    return json.dumps(value, separators=(",", ":")).encode()


def decode_job(keys: Keyspace, kv: KeyValue) -> ReplicationJob:
    vs, target, rid, job_id = kv.key[len(keys.jobs()) :].split("/")
    data = json.loads(kv.value)
    return ReplicationJob(
        job_id=job_id,
        type=JobType(data["type"]),
        virtual_storage=vs,
        repository_id=int(rid),
        relative_path=data.get("path", ""),
        target_node=target,
        source_node=data.get("source"),
        state=JobState(data["state"]),
        attempts=int(data.get("attempts", 0)),
        created_at=float(data.get("created_at", 0.0)),
        not_before=float(data.get("not_before", 0.0)),
        delay=float(data["delay"]) if "delay" in data else None,
        correlation_id=data.get("correlation_id", ""),
        worker=data.get("worker", ""),
        last_error=data.get("error", ""),
        revision=kv.mod_revision,
        created_revision=kv.create_revision,
    )


class WorkerLease(Protocol):
    """What a claim needs from the worker: its lease (``LeaseKeeper`` fits)."""

    @property
    def lease_id(self) -> int: ...

    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class ClaimedJob:
    job: ReplicationJob
    lock_key: str
    # create_revision of the lock key: identifies this claim.
    claim_revision: int
    lease_id: int

    @property
    def guard(self) -> tuple[Compare, ...]:
        """Compares that hold while this claim is still held: for a txn that
        must only apply under it (the replica's generation update).

        The lock key is created by the claim on the worker's lease and deleted
        by ack, fail or the lease's expiry; a later claim of the same replica
        creates it anew, at a later revision. So "the lock key's
        create_revision is the claim's" means: not released, not expired, not
        taken over."""
        return (Compare.create_revision(self.lock_key, self.claim_revision),)


@dataclass(frozen=True)
class QueueStats:
    # (virtual storage, target node, state) -> number of jobs
    depth: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # (virtual storage, target node) -> age in seconds of the oldest pending job
    oldest_pending_age: dict[tuple[str, str], float] = field(default_factory=dict)
    # (virtual storage, target node) -> dead jobs, i.e. replicas whose repair
    # failed every attempt (at most one each); 0 for every target with jobs, so
    # the gauge reads 0 rather than being absent while the node's queue is busy.
    dead: dict[tuple[str, str], int] = field(default_factory=dict)


def queue_stats(jobs: Iterable[ReplicationJob], now: float) -> QueueStats:
    depth: dict[tuple[str, str, str], int] = {}
    oldest: dict[tuple[str, str], float] = {}
    dead: dict[tuple[str, str], int] = {}
    for job in jobs:
        key = (job.virtual_storage, job.target_node, str(job.state))
        depth[key] = depth.get(key, 0) + 1
        target = (job.virtual_storage, job.target_node)
        dead[target] = dead.get(target, 0) + int(job.state is JobState.DEAD)
        if job.state in PENDING or job.state is JobState.IN_PROGRESS:
            oldest[target] = max(oldest.get(target, 0.0), now - job.created_at)
    return QueueStats(depth, oldest, dead)


@dataclass(frozen=True)
class EnqueueTxn:
    """Jobs to queue as part of someone else's txn (see ``prepare_enqueue``)."""

    queued: tuple[ReplicationJob, ...] = ()  # put by ``ops`` (revisions unset)
    existing: tuple[ReplicationJob, ...] = ()  # identical pending jobs already queued
    compares: tuple[Compare, ...] = ()
    ops: tuple[Op, ...] = ()


TargetFilter = Callable[[str, str], bool]


class QueueView:
    """The whole queue (jobs and locks) kept current by the watch.

    Lets workers pick candidates without reading the backlog on every claim
    (a claim is then one txn) and feeds the queue metrics without polling. A
    stale view is harmless: every claim is still guarded by the txn's compares.
    """

    def __init__(self, store: Store, keys: Keyspace) -> None:
        self.keys = keys
        # (virtual storage, target node) -> job key -> job
        self._jobs: dict[tuple[str, str], dict[str, ReplicationJob]] = {}
        self._locks: dict[str, KeyValue] = {}
        self._jobs_mirror = PrefixMirror(
            store, keys.jobs(), reset=self._reset_jobs, apply=self._apply_jobs
        )
        self._locks_mirror = PrefixMirror(
            store, keys.locks(), reset=self._reset_locks, apply=self._apply_locks
        )

    async def start(self) -> None:
        await self._jobs_mirror.start()
        await self._locks_mirror.start()

    async def close(self) -> None:
        await self._jobs_mirror.close()
        await self._locks_mirror.close()

    @property
    def revision(self) -> int:
        return self._jobs_mirror.revision

    async def wait_for_revision(self, revision: int) -> None:
        """Wait until a job change at ``revision`` is visible."""
        await self._jobs_mirror.wait_for_revision(revision)

    def jobs(self) -> list[ReplicationJob]:
        return [job for by_key in self._jobs.values() for job in by_key.values()]

    def snapshot(
        self, targets: Iterable[tuple[str, str]] | None
    ) -> tuple[list[ReplicationJob], dict[str, KeyValue]]:
        chosen = list(targets) if targets is not None else list(self._jobs)
        jobs = [job for target in chosen for job in self._jobs.get(target, {}).values()]
        return jobs, dict(self._locks)

    def siblings(self, job: ReplicationJob) -> list[ReplicationJob]:
        """Jobs for the same replica (target node and repository)."""
        by_key = self._jobs.get((job.virtual_storage, job.target_node), {})
        return [other for other in by_key.values() if other.repository_id == job.repository_id]

    def _put_job(self, kv: KeyValue) -> None:
        job = decode_job(self.keys, kv)
        self._jobs.setdefault((job.virtual_storage, job.target_node), {})[kv.key] = job

    def _reset_jobs(self, kvs: Sequence[KeyValue], _revision: int) -> None:
        self._jobs = {}
        for kv in kvs:
            self._put_job(kv)

    def _apply_jobs(self, events: Sequence[WatchEvent], _revision: int) -> None:
        for event in events:
            if event.type is EventType.PUT:
                self._put_job(event.kv)
                continue
            vs, target = event.kv.key[len(self.keys.jobs()) :].split("/")[:2]
            by_key = self._jobs.get((vs, target))
            if by_key is not None:
                by_key.pop(event.kv.key, None)
                if not by_key:
                    del self._jobs[(vs, target)]

    def _reset_locks(self, kvs: Sequence[KeyValue], _revision: int) -> None:
        self._locks = {kv.key: kv for kv in kvs}

    def _apply_locks(self, events: Sequence[WatchEvent], _revision: int) -> None:
        for event in events:
            if event.type is EventType.PUT:
                self._locks[event.kv.key] = event.kv
            else:
                self._locks.pop(event.kv.key, None)


# Entries of the first-seen map kept before it is pruned to the jobs that exist.
WAITING_SEEN_MIN = 10_000


class ReplicationQueue:
    def __init__(
        self,
        store: Store,
        keys: Keyspace,
        *,
        max_attempts: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        max_races: int = 100,
        view: QueueView | None = None,
        dead_retry_base: float = DEAD_RETRY_BASE,
        dead_retry_cap: float = DEAD_RETRY_CAP,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` is wall time: ``not_before`` and ``created_at`` are shared by
        proxies, whose clocks differ; ``monotonic`` measures how long this proxy
        has seen a job wait (``clock_rules.job_due``). With a started ``view``,
        claims pick candidates from it instead of reading the backlog."""
        self.store = store
        self.keys = keys
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.dead_retry_base = dead_retry_base
        self.dead_retry_cap = dead_retry_cap
        self.clock = clock
        self.monotonic = monotonic
        # (job key, revision) -> when this proxy first saw that version of the
        # job waiting (monotonic): its delay is counted from there.
        self._waiting_since: dict[tuple[str, int], float] = {}
        self.rng = rng or random.Random()
        self.max_races = max_races
        self.view = view
        # Decoded jobs by key, reused while their mod_revision is unchanged.
        self._decoded: dict[str, ReplicationJob] = {}
        # Claims whose txn outcome is unknown, per worker lease.
        # Claims whose txn answer was lost, per worker name (several workers may
        # share one lease: each resolves only its own, so none adopts another's).
        self._uncertain: dict[str, list[tuple[ReplicationJob, str]]] = {}

    def _key(self, job: ReplicationJob) -> str:
        return self.keys.job(job.virtual_storage, job.target_node, job.repository_id, job.job_id)

    def _decode(self, result: RangeResult) -> list[ReplicationJob]:
        if len(self._decoded) > 200_000:
            self._decoded.clear()
        jobs = []
        for kv in result.kvs:
            job = self._decoded.get(kv.key)
            if job is None or job.revision != kv.mod_revision:
                job = self._decoded[kv.key] = decode_job(self.keys, kv)
            jobs.append(job)
        return jobs

    def _new_id(self) -> str:
        # Time-ordered, then random: from ``rng`` (seeded from the OS unless a
        # test seeds it to replay an example exactly).
        return f"{int(self.clock() * 1000):011x}{self.rng.getrandbits(24):06x}"

    async def enqueue(
        self,
        type: JobType,
        virtual_storage: str,
        repository_id: int,
        relative_path: str,
        target_node: str,
        *,
        source_node: str | None = None,
        correlation_id: str = "",
    ) -> ReplicationJob:
        """Queue a job, or return the identical pending one already queued."""
        job = self.new_job(
            type,
            virtual_storage,
            repository_id,
            relative_path,
            target_node,
            source_node=source_node,
            correlation_id=correlation_id,
        )
        prefix = self.keys.jobs(virtual_storage, target_node, repository_id)

        async def attempt(_number: int) -> ReplicationJob | Retry:
            current = await self.store.range(prefix, prefix=True)
            for existing in self._decode(current):
                if existing.state in PENDING and existing.same_change(job):
                    return existing
            result = await self.store.txn(
                [Compare.unchanged_since(prefix, current.revision)],
                [Op.put(self._key(job), encode_job(job))],
            )
            if not result.succeeded:
                return RETRY
            return replace(job, revision=result.revision, created_revision=result.revision)

        return await compare_and_swap(
            attempt,
            attempts=self.max_races,
            give_up=conflict(f"could not enqueue a job for {target_node}/{repository_id}"),
        )

    def new_job(
        self,
        type: JobType,
        virtual_storage: str,
        repository_id: int,
        relative_path: str,
        target_node: str,
        *,
        source_node: str | None = None,
        correlation_id: str = "",
    ) -> ReplicationJob:
        """A ready job, not stored yet (for :meth:`prepare_enqueue`)."""
        check_name("node", target_node)
        if source_node is not None:
            check_name("node", source_node)
        now = self.clock()
        return ReplicationJob(
            job_id=self._new_id(),
            type=JobType(type),
            virtual_storage=virtual_storage,
            repository_id=repository_id,
            relative_path=relative_path,
            target_node=target_node,
            source_node=source_node,
            created_at=now,
            not_before=now,
            delay=0.0,
            correlation_id=correlation_id,
        )

    async def prepare_enqueue(self, jobs: Sequence[ReplicationJob]) -> EnqueueTxn:
        """What queues ``jobs`` inside a caller's txn, without running it.

        Reads the job prefix of every target replica (one read), leaves out a
        job whose identical pending job is already queued (as :meth:`enqueue`
        does), and guards the puts with "nothing under those prefixes changed
        since the read", so the de-duplication holds when the caller's txn
        succeeds; when it fails on these compares, prepare again."""
        prefixes = list(
            dict.fromkeys(
                self.keys.jobs(j.virtual_storage, j.target_node, j.repository_id) for j in jobs
            )
        )
        if not prefixes:
            return EnqueueTxn()
        result = await self.store.txn([], [Op.get(p, prefix=True) for p in prefixes])
        pending = [
            job
            for i in range(len(prefixes))
            for job in self._decode(result.range(i))
            if job.state in PENDING
        ]
        queued, existing, ops = [], [], []
        for job in jobs:
            same = next((other for other in pending if other.same_change(job)), None)
            if same is not None:
                existing.append(same)
                continue
            pending.append(job)  # two identical requests queue one job
            queued.append(job)
            ops.append(Op.put(self._key(job), encode_job(job)))
        compares = tuple(Compare.unchanged_since(p, result.revision) for p in prefixes)
        return EnqueueTxn(tuple(queued), tuple(existing), compares, tuple(ops))

    async def jobs(self, virtual_storage: str | None = None) -> list[ReplicationJob]:
        result = await self.store.get_prefix(self.keys.jobs(virtual_storage))
        return self._decode(result)

    async def _snapshot(
        self, targets: Iterable[tuple[str, str]] | None
    ) -> tuple[list[ReplicationJob], dict[str, KeyValue]]:
        """Jobs and held locks, read in one txn so both are at the same revision."""
        chosen = list(targets) if targets is not None else None
        if chosen is not None and 2 * len(chosen) > MAX_ABSORBED:
            # Two reads per target would exceed etcd's ops per txn: read the
            # whole queue and keep the targets' jobs.
            wanted = set(chosen)
            every, held = await self._snapshot(None)
            return [j for j in every if (j.virtual_storage, j.target_node) in wanted], held
        prefixes = (
            [(self.keys.jobs(vs, t), self.keys.locks(vs, t)) for vs, t in chosen]
            if chosen is not None
            else [(self.keys.jobs(), self.keys.locks())]
        )
        ops = [
            op
            for jobs, locks in prefixes
            for op in (Op.get(jobs, prefix=True), Op.get(locks, prefix=True))
        ]
        result = await self.store.txn([], ops)
        jobs: list[ReplicationJob] = []
        locks: dict[str, KeyValue] = {}
        for i in range(0, len(ops), 2):
            jobs.extend(self._decode(result.range(i)))
            locks.update((kv.key, kv) for kv in result.range(i + 1).kvs)
        return jobs, locks

    async def claim_next(
        self,
        worker: WorkerLease,
        *,
        targets: Iterable[tuple[str, str]] | None = None,
        target_filter: TargetFilter | None = None,
    ) -> ClaimedJob | None:
        """Claim the oldest runnable job among ``targets`` ((virtual storage, node)
        pairs; default all) passing ``target_filter``, or None if there is none.

        Raises LeaseExpired when the worker's lease is gone, StoreUnavailable
        when etcd cannot be reached (a claim whose answer was lost is adopted
        by this worker's next call)."""
        target_list = list(targets) if targets is not None else None
        if worker.name in self._uncertain:
            adopted = await self._resolve_uncertain(worker)
            if adopted is not None:
                return adopted

        async def attempt(_number: int) -> ClaimedJob | Retry | None:
            if self.view is not None:
                jobs, locks = self.view.snapshot(target_list)
            else:
                jobs, locks = await self._snapshot(target_list)
            candidates = self._runnable(jobs, locks, target_filter)
            if not candidates:
                return None
            # Racing workers would all try the oldest job; a little shuffle at
            # the head of the line lets them take different ones.
            head = candidates[:4]
            self.rng.shuffle(head)
            for job in head + candidates[4:12]:
                claim = await self._try_claim(job, worker)
                if claim is not None:
                    return claim
            if self.view is not None:
                # Every candidate was stale: let the watch catch up first.
                return None
            return RETRY

        # Losing every race only means other workers took the work.
        return await compare_and_swap(attempt, attempts=self.max_races, give_up=lambda: None)

    def _runnable(
        self,
        jobs: Sequence[ReplicationJob],
        locks: dict[str, KeyValue],
        target_filter: TargetFilter | None,
    ) -> list[ReplicationJob]:
        now = self.clock()
        waited = self._waited(now, jobs)
        first: dict[tuple[str, str, int], ReplicationJob] = {}
        dead: dict[tuple[str, str, int], ReplicationJob] = {}
        busy = {self.keys.parse_lock(key) for key in locks}
        for job in sorted(jobs, key=lambda j: j.created_revision):
            replica = (job.virtual_storage, job.target_node, job.repository_id)
            if job.state is JobState.IN_PROGRESS:
                busy.add(replica)
            elif job.state in PENDING and replica not in first:
                first[replica] = job
            elif job.state is JobState.DEAD and replica not in dead:
                dead[replica] = job
        # A dead job's replica is retried only when nothing fresher is queued
        # for it: a pending job's success removes the dead one anyway.
        for replica, job in dead.items():
            first.setdefault(replica, job)
        runnable = [
            job
            for replica, job in first.items()
            if replica not in busy
            and waited(job)
            and (target_filter is None or target_filter(job.virtual_storage, job.target_node))
        ]
        runnable.sort(key=lambda j: j.created_revision)
        return runnable

    def _waited(
        self, now: float, jobs: Sequence[ReplicationJob]
    ) -> Callable[[ReplicationJob], bool]:
        """Whether a job has waited out its delay, on the writer's wall clock
        read here or on this proxy's monotonic clock since it first saw it."""
        seen = self._waiting_since
        mono = self.monotonic()
        if len(seen) > max(WAITING_SEEN_MIN, 2 * len(jobs)):
            # Forget the versions of jobs that are gone or changed (acked,
            # claimed, failed again: a new version is a new wait). Never a
            # job still waiting: forgetting it would start its delay again.
            current = {(self._key(job), job.revision) for job in jobs}
            self._waiting_since = seen = {k: t for k, t in seen.items() if k in current}

        def due(job: ReplicationJob) -> bool:
            if job.not_before <= now:
                return True
            since = seen.setdefault((self._key(job), job.revision), mono)
            return job_due(job.not_before, job.delay, now, mono - since)

        return due

    async def _try_claim(self, job: ReplicationJob, worker: WorkerLease) -> ClaimedJob | None:
        lock_key = self.keys.lock(job.virtual_storage, job.target_node, job.repository_id)
        try:
            return await self._claim_txn(job, lock_key, worker)
        except (LeaseExpired, Compacted):
            raise
        except StoreUnavailable:
            # If the claim went through unseen, its lock would live as long as
            # this worker's lease and the job would never run: remember it and
            # find out before claiming anything else.
            self._uncertain.setdefault(worker.name, []).append((job, lock_key))
            raise

    async def _claim_txn(
        self, job: ReplicationJob, lock_key: str, worker: WorkerLease
    ) -> ClaimedJob | None:
        """One claim: the lock created if absent on the worker's lease and the
        job moved to ``in_progress``, if the job is still at the revision read."""
        claimed = replace(
            job, state=JobState.IN_PROGRESS, attempts=job.attempts + 1, worker=worker.name
        )
        lock_value = json.dumps({"job": job.job_id, "worker": worker.name}).encode()
        result = await self.store.txn(
            [Compare.absent(lock_key), Compare.mod_revision(self._key(job), job.revision)],
            [
                Op.put(lock_key, lock_value, lease=worker.lease_id),
                Op.put(self._key(job), encode_job(claimed)),
            ],
        )
        if not result.succeeded:
            return None
        return ClaimedJob(
            replace(claimed, revision=result.revision), lock_key, result.revision, worker.lease_id
        )

    async def _resolve_uncertain(self, worker: WorkerLease) -> ClaimedJob | None:
        """Adopt a claim whose txn answer was lost, if it did go through.

        A claim not found may still be applied later: a txn whose answer timed
        out can sit in an etcd member (paused, or partitioned from its
        leader) and reach the leader afterwards. Applied then, it would lock
        the job on this worker's live lease with no one running it, and the
        replica would wait for as long as this worker lives (seen in the
        fault suite: a paused etcd member, seed 1920727581). So a claim not
        found, on a job still as it was read, is sent again: the same txn,
        whose success makes the job this worker's and leaves the lost one
        nothing to apply to (its compares fail on the lock and the job's
        revision); the job is not rewritten, so its wait and revision stay
        what every proxy saw. Only when another job of the replica holds the
        lock (which the lost txn would outlive) is the job written again
        unchanged, to move its revision past the lost txn's compare."""
        pending = self._uncertain.pop(worker.name, [])
        while pending:
            # Taken off the list before the await: nothing else can resolve it twice.
            job, lock_key = pending.pop(0)
            try:
                adopted = await self._adopt_or_claim_again(job, lock_key, worker)
            except StoreUnavailable:
                # Still unknown: keep it (and the rest) for the next call.
                self._uncertain.setdefault(worker.name, [])[:0] = [(job, lock_key), *pending]
                raise
            if adopted is not None:
                if pending:
                    self._uncertain.setdefault(worker.name, []).extend(pending)
                return adopted
        return None

    async def _adopt_or_claim_again(
        self, job: ReplicationJob, lock_key: str, worker: WorkerLease
    ) -> ClaimedJob | None:
        """The claim of ``job`` if this worker holds it or takes it now; None
        once the lost claim txn can no longer apply."""
        for _look in range(2):
            result = await self.store.txn([], [Op.get(lock_key), Op.get(self._key(job))])
            locks, jobs = result.range(0).kvs, result.range(1).kvs
            if locks and jobs and locks[0].lease == worker.lease_id:
                holder = json.loads(locks[0].value)
                if holder.get("job") == job.job_id and holder.get("worker") == worker.name:
                    current = decode_job(self.keys, jobs[0])
                    return ClaimedJob(current, lock_key, locks[0].create_revision, worker.lease_id)
            if not jobs or jobs[0].mod_revision != job.revision:
                # The job changed since the claim read it, or is gone: the lost
                # txn, which compares that revision, can no longer apply.
                return None
            if locks:
                # Another job of the replica holds its lock. The lost txn could
                # still apply once that lock goes (the job unchanged): rewrite
                # the job as it is, so that its revision moves past the one the
                # lost txn compares.
                fenced = await self.store.txn(
                    [Compare.mod_revision(self._key(job), job.revision)],
                    [Op.put(self._key(job), jobs[0].value)],
                )
                if fenced.succeeded:
                    return None
                continue  # changed meanwhile: look again
            claim = await self._claim_txn(job, lock_key, worker)
            if claim is not None:
                return claim
            # Changed between the read and the claim: perhaps the lost claim
            # just landed. Look once more.
        raise StoreUnavailable(f"job {job.job_id}: its lost claim is still unresolved")

    def _guard(self, claim: ClaimedJob) -> list[Compare]:
        return [
            Compare.create_revision(claim.lock_key, claim.claim_revision),
            Compare.mod_revision(self._key(claim.job), claim.job.revision),
        ]

    async def ack(self, claim: ClaimedJob) -> None:
        """The job succeeded: remove it, its lock and identical older pending jobs."""
        job = claim.job
        prefix = self.keys.jobs(job.virtual_storage, job.target_node, job.repository_id)
        siblings: Iterable[ReplicationJob]
        if self.view is not None:
            # A sibling the view has not seen yet just stays queued: it runs
            # once more, which at-least-once delivery allows.
            siblings = self.view.siblings(job)
        else:
            siblings = self._decode(await self.store.range(prefix, prefix=True))
        superseded = [
            other
            for other in siblings
            if other.job_id != job.job_id
            and other.created_revision < claim.claim_revision
            and (
                (other.state in PENDING and other.same_change(job))
                # The replica is repaired: a dead repair of it has nothing left to do.
                or (
                    other.state is JobState.DEAD
                    and (other.same_change(job) or {other.type, job.type} <= REPAIR_TYPES)
                )
            )
        ]
        try:
            result = await self.store.txn(
                self._guard(claim),
                [
                    Op.delete(claim.lock_key),
                    Op.delete(self._key(job)),
                    *(Op.delete(self._key(other)) for other in superseded[:MAX_ABSORBED]),
                ],
            )
        except (LeaseExpired, Compacted):
            raise
        except StoreUnavailable:
            # Unknown outcome: the ack went through iff our lock and job are gone.
            if await self._claim_released(claim, expect_job=False):
                return
            raise
        if not result.succeeded:
            raise ClaimLost(f"job {job.job_id}: claim lost before acknowledgement")
        await self._delete_unchanged(superseded[MAX_ABSORBED:])

    async def _delete_unchanged(self, jobs: Sequence[ReplicationJob]) -> None:
        """Delete ``jobs`` (absorbed by another job) in txns of at most
        MAX_ABSORBED, each job only if unchanged since it was read: one claimed
        meanwhile is left to run. Best effort: the job that absorbed them is
        already recorded, and a job left behind is absorbed again later."""
        for start in range(0, len(jobs), MAX_ABSORBED):
            batch = jobs[start : start + MAX_ABSORBED]
            try:
                await self.store.txn(
                    [Compare.mod_revision(self._key(job), job.revision) for job in batch],
                    [Op.delete(self._key(job)) for job in batch],
                )
            except StoreUnavailable as exc:
                logger.warning(
                    "could not delete absorbed replication jobs",
                    extra=log.fields(count=len(jobs) - start, error=str(exc)),
                )
                return

    async def _claim_released(self, claim: ClaimedJob, *, expect_job: bool) -> bool:
        """After an ambiguous ack/fail: is our lock gone and the job in the
        expected state (gone for an ack, present and no longer ours for a fail)?"""
        result = await self.store.txn([], [Op.get(claim.lock_key), Op.get(self._key(claim.job))])
        locks, jobs = result.range(0).kvs, result.range(1).kvs
        ours = bool(locks) and locks[0].create_revision == claim.claim_revision
        if ours:
            return False
        if not expect_job:
            return not jobs
        return bool(jobs) and jobs[0].mod_revision > claim.job.revision

    def backoff_for(self, attempts: int) -> float:
        return float(min(self.max_backoff, self.backoff * 2 ** max(0, attempts - 1)))

    def dead_backoff_for(self, attempts: int) -> float:
        """Seconds until a dead job that used ``attempts`` attempts is retried:
        ``dead_retry_base`` after its first death, doubling with each further one
        (one attempt each), at most ``dead_retry_cap``."""
        deaths = max(1, attempts - self.max_attempts + 1)
        # The exponent is bounded so a job retried for years cannot overflow it.
        return float(min(self.dead_retry_cap, self.dead_retry_base * 2 ** min(deaths - 1, 60)))

    def _bury(
        self, job: ReplicationJob, error: str, siblings: Iterable[ReplicationJob]
    ) -> tuple[ReplicationJob, list[ReplicationJob]]:
        """``job`` made dead, absorbing the other dead jobs of its replica, and
        those (to delete): one dead job per replica, the newest (it reflects the
        latest placement). Its attempts count the absorbed deaths so the retry
        backoff keeps growing, and ``created_at`` keeps the oldest so it tells
        how long the replica's repair has been failing."""
        others = [o for o in siblings if o.job_id != job.job_id and o.state is JobState.DEAD]
        attempts = max([job.attempts, *(o.attempts + 1 for o in others)])
        dead = replace(
            job,
            state=JobState.DEAD,
            attempts=attempts,
            created_at=min([job.created_at, *(o.created_at for o in others)]),
            not_before=self.clock() + self.dead_backoff_for(attempts),
            delay=self.dead_backoff_for(attempts),
            last_error=error[:500],
            worker="",
        )
        return dead, others

    async def fail(self, claim: ClaimedJob, error: str) -> ReplicationJob:
        """The job failed: retry later with backoff, or dead after ``max_attempts``
        (then retried with the longer dead-job backoff)."""
        job = claim.job
        now = self.clock()
        if job.attempts >= self.max_attempts:
            failed, _ = self._bury(job, error, ())
        else:
            failed = replace(
                job,
                state=JobState.FAILED,
                not_before=now + self.backoff_for(job.attempts),
                delay=self.backoff_for(job.attempts),
                last_error=error[:500],
                worker="",
            )
        try:
            if failed.state is JobState.DEAD:
                return await self._fail_dead(claim, error)
            result = await self.store.txn(
                self._guard(claim),
                [Op.delete(claim.lock_key), Op.put(self._key(job), encode_job(failed))],
            )
        except (LeaseExpired, Compacted):
            raise
        except StoreUnavailable:
            if await self._claim_released(claim, expect_job=True):
                return failed
            raise
        if not result.succeeded:
            raise ClaimLost(f"job {job.job_id}: claim lost before reporting failure")
        return replace(failed, revision=result.revision)

    async def _fail_dead(self, claim: ClaimedJob, error: str) -> ReplicationJob:
        """Make the claimed job dead in one txn with the removal of its replica's
        other dead jobs, read from the store (not the view: the bound must hold
        exactly) and guarded against any new job under the replica's prefix."""
        job = claim.job
        prefix = self.keys.jobs(job.virtual_storage, job.target_node, job.repository_id)

        async def attempt(_number: int) -> ReplicationJob | Retry:
            read = await self.store.txn([], [Op.get(prefix, prefix=True), Op.get(claim.lock_key)])
            siblings = self._decode(read.range(0))
            locks = read.range(1).kvs
            ours = any(
                s.job_id == job.job_id and s.revision == job.revision for s in siblings
            ) and bool(locks and locks[0].create_revision == claim.claim_revision)
            if not ours:
                raise ClaimLost(f"job {job.job_id}: claim lost before reporting failure")
            dead, absorbed = self._bury(job, error, siblings)
            result = await self.store.txn(
                [*self._guard(claim), Compare.unchanged_since(prefix, read.revision)],
                [
                    Op.delete(claim.lock_key),
                    Op.put(self._key(job), encode_job(dead)),
                    *(Op.delete(self._key(other)) for other in absorbed[:MAX_ABSORBED]),
                ],
            )
            if not result.succeeded:
                return RETRY  # a job was queued meanwhile, or the claim is gone: re-read
            await self._delete_unchanged(absorbed[MAX_ABSORBED:])
            return replace(dead, revision=result.revision)

        return await compare_and_swap(
            attempt,
            attempts=self.max_races,
            give_up=conflict(f"could not report job {job.job_id} dead"),
        )

    async def recover_orphans(self) -> int:
        """Re-ready in-progress jobs whose worker's lock is gone; returns how many.

        A job whose txn fails is reported and left for the next pass: it does
        not stop the recovery of the others."""
        jobs, holders = await self._snapshot(None)
        recovered = 0
        for job in jobs:
            if job.state is not JobState.IN_PROGRESS:
                continue
            try:
                recovered += int(await self._recover_orphan(job, holders))
            except StoreUnavailable as exc:
                logger.warning(
                    "could not recover an orphaned replication job",
                    extra=log.fields(job_id=job.job_id, error=str(exc)),
                )
        return recovered

    async def _recover_orphan(self, job: ReplicationJob, holders: dict[str, KeyValue]) -> bool:
        """Re-ready (or bury) ``job`` if its lock is gone; True if it was."""
        lock_key = self.keys.lock(job.virtual_storage, job.target_node, job.repository_id)
        lock = holders.get(lock_key)
        if lock is not None and json.loads(lock.value).get("job") == job.job_id:
            return False
        # The txn re-checks both facts: a claim that raced this read wins.
        guard = (
            Compare.absent(lock_key)
            if lock is None
            else Compare.mod_revision(lock_key, lock.mod_revision)
        )
        reason = "worker lost its lease"
        compares = [guard, Compare.mod_revision(self._key(job), job.revision)]
        absorbed: list[ReplicationJob] = []
        if job.attempts >= self.max_attempts:
            # Dead: absorb the replica's other dead jobs, read afresh; a job
            # queued meanwhile fails the txn and the next pass tries again.
            prefix = self.keys.jobs(job.virtual_storage, job.target_node, job.repository_id)
            current = await self.store.range(prefix, prefix=True)
            new, absorbed = self._bury(job, reason, self._decode(current))
            compares.append(Compare.unchanged_since(prefix, current.revision))
        else:
            new = replace(
                job,
                state=JobState.READY,
                worker="",
                not_before=self.clock(),
                delay=0.0,
                last_error=reason,
            )
        result = await self.store.txn(
            compares,
            [
                Op.put(self._key(job), encode_job(new)),
                *(Op.delete(self._key(other)) for other in absorbed[:MAX_ABSORBED]),
            ],
        )
        if result.succeeded:
            await self._delete_unchanged(absorbed[MAX_ABSORBED:])
        return result.succeeded

    async def retry_now(self, job: ReplicationJob) -> bool:
        """Make a dead job due at once (its replica can be repaired again);
        False if it changed since it was read (claimed, absorbed, removed)."""
        if job.state is not JobState.DEAD:
            raise FailedPrecondition(f"job {job.job_id} is not dead")
        due = replace(job, not_before=self.clock(), delay=0.0)
        result = await self.store.txn(
            [Compare.mod_revision(self._key(job), job.revision)],
            [Op.put(self._key(job), encode_job(due))],
        )
        return result.succeeded

    async def remove(self, job: ReplicationJob) -> bool:
        """Delete a job that is not in flight (e.g. an operator dropping a dead job)."""
        if job.state is JobState.IN_PROGRESS:
            raise FailedPrecondition(f"job {job.job_id} is in progress")
        result = await self.store.txn(
            [Compare.mod_revision(self._key(job), job.revision)], [Op.delete(self._key(job))]
        )
        return result.succeeded
