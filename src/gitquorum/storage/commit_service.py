"""CommitService (placeholder until implemented)."""

from __future__ import annotations

from gitquorum.gitaly import commit_pb2_grpc
from gitquorum.storage.context import NodeContext


class CommitService(commit_pb2_grpc.CommitServiceServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node
