"""``ClusterPort`` over etcd: the repository cache, health consensus and queue.

Reads come from watch-fed caches (no etcd round trip per request). Writes are
one compare-and-swap each, and the proxy waits until its own cache shows a
write it recorded before answering the client, so a client never reads its
own write back from a replica the cache still believes current.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from gitquorum import log
from gitquorum.cluster.clock_rules import hold_wait
from gitquorum.cluster.decisions import (
    Repair,
    WriteResult,
    choose_primary,
    failover_done,
    prefer_undrained,
    primary_is_valid,
    primary_load,
    record_outcome,
    repairs,
)
from gitquorum.cluster.errors import Conflict, FailedPrecondition, StoreUnavailable
from gitquorum.cluster.history import FAILOVER, History
from gitquorum.cluster.intents import IntentStore, WriteIntent
from gitquorum.cluster.membership import HealthView
from gitquorum.cluster.queue import ReplicationQueue
from gitquorum.cluster.repair_jobs import prepare_repairs, queue_repairs
from gitquorum.cluster.repositories import (
    HOLD_CAP,
    NO_EXTRAS,
    CreationPlan,
    ExtrasUncertain,
    RepositoryCache,
    RepositoryRecord,
    RepositoryStore,
    TxnExtras,
)
from gitquorum.cluster.store_retry import StoreRetry, backoff
from gitquorum.errors import Unavailable
from gitquorum.proxy.metrics import ProxyMetrics
from gitquorum.proxy.routing import MutatorRoute

logger = log.get("gitquorum.proxy.cluster")

# A hold first seen this long ago (this proxy's monotonic clock) has been
# waited for: its entry may be forgotten.
STALE_HOLD = 60.0
# How long a write whose outcome was not recorded keeps trying to mark its
# intent finished (etcd back within it: the verifier may settle at once).
FINISH_DEADLINE = 60.0


class EtcdClusterPort:
    def __init__(
        self,
        nodes: Mapping[str, Sequence[str]],
        replication_factors: Mapping[str, int],
        repositories: RepositoryStore,
        cache: RepositoryCache,
        health: HealthView,
        local_health: Callable[[str, str], bool],
        queue: ReplicationQueue,
        metrics: ProxyMetrics,
        draining: Callable[[str], frozenset[str]] = lambda _vs: frozenset(),
        paused: Callable[[], bool] = lambda: False,
        stale_read_limit: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        history: History | None = None,
        intents: IntentStore | None = None,
        proxy_name: str = "",
        incarnation: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.history = history
        self.intents = intents
        self.proxy_name = proxy_name
        self.incarnation = incarnation
        self._nodes = {vs: list(members) for vs, members in nodes.items()}
        self._replication_factors = dict(replication_factors)
        self.repositories = repositories
        self.cache = cache
        self.health = health
        self.local_health = local_health
        self.queue = queue
        self.metrics = metrics
        self._draining = draining
        self._paused = paused
        self._stale_read_limit = stale_read_limit
        self._clock = clock
        self._finishing: set[asyncio.Task[None]] = set()
        self._intent_retry = StoreRetry(deadline=FINISH_DEADLINE, wait=backoff(0.1, 2.0))
        # (repository id, hold's replica, hold's deadline) -> when first seen.
        self._holds_seen: dict[tuple[int, str | None, float], float] = {}
        metrics.state_age.follow(self.state_age)

    def virtual_storages(self) -> Sequence[str]:
        return list(self._nodes)

    def nodes(self, virtual_storage: str) -> Sequence[str]:
        return self._nodes.get(virtual_storage, [])

    def healthy(self, virtual_storage: str) -> frozenset[str]:
        """Healthy by consensus and reachable from here: a node this proxy cannot
        reach is no use to it even when the other proxies can."""
        return frozenset(
            n for n in self.health.healthy(virtual_storage) if self.local_health(virtual_storage, n)
        )

    def draining(self, virtual_storage: str) -> frozenset[str]:
        return self._draining(virtual_storage)

    def lookup(self, virtual_storage: str, relative_path: str) -> RepositoryRecord | None:
        self._check_fresh()
        return self.cache.get(virtual_storage, relative_path)

    def state_age(self) -> float:
        """Seconds since the repository cache last heard from etcd: a watch
        event or a progress notification (asked for every second), or a load."""
        return max(0.0, self._clock() - self.cache.last_sync)

    def _check_fresh(self) -> None:
        """Refuse to route from a cache that etcd has not confirmed for too long.

        During an etcd outage the cache keeps serving reads from the last known
        state (writes fail closed: nothing can be recorded), but only for
        ``stale_read_limit`` seconds: meanwhile another proxy that still reaches
        etcd may have moved primaries or recorded writes this one cannot see.
        One clock read and a subtraction per request, no etcd round trip.
        """
        if not self._stale_read_limit:
            return
        age = self.state_age()
        if age > self._stale_read_limit:
            raise Unavailable(
                f"cluster state is stale: no contact with etcd for {age:.0f}s "
                f"(stale_read_limit {self._stale_read_limit:g}s)"
            )

    async def ensure_writable(self, repo: RepositoryRecord) -> RepositoryRecord:
        record = self.cache.get_by_id(repo.repository_id)
        if record is None:
            return repo
        if record.hold_for is not None:
            repo = record = await self._wait_for_hold(record)
        vs = record.virtual_storage
        if primary_is_valid(record, self.health.healthy(vs)):
            return repo
        if self._paused():
            # Operator pause (gitquorum pause) stops lazy failover as well as the leader's.
            raise Unavailable(
                f"repository {repo.relative_path!r} is unavailable: its primary is not a valid "
                "primary and automatic failover is paused (see `gitquorum resume`)"
            )
        # The leader's rule, so that both pick the same node when they race;
        # among the nodes this proxy can reach, since it is about to write to it.
        choice = choose_primary(
            record,
            self.healthy(vs),
            load=primary_load(self.cache.records(vs)),
            draining=self._draining(vs),
        )
        if choice is None:
            raise Unavailable(
                f"repository {repo.relative_path!r} is unavailable: no healthy, up-to-date "
                "replica can become primary (see `gitquorum dataloss`)"
            )
        try:
            updated = await self.repositories.set_primary(
                vs, record.repository_id, choice, expected=record.primary
            )
            self.metrics.failovers.labels(vs, "lazy").inc()
            if self.history is not None:
                await self.history.primary_moved(FAILOVER, record, record.primary, choice, "lazy")
            logger.warning(
                "failover",
                extra=log.fields(
                    repository_id=record.repository_id,
                    old_primary=record.primary,
                    new_primary=choice,
                    reason="primary not a valid primary at write time",
                ),
            )
        except (Conflict, FailedPrecondition):
            # Someone else (the leader or another proxy) decided first.
            updated = await self.repositories.get(vs, record.repository_id)
        await self.cache.wait_for_revision(updated.revision)
        return updated

    async def wait_for_failover(
        self, repo: RepositoryRecord, unreachable: str, timeout: float
    ) -> RepositoryRecord | None:
        """Wait (at most ``timeout``) until a write whose primary ``unreachable``
        refused its connection may go on (``decisions.failover_done``): the
        record as it is then, or None when the time ran out. Woken by the
        health consensus (the node seen unhealthy) and by record changes (the
        leader's or another proxy's failover), never by polling."""
        vs, repository_id = repo.virtual_storage, repo.repository_id

        def done() -> bool:
            return failover_done(
                self.cache.get_by_id(repository_id), unreachable, self.health.healthy(vs)
            )

        waits = [
            asyncio.ensure_future(self.cache.wait_until(done)),
            asyncio.ensure_future(self.health.wait_for(lambda _consensus: done())),
        ]
        try:
            finished, _ = await asyncio.wait(
                waits, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        if not finished and not done():
            return None
        return self.cache.get_by_id(repository_id) or repo

    async def _wait_for_hold(self, record: RepositoryRecord) -> RepositoryRecord:
        """Wait while a replica takes its last catch-up copy (``Replicator``).

        Measured on this proxy's own monotonic clock from when it first saw the
        hold, at most ``HOLD_CAP`` (``clock_rules.hold_wait``): the hold's
        wall-clock deadline was written by another proxy, whose clock may run
        minutes ahead or behind, so it is not consulted (a hold left by a worker
        that died costs one wait of at most the cap). The write then goes on
        with the record as it is, joined by the caught-up replica when the hold
        was released by its repair."""
        key = (record.repository_id, record.hold_for, record.hold_until)
        now = time.monotonic()
        first_seen = self._holds_seen.setdefault(key, now)
        if len(self._holds_seen) > 1024:
            # Forget holds seen long ago (each is a few bytes; bounded anyway).
            for old in [k for k, t in self._holds_seen.items() if now - t > STALE_HOLD]:
                del self._holds_seen[old]
        wait = hold_wait(first_seen, now, HOLD_CAP)
        if wait <= 0:
            return record
        repository_id = record.repository_id

        def released() -> bool:
            current = self.cache.get_by_id(repository_id)
            return current is None or current.hold_for is None

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self.cache.wait_until(released)
        self.metrics.write_holds.observe(time.monotonic() - now)
        return self.cache.get_by_id(repository_id) or record

    async def place(self, virtual_storage: str, relative_path: str) -> CreationPlan:
        return await self.repositories.plan_creation(
            virtual_storage,
            relative_path,
            nodes=self.nodes(virtual_storage),
            # Drained nodes get no new primaries (they still get replicas), unless no
            # other node is up.
            healthy=prefer_undrained(
                self.healthy(virtual_storage), self._draining(virtual_storage)
            ),
            replication_factor=self._replication_factors.get(virtual_storage, 0),
        )

    async def record_creation(
        self, virtual_storage: str, relative_path: str, plan: CreationPlan, result: WriteResult
    ) -> None:
        record = await self.repositories.commit_creation(plan, created_on=result.updated)
        # The assigned nodes the creation missed are still missing: they get created.
        await self._queue_repairs(record, repairs(record, self.health.healthy(virtual_storage)))
        await self._until_cached(record.revision)

    def intent_for(self, virtual_storage: str, route: MutatorRoute) -> WriteIntent | None:
        if self.intents is None:
            return None
        return WriteIntent(
            virtual_storage,
            route.repository_id,
            secrets.token_hex(8),
            self.proxy_name,
            self.incarnation(),
            route.generation,
            route.primary,
            tuple(route.participants),
            # Bounded and plain (``log.correlation_from_metadata``).
            correlation_id=log.correlation_id.get(),
            routed_revision=route.revision,
        )

    async def record_intent(self, intent: WriteIntent) -> None:
        assert self.intents is not None
        started = self._clock()
        await self.intents.put(intent)
        self.metrics.intent_latency.observe(max(0.0, self._clock() - started))

    def _settle_intent_later(self, intent: WriteIntent, *, forget: bool) -> None:
        """The outcome is recorded, but the txn that was to settle its intent
        lost its answer: remove it (or mark it finished, if it still stands)
        once etcd answers. Left as it was, a live proxy's intent would hold
        the verifier off for the intent grace; marked finished when it should
        be gone, an acknowledged write would read as one nobody was told of."""
        if forget:
            if self.intents is not None:
                self._later(intent, "removed", self.intents.forget)
        else:
            self._finish_later(intent)

    def _finish_later(self, intent: WriteIntent) -> None:
        """The write is over but its outcome was not recorded (etcd could not
        be reached, or the replicas moved on): mark its intent finished once
        etcd answers, so that the verifier may settle what it left at once.
        Unfinished, the intent of this live proxy would read as a write in
        flight and hold every verdict on the repository back for the intent
        grace (120 s; seen in the fault suite and the etcd chaos test: a
        repository left unconverged past its bound)."""
        if self.intents is not None:
            self._later(intent, "marked finished", self.intents.finish_if_standing)

    def _later(
        self, intent: WriteIntent, what: str, step: Callable[[WriteIntent], Awaitable[object]]
    ) -> None:
        """Run ``step`` on ``intent`` in the background, again while etcd is
        unavailable, for up to ``FINISH_DEADLINE``."""
        task = asyncio.get_running_loop().create_task(
            self._retrying(intent, what, step), name=f"intent-{intent.intent_id}"
        )
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _retrying(
        self, intent: WriteIntent, what: str, step: Callable[[WriteIntent], Awaitable[object]]
    ) -> None:
        try:
            await self._intent_retry(step, intent)
        except StoreUnavailable as exc:
            # The verifier counts it over after the intent grace anyway.
            logger.warning(
                f"intent of a write not {what}",
                extra=log.fields(repository_id=intent.repository_id, error=str(exc)),
            )
        except Exception:
            # A background task: nobody else would see the error.
            logger.exception(
                f"intent of a write not {what}",
                extra=log.fields(repository_id=intent.repository_id),
            )

    async def forget_intent(self, intent: WriteIntent) -> None:
        assert self.intents is not None
        try:
            await self.intents.forget(intent)
        except StoreUnavailable as exc:
            # Harmless while it stands (the verifier removes it once the
            # replicas agree): it only widens what the verifier may settle.
            logger.warning(
                "intent of a write that changed nothing not removed",
                extra=log.fields(repository_id=intent.repository_id, error=str(exc)),
            )

    async def record_write(
        self,
        virtual_storage: str,
        route: MutatorRoute,
        result: WriteResult,
        intent: WriteIntent | None = None,
    ) -> None:
        """Record a write's outcome and the repairs it needs in one etcd txn.

        The new record is computed by ``decisions.record_outcome`` from the
        record as read and the generation the write was routed at, and written
        together with the repair jobs, conditional on the record's revision and
        on the job prefixes read: another outcome, repair or failover that
        lands in between makes the txn fail, and the whole round is read and
        computed again. Raises WriteToOutdatedReplicas when none of the
        replicas that took the write is up to date any more (nothing recorded).

        The write's ``intent`` goes in the same txn when the outcome accounts
        for every replica. It is put again instead when replicas named
        outdated were left up to date (``spared``): they may differ from the
        others by this write, and the verifier needs to know.
        """
        healthy = self.health.healthy(virtual_storage)
        correlation_id = log.correlation_id.get()
        # Whether the last plan kept the intent (finished) or removed it.
        kept = False

        async def plan(current: RepositoryRecord) -> tuple[RepositoryRecord, TxnExtras]:
            outcome = record_outcome(
                current, route.generation, result, routed_at=route.revision, healthy=healthy
            )
            if outcome.spared:
                logger.warning(
                    "write outcome: replicas named outdated left up to date",
                    extra=log.fields(
                        repository_id=current.repository_id,
                        reason=result.reason,
                        started_at=route.generation,
                        generation=current.generation,
                        spared=sorted(outcome.spared),
                        demoted=sorted(outcome.demoted),
                    ),
                )
            needed = repairs(outcome.record, healthy, targets=result.outdated)
            extras = await self._repair_extras(outcome.record, needed, correlation_id)
            if intent is None or self.intents is None:
                return outcome.record, extras
            nonlocal kept
            kept = bool(outcome.spared)
            settled = self.intents.keep_op(intent) if kept else self.intents.forget_op(intent)
            return outcome.record, TxnExtras(extras.compares, (*extras.ops, settled))

        try:
            record = await self.repositories.update_with(virtual_storage, route.repository_id, plan)
        except ExtrasUncertain as exc:
            # The record already said what this outcome says (nothing to
            # record), and a read after the jobs' lost txn answer found it
            # unchanged (a change in between is planned again instead): only
            # the jobs are in doubt. The outdated replicas are in the record,
            # so the reconciler queues them.
            logger.warning(
                "replication jobs may not be queued; the reconciler will queue them",
                extra=log.fields(repository_id=route.repository_id, error=str(exc)),
            )
            record = exc.record
            if intent is not None:
                # The intent's removal (or its keeping, finished) went in the
                # txn whose answer was lost: done again on its own.
                self._settle_intent_later(intent, forget=not kept)
        except (Exception, asyncio.CancelledError):
            if intent is not None:
                self._finish_later(intent)
            raise
        await self._until_cached(record.revision)

    async def _until_cached(self, revision: int) -> None:
        """Wait until the cache shows this proxy's own record change (read-your-
        writes) and export how long that took: the watch lag, which is also what
        another proxy's cache trails this change by."""
        started = self._clock()
        await self.cache.wait_for_revision(revision)
        self.metrics.watch_lag.observe(max(0.0, self._clock() - started))

    async def _repair_extras(
        self, record: RepositoryRecord, needed: tuple[Repair, ...], correlation_id: str
    ) -> TxnExtras:
        """The repair jobs as part of the record's txn. If the queue cannot even be
        read, the record change goes alone: the write must still be recorded, and
        the reconciler queues the jobs of the outdated replicas it then shows."""
        if not needed:
            return NO_EXTRAS
        try:
            jobs = await prepare_repairs(self.queue, record, needed, correlation_id=correlation_id)
        except StoreUnavailable as exc:
            _jobs_not_queued(record, needed, exc)
            return NO_EXTRAS
        return TxnExtras(jobs.compares, jobs.ops)

    async def _queue_repairs(self, record: RepositoryRecord, needed: tuple[Repair, ...]) -> None:
        try:
            await queue_repairs(self.queue, record, needed, correlation_id=log.correlation_id.get())
        except StoreUnavailable as exc:
            # The write is recorded (the record change before is durable):
            # failing it now would report a durable write as unavailable. The
            # outdated replicas are in the record, so the reconciler queues
            # their jobs on its next pass (seen during an etcd leader election).
            _jobs_not_queued(record, needed, exc)

    async def remove(self, virtual_storage: str, repo: RepositoryRecord) -> None:
        await self.repositories.delete(virtual_storage, repo.repository_id)
        # Jobs for a repository that no longer exists are dropped by the workers.
        # Wait (bounded) until our own cache forgets it: read-your-writes.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self.cache.wait_until(
                    lambda: self.cache.get_by_id(repo.repository_id) is None
                )


def _jobs_not_queued(record: RepositoryRecord, needed: tuple[Repair, ...], exc: Exception) -> None:
    logger.warning(
        "replication jobs not queued; the reconciler will queue them",
        extra=log.fields(
            repository_id=record.repository_id,
            targets=sorted(r.target for r in needed),
            error=str(exc),
        ),
    )
