"""The real proxy handler on a grpc.aio server, in front of fake node servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry

from gitquorum.proxy.channels import NodeChannels
from gitquorum.proxy.cluster_port import ClusterPort
from gitquorum.proxy.handler import ProxyHandler
from gitquorum.proxy.metrics import ProxyMetrics
from gitquorum.proxy.read_health import ReadHealth
from gitquorum.proxy.vote_counting import TransactionManager
from gitquorum.wire.registry import MethodRegistry

REGISTRY = MethodRegistry.from_descriptors()


def unary_method(method: str, behaviour: Callable[..., object]) -> grpc.GenericRpcHandler:
    """A node server's handler that answers one unary ``method`` with ``behaviour``
    (request bytes, context -> response bytes) and nothing else."""

    class Handler(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            if details.method != method:
                return None
            return grpc.unary_unary_rpc_method_handler(behaviour)

    return Handler()


@dataclass
class RunningProxy:
    channel: grpc.aio.Channel  # to the proxy
    servers: dict[str, grpc.aio.Server]  # the nodes', by name
    channels: NodeChannels  # the proxy's, to the nodes
    addresses: dict[str, str]  # the nodes', by name


@asynccontextmanager
async def running_proxy(
    node_handler: Callable[[str], grpc.GenericRpcHandler],
    names: Sequence[str],
    cluster: ClusterPort,
    *,
    transactions: TransactionManager | None = None,
    metrics: ProxyMetrics | None = None,
    read_health: ReadHealth | None = None,
    write_timeout: float = 5.0,
) -> AsyncIterator[RunningProxy]:
    """One node server per name (``node_handler(name)`` answers it) and the
    handler in front of them; the nodes vote in-process."""
    servers: dict[str, grpc.aio.Server] = {}
    addresses: dict[str, str] = {}
    channels: NodeChannels | None = None
    front: grpc.aio.Server | None = None
    channel: grpc.aio.Channel | None = None
    try:
        for name in names:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers([node_handler(name)])
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            servers[name] = server
            addresses[name] = f"127.0.0.1:{port}"
        channels = NodeChannels(addresses)
        handler = ProxyHandler(
            registry=REGISTRY,
            cluster=cluster,
            channels=channels,
            # ``is None``: an empty manager is falsy (it has a length).
            transactions=(
                TransactionManager(vote_timeout=5.0) if transactions is None else transactions
            ),
            vote_address=lambda: "127.0.0.1:1",
            metrics=ProxyMetrics(CollectorRegistry()) if metrics is None else metrics,
            write_timeout=write_timeout,
            read_health=read_health,
        )
        front = grpc.aio.server()
        front.add_generic_rpc_handlers([handler])
        port = front.add_insecure_port("127.0.0.1:0")
        await front.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        yield RunningProxy(channel, servers, channels, addresses)
    finally:
        if channel is not None:
            await channel.close()
        if front is not None:
            await front.stop(None)
        if channels is not None:
            await channels.close()
        for server in servers.values():
            await server.stop(None)
