"""ServerService (placeholder until implemented)."""

from __future__ import annotations

from gitquorum.gitaly import server_pb2_grpc
from gitquorum.storage.context import NodeContext


class ServerService(server_pb2_grpc.ServerServiceServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node
