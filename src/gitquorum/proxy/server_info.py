"""ServerService on the proxy: what the virtual storages look like to clients."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

import grpc

import gitquorum
from gitquorum.gitaly import server_pb2, server_pb2_grpc
from gitquorum.proxy.channels import NodeChannels


class ServerInfoService(server_pb2_grpc.ServerServiceServicer):
    def __init__(
        self,
        nodes: Mapping[str, Sequence[str]],
        channels: NodeChannels,
        healthy: Callable[[str], frozenset[str]],
    ) -> None:
        self.nodes = nodes
        self.channels = channels
        self.healthy = healthy

    async def ServerInfo(
        self, request: server_pb2.ServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> server_pb2.ServerInfoResponse:
        """One status per virtual storage: readable/writeable when any healthy node is."""

        async def info(node: str) -> server_pb2.ServerInfoResponse | None:
            stub = server_pb2_grpc.ServerServiceStub(self.channels.channel(node))
            try:
                return await stub.ServerInfo(
                    server_pb2.ServerInfoRequest(),
                    metadata=self.channels.forward_metadata(()),
                    timeout=5,
                )
            except grpc.aio.AioRpcError:
                return None

        statuses = []
        git_version = ""
        for vs, members in self.nodes.items():
            healthy = [n for n in members if n in self.healthy(vs)]
            answers = await asyncio.gather(*(info(n) for n in healthy))
            readable = writeable = False
            for answer in answers:
                if answer is None:
                    continue
                git_version = git_version or answer.git_version
                for status in answer.storage_statuses:
                    readable |= status.readable
                    writeable |= status.writeable
            statuses.append(
                server_pb2.ServerInfoResponse.StorageStatus(
                    storage_name=vs, readable=readable, writeable=writeable
                )
            )
        return server_pb2.ServerInfoResponse(
            server_version=gitquorum.__version__,
            git_version=git_version,
            storage_statuses=statuses,
        )
