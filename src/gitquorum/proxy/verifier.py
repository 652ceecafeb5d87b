"""The verifier: replicas recorded in etcd must exist on disk and match the primary.

Run by the leader. Each pass takes the replicas verified longest ago (never
verified first), checks each one with ``RepositoryExists`` and
``CalculateChecksum``, and records when it was verified under
``verified/<virtual storage>/<repository id>/<node>``. A replica that is
missing, or up to date yet differing from its primary, is marked outdated and
gets a replication job: the record no longer claims what the disk lacks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import grpc

from gitquorum import log
from gitquorum.cluster.decisions import repairs
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.periodic import run_periodically, warn
from gitquorum.cluster.queue import ReplicationQueue
from gitquorum.cluster.repair_jobs import queue_repairs
from gitquorum.cluster.repositories import RepositoryCache, RepositoryRecord, RepositoryStore
from gitquorum.cluster.store import Store
from gitquorum.gitaly import repository_pb2, repository_pb2_grpc, shared_pb2
from gitquorum.proxy.channels import NodeChannels

logger = log.get("gitquorum.verifier")


class VerificationStore:
    """When each replica was last verified, kept in etcd."""

    def __init__(self, store: Store, keys: Keyspace) -> None:
        self.store = store
        self.keys = keys

    async def record(self, virtual_storage: str, repository_id: int, node: str) -> None:
        await self.store.put(
            self.keys.verification(virtual_storage, repository_id, node),
            str(time.time()).encode(),
        )

    async def verified_at(self, virtual_storage: str, repository_id: int) -> dict[str, float]:
        prefix = self.keys.verifications(virtual_storage, repository_id)
        result = await self.store.range(prefix, prefix=True)
        return {self.keys.parse_verification(kv.key)[2]: float(kv.value) for kv in result.kvs}

    async def all(self) -> dict[tuple[str, int, str], float]:
        result = await self.store.get_prefix(self.keys.verifications())
        return {self.keys.parse_verification(kv.key): float(kv.value) for kv in result.kvs}

    async def clear(
        self, virtual_storage: str, repository_id: int | None = None, node: str | None = None
    ) -> int:
        """Forget verifications so the verifier checks those replicas first."""
        prefix = self.keys.verifications(virtual_storage, repository_id)
        result = await self.store.range(prefix, prefix=True)
        keys = [
            kv.key
            for kv in result.kvs
            if node is None or self.keys.parse_verification(kv.key)[2] == node
        ]
        for key in keys:
            await self.store.delete(key)
        return len(keys)


class Verifier:
    def __init__(
        self,
        repositories: RepositoryStore,
        cache: RepositoryCache,
        queue: ReplicationQueue,
        channels: NodeChannels,
        verification: VerificationStore,
        healthy: Callable[[str], frozenset[str]],
        *,
        interval: float = 300.0,
        batch: int = 25,
        tick: float = 2.0,
        recheck_delay: float = 1.0,
    ) -> None:
        self.recheck_delay = recheck_delay
        self.repositories = repositories
        self.cache = cache
        self.queue = queue
        self.channels = channels
        self.verification = verification
        self.healthy = healthy
        self.interval = interval
        self.batch = batch
        self.tick = tick
        self.passes = 0

    async def run(self) -> None:
        """Leader task: verify continuously until cancelled."""
        # Nothing was due (or the pass failed): rest longer before looking again.
        await run_periodically(
            self.verify_once,
            lambda checked: self.tick if checked else max(self.tick, 5.0),
            errors=(Exception,),
            on_error=warn(logger, "verification pass failed"),
        )

    def _due(
        self, verified: dict[tuple[str, int, str], float], now: float, force: bool
    ) -> list[tuple[RepositoryRecord, str]]:
        due: list[tuple[float, RepositoryRecord, str]] = []
        for record in self.cache.records():
            healthy = self.healthy(record.virtual_storage)
            for node in record.replica_nodes:
                if node not in healthy:
                    continue
                when = verified.get((record.virtual_storage, record.repository_id, node), 0.0)
                if force or now - when >= self.interval:
                    due.append((when, record, node))
        due.sort(key=lambda item: item[0])
        return [(record, node) for _, record, node in due]

    async def verify_once(self, *, force: bool = False, limit: int | None = None) -> int:
        """Verify up to ``limit`` (default: batch) due replicas; returns how many."""
        verified = await self.verification.all()
        due = self._due(verified, time.time(), force)[: limit or self.batch]
        for record, node in due:
            await self._verify(record, node)
        self.passes += 1
        return len(due)

    async def _checksum(self, node: str, replica_path: str) -> str | None:
        """The replica's checksum; None when it does not exist."""
        stub = repository_pb2_grpc.RepositoryServiceStub(self.channels.channel(node))
        repo = shared_pb2.Repository(storage_name=node, relative_path=replica_path)
        metadata = self.channels.forward_metadata(())
        exists = await stub.RepositoryExists(
            repository_pb2.RepositoryExistsRequest(repository=repo), metadata=metadata, timeout=30
        )
        if not exists.exists:
            return None
        response = await stub.CalculateChecksum(
            repository_pb2.CalculateChecksumRequest(repository=repo), metadata=metadata, timeout=60
        )
        return response.checksum

    async def _verify(self, record: RepositoryRecord, node: str) -> None:
        try:
            checksum = await self._checksum(node, record.replica_path)
            reference = None
            up_to_date = record.replica_generation(node) == record.generation
            if (
                checksum is not None
                and up_to_date
                and record.primary
                and record.primary != node
                and record.replica_generation(record.primary) == record.generation
            ):
                reference = await self._checksum(record.primary, record.replica_path)
                if reference != checksum:
                    # A write may be between its votes and its finalizer: look
                    # again once it had time to land everywhere.
                    await asyncio.sleep(self.recheck_delay)
                    checksum = await self._checksum(node, record.replica_path)
                    reference = await self._checksum(record.primary, record.replica_path)
        except grpc.aio.AioRpcError as exc:
            logger.info(
                "replica not verifiable now",
                extra=log.fields(
                    node=node, repository_id=record.repository_id, error=exc.code().name
                ),
            )
            return
        problem = ""
        if checksum is None:
            problem = "replica missing on disk"
        elif reference is not None and reference != checksum and up_to_date:
            # The two checksums were taken at different moments: a write that
            # landed in between makes them differ without anything being wrong.
            # Only a comparison across an unchanged generation is evidence.
            current = self.cache.get_by_id(record.repository_id)
            if current is not None and current.generation == record.generation:
                problem = "replica differs from the primary"
            else:
                return
        if problem:
            # A missing primary is demoted too: failover then picks a replica
            # that really holds the data, or the repository shows as dataloss.
            logger.warning(
                "verification failed",
                extra=log.fields(node=node, repository_id=record.repository_id, problem=problem),
            )
            updated = await self.repositories.mark_outdated(
                record.virtual_storage, record.repository_id, [node]
            )
            needed = repairs(updated, self.healthy(updated.virtual_storage), targets=(node,))
            await queue_repairs(self.queue, updated, needed)
        await self.verification.record(record.virtual_storage, record.repository_id, node)


def nodes_of(nodes: dict[str, Sequence[str]]) -> list[tuple[str, str]]:
    return [(vs, n) for vs, members in nodes.items() for n in members]
