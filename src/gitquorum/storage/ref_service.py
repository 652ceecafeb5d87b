"""RefService (placeholder until implemented)."""

from __future__ import annotations

from gitquorum.gitaly import ref_pb2_grpc
from gitquorum.storage.context import NodeContext


class RefService(ref_pb2_grpc.RefServiceServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node
