"""Replication workers: drain the etcd queue by having targets pull from sources.

Every proxy runs a few workers. A worker claims a job under its lease (so a
crashed proxy's claims are recovered once the lease expires), asks the
target node to ``ReplicateRepository`` from the source named in
``gitaly-servers`` metadata, records the target's new generation (the
source's generation read *before* replicating, so a write that lands during
replication is never claimed), and acknowledges the job.

A job runs only while the lease behind its claim does: when the worker's
lease keeper declares the lease lost (``ttl / 2`` before etcd can expire it),
the job is cancelled, with its ReplicateRepository call, and neither recorded
nor acknowledged; the leader's orphan recovery hands it to another worker once
etcd expired the lease. What the cancellation cannot stop (a process paused
past its lease resumes with the copy done) the generation update refuses: it
is one txn with the check that the claim is still held.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from gitquorum import log
from gitquorum.cluster.clock import Clock
from gitquorum.cluster.decisions import NO_SOURCE, choose_source
from gitquorum.cluster.errors import (
    ClaimLost,
    Conflict,
    DowngradeAttempted,
    LeaseExpired,
    RepositoryNotFound,
    SourceRuledOut,
    StoreUnavailable,
)
from gitquorum.cluster.lease import LeaseKeeper
from gitquorum.cluster.queue import ClaimedJob, JobType, ReplicationQueue
from gitquorum.cluster.repositories import (
    HOLD_CAP,
    MISSING,
    CopySource,
    RepositoryCache,
    RepositoryRecord,
    RepositoryStore,
)
from gitquorum.cluster.store import Compare
from gitquorum.gitaly import repository_pb2, repository_pb2_grpc, shared_pb2
from gitquorum.proxy.channels import NodeChannels
from gitquorum.wire.replication_claim import claim_metadata

logger = log.get("gitquorum.replication")

REPLICATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ReplicationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.delay = Histogram(
            "gitquorum_replication_delay_seconds",
            "Time from a replication job being queued to a worker starting it.",
            ["type"],
            buckets=REPLICATION_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "gitquorum_replication_latency_seconds",
            "Time a replication job ran, by type and result.",
            ["type", "result"],
            buckets=REPLICATION_BUCKETS,
            registry=registry,
        )
        self.claims_lost = Counter(
            "gitquorum_replication_claims_lost",
            "Replication jobs this proxy stopped without recording anything because the "
            "claim behind them was lost (lease lost, or the job taken over).",
            registry=registry,
        )


def gitaly_servers(storage: str, address: str, token: str) -> tuple[str, str]:
    """The metadata that tells a target node how to reach the source."""
    # A scheme given (tls:// with node TLS, see NodeChannels.url) is kept.
    url = address if "://" in address else f"tcp://{address}"
    value = {storage: {"address": url, "token": token}}
    return ("gitaly-servers", base64.b64encode(json.dumps(value).encode()).decode())


class Replicator:
    """Runs one claimed job against the nodes."""

    def __init__(
        self,
        repositories: RepositoryStore,
        cache: RepositoryCache,
        channels: NodeChannels,
        healthy: Callable[[str], frozenset[str]],
        node_token: str = "",
        timeout: float = 300.0,
    ) -> None:
        self.repositories = repositories
        self.cache = cache
        self.channels = channels
        self.healthy = healthy
        self.node_token = node_token
        self.timeout = timeout

    def _source(self, record: RepositoryRecord, preferred: str | None, target: str) -> str:
        source = choose_source(
            record, self.healthy(record.virtual_storage), target=target, preferred=preferred
        )
        if source is None:
            raise RuntimeError(NO_SOURCE)
        return source

    async def run(self, claim: ClaimedJob) -> str:
        """Do the job; returns a short outcome. Raises on failure (the job is retried)."""
        job = claim.job
        try:
            record = await self.repositories.get(job.virtual_storage, job.repository_id)
        except RepositoryNotFound:
            return "repository-gone"
        metadata = self.channels.forward_metadata(
            [("x-gitquorum-correlation-id", job.correlation_id)] if job.correlation_id else []
        )
        stub = repository_pb2_grpc.RepositoryServiceStub(self.channels.channel(job.target_node))
        target = shared_pb2.Repository(
            storage_name=job.target_node, relative_path=record.replica_path
        )
        if job.type is JobType.DELETE_REPLICA:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.RemoveRepository(
                    repository_pb2.RemoveRepositoryRequest(repository=target),
                    metadata=metadata,
                    timeout=self.timeout,
                )
            await self.repositories.remove_replica(
                job.virtual_storage, job.repository_id, job.target_node
            )
            return "deleted"
        if record.replica_generation(job.target_node) == record.generation:
            return "already-up-to-date"
        catch_up = CatchUp(
            self, job.virtual_storage, job.repository_id, job.target_node, claim.guard
        )
        # The target node refuses copies of a claim older than one it has seen.
        metadata = [*metadata, claim_metadata(claim.claim_revision)]
        return await catch_up.run(record, stub, metadata, job.source_node)

    async def copy(
        self,
        record: RepositoryRecord,
        stub: repository_pb2_grpc.RepositoryServiceStub,
        metadata: Sequence[tuple[str, str | bytes]],
        target_node: str,
        preferred: str | None,
    ) -> CopySource:
        """One ``ReplicateRepository`` from a healthy up-to-date replica of
        ``record``; returns the source as ``record`` showed it (its generation
        read before copying, so that a write landing meanwhile is not claimed
        for the target; the update is refused if the source is ruled out since)."""
        source_node = self._source(record, preferred, target_node)
        copied_from = CopySource.of(record, source_node)
        target = shared_pb2.Repository(storage_name=target_node, relative_path=record.replica_path)
        source = shared_pb2.Repository(storage_name=source_node, relative_path=record.replica_path)
        address = self.channels.url(source_node)
        await stub.ReplicateRepository(
            repository_pb2.ReplicateRepositoryRequest(repository=target, source=source),
            metadata=[*metadata, gitaly_servers(source_node, address, self.node_token)],
            timeout=self.timeout,
        )
        return copied_from


class CatchUp:
    """Bring one outdated replica to the repository's generation while writes go on.

    Each round copies from an up-to-date replica and records the target at
    the generation read before copying; a busy repository has moved on by
    then, but each round has less to copy. Once a round is short (at most
    ``HOLD_AFTER`` seconds) and the target is still behind, the last copy is
    taken while the repository's writes are held (every proxy waits before
    routing a new write, at most ``HOLD_CAP``), and the target is recorded up
    to date only if no write outcome landed since the copy's generation was
    read (the update compares the record's revision). Writes already in
    flight when the hold began can still land: the update then fails and the
    copy is taken again, within the same hold. The hold is released by that
    update, or explicitly when the catch-up gives up."""

    ROUNDS = 8
    HOLD_AFTER = HOLD_CAP
    HOLD_ATTEMPTS = 3

    def __init__(
        self,
        replicator: Replicator,
        virtual_storage: str,
        repository_id: int,
        target: str,
        claim: Sequence[Compare],
    ) -> None:
        self.replicator = replicator
        # The job's claim: every record update is conditional on it still being held.
        self.claim = claim
        self.repositories = replicator.repositories
        self.virtual_storage = virtual_storage
        self.repository_id = repository_id
        self.target = target

    async def run(
        self,
        record: RepositoryRecord,
        stub: repository_pb2_grpc.RepositoryServiceStub,
        metadata: Sequence[tuple[str, str | bytes]],
        preferred: str | None,
    ) -> str:
        source = ""
        for _round in range(self.ROUNDS):
            started = time.monotonic()
            copied_from = await self.replicator.copy(record, stub, metadata, self.target, preferred)
            source = copied_from.node
            try:
                record = await self._record(copied_from)
            except SourceRuledOut:
                # Copy again from a replica the record still backs (none while
                # a verifier conflict stands: the job fails and is retried).
                record = await self.repositories.get(self.virtual_storage, self.repository_id)
                preferred = None
                continue
            if record.replica_generation(self.target) >= record.generation:
                return f"replicated-from-{source}"
            if time.monotonic() - started <= self.HOLD_AFTER:
                break
        else:
            return f"behind-after-{self.ROUNDS}-rounds-from-{source}"
        for _attempt in range(self.HOLD_ATTEMPTS):
            outcome = await self._held_copy(stub, metadata, preferred)
            if outcome is not None:
                return outcome
        return f"behind-after-held-copies-from-{source}"

    async def _record(
        self, copied_from: CopySource, read_revision: int | None = None
    ) -> RepositoryRecord:
        try:
            # One txn with "our claim is still held" (a worker that was paused
            # past its lease while its job was taken over records nothing) and
            # "the source is still what the copy read" (SourceRuledOut).
            updated = await self.repositories.set_replica_generation(
                self.virtual_storage,
                self.repository_id,
                self.target,
                copied_from.generation,
                read_revision=read_revision,
                source=copied_from,
                claim=self.claim,
            )
        except DowngradeAttempted:
            updated = await self.repositories.get(self.virtual_storage, self.repository_id)
        await self.replicator.cache.wait_for_revision(updated.revision)
        return updated

    async def _held_copy(
        self,
        stub: repository_pb2_grpc.RepositoryServiceStub,
        metadata: Sequence[tuple[str, str | bytes]],
        preferred: str | None,
    ) -> str | None:
        """Hold writes, copy, record up to date if nothing landed; None: try again."""
        try:
            held = await self.repositories.hold_writes(
                self.virtual_storage,
                self.repository_id,
                self.target,
                time.time(),
                HOLD_CAP,
                claim=self.claim,
            )
        except DowngradeAttempted:
            return "already-up-to-date"
        except Conflict:
            return None  # another replica's catch-up holds the writes
        deadline = time.monotonic() + HOLD_CAP
        try:
            record = held
            while time.monotonic() < deadline:
                copied_from = await self.replicator.copy(
                    record, stub, metadata, self.target, preferred
                )
                source = copied_from.node
                try:
                    done = await self._record(copied_from, read_revision=record.revision)
                except Conflict:
                    # A write routed before the hold was seen landed meanwhile
                    # (or the source was ruled out: the next copy picks again).
                    preferred = None
                    record = await self.repositories.get(self.virtual_storage, self.repository_id)
                    if record.replica_generation(self.target) >= record.generation:
                        return "already-up-to-date"
                    continue
                if done.replica_generation(self.target) >= done.generation:
                    return f"caught-up-from-{source}"
                record = done
            return None
        finally:
            with contextlib.suppress(Exception):
                await self.repositories.release_writes(
                    self.virtual_storage, self.repository_id, self.target, claim=self.claim
                )


class ReplicationWorkers:
    """A pool of workers sharing one lease; woken early when jobs may be waiting."""

    def __init__(
        self,
        name: str,
        queue: ReplicationQueue,
        replicator: Replicator,
        targets: Callable[[], Sequence[tuple[str, str]]],
        metrics: ReplicationMetrics,
        *,
        workers: int = 2,
        lease_ttl: float = 5.0,
        idle_min: float = 0.05,
        idle_max: float = 1.0,
        paused: Callable[[], bool] = lambda: False,
        clock: Clock | None = None,
    ) -> None:
        """``clock``: the lease keeper's (a manual one in unit tests)."""
        self.name = name
        self.queue = queue
        self.replicator = replicator
        self.targets = targets
        self.metrics = metrics
        self.workers = workers
        self.lease_ttl = lease_ttl
        self.idle_min = idle_min
        self.idle_max = idle_max
        # Operator pause (gitquorum pause): claim nothing; running jobs finish.
        self.paused = paused
        self.clock = clock
        self.wake = asyncio.Event()
        self._keeper: LeaseKeeper | None = None
        self._lease_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._running = 0
        self._idle = asyncio.Condition()
        # Claims given back whose release etcd could not confirm: released
        # again before each claim attempt (a failed settle does not stop the
        # attempt: the kept lock only keeps its own replica busy).
        self._unsettled: list[tuple[ClaimedJob, str]] = []
        self._settling = asyncio.Lock()

    async def start(self) -> None:
        self._tasks = [
            asyncio.get_running_loop().create_task(self._worker(i), name=f"replication-{i}")
            for i in range(self.workers)
        ]

    async def _lease(self) -> LeaseKeeper:
        # One at a time: workers racing here would each grant a lease, and only
        # the last would ever be closed.
        async with self._lease_lock:
            keeper = self._keeper
            if keeper is None or not keeper.alive:
                if keeper is not None:
                    await keeper.close(revoke=False)
                keeper = LeaseKeeper(
                    self.queue.store, self.lease_ttl, name=f"worker:{self.name}", clock=self.clock
                )
                await keeper.start()
                self._keeper = keeper
            return keeper

    async def _worker(self, index: int) -> None:
        idle = self.idle_min
        while not self._stopping.is_set():
            try:
                keeper = await self._lease()
                await self._settle()
                targets = [] if self.paused() else list(self.targets())
                claim = (
                    await self.queue.claim_next(
                        _Worker(keeper, f"{self.name}/{index}"), targets=targets
                    )
                    if targets
                    else None
                )
            except StoreUnavailable as exc:
                logger.warning("replication queue unavailable", extra=log.fields(error=str(exc)))
                claim = None
            except Exception:
                # A bug must not end this worker silently: log it and go on claiming.
                logger.exception("replication worker error")
                claim = None
            if claim is None:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), idle)
                idle = min(self.idle_max, idle * 2)
                continue
            idle = self.idle_min
            await self._process(claim, keeper)

    async def _process(self, claim: ClaimedJob, keeper: LeaseKeeper) -> None:
        job = claim.job
        self._running += 1
        started = time.time()
        self.metrics.delay.labels(str(job.type)).observe(max(0.0, started - job.created_at))
        log.correlation_id.set(job.correlation_id or log.new_correlation_id())
        fields = dict(
            job_id=job.job_id,
            type=str(job.type),
            virtual_storage=job.virtual_storage,
            repository_id=job.repository_id,
            target=job.target_node,
            attempt=job.attempts,
        )
        try:
            outcome = await self._run_while_held(claim, keeper)
            if outcome is None:
                self._claim_lost(f"lease lost: {keeper.lost_reason}", fields)
                return
            await self.queue.ack(claim)
            self.metrics.latency.labels(str(job.type), "ok").observe(time.time() - started)
            logger.info("replication job done", extra=log.fields(outcome=outcome, **fields))
        except asyncio.CancelledError:
            raise
        except ClaimLost as exc:
            # Taken over: the new holder owns the job (nothing to fail or ack).
            self._claim_lost(str(exc), fields)
        except Exception as exc:
            self.metrics.latency.labels(str(job.type), "error").observe(time.time() - started)
            error = _describe(exc)
            logger.warning("replication job failed", extra=log.fields(error=error, **fields))
            await self._release(claim, error)
        finally:
            self._running -= 1

    async def _release(self, claim: ClaimedJob, error: str) -> bool:
        """Give a claim back as failed (retried with backoff). Whether its
        outcome is known: if etcd cannot say, the claim is kept and released
        again before each claim attempt (``_settle``), or its lock would stay on
        this live lease with the job never running (an ack and its fail both
        lost while etcd stalled)."""
        try:
            await self.queue.fail(claim, error)
        except (ClaimLost, LeaseExpired):
            return True  # taken over, released meanwhile, or gone with its lease
        except Exception as exc:  # unknown outcome (etcd), or a race to retry
            if all(kept is not claim for kept, _error in self._unsettled):
                self._unsettled.append((claim, error))
            if not isinstance(exc, StoreUnavailable):
                logger.warning(
                    "replication job not released; trying again",
                    extra=log.fields(job_id=claim.job.job_id, error=_describe(exc)),
                )
            return False
        return True

    async def _settle(self) -> None:
        """Release the claims whose release was not acknowledged, oldest
        first; one worker at a time, each removed by identity once released
        (a slow release of one worker must not drop another's entry)."""
        async with self._settling:
            for claim, error in list(self._unsettled):
                if not await self._release(claim, error):
                    return
                self._unsettled = [(c, e) for c, e in self._unsettled if c is not claim]

    async def _run_while_held(self, claim: ClaimedJob, keeper: LeaseKeeper) -> str | None:
        """The job's outcome, or None if the lease behind the claim was lost first
        (the job, with its ReplicateRepository call, is then cancelled)."""
        job = asyncio.ensure_future(self.replicator.run(claim))
        lost = asyncio.ensure_future(keeper.lost.wait())
        stopped = False
        try:
            await asyncio.wait({job, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not job.done():
                stopped = True
                job.cancel()
                # Wait for the cancellation to land, so nothing of the job
                # runs on after this returns (or after this task is cancelled).
                await asyncio.gather(job, return_exceptions=True)
        if stopped and job.cancelled():
            return None
        return job.result()

    def _claim_lost(self, reason: str, fields: dict[str, object]) -> None:
        self.metrics.claims_lost.inc()
        logger.warning(
            "replication job stopped: claim lost",
            extra=log.fields(reason=reason, **fields),
        )

    async def close(self, grace: float = 10.0) -> None:
        """Stop claiming; let running jobs finish within ``grace``; release the lease."""
        self._stopping.set()
        self.wake.set()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._keeper is not None:
            # Revoking drops our locks at once, so unfinished claims are recovered quickly.
            await self._keeper.close(revoke=True)


class _Worker:
    def __init__(self, keeper: LeaseKeeper, name: str) -> None:
        self._keeper = keeper
        self._name = name

    @property
    def lease_id(self) -> int:
        return self._keeper.lease_id

    @property
    def name(self) -> str:
        return self._name


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


def healthy_targets(
    nodes: Mapping[str, Sequence[str]], healthy: Callable[[str], frozenset[str]]
) -> Callable[[], list[tuple[str, str]]]:
    """Only replicate to nodes that are up: jobs for a down node wait for it."""

    def targets() -> list[tuple[str, str]]:
        return [(vs, n) for vs, members in nodes.items() for n in members if n in healthy(vs)]

    return targets


__all__ = ["MISSING", "ReplicationMetrics", "ReplicationWorkers", "Replicator", "healthy_targets"]
