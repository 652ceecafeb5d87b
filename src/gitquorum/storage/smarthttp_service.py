"""SmartHTTPService (placeholder until implemented)."""

from __future__ import annotations

from gitquorum.gitaly import smarthttp_pb2_grpc
from gitquorum.storage.context import NodeContext


class SmartHTTPService(smarthttp_pb2_grpc.SmartHTTPServiceServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node
