"""Assemble and run a storage node: gRPC services, health, metrics, drain on SIGTERM."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from gitquorum import log, tls
from gitquorum.authentication import HEALTH_METHODS, NODE_TOKEN_ENV, AuthInterceptor, load_secrets
from gitquorum.config import NodeConfig, parse_address
from gitquorum.lifecycle import Assembled, ListenError, bind_port, run_until_signalled
from gitquorum.limits import Admission, worker_limits
from gitquorum.metrics import MetricsServer, RpcMetrics
from gitquorum.storage import git
from gitquorum.storage.catfile import CatFileCache
from gitquorum.storage.context import NodeContext
from gitquorum.storage.limiter import limited_handler
from gitquorum.storage.locator import StorageLocator
from gitquorum.storage.replication_fence import ReplicationFence
from gitquorum.storage.voting import VoteCoordinator
from gitquorum.wire.finishing import RpcCall, op_label
from gitquorum.wire.interceptor import finishing_handler
from gitquorum.wire.options import server_options
from gitquorum.wire.registry import MethodRegistry
from gitquorum.worker_pool import SINGLE, WorkerSlot

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
class NodeServer(Assembled):
    """One storage node: start() opens everything in order, close() releases it in reverse.

    Each step of start() registers the cleanup of what it opened on one
    ``AsyncExitStack``, so a start that fails half-way (a port already taken)
    closes the vote listener, the cat-file processes and the gRPC server
    before the error propagates. The last entry is the graceful drain.
    """

    config: NodeConfig
    registry: CollectorRegistry
    # How long one transaction vote may wait for the proxy's answer.
    vote_timeout: float = 60.0
    # Node secrets accepted from callers; None: from the configuration (or
    # $GITQUORUM_NODE_TOKEN). Empty: no authentication.
    secrets: tuple[bytes, ...] | None = None
    # Which of the node's worker processes this is (docs/workers.md). Pooled:
    # the port is shared (SO_REUSEPORT), the per-repository limits are split,
    # the replication fence is shared through the disk, metrics go to the parent.
    worker: WorkerSlot = SINGLE

    def __post_init__(self) -> None:
        super().__init__(self.config.graceful_timeout)
        self.port = 0
        self.metrics_port = 0
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else None
        # Opened by start(); None until then.
        self.server: grpc.aio.Server | None = None
        self.context: NodeContext | None = None
        self._metrics_server: MetricsServer | None = None
        self.auth: AuthInterceptor | None = None
        self.tls: tls.ReloadableServerTLS | None = None

    def reload(self) -> None:
        """SIGHUP: re-read the token file and the TLS certificate, key and client CA.

        A secret from ``$GITQUORUM_NODE_TOKEN`` was dropped from the environment
        at start and stays as it was. Raises (ConfigError) without changing
        anything when a file cannot be used.
        """
        secrets = None
        if self.auth is not None and self.config.auth_token_file:
            secrets = load_secrets(self.config.auth_token_file)
        if self.tls is not None:
            self.tls.reload()
        if secrets is not None and self.auth is not None:
            self.auth.replace_secrets(secrets)

    async def start(self) -> None:
        """Open everything in order; on failure close what was opened, then re-raise."""
        storages = {s.name: s.path for s in self.config.storages}
        for root in storages.values():
            Path(root).mkdir(parents=True, exist_ok=True)
        secrets = self.secrets
        if secrets is None:
            secrets = load_secrets(self.config.auth_token_file, NODE_TOKEN_ENV)
        server_tls = tls.server_tls(self.config.tls)
        self.tls = tls.ReloadableServerTLS(server_tls) if server_tls is not None else None
        async with contextlib.AsyncExitStack() as stack:
            self.context = await self._open_context(stack, storages)
            self.server = self._open_server(stack, secrets)
            self.port = bind_port(
                self.server,
                self.config.listen,
                self.tls.credentials() if self.tls is not None else None,
            )
            await self.server.start()
            await self._open_metrics(stack)
            # Last in, first out: close() drains before anything else is released.
            stack.push_async_callback(self._drain)
            self._stack = stack.pop_all()
        logger.info(
            "node serving",
            extra=log.fields(
                listen=self.address,
                metrics_port=self.metrics_port,
                worker=self.worker.index,
                workers=self.worker.count,
                storages=sorted(storages),
                # Whether, never with what: secrets stay out of logs.
                authentication=bool(secrets),
                tls=server_tls is not None,
                client_certificates=bool(server_tls and server_tls.client_ca_file),
            ),
        )

    async def _open_context(
        self, stack: contextlib.AsyncExitStack, storages: dict[str, Path]
    ) -> NodeContext:
        """The vote listener and the cat-file cache every service shares."""
        # Outgoing calls (votes to a tls:// proxy, replication from a tls://
        # node) verify with the configured CA and present the node's certificate.
        client_tls = tls.client_tls(self.config.tls)
        voting = VoteCoordinator(vote_timeout=self.vote_timeout, client_tls=client_tls)
        stack.push_async_callback(voting.close)
        await voting.start()
        catfile = CatFileCache()
        stack.callback(catfile.close)
        return NodeContext(
            locator=StorageLocator(storages),
            catfile=catfile,
            voting=voting,
            git_version=await git.version(),
            client_tls=client_tls,
            # Workers take turns on a replica through the claim files' locks.
            replication_fence=ReplicationFence(across_processes=self.worker.pooled),
        )

    def _open_server(
        self, stack: contextlib.AsyncExitStack, secrets: tuple[bytes, ...]
    ) -> grpc.aio.Server:
        """The gRPC server with every service registered, not yet bound."""
        assert self.context is not None
        rpc_metrics = RpcMetrics(self.registry, "node")
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if secrets:
            # The only interceptor: a refused call reaches no handler, log line or limit.
            self.auth = AuthInterceptor(secrets, HEALTH_METHODS, role="node")
            interceptors.append(self.auth)
        # The op types the proxy routes by: metric labels and per-repository limits.
        registry = MethodRegistry.from_descriptors()
        self.server = grpc.aio.server(
            interceptors=interceptors or None,
            options=server_options(
                self.config.limits.max_message_size, reuse_port=self.worker.pooled
            ),
        )
        # Without grace: the drain step, above it on the stack, is the graceful part.
        stack.push_async_callback(self.server.stop, 0)
        wrap = _Finishing(
            rpc_metrics,
            registry,
            Admission(
                worker_limits(self.config.limits, self.worker.count, self.worker.index),
                what="node",
            ),
        )
        for module_name, class_name, add_name in SERVICES:
            module = importlib.import_module(f"gitquorum.storage.{module_name}")
            servicer = getattr(module, class_name)(self.context)
            grpc_module = importlib.import_module(f"gitquorum.gitaly.{_PB2_GRPC[class_name]}")
            getattr(grpc_module, add_name)(servicer, wrap)
        health_pb2_grpc.add_HealthServicer_to_server(_HealthServicer(), wrap)
        wrap.register(self.server)
        return self.server

    async def _open_metrics(self, stack: contextlib.AsyncExitStack) -> None:
        host, port = parse_address(self.config.metrics_listen)
        if self.worker.pooled:
            # The parent serves the configured address, merging the workers' pages.
            host, port = "127.0.0.1", 0
        self._metrics_server = metrics_server = MetricsServer(self.registry, host, port)
        stack.push_async_callback(metrics_server.close)
        try:
            self.metrics_port = await metrics_server.start()
        except OSError as exc:
            raise ListenError(self.config.metrics_listen, exc.strerror or exc) from exc

    @property
    def address(self) -> str:
        host, _ = parse_address(self.config.listen)
        return f"{host}:{self.port}"

    async def _drain(self) -> None:
        """Stop accepting; in-flight RPCs finish within the grace period (cut
        at once when a second signal cancels the drain)."""
        if self.server is not None:
            await self.server.stop(self._grace)


class _Finishing:
    """Takes the place of the server while services register, to wrap each method once.

    Every method handler goes under the RPC-finishing layer (status mapping,
    log line, metrics) and, inside it, under the method's concurrency limit
    (``docs/limits.md``): what ``ErrorInterceptor`` and ``LimitInterceptor``
    would do, decided at start-up instead of on every call. A server with
    interceptors runs them (and builds new handlers) for each call, which
    costs a unary read a good part of its latency.
    """

    def __init__(self, metrics: RpcMetrics, registry: MethodRegistry, admission: Admission) -> None:
        self.metrics = metrics
        self.registry = registry
        self.admission = admission
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        # Services registered in generic form; each must come in registered form too.
        self.generic: set[str] = set()

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        """The generic form of what ``add_registered_method_handlers`` registers
        (generated code calls both): rebuilt from the registered form in
        ``register``, which refuses a service that only came in this form."""
        for handler in handlers:
            service_name = getattr(handler, "service_name", None)
            if service_name is None:
                raise TypeError(f"cannot wrap a generic handler without a service: {handler!r}")
            self.generic.add(service_name())

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.services[service] = {
            name: self.wrap(f"/{service}/{name}", handler) for name, handler in handlers.items()
        }

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        limited = limited_handler(handler, method, self.admission, self.registry)
        op_type = op_label(self.registry.get(method))
        metrics = self.metrics

        def call(context: grpc.aio.ServicerContext) -> RpcCall:
            # The log line is written once grpc has the answer to send.
            return RpcCall(
                method, op_type, context, context.invocation_metadata(), metrics, log_after=True
            )

        return finishing_handler(limited, call)

    def register(self, server: grpc.aio.Server) -> None:
        missing = sorted(self.generic - self.services.keys())
        if missing:
            # Served unwrapped (no status mapping, log line, metrics or limit), or not at all.
            raise TypeError(f"services given only as generic handlers: {', '.join(missing)}")
        for service, handlers in self.services.items():
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, handlers),)
            )
            server.add_registered_method_handlers(service, handlers)


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
    worker: WorkerSlot = SINGLE,
) -> None:
    """Run until SIGTERM/SIGINT, then drain gracefully; a second signal stops at once."""
    node = NodeServer(config, CollectorRegistry(), vote_timeout, secrets, worker)

    def ready() -> None:
        if ready_file is not None:
            line = f"{node.address} {node.metrics_port}"
            if worker.pooled:
                # The same words as a proxy worker's: no vote address ("-"), the pid.
                line += f" - {os.getpid()}"
            ready_file.write_text(line + "\n")

    await run_until_signalled(
        node,
        grace=config.graceful_timeout,
        ready=ready,
        logger_name=logger.name,
        reload=node.reload,
    )
