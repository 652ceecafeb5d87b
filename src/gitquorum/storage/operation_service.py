"""OperationService: user-facing reference changes (branches, tags, commits of files).

Each method reads the transaction (if any) from the request metadata first,
so malformed transaction metadata is rejected before anything changes, and
hands it to ``update_refs``, which votes between prepare and commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from gitquorum.gitaly import operations_pb2, operations_pb2_grpc
from gitquorum.storage import op_commit_files, op_refs
from gitquorum.storage.context import NodeContext
from gitquorum.wire.transaction_metadata import Transaction, transaction_from_metadata


def _transaction(context: grpc.aio.ServicerContext) -> Transaction | None:
    return transaction_from_metadata(context.invocation_metadata())


class OperationService(operations_pb2_grpc.OperationServiceServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node

    async def UserCreateBranch(
        self, request: operations_pb2.UserCreateBranchRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.UserCreateBranchResponse:
        return await op_refs.create_branch(self.node, request, _transaction(context))

    async def UserDeleteBranch(
        self, request: operations_pb2.UserDeleteBranchRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.UserDeleteBranchResponse:
        return await op_refs.delete_branch(self.node, request, _transaction(context))

    async def UserCreateTag(
        self, request: operations_pb2.UserCreateTagRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.UserCreateTagResponse:
        return await op_refs.create_tag(self.node, request, _transaction(context))

    async def UserDeleteTag(
        self, request: operations_pb2.UserDeleteTagRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.UserDeleteTagResponse:
        return await op_refs.delete_tag(self.node, request, _transaction(context))

    async def UserCommitFiles(
        self,
        request_iterator: AsyncIterator[operations_pb2.UserCommitFilesRequest],
        context: grpc.aio.ServicerContext,
    ) -> operations_pb2.UserCommitFilesResponse:
        return await op_commit_files.commit_files(
            self.node, request_iterator, _transaction(context)
        )
