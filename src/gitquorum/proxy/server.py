"""Assemble and run a proxy: etcd state, health, election, routing, replication."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from gitquorum import log, tls
from gitquorum.authn import (
    HEALTH_METHODS,
    NODE_TOKEN_ENV,
    TOKEN_ENV,
    VOTE_METHODS,
    AuthInterceptor,
    load_secrets,
    signing_secret,
    take_secrets,
)
from gitquorum.cluster.election import LeaderElection
from gitquorum.cluster.etcd_store import EtcdConfig, EtcdStore
from gitquorum.cluster.health import Consensus, GrpcHealthProbe, HealthChecker
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.membership import HealthView, ProxyMembership
from gitquorum.cluster.metrics import ClusterMetrics
from gitquorum.cluster.operator_state import OperatorStateView
from gitquorum.cluster.queue import QueueView, ReplicationQueue
from gitquorum.cluster.repositories import RepositoryCache, RepositoryStore
from gitquorum.config import ProxyConfig, parse_address
from gitquorum.errors import ConfigError
from gitquorum.gitaly import praefect_pb2_grpc, server_pb2_grpc, transaction_pb2_grpc
from gitquorum.limits import Admission, DrainGate
from gitquorum.metrics import MetricsServer
from gitquorum.proxy.channels import NodeChannels
from gitquorum.proxy.cluster_port import EtcdClusterPort
from gitquorum.proxy.handler import ProxyHandler
from gitquorum.proxy.info_service import PraefectInfoService
from gitquorum.proxy.leader_tasks import LeaderTasks
from gitquorum.proxy.metrics import ProxyMetrics
from gitquorum.proxy.replication import (
    ReplicationMetrics,
    ReplicationWorkers,
    Replicator,
    healthy_targets,
)
from gitquorum.proxy.server_info import ServerInfoService
from gitquorum.proxy.transaction_service import RefTransactionService
from gitquorum.proxy.transactions import TransactionManager
from gitquorum.proxy.verifier import VerificationStore, Verifier
from gitquorum.wire.interceptor import ErrorInterceptor
from gitquorum.wire.options import server_options
from gitquorum.wire.registry import MethodRegistry, Op

logger = log.get("gitquorum.proxy")


def _read_secret(path: str) -> bytes | None:
    if not path:
        return None
    return Path(path).read_bytes().strip()


def load_proxy_secrets(
    config: ProxyConfig, *, take: bool = False
) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """(client secrets, node secrets) from the token files or the environment.

    ``take``: drop the variables from the environment once read (a server
    process). The two sets must not share a secret: a client holding the
    node secret could call the nodes directly, bypassing the proxy.
    """
    load = take_secrets if take else load_secrets
    clients = load(config.auth_token_file, TOKEN_ENV)
    nodes = load(config.node_token_file, NODE_TOKEN_ENV)
    if set(clients) & set(nodes):
        raise ConfigError(
            [
                "auth: the client secret (token_file) and the node secret "
                "(node_token_file) must differ, or clients could bypass the proxy"
            ]
        )
    return clients, nodes


class ProxyServer:
    def __init__(
        self,
        config: ProxyConfig,
        registry: CollectorRegistry | None = None,
        *,
        secrets: tuple[tuple[bytes, ...], tuple[bytes, ...]] | None = None,
    ) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        # (client, node) secrets; None: read from the configuration at start.
        self.secrets = secrets
        self.port = 0
        self.metrics_port = 0
        self._closed = asyncio.Event()
        self._closers: list[object] = []

    @property
    def address(self) -> str:
        host, _ = parse_address(self.config.listen)
        return f"{host}:{self.port}"

    async def start(self) -> None:
        config = self.config
        self.registry_methods = MethodRegistry.from_descriptors()  # refuses unannotated methods
        self.metrics = ProxyMetrics(self.registry)
        for vs in config.virtual_storages:
            # Present from the start, so rate() and increase() see the first failover.
            for reason in ("primary-unhealthy", "lazy"):
                self.metrics.failovers.labels(vs.name, reason)
        self.cluster_metrics = ClusterMetrics(self.registry, proxy=config.name)
        password = _read_secret(config.etcd.password_file)
        self.store = EtcdStore(
            EtcdConfig(
                endpoints=config.etcd.endpoints,
                ca_file=config.etcd.ca_file or None,
                cert_file=config.etcd.cert_file or None,
                key_file=config.etcd.key_file or None,
                username=config.etcd.username or None,
                password=password.decode() if password else None,
            ),
            observer=self.cluster_metrics,
        )
        await self.store.connect()
        keys = Keyspace(cluster=config.etcd.cluster)
        self.nodes = {vs.name: [n.storage for n in vs.nodes] for vs in config.virtual_storages}
        addresses = {n.storage: n.address for vs in config.virtual_storages for n in vs.nodes}
        client_secrets, node_secrets = self.secrets or load_proxy_secrets(config)
        node_secret = signing_secret(node_secrets)
        # node_tls present: every node is dialled with TLS (docs/security.md).
        node_tls = tls.client_tls(config.node_tls) if config.node_tls is not None else None
        self.channels = NodeChannels(addresses, node_secret, node_tls)

        # Cluster state: caches first, so routing has data before serving.
        self.repositories = RepositoryStore(self.store, keys)
        self.cache = RepositoryCache(self.store, keys)
        await self.cache.start()
        self.health_view = HealthView(self.store, keys)
        await self.health_view.start()
        # Drained nodes and the pause flag set with the admin CLI (drain, pause).
        self.operator_view = OperatorStateView(self.store, keys, registry=self.registry)
        await self.operator_view.start()
        # A watch-fed copy of the queue makes a claim one txn instead of a
        # read of the whole backlog.
        self.queue_view = QueueView(self.store, keys)
        await self.queue_view.start()
        self.queue = ReplicationQueue(
            self.store, keys, max_attempts=config.replication_attempts, view=self.queue_view
        )

        # The gRPC server is started before health checks publish anything so
        # that the advertised vote address is known.
        self.transactions = TransactionManager(vote_timeout=config.vote_timeout)
        # Drain gate and per-repository concurrency limits (config.limits).
        self.admission = Admission(config.limits, what="proxy")
        # Client secret on every call but health and votes (each vote carries
        # its transaction's own secret, checked by RefTransactionService).
        # First: a refused call reaches no handler and no other interceptor.
        auth_interceptors: list[grpc.aio.ServerInterceptor] = (
            [AuthInterceptor(client_secrets, HEALTH_METHODS | VOTE_METHODS, role="proxy")]
            if client_secrets
            else []
        )
        self.server = grpc.aio.server(
            interceptors=[
                *auth_interceptors,
                ErrorInterceptor(
                    self.metrics.rpc,
                    skip=lambda m: (
                        (info := self.registry_methods.get(m)) is not None
                        and info.op is not Op.INTERCEPTED
                    ),
                ),
            ],
            options=server_options(config.limits.max_message_size),
        )
        server_tls = tls.server_tls(config.tls)
        if server_tls is None:
            self.port = self.server.add_insecure_port(config.listen)
        else:
            self.port = self.server.add_secure_port(config.listen, server_tls.credentials())
        if self.port == 0:
            raise OSError(f"cannot listen on {config.listen}")

        self.membership = ProxyMembership(
            self.store, keys, config.name, address=self.address, ttl=config.election_ttl
        )
        node_map = {
            vs.name: {n.storage: n.address for n in vs.nodes} for vs in config.virtual_storages
        }
        self.checker = HealthChecker(
            node_map,
            publish=self.membership.publish_health,
            interval=config.health_interval,
            timeout=config.health_timeout,
            # Health is open (no token) but not plaintext when nodes serve TLS.
            probe=GrpcHealthProbe(
                config.health_timeout,
                credentials=node_tls.credentials() if node_tls is not None else None,
            ),
        )
        await self.checker.check_once()
        await self.membership.start(self.checker.local_view)
        await self.checker.start()
        self.checker.add_listener(lambda view: self.cluster_metrics.update_health(local=view))
        self.cluster_metrics.update_health(local=self.checker.local_view)
        self.health_view.add_listener(
            lambda _old, new: self.cluster_metrics.update_health(
                consensus={vs: new.healthy(vs) for vs in self.nodes}, nodes=self.nodes
            )
        )
        # The consensus may already have changed (our own vote arrives through
        # the watch) before the listener existed: export the current one too.
        self.cluster_metrics.update_health(
            consensus={vs: self.health_view.healthy(vs) for vs in self.nodes}, nodes=self.nodes
        )

        self.port_api = EtcdClusterPort(
            self.nodes,
            {vs.name: vs.default_replication_factor for vs in config.virtual_storages},
            self.repositories,
            self.cache,
            self.health_view,
            self.checker.is_healthy,
            self.queue,
            self.metrics,
            draining=self.operator_view.draining,
            paused=self.operator_view.paused,
            stale_read_limit=config.stale_read_limit,
        )
        # Nodes dial back to vote: tls:// tells them to use TLS (storage/transaction.py).
        advertise = config.advertise or self.address
        if "://" not in advertise:
            advertise = tls.url(advertise, server_tls is not None)
        handler = ProxyHandler(
            self.registry_methods,
            self.port_api,
            self.channels,
            self.transactions,
            lambda: advertise,
            self.metrics,
            write_timeout=config.write_timeout,
            admission=self.admission,
        )
        self.verification = VerificationStore(self.store, keys)
        transaction_pb2_grpc.add_RefTransactionServicer_to_server(
            RefTransactionService(self.transactions, self.metrics), self.server
        )
        praefect_pb2_grpc.add_PraefectInfoServiceServicer_to_server(
            PraefectInfoService(
                self.nodes,
                self.repositories,
                self.cache,
                self.queue,
                self.channels,
                self.port_api.healthy,
                self.verification,
            ),
            self.server,
        )
        server_pb2_grpc.add_ServerServiceServicer_to_server(
            ServerInfoService(self.nodes, self.channels, self.port_api.healthy), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(_Health(self.admission.gate), self.server)
        self.server.add_generic_rpc_handlers([handler])

        # Replication and leadership.
        replicator = Replicator(
            self.repositories,
            self.cache,
            self.channels,
            self.port_api.healthy,
            node_token=node_secret.decode() if node_secret else "",
        )
        self.workers = ReplicationWorkers(
            config.name,
            self.queue,
            replicator,
            healthy_targets(self.nodes, self.port_api.healthy),
            ReplicationMetrics(self.registry),
            workers=config.replication_workers,
            lease_ttl=config.election_ttl,
            paused=self.operator_view.paused,
        )
        self.election = LeaderElection(self.store, keys, config.name, ttl=config.election_ttl)
        self.election.add_listener(lambda leading, _t: self.cluster_metrics.set_leader(leading))
        self.leader_tasks = LeaderTasks(
            self.election,
            self.repositories,
            self.cache,
            self.health_view,
            self.queue,
            self.metrics,
            self.cluster_metrics,
            reconcile_interval=config.reconcile_interval,
            wake=self.workers.wake.set,
            virtual_storages=list(self.nodes),
            draining=self.operator_view.draining,
            paused=self.operator_view.paused,
        )
        self.leader_tasks.install()
        self.verifier = Verifier(
            self.repositories,
            self.cache,
            self.queue,
            self.channels,
            self.verification,
            self.port_api.healthy,
            interval=config.verify_interval,
        )
        self.election.run_while_leader("verifier", self.verifier.run)
        # A node the consensus turns unhealthy stops holding up in-flight writes: they
        # end now instead of after the vote (primary) or write (secondary) timeout.
        self.health_view.add_listener(self._release_unhealthy_nodes)
        # Wake the workers when a node comes back: its jobs become runnable.
        self.health_view.add_listener(lambda _old, _new: self.workers.wake.set())
        # ... and when an operator resumes a paused cluster: held-back jobs become claimable.
        self.operator_view.add_listener(lambda _old, _new: self.workers.wake.set())

        await self.server.start()
        await self.workers.start()
        await self.election.start()
        host, port = parse_address(config.metrics_listen)
        self.metrics_server = MetricsServer(self.registry, host, port)
        self.metrics_port = await self.metrics_server.start()
        logger.info(
            "proxy serving",
            extra=log.fields(
                name=config.name,
                listen=self.address,
                metrics_port=self.metrics_port,
                virtual_storages=sorted(self.nodes),
                # Whether, never with what: secrets stay out of logs.
                client_authentication=bool(client_secrets),
                node_authentication=bool(node_secrets),
                tls=server_tls is not None,
                node_tls=node_tls is not None,
            ),
        )
        if client_secrets and not node_secrets:
            logger.warning(
                "clients must authenticate but nodes are called without a token: "
                "anyone who reaches a node can bypass the proxy (set auth.node_token_file)"
            )

    def _release_unhealthy_nodes(self, old: Consensus, new: Consensus) -> None:
        for virtual_storage in self.nodes:
            for node in old.healthy(virtual_storage) - new.healthy(virtual_storage):
                if self.transactions.node_unhealthy(node):
                    logger.warning(
                        "in-flight writes stop waiting for an unhealthy node",
                        extra=log.fields(node=node),
                    )

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting; let in-flight RPCs and jobs finish within the grace period.

        New client calls are refused (UNAVAILABLE, health NOT_SERVING) while the
        gRPC server keeps running: writes in flight still need this proxy's
        RefTransaction service for their votes, which a stopped server refuses.
        The server stops once they are done, or when the grace period is over.
        """
        grace = self.config.graceful_timeout if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.admission.gate.drain()
        # Workers stop claiming now and finish their running jobs meanwhile;
        # closing revokes their lease, so a job cut short is re-claimed at once.
        workers = asyncio.ensure_future(self.workers.close(grace))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.admission.gate.wait_idle()
        cut = self.admission.gate.inflight
        await self.server.stop(max(0.0, deadline - loop.time()))
        await workers
        logger.info("drained", extra=log.fields(calls_cut_short=cut))
        await self.election.close()
        await self.checker.close()
        await self.membership.close()
        await self.health_view.close()
        await self.operator_view.close()
        await self.cache.close()
        await self.queue_view.close()
        await self.channels.close()
        await self.metrics_server.close()
        await self.store.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()


class _Health(health_pb2_grpc.HealthServicer):
    def __init__(self, gate: DrainGate | None = None) -> None:
        self.gate = gate

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        # NOT_SERVING while draining: load balancers stop sending new calls here.
        if self.gate is not None and self.gate.draining:
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def serve(
    config: ProxyConfig,
    ready_file: Path | None = None,
    secrets: tuple[tuple[bytes, ...], tuple[bytes, ...]] | None = None,
) -> None:
    proxy = ProxyServer(config, secrets=secrets)
    await proxy.start()
    if ready_file is not None:
        ready_file.write_text(f"{proxy.address} {proxy.metrics_port}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("draining", extra=log.fields(grace_seconds=config.graceful_timeout))
    await proxy.stop()
