"""PraefectInfoService: cluster information and repair, answered by the proxy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import grpc
from google.protobuf import timestamp_pb2

from gitquorum.cluster.decisions import repairs
from gitquorum.cluster.queue import ReplicationQueue
from gitquorum.cluster.repair_jobs import queue_repairs
from gitquorum.cluster.reports import dataloss, replica_statuses
from gitquorum.cluster.repositories import (
    MISSING,
    RepositoryCache,
    RepositoryRecord,
    RepositoryStore,
)
from gitquorum.errors import InvalidArgument, NotFound
from gitquorum.gitaly import (
    praefect_pb2,
    praefect_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
)
from gitquorum.proxy.channels import NodeChannels
from gitquorum.proxy.verifier import VerificationStore

_BATCH = 100


class PraefectInfoService(praefect_pb2_grpc.PraefectInfoServiceServicer):
    def __init__(
        self,
        nodes: Mapping[str, Sequence[str]],
        repositories: RepositoryStore,
        cache: RepositoryCache,
        queue: ReplicationQueue,
        channels: NodeChannels,
        healthy: Callable[[str], frozenset[str]],
        verification: VerificationStore,
    ) -> None:
        self.nodes = nodes
        self.repositories = repositories
        self.cache = cache
        self.queue = queue
        self.channels = channels
        self.healthy = healthy
        self.verification = verification

    def _virtual_storage(self, name: str) -> str:
        if not name:
            raise InvalidArgument("virtual storage not set")
        if name not in self.nodes:
            raise InvalidArgument(f"virtual storage not found: {name!r}")
        return name

    def _record(self, virtual_storage: str, relative_path: str) -> RepositoryRecord:
        self._virtual_storage(virtual_storage)
        if not relative_path:
            raise InvalidArgument("relative path not set")
        record = self.cache.get(virtual_storage, relative_path)
        if record is None:
            raise NotFound("repository not found")
        return record

    async def RepositoryReplicas(
        self, request: praefect_pb2.RepositoryReplicasRequest, context: grpc.aio.ServicerContext
    ) -> praefect_pb2.RepositoryReplicasResponse:
        record = self._record(request.repository.storage_name, request.repository.relative_path)
        nodes = list(dict.fromkeys((*record.assigned, *record.replica_nodes)))

        async def details(node: str) -> praefect_pb2.RepositoryReplicasResponse.RepositoryDetails:
            repo = shared_pb2.Repository(storage_name=node, relative_path=record.replica_path)
            stub = repository_pb2_grpc.RepositoryServiceStub(self.channels.channel(node))
            checksum = ""
            try:
                response = await stub.CalculateChecksum(
                    repository_pb2.CalculateChecksumRequest(repository=repo),
                    metadata=self.channels.forward_metadata(()),
                    timeout=30,
                )
                checksum = response.checksum
            except grpc.aio.AioRpcError:
                checksum = ""  # unreachable or missing replica: no checksum
            return praefect_pb2.RepositoryReplicasResponse.RepositoryDetails(
                repository=repo, checksum=checksum
            )

        results = await asyncio.gather(*(details(n) for n in nodes))
        by_node = dict(zip(nodes, results, strict=True))
        primary = by_node.get(record.primary or "")
        return praefect_pb2.RepositoryReplicasResponse(
            primary=primary,
            replicas=[d for n, d in by_node.items() if n != record.primary],
        )

    async def Dataloss(
        self, request: praefect_pb2.DatalossRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[praefect_pb2.DatalossResponse]:
        vs = self._virtual_storage(request.virtual_storage)
        entries = dataloss(
            self.cache.records(vs),
            {vs: self.healthy(vs)},
            include_partially_replicated=request.include_partially_replicated,
        )
        message = praefect_pb2.DatalossResponse.Repository
        batch: list[praefect_pb2.DatalossResponse.Repository] = []
        for entry in entries:
            batch.append(
                message(
                    relative_path=entry.record.relative_path,
                    primary=entry.record.primary or "",
                    unavailable=entry.unavailable,
                    storages=[
                        message.Storage(
                            name=s.node,
                            behind_by=s.behind_by,
                            assigned=s.assigned,
                            healthy=s.healthy,
                            valid_primary=s.valid_primary,
                        )
                        for s in entry.replicas
                    ],
                )
            )
            if len(batch) >= _BATCH:
                yield praefect_pb2.DatalossResponse(repositories=batch)
                batch = []
        if batch or not entries:
            yield praefect_pb2.DatalossResponse(repositories=batch)

    async def SetAuthoritativeStorage(
        self,
        request: praefect_pb2.SetAuthoritativeStorageRequest,
        context: grpc.aio.ServicerContext,
    ) -> praefect_pb2.SetAuthoritativeStorageResponse:
        record = self._record(request.virtual_storage, request.relative_path)
        node = request.authoritative_storage
        if node not in self.nodes[request.virtual_storage]:
            raise InvalidArgument(f"unknown authoritative storage {node!r}")
        updated = await self.repositories.set_authoritative(
            request.virtual_storage, record.repository_id, node
        )
        # ``node`` is now the only up-to-date replica: every other one is repaired from it.
        needed = repairs(updated, self.healthy(updated.virtual_storage))
        await queue_repairs(self.queue, updated, needed)
        await self.cache.wait_for_revision(updated.revision)
        return praefect_pb2.SetAuthoritativeStorageResponse()

    async def MarkUnverified(
        self, request: praefect_pb2.MarkUnverifiedRequest, context: grpc.aio.ServicerContext
    ) -> praefect_pb2.MarkUnverifiedResponse:
        selector = request.WhichOneof("selector")
        if selector == "repository_id":
            record = self.cache.get_by_id(request.repository_id)
            if record is None:
                raise NotFound("repository not found")
            marked = await self.verification.clear(record.virtual_storage, record.repository_id)
        elif selector == "virtual_storage":
            vs = self._virtual_storage(request.virtual_storage)
            marked = await self.verification.clear(vs)
        elif selector == "storage":
            vs = self._virtual_storage(request.storage.virtual_storage)
            if request.storage.storage not in self.nodes[vs]:
                raise InvalidArgument(f"unknown storage {request.storage.storage!r}")
            marked = await self.verification.clear(vs, node=request.storage.storage)
        else:
            raise InvalidArgument("no selector given")
        return praefect_pb2.MarkUnverifiedResponse(replicas_marked=marked)

    async def SetReplicationFactor(
        self,
        request: praefect_pb2.SetReplicationFactorRequest,
        context: grpc.aio.ServicerContext,
    ) -> praefect_pb2.SetReplicationFactorResponse:
        record = self._record(request.virtual_storage, request.relative_path)
        updated = await self.repositories.set_replication_factor(
            request.virtual_storage,
            record.repository_id,
            request.replication_factor,
            nodes=self.nodes[request.virtual_storage],
        )
        # Newly assigned nodes get their replica (from the primary while it can serve).
        needed = repairs(updated, self.healthy(updated.virtual_storage))
        await queue_repairs(self.queue, updated, needed)
        await self.cache.wait_for_revision(updated.revision)
        return praefect_pb2.SetReplicationFactorResponse(storages=list(updated.assigned))

    async def GetRepositoryMetadata(
        self,
        request: praefect_pb2.GetRepositoryMetadataRequest,
        context: grpc.aio.ServicerContext,
    ) -> praefect_pb2.GetRepositoryMetadataResponse:
        query = request.WhichOneof("query")
        if query == "repository_id":
            found = self.cache.get_by_id(request.repository_id)
            if found is None:
                raise NotFound("repository not found")
            record = found
        elif query == "path":
            record = self._record(request.path.virtual_storage, request.path.relative_path)
        else:
            raise InvalidArgument("no query given")
        healthy = self.healthy(record.virtual_storage)
        verified = await self.verification.verified_at(record.virtual_storage, record.repository_id)
        replicas = []
        for status in replica_statuses(record, healthy):
            replica = praefect_pb2.GetRepositoryMetadataResponse.Replica(
                storage=status.node,
                assigned=status.assigned,
                generation=status.generation if status.generation > MISSING else -1,
                healthy=status.healthy,
                valid_primary=status.valid_primary,
            )
            when = verified.get(status.node)
            if when is not None:
                stamp = timestamp_pb2.Timestamp()
                stamp.FromNanoseconds(int(when * 1e9))
                replica.verified_at.CopyFrom(stamp)
            replicas.append(replica)
        return praefect_pb2.GetRepositoryMetadataResponse(
            repository_id=record.repository_id,
            virtual_storage=record.virtual_storage,
            relative_path=record.relative_path,
            replica_path=record.replica_path,
            primary=record.primary or "",
            generation=record.generation,
            replicas=replicas,
        )
