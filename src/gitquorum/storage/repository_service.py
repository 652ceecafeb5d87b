"""RepositoryService: whole-repository operations (methods in proto order).

Each method validates the address, then hands the work to a ``repo_*``
module with one job; errors are raised as ``gitquorum.errors`` exceptions and
mapped to statuses by the server's interceptor.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from gitquorum.errors import NotFound
from gitquorum.gitaly import repository_pb2, repository_pb2_grpc
from gitquorum.storage.context import NodeContext
from gitquorum.storage.locator import RepoPath, is_repository
from gitquorum.storage.replication_fence import claim_file
from gitquorum.storage.repo_bundle import create_from_bundle, stream_bundle
from gitquorum.storage.repo_checksum import calculate_checksum
from gitquorum.storage.repo_create import create_repository, remove_repository
from gitquorum.storage.repo_info import disk_usage_kib, repository_info
from gitquorum.storage.repo_optimize import optimize
from gitquorum.storage.repo_replicate import Replication
from gitquorum.storage.repo_snapshot import stream_snapshot
from gitquorum.storage.repo_writeref import write_ref
from gitquorum.wire.replication_claim import claim_from_metadata
from gitquorum.wire.transaction_metadata import transaction_from_metadata


class RepositoryService(repository_pb2_grpc.RepositoryServiceServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node

    async def RepositoryExists(
        self, request: repository_pb2.RepositoryExistsRequest, context: grpc.aio.ServicerContext
    ) -> repository_pb2.RepositoryExistsResponse:
        # Address errors still fail; a missing or broken repository is just "no".
        repo = self.node.locator.locate(request.repository)
        return repository_pb2.RepositoryExistsResponse(exists=is_repository(repo.path))

    async def RepositorySize(
        self, request: repository_pb2.RepositorySizeRequest, context: grpc.aio.ServicerContext
    ) -> repository_pb2.RepositorySizeResponse:
        repo = self.node.locator.repository(request.repository)
        size = await asyncio.to_thread(disk_usage_kib, repo.path)
        return repository_pb2.RepositorySizeResponse(size=size)

    async def RepositoryInfo(
        self, request: repository_pb2.RepositoryInfoRequest, context: grpc.aio.ServicerContext
    ) -> repository_pb2.RepositoryInfoResponse:
        repo = self.node.locator.repository(request.repository)
        return await asyncio.to_thread(repository_info, repo.path)

    async def OptimizeRepository(
        self, request: repository_pb2.OptimizeRepositoryRequest, context: grpc.aio.ServicerContext
    ) -> repository_pb2.OptimizeRepositoryResponse:
        repo = self.node.locator.repository(request.repository)
        await optimize(self.node, repo, request.strategy)
        return repository_pb2.OptimizeRepositoryResponse()

    async def WriteRef(
        self, request: repository_pb2.WriteRefRequest, context: grpc.aio.ServicerContext
    ) -> repository_pb2.WriteRefResponse:
        tx = transaction_from_metadata(context.invocation_metadata())
        await write_ref(self.node, request, tx)
        return repository_pb2.WriteRefResponse()

    async def CreateRepository(
        self, request: repository_pb2.CreateRepositoryRequest, context: grpc.aio.ServicerContext
    ) -> repository_pb2.CreateRepositoryResponse:
        tx = transaction_from_metadata(context.invocation_metadata())
        await create_repository(self.node, request, tx)
        return repository_pb2.CreateRepositoryResponse()

    async def CreateBundle(
        self, request: repository_pb2.CreateBundleRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[repository_pb2.CreateBundleResponse]:
        repo = self.node.locator.repository(request.repository)
        async for chunk in stream_bundle(repo):
            yield repository_pb2.CreateBundleResponse(data=chunk)

    async def CreateRepositoryFromBundle(
        self,
        request_iterator: AsyncIterator[repository_pb2.CreateRepositoryFromBundleRequest],
        context: grpc.aio.ServicerContext,
    ) -> repository_pb2.CreateRepositoryFromBundleResponse:
        tx = transaction_from_metadata(context.invocation_metadata())
        await create_from_bundle(self.node, request_iterator, tx)
        return repository_pb2.CreateRepositoryFromBundleResponse()

    async def CalculateChecksum(
        self, request: repository_pb2.CalculateChecksumRequest, context: grpc.aio.ServicerContext
    ) -> repository_pb2.CalculateChecksumResponse:
        repo = self.node.locator.locate(request.repository)
        if not (repo.path.exists() or repo.path.is_symlink()):
            raise NotFound("repository not found")
        # Present but broken is DataLoss here, not FailedPrecondition (Gitaly).
        checksum = await calculate_checksum(repo)
        return repository_pb2.CalculateChecksumResponse(checksum=checksum)

    async def GetSnapshot(
        self, request: repository_pb2.GetSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[repository_pb2.GetSnapshotResponse]:
        repo = self.node.locator.repository(request.repository)
        async for chunk in stream_snapshot(repo.path):
            yield repository_pb2.GetSnapshotResponse(data=chunk)

    async def RemoveRepository(
        self, request: repository_pb2.RemoveRepositoryRequest, context: grpc.aio.ServicerContext
    ) -> repository_pb2.RemoveRepositoryResponse:
        tx = transaction_from_metadata(context.invocation_metadata())
        await remove_repository(self.node, request, tx)
        target = self.node.locator.locate(request.repository)
        await self.node.replication_fence.forget(str(target.path), self._claim_file(target))
        return repository_pb2.RemoveRepositoryResponse()

    def _claim_file(self, target: RepoPath) -> Path:
        directory = self.node.locator.internal_dir(target.storage, "replication-claims")
        return claim_file(directory, target.relative_path)

    async def ReplicateRepository(
        self, request: repository_pb2.ReplicateRepositoryRequest, context: grpc.aio.ServicerContext
    ) -> repository_pb2.ReplicateRepositoryResponse:
        metadata = context.invocation_metadata()
        tx = transaction_from_metadata(metadata)
        replication = Replication(self.node, request, metadata, tx)
        claim = claim_from_metadata(metadata)
        target = replication.target
        record = self._claim_file(target)
        async with self.node.replication_fence.copy(str(target.path), claim, record):
            await replication.run()
        return repository_pb2.ReplicateRepositoryResponse()
