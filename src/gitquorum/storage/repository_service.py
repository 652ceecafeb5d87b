"""RepositoryService (placeholder until implemented)."""

from __future__ import annotations

from gitquorum.gitaly import repository_pb2_grpc
from gitquorum.storage.context import NodeContext


class RepositoryService(repository_pb2_grpc.RepositoryServiceServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node
