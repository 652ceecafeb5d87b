"""Assemble and run a storage node: gRPC services, health, metrics, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import importlib
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from gitquorum import log, tls
from gitquorum.authn import HEALTH_METHODS, NODE_TOKEN_ENV, AuthInterceptor, load_secrets
from gitquorum.config import NodeConfig, parse_address
from gitquorum.limits import Admission
from gitquorum.metrics import MetricsServer, RpcMetrics
from gitquorum.storage import git
from gitquorum.storage.catfile import CatFileCache
from gitquorum.storage.context import NodeContext
from gitquorum.storage.limiter import LimitInterceptor
from gitquorum.storage.locator import StorageLocator
from gitquorum.storage.transaction import VoteCoordinator
from gitquorum.wire.interceptor import ErrorInterceptor
from gitquorum.wire.options import server_options
from gitquorum.wire.registry import MethodRegistry

logger = log.get("gitquorum.node")

# (module under gitquorum.storage, servicer class, registration function name)
SERVICES: tuple[tuple[str, str, str], ...] = (
    ("repository_service", "RepositoryService", "add_RepositoryServiceServicer_to_server"),
    ("ref_service", "RefService", "add_RefServiceServicer_to_server"),
    ("commit_service", "CommitService", "add_CommitServiceServicer_to_server"),
    ("blob_service", "BlobService", "add_BlobServiceServicer_to_server"),
    ("operation_service", "OperationService", "add_OperationServiceServicer_to_server"),
    ("smarthttp_service", "SmartHTTPService", "add_SmartHTTPServiceServicer_to_server"),
    ("ssh_service", "SSHService", "add_SSHServiceServicer_to_server"),
    ("server_service", "ServerService", "add_ServerServiceServicer_to_server"),
)
_PB2_GRPC = {
    "RepositoryService": "repository_pb2_grpc",
    "RefService": "ref_pb2_grpc",
    "CommitService": "commit_pb2_grpc",
    "BlobService": "blob_pb2_grpc",
    "OperationService": "operations_pb2_grpc",
    "SmartHTTPService": "smarthttp_pb2_grpc",
    "SSHService": "ssh_pb2_grpc",
    "ServerService": "server_pb2_grpc",
}


@dataclass
class NodeServer:
    config: NodeConfig
    registry: CollectorRegistry
    # How long one transaction vote may wait for the proxy's answer.
    vote_timeout: float = 60.0
    # Node secrets accepted from callers; None: from the configuration (or
    # $GITQUORUM_NODE_TOKEN). Empty: no authentication.
    secrets: tuple[bytes, ...] | None = None

    def __post_init__(self) -> None:
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.metrics_port = 0
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else None
        self.context: NodeContext | None = None
        self._metrics_server: MetricsServer | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        storages = {s.name: s.path for s in self.config.storages}
        for root in storages.values():
            Path(root).mkdir(parents=True, exist_ok=True)
        # Outgoing calls (votes to a tls:// proxy, replication from a tls://
        # node) verify with the configured CA and present the node's certificate.
        client_tls = tls.client_tls(self.config.tls)
        voting = VoteCoordinator(vote_timeout=self.vote_timeout, client_tls=client_tls)
        await voting.start()
        self.context = NodeContext(
            locator=StorageLocator(storages),
            catfile=CatFileCache(),
            voting=voting,
            git_version=await git.version(),
            client_tls=client_tls,
        )
        rpc_metrics = RpcMetrics(self.registry, "node")
        secrets = self.secrets
        if secrets is None:
            secrets = load_secrets(self.config.auth_token_file, NODE_TOKEN_ENV)
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if secrets:
            # First: a refused call reaches no handler and no other interceptor.
            interceptors.append(AuthInterceptor(secrets, HEALTH_METHODS, role="node"))
        # The op types the proxy routes by: metric labels and per-repository limits.
        registry = MethodRegistry.from_descriptors()
        self.server = grpc.aio.server(
            # LimitInterceptor inside ErrorInterceptor: its RESOURCE_EXHAUSTED is
            # mapped and logged like any other error (docs/limits.md).
            interceptors=[
                *interceptors,
                ErrorInterceptor(rpc_metrics, registry),
                LimitInterceptor(Admission(self.config.limits, what="node"), registry),
            ],
            options=server_options(self.config.limits.max_message_size),
        )
        for module_name, class_name, add_name in SERVICES:
            module = importlib.import_module(f"gitquorum.storage.{module_name}")
            servicer = getattr(module, class_name)(self.context)
            grpc_module = importlib.import_module(f"gitquorum.gitaly.{_PB2_GRPC[class_name]}")
            getattr(grpc_module, add_name)(servicer, self.server)
        health_servicer = _HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        server_tls = tls.server_tls(self.config.tls)
        if server_tls is None:
            self.port = self.server.add_insecure_port(self.config.listen)
        else:
            self.port = self.server.add_secure_port(self.config.listen, server_tls.credentials())
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        await self.server.start()
        host, port = parse_address(self.config.metrics_listen)
        self._metrics_server = MetricsServer(self.registry, host, port)
        self.metrics_port = await self._metrics_server.start()
        logger.info(
            "node serving",
            extra=log.fields(
                listen=self.address,
                metrics_port=self.metrics_port,
                storages=sorted(storages),
                # Whether, never with what: secrets stay out of logs.
                authentication=bool(secrets),
                tls=server_tls is not None,
                client_certificates=bool(server_tls and server_tls.client_ca_file),
            ),
        )

    @property
    def address(self) -> str:
        host, _ = parse_address(self.config.listen)
        return f"{host}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight RPCs finish within the grace period, then close."""
        if self.server is not None:
            await self.server.stop(self.config.graceful_timeout if grace is None else grace)
        if self._metrics_server is not None:
            await self._metrics_server.close()
        if self.context is not None:
            self.context.catfile.close()
            await self.context.voting.close()
        self._stopped.set()

    async def wait_closed(self) -> None:
        await self._stopped.wait()


class _HealthServicer(health_pb2_grpc.HealthServicer):
    """SERVING while the process runs; the proxy's health checks call this."""

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def serve(
    config: NodeConfig,
    ready_file: Path | None = None,
    vote_timeout: float = 60.0,
    secrets: tuple[bytes, ...] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then drain gracefully."""
    node = NodeServer(config, CollectorRegistry(), vote_timeout, secrets)
    await node.start()
    if ready_file is not None:
        ready_file.write_text(f"{node.address} {node.metrics_port}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("draining", extra=log.fields(grace_seconds=config.graceful_timeout))
    await node.stop()
