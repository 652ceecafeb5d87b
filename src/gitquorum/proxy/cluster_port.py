"""``ClusterPort`` over etcd: the repository cache, health consensus and queue.

Reads come from watch-fed caches (no etcd round trip per request). Writes are
one compare-and-swap each, and the proxy waits until its own cache shows a
write it recorded before answering the client, so a client never reads its
own write back from a replica the cache still believes current.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence

from gitquorum import log
from gitquorum.cluster.errors import Conflict, FailedPrecondition, StoreUnavailable
from gitquorum.cluster.membership import HealthView
from gitquorum.cluster.queue import JobType, ReplicationQueue
from gitquorum.cluster.repositories import (
    CreationPlan,
    RepositoryCache,
    RepositoryRecord,
    RepositoryStore,
    valid_primaries,
)
from gitquorum.errors import Unavailable
from gitquorum.proxy.metrics import ProxyMetrics
from gitquorum.proxy.router import RepositoryView
from gitquorum.proxy.routes import MutatorRoute
from gitquorum.proxy.state import Placement, WriteResult

logger = log.get("gitquorum.proxy.cluster")


def view_of(record: RepositoryRecord) -> RepositoryView:
    return RepositoryView(
        repository_id=record.repository_id,
        virtual_storage=record.virtual_storage,
        relative_path=record.relative_path,
        replica_path=record.replica_path,
        primary=record.primary or "",
        generation=record.generation,
        replicas=dict(record.replicas),
        assigned=frozenset(record.assigned),
    )


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
    ) -> None:
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

    def lookup(self, virtual_storage: str, relative_path: str) -> RepositoryView | None:
        self._check_fresh()
        record = self.cache.get(virtual_storage, relative_path)
        return view_of(record) if record is not None else None

    def _check_fresh(self) -> None:
        """Refuse to route from a cache that etcd has not confirmed for too long.

        During an etcd outage the cache keeps serving reads from the last known
        state (writes fail closed: nothing can be recorded), but only for
        ``stale_read_limit`` seconds: meanwhile another proxy that still reaches
        etcd may have moved primaries or recorded writes this one cannot see.
        ``last_sync`` advances with every watch event and progress notification.
        """
        if not self._stale_read_limit:
            return
        age = self._clock() - self.cache.last_sync
        if age > self._stale_read_limit:
            raise Unavailable(
                f"cluster state is stale: no contact with etcd for {age:.0f}s "
                f"(stale_read_limit {self._stale_read_limit:g}s)"
            )

    async def ensure_writable(self, repo: RepositoryView) -> RepositoryView:
        record = self.cache.get_by_id(repo.repository_id)
        if record is None:
            return repo
        consensus = self.health.healthy(repo.virtual_storage)
        if record.primary in valid_primaries(record, consensus):
            return repo
        if self._paused():
            # Operator pause (gitquorum pause) stops lazy failover as well as the leader's.
            raise Unavailable(
                f"repository {repo.relative_path!r} is unavailable: its primary is not a valid "
                "primary and automatic failover is paused (see `gitquorum resume`)"
            )
        candidates = sorted(valid_primaries(record, self.healthy(repo.virtual_storage)))
        draining = self._draining(repo.virtual_storage)
        candidates = [n for n in candidates if n not in draining] or candidates
        if not candidates:
            raise Unavailable(
                f"repository {repo.relative_path!r} is unavailable: no healthy, up-to-date "
                "replica can become primary (see `gitquorum dataloss`)"
            )
        try:
            updated = await self.repositories.set_primary(
                repo.virtual_storage,
                repo.repository_id,
                candidates[0],
                expected=record.primary,
            )
            self.metrics.failovers.labels(repo.virtual_storage, "lazy").inc()
            logger.warning(
                "failover",
                extra=log.fields(
                    repository_id=repo.repository_id,
                    old_primary=record.primary,
                    new_primary=candidates[0],
                    reason="primary not a valid primary at write time",
                ),
            )
        except (Conflict, FailedPrecondition):
            # Someone else (the leader or another proxy) decided first.
            updated = await self.repositories.get(repo.virtual_storage, repo.repository_id)
        await self.cache.wait_for_revision(updated.revision)
        return view_of(updated)

    async def place(self, virtual_storage: str, relative_path: str) -> Placement:
        plan = await self.repositories.plan_creation(
            virtual_storage,
            relative_path,
            nodes=self.nodes(virtual_storage),
            # Drained nodes get no new primaries (they still get replicas), unless no
            # other node is up.
            healthy=(self.healthy(virtual_storage) - self._draining(virtual_storage))
            or self.healthy(virtual_storage),
            replication_factor=self._replication_factors.get(virtual_storage, 0),
        )
        return Placement(plan.repository_id, plan.replica_path, plan.primary, plan.assigned)

    async def record_creation(
        self, virtual_storage: str, relative_path: str, placement: Placement, result: WriteResult
    ) -> None:
        plan = CreationPlan(
            virtual_storage,
            relative_path,
            placement.repository_id,
            placement.primary,
            placement.assigned,
        )
        record = await self.repositories.commit_creation(plan, created_on=result.updated)
        for node in placement.assigned:
            if node not in result.updated:
                await self._enqueue(record, node, JobType.CREATE)
        await self.cache.wait_for_revision(record.revision)

    async def record_write(
        self, virtual_storage: str, route: MutatorRoute, result: WriteResult
    ) -> None:
        if result.updated:
            record = await self.repositories.increment_generation(
                virtual_storage, route.repository_id, result.updated
            )
        else:
            record = await self.repositories.mark_outdated(
                virtual_storage, route.repository_id, result.outdated
            )
        for node in result.outdated:
            try:
                await self._enqueue(record, node, JobType.UPDATE)
            except StoreUnavailable as exc:
                # The write is recorded (the generation change above is durable):
                # failing it now would report a durable write as unavailable. The
                # outdated replica is in the record, so the reconciler queues the
                # job on its next pass (seen during an etcd leader election).
                logger.warning(
                    "replication job not queued; the reconciler will queue it",
                    extra=log.fields(
                        repository_id=record.repository_id, target=node, error=str(exc)
                    ),
                )
        await self.cache.wait_for_revision(record.revision)

    async def _enqueue(self, record: RepositoryRecord, target: str, kind: JobType) -> None:
        await self.queue.enqueue(
            kind,
            record.virtual_storage,
            record.repository_id,
            record.relative_path,
            target,
            source_node=record.primary,
            correlation_id=log.correlation_id.get(),
        )

    async def remove(self, virtual_storage: str, repo: RepositoryView) -> None:
        await self.repositories.delete(virtual_storage, repo.repository_id)
        # Jobs for a repository that no longer exists are dropped by the workers.
        # Wait (bounded) until our own cache forgets it: read-your-writes.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self.cache.wait_until(
                    lambda: self.cache.get_by_id(repo.repository_id) is None
                )
