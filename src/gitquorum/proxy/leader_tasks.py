"""Cluster-wide background work run only by the leader.

* **Failover**: whenever the health consensus changes (and periodically),
  every repository whose primary is no longer a valid primary (healthy by
  consensus, up to date, assigned) gets a new one by compare-and-swap. Never an
  outdated replica: with no valid candidate the repository stays unavailable
  and shows in ``dataloss``.
* **Reconciler**: queues a replication job for every outdated assigned
  replica that has none queued (``decisions.repairs``; workers hold jobs for
  a node that is down until it is back). A dead job counts as queued: the
  queue retries it with a backoff of up to an hour, so a replica whose repair
  keeps failing keeps one job instead of gaining one per pass.
* **Dead jobs due now**: a repair dies quickly while its replica has no
  healthy, up-to-date source (three attempts seconds apart) or its target is
  unreachable. When the health consensus changes (and on every reconciler
  interval), a dead repair whose target is healthy, whose replica is still
  outdated and which has a healthy, up-to-date source again is made due at
  once (one put each) instead of waiting out its backoff of up to an hour —
  but only when its target or one of its up-to-date replicas became healthy
  since the last pass (the first pass of a new leader counts every node as
  newly healthy), so a target that keeps failing on its own keeps its backoff.
* **Orphan recovery**: re-readies jobs whose worker's lease expired.
* **Cluster gauges**: exported once, by the leader, so alerts fire once.

Every write carries the leader's fencing token: a deposed leader that wakes
up cannot act on a stale view.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet

from gitquorum import log
from gitquorum.cluster.clock_rules import due_everywhere
from gitquorum.cluster.decisions import (
    NO_SOURCE,
    choose_primary,
    choose_source,
    pending_repairs,
    primary_is_valid,
    primary_load,
    repairs,
    up_to_date_replicas,
)
from gitquorum.cluster.election import LeaderElection
from gitquorum.cluster.errors import Conflict, FailedPrecondition
from gitquorum.cluster.history import FAILOVER, History
from gitquorum.cluster.membership import HealthView
from gitquorum.cluster.metrics import ClusterMetrics
from gitquorum.cluster.periodic import run_periodically, warn
from gitquorum.cluster.queue import (
    REPAIR_TYPES,
    JobState,
    ReplicationJob,
    ReplicationQueue,
    queue_stats,
)
from gitquorum.cluster.repair_jobs import queue_repairs
from gitquorum.cluster.repositories import RepositoryCache, RepositoryRecord, RepositoryStore
from gitquorum.proxy.metrics import ProxyMetrics

logger = log.get("gitquorum.leader")

# Seconds between passes of orphan recovery and of the cluster-wide gauges.
ORPHAN_INTERVAL = 2.0
METRICS_INTERVAL = 2.0


class LeaderTasks:
    def __init__(
        self,
        election: LeaderElection,
        repositories: RepositoryStore,
        cache: RepositoryCache,
        health: HealthView,
        queue: ReplicationQueue,
        metrics: ProxyMetrics,
        cluster_metrics: ClusterMetrics | None,
        *,
        draining: Callable[[str], frozenset[str]] = lambda _vs: frozenset(),
        paused: Callable[[], bool] = lambda: False,
        reconcile_interval: float = 30.0,
        failover_interval: float = 1.0,
        wake: Callable[[], None] = lambda: None,
        virtual_storages: Sequence[str] = (),
        history: History | None = None,
    ) -> None:
        self.history = history
        self.virtual_storages = list(virtual_storages)
        self.election = election
        self.repositories = repositories
        self.cache = cache
        self.health = health
        self.queue = queue
        self.metrics = metrics
        self.cluster_metrics = cluster_metrics
        self.draining = draining
        self.paused = paused
        self.reconcile_interval = reconcile_interval
        self.failover_interval = failover_interval
        self.wake = wake
        self._health_changed = asyncio.Event()
        self._dead_jobs_wake = asyncio.Event()
        # Healthy nodes per virtual storage at the last dead-job pass of this
        # leadership: the nodes healthy now and not then are the ones that came back.
        self._seen_healthy: dict[str, frozenset[str]] = {}
        # Dead repairs that had no source at the last pass (None: any, as at the
        # start of a leadership); see ``dead_jobs_to_retry``.
        self._sourceless: frozenset[str] | None = None
        health.add_listener(lambda _old, _new: self._on_health_change())

    def _on_health_change(self) -> None:
        self._health_changed.set()
        self._dead_jobs_wake.set()

    def install(self) -> None:
        self.election.run_while_leader("failover", self.failover_loop)
        self.election.run_while_leader("reconciler", self.reconcile_loop)
        self.election.run_while_leader("dead-jobs", self.dead_jobs_loop)
        self.election.run_while_leader("orphans", self.orphan_loop)
        self.election.run_while_leader("cluster-metrics", self.metrics_loop)

    # -- failover ---------------------------------------------------------------------

    async def failover_once(self) -> int:
        """Elect new primaries where needed; returns how many changed."""
        if self.paused():
            return 0
        changed = 0
        fence = self.election.token
        # Primaries per node, per virtual storage: read once per pass and kept
        # current with every move, so that one pass spreads a failed node's
        # primaries over the others instead of piling them on one.
        loads: dict[str, dict[str, int]] = {}
        for record in self.cache.records():
            vs = record.virtual_storage
            healthy = self.health.healthy(vs)
            if primary_is_valid(record, healthy):
                continue
            load = loads.get(vs)
            if load is None:
                load = loads[vs] = self._primary_load(vs)
            choice = choose_primary(record, healthy, load=load, draining=self.draining(vs))
            if choice is None:
                continue  # unavailable: reported by dataloss, never served stale
            try:
                updated = await self.repositories.set_primary(
                    vs,
                    record.repository_id,
                    choice,
                    expected=record.primary,
                    fence=fence,
                )
            except (Conflict, FailedPrecondition):
                continue
            changed += 1
            load[choice] = load.get(choice, 0) + 1
            if record.primary:
                load[record.primary] = max(0, load.get(record.primary, 0) - 1)
            self.metrics.failovers.labels(vs, "primary-unhealthy").inc()
            if self.history is not None:
                await self.history.primary_moved(
                    FAILOVER, record, record.primary, updated.primary, "primary-unhealthy"
                )
            logger.warning(
                "failover",
                extra=log.fields(
                    repository_id=record.repository_id,
                    relative_path=record.relative_path,
                    old_primary=record.primary,
                    new_primary=updated.primary,
                ),
            )
        return changed

    def _primary_load(self, virtual_storage: str) -> dict[str, int]:
        return primary_load(self.cache.records(virtual_storage))

    async def failover_loop(self) -> None:
        # A change of the health consensus starts a pass at once.
        await run_periodically(
            self.failover_once,
            self.failover_interval,
            wake=self._health_changed,
            on_error=warn(logger, "failover pass failed"),
        )

    # -- reconciler ---------------------------------------------------------------------

    async def reconcile_once(self) -> int:
        """Queue a job for every outdated assigned replica that has none (dead included)."""
        if self.paused():
            return 0
        queued = 0
        pending = pending_repairs(await self.queue.jobs())
        for record in self.cache.records():
            needed = repairs(record, self.health.healthy(record.virtual_storage), pending=pending)
            if needed:
                queued += len(await queue_repairs(self.queue, record, needed))
        if queued:
            self.wake()
            logger.info("reconciler queued jobs", extra=log.fields(count=queued))
        return queued

    async def reconcile_loop(self) -> None:
        await run_periodically(
            self.reconcile_once,
            self.reconcile_interval,
            on_error=warn(logger, "reconciliation failed"),
        )

    # -- dead jobs whose replica can be repaired again ---------------------------------------

    async def retry_dead_jobs_once(self) -> int:
        """Make due the dead repairs that can run now (see the module docstring)."""
        if self.paused():
            return 0
        records = {(r.virtual_storage, r.repository_id): r for r in self.cache.records()}
        storages = {vs for vs, _ in records}
        healthy = {vs: self.health.healthy(vs) for vs in storages}
        came_back = {vs: healthy[vs] - self._seen_healthy.get(vs, frozenset()) for vs in storages}
        jobs = await self.queue.jobs()
        sourceless = sourceless_repairs(jobs, records, healthy)
        due = dead_jobs_to_retry(
            jobs,
            records,
            healthy,
            came_back,
            self.queue.clock(),
            max_attempts=self.queue.max_attempts,
            sourceless_before=self._sourceless,
        )
        retried = 0
        for job in due:
            retried += int(await self.queue.retry_now(job))
        # Only after a pass that went through: a failed one is redone in full.
        self._seen_healthy = healthy
        self._sourceless = sourceless
        if retried:
            self.wake()
            logger.info("dead jobs due again", extra=log.fields(count=retried))
        return retried

    async def dead_jobs_loop(self) -> None:
        # A new leadership starts from "every node came back": a source that
        # returned during the change of leader is not missed.
        self._seen_healthy = {}
        self._sourceless = None
        await run_periodically(
            self.retry_dead_jobs_once,
            self.reconcile_interval,
            wake=self._dead_jobs_wake,
            on_error=warn(logger, "dead job pass failed"),
        )

    # -- jobs of crashed workers ------------------------------------------------------------

    async def orphan_loop(self) -> None:
        await run_periodically(
            self._recover_orphans,
            ORPHAN_INTERVAL,
            on_error=warn(logger, "orphan recovery failed"),
        )

    async def _recover_orphans(self) -> None:
        if await self.queue.recover_orphans():
            self.wake()

    # -- cluster-wide gauges --------------------------------------------------------------

    async def metrics_loop(self) -> None:
        cluster_metrics = self.cluster_metrics
        if cluster_metrics is None:
            return

        async def export() -> None:
            jobs = await self.queue.jobs()
            cluster_metrics.update_queue(queue_stats(jobs, time.time()))
            storages = self.virtual_storages or _virtual_storages(self.cache)
            cluster_metrics.update_repositories(
                self.cache.records(),
                {vs: self.health.healthy(vs) for vs in storages},
                # Listed so the gauge reads 0, not absent, when all is well.
                virtual_storages=storages,
            )

        try:
            # An unreachable store only leaves the gauges as they were until the next pass.
            await run_periodically(export, METRICS_INTERVAL)
        finally:
            # A former leader stops exporting cluster-wide gauges.
            cluster_metrics.update_queue(queue_stats([], time.time()))
            cluster_metrics.update_repositories((), {})


def sourceless_repairs(
    jobs: Iterable[ReplicationJob],
    records: Mapping[tuple[str, int], RepositoryRecord],
    healthy: Mapping[str, frozenset[str]],
) -> frozenset[str]:
    """The ids of the dead repairs whose replica has no healthy, up-to-date
    source now (a verifier conflict stands, or every source is down)."""
    return frozenset(
        job.job_id
        for job in jobs
        if job.state is JobState.DEAD
        and job.type in REPAIR_TYPES
        and (record := records.get((job.virtual_storage, job.repository_id))) is not None
        and choose_source(
            record, healthy.get(job.virtual_storage, frozenset()), target=job.target_node
        )
        is None
    )


# How many deaths of a repair for want of a source are made due as soon as a
# source exists again (``dead_jobs_to_retry``); later ones wait their backoff.
NO_SOURCE_EARLY_RETRIES = 3


def dead_jobs_to_retry(
    jobs: Iterable[ReplicationJob],
    records: Mapping[tuple[str, int], RepositoryRecord],
    healthy: Mapping[str, frozenset[str]],
    came_back: Mapping[str, frozenset[str]],
    now: float,
    *,
    max_attempts: int = 3,
    sourceless_before: AbstractSet[str] | None = frozenset(),
) -> list[ReplicationJob]:
    """The dead repairs to make due now: still backing off, their replica still
    outdated, the target healthy, a healthy up-to-date source available, and
    the target or an up-to-date replica among the nodes that ``came_back`` —
    or the job died for want of a source. That happens without any node going
    down: while a verifier conflict stands no replica is a source, and the
    conflict's end is no health change; left to its backoff, the replica
    would wait a minute or more after the conflict cleared. It is made due
    when the leader saw it without a source at its last pass
    (``sourceless_before``, job ids; None: every job, as after a change of
    leader), or, for a conflict shorter than a pass, on its first
    ``NO_SOURCE_EARLY_RETRIES`` deaths (``max_attempts`` attempts make the
    first). Not on every pass: a worker whose own view finds no source where
    the leader's does (it cannot reach the one source) would die and be made
    due again each time."""
    due = []
    for job in jobs:
        if job.state is not JobState.DEAD or job.type not in REPAIR_TYPES:
            continue
        if due_everywhere(job.not_before, job.delay, now):
            continue
        record = records.get((job.virtual_storage, job.repository_id))
        if record is None or record.replica_generation(job.target_node) == record.generation:
            continue
        nodes = healthy.get(job.virtual_storage, frozenset())
        if job.target_node not in nodes:
            continue
        if choose_source(record, nodes, target=job.target_node) is None:
            continue
        back = came_back.get(job.virtual_storage, frozenset())
        if job.target_node in back or up_to_date_replicas(record) & back:
            due.append(job)
        elif NO_SOURCE in job.last_error and (
            sourceless_before is None
            or job.job_id in sourceless_before
            or job.attempts - max_attempts < NO_SOURCE_EARLY_RETRIES
        ):
            due.append(job)
    return due


def _virtual_storages(cache: RepositoryCache) -> Sequence[str]:
    return sorted({r.virtual_storage for r in cache.records()})
