"""BlobService (placeholder until implemented)."""

from __future__ import annotations

from gitquorum.gitaly import blob_pb2_grpc
from gitquorum.storage.context import NodeContext


class BlobService(blob_pb2_grpc.BlobServiceServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node
