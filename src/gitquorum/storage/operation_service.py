"""OperationService (placeholder until implemented)."""

from __future__ import annotations

from gitquorum.gitaly import operations_pb2_grpc
from gitquorum.storage.context import NodeContext


class OperationService(operations_pb2_grpc.OperationServiceServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node
