"""SSHService (placeholder until implemented)."""

from __future__ import annotations

from gitquorum.gitaly import ssh_pb2_grpc
from gitquorum.storage.context import NodeContext


class SSHService(ssh_pb2_grpc.SSHServiceServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node
