"""Assemble and run a proxy: etcd state, health, election, routing, replication."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from gitquorum import log, tls
from gitquorum.authentication import (
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
from gitquorum.cluster.health import (
    TRIGGER_PEER_VIEW,
    Consensus,
    GrpcHealthProbe,
    HealthChecker,
)
from gitquorum.cluster.history import History
from gitquorum.cluster.intents import IntentStore
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.membership import HealthView, ProxyMembership
from gitquorum.cluster.metrics import ClusterMetrics
from gitquorum.cluster.operator_state import OperatorStateView
from gitquorum.cluster.queue import QueueView, ReplicationQueue
from gitquorum.cluster.repositories import RepositoryCache, RepositoryStore
from gitquorum.config import ProxyConfig, parse_address
from gitquorum.config_settings import cluster_settings
from gitquorum.errors import ConfigError
from gitquorum.gitaly import praefect_pb2_grpc, server_pb2_grpc, transaction_pb2_grpc
from gitquorum.lifecycle import Assembled, ListenError, bind_port, run_until_signalled
from gitquorum.limits import Admission, DrainGate, worker_limits
from gitquorum.metrics import MetricsServer
from gitquorum.proxy.channels import NodeChannels
from gitquorum.proxy.etcd_cluster_port import EtcdClusterPort
from gitquorum.proxy.handler import ProxyHandler
from gitquorum.proxy.info_service import PraefectInfoService
from gitquorum.proxy.leader_tasks import LeaderTasks
from gitquorum.proxy.metrics import ProxyMetrics
from gitquorum.proxy.read_health import ReadHealth
from gitquorum.proxy.ref_transaction_service import RefTransactionService
from gitquorum.proxy.replication import (
    ReplicationMetrics,
    ReplicationWorkers,
    Replicator,
    healthy_targets,
)
from gitquorum.proxy.server_info import ServerInfoService
from gitquorum.proxy.verifier import (
    VERDICTS,
    NodeChecksums,
    NodeRefs,
    VerificationStore,
    Verifier,
)
from gitquorum.proxy.vote_counting import TransactionManager
from gitquorum.wire.interceptor import ErrorInterceptor
from gitquorum.wire.options import server_options
from gitquorum.wire.registry import MethodRegistry, Op
from gitquorum.worker_pool import SINGLE, WorkerSlot, join_address

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


class ProxyServer(Assembled):
    """One proxy: start() opens everything in order, close() releases it in reverse.

    Every step of start() registers the cleanup of what it opened on one
    ``AsyncExitStack`` at once, so a start that fails half-way (a port already
    taken, etcd unreachable) closes its watches, leases and tasks before the
    error propagates. The last entry is the graceful drain, which close() runs first.

    ``worker``: which of the proxy's worker processes this is (``workers``,
    docs/architecture.md "Proxy workers"). Worker 0 is the proxy as the cluster
    sees it: membership, health publishing, leader election (failover,
    reconciler, verifier) and replication workers. Every worker serves clients
    from its own watch-fed caches, checks the nodes for its own routing, and
    has its own address for votes, since a transaction lives in the process
    that started it.
    """

    def __init__(
        self,
        config: ProxyConfig,
        registry: CollectorRegistry | None = None,
        *,
        secrets: tuple[tuple[bytes, ...], tuple[bytes, ...]] | None = None,
        worker: WorkerSlot = SINGLE,
    ) -> None:
        super().__init__(config.graceful_timeout)
        self.config = config
        self.worker = worker
        self.registry = registry or CollectorRegistry()
        # (client, node) secrets; None: read from the configuration at start.
        self.secrets = secrets
        self.port = 0
        self.metrics_port = 0
        # Pooled workers: the port of this worker's own listener, for votes.
        self.vote_port = 0
        self.vote_address = ""
        # Pooled workers but the first: worker 0's membership incarnation.
        self._first_incarnation = 0.0
        # Pure parts: built here, nothing to release.
        self.registry_methods = MethodRegistry.from_descriptors()  # refuses unannotated methods
        self.metrics = ProxyMetrics(self.registry)
        self.cluster_metrics = ClusterMetrics(self.registry, proxy=config.name)
        self.nodes = {vs.name: [n.storage for n in vs.nodes] for vs in config.virtual_storages}
        for name in self.nodes:
            # Present from start-up (0), so that "no write was ever retried"
            # is a sample an alert or a dashboard can read.
            for result in ("retried", "gave-up"):
                self.metrics.write_retries.labels(name, result)
        self.transactions = TransactionManager(vote_timeout=config.vote_timeout)
        # Drain gate and per-repository concurrency limits (config.limits),
        # divided among the worker processes.
        self.admission = Admission(
            worker_limits(config.limits, worker.count, worker.index), what="proxy"
        )
        # What reads learn about the nodes: hedge delays and outlier ejection.
        self.read_health = ReadHealth(config.reads, self.metrics)
        self.read_health.known(n for members in self.nodes.values() for n in members)
        # Opened by start(); None until then.
        self.store: EtcdStore | None = None
        self.channels: NodeChannels | None = None
        self.auth: AuthInterceptor | None = None
        self.tls: tls.ReloadableServerTLS | None = None
        self.replicator: Replicator | None = None
        self.repositories: RepositoryStore | None = None
        self.cache: RepositoryCache | None = None
        self.health_view: HealthView | None = None
        self.operator_view: OperatorStateView | None = None
        self.queue_view: QueueView | None = None
        self.queue: ReplicationQueue | None = None
        self.server: grpc.aio.Server | None = None
        self.membership: ProxyMembership | None = None
        self.checker: HealthChecker | None = None
        self.port_api: EtcdClusterPort | None = None
        self.verification: VerificationStore | None = None
        self.workers: ReplicationWorkers | None = None
        self.election: LeaderElection | None = None
        self.leader_tasks: LeaderTasks | None = None
        self.verifier: Verifier | None = None
        self.metrics_server: MetricsServer | None = None

    @property
    def address(self) -> str:
        host, _ = parse_address(self.config.listen)
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Open everything in order; on failure close what was opened, then re-raise."""
        config = self.config
        for vs in config.virtual_storages:
            # Present from the start, so rate() and increase() see the first failover.
            for reason in ("primary-unhealthy", "lazy"):
                self.metrics.failovers.labels(vs.name, reason)
        client_secrets, node_secrets = self.secrets or load_proxy_secrets(config)
        node_secret = signing_secret(node_secrets)
        # node_tls present: every node is dialled with TLS (docs/security.md).
        node_tls = tls.client_tls(config.node_tls) if config.node_tls is not None else None
        server_tls = tls.server_tls(config.tls)
        keys = Keyspace(cluster=config.etcd.cluster)
        async with contextlib.AsyncExitStack() as stack:
            store = await self._open_store(stack)
            channels = self._open_channels(stack, node_secret, node_tls)
            # Cluster state: caches first, so routing has data before serving.
            views = await self._open_views(stack, store, keys)
            # The gRPC server is bound before health checks publish anything so
            # that the advertised vote address is known.
            server = self._open_server(stack, client_secrets, server_tls)
            checker = await self._open_health(stack, store, keys, node_tls, views)
            port_api = self._open_port_api(views, checker)
            self._add_services(server, port_api, channels, store, keys, views, server_tls)
            # A health listener every worker needs: in-flight writes stop
            # waiting for a node the consensus turns unhealthy.
            views.health.add_listener(self._release_unhealthy_nodes)
            # What must run once per proxy runs in worker 0 only.
            planned = (
                self._plan_replication(store, keys, channels, port_api, views, node_secret)
                if self.worker.first
                else None
            )
            if planned is None:
                self._first_incarnation = await self._wait_first_incarnation(views.health)
            await server.start()
            if planned is not None:
                workers, election = planned
                stack.push_async_callback(workers.close, 0.0)
                await workers.start()
                stack.push_async_callback(election.close)
                await election.start()
            await self._open_metrics(stack)
            # Last in, first out: close() drains before anything else is released.
            stack.push_async_callback(self._drain)
            self._stack = stack.pop_all()
        logger.info(
            "proxy serving",
            extra=log.fields(
                name=config.name,
                listen=self.address,
                metrics_port=self.metrics_port,
                worker=self.worker.index,
                workers=self.worker.count,
                vote_address=self.vote_address or None,
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

    # -- start-up steps: each registers the cleanup of what it opens ------------------

    async def _open_store(self, stack: contextlib.AsyncExitStack) -> EtcdStore:
        config = self.config
        password = _read_secret(config.etcd.password_file)
        self.store = store = EtcdStore(
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
        stack.push_async_callback(store.close)
        await store.connect()
        return store

    def _open_channels(
        self,
        stack: contextlib.AsyncExitStack,
        node_secret: bytes | None,
        node_tls: tls.ClientTLS | None,
    ) -> NodeChannels:
        config = self.config
        addresses = {n.storage: n.address for vs in config.virtual_storages for n in vs.nodes}
        self.channels = channels = NodeChannels(addresses, node_secret, node_tls)
        stack.push_async_callback(channels.close)
        return channels

    async def _open_views(
        self, stack: contextlib.AsyncExitStack, store: EtcdStore, keys: Keyspace
    ) -> _Views:
        self.repositories = RepositoryStore(store, keys)
        self.cache = cache = RepositoryCache(store, keys)
        stack.push_async_callback(cache.close)
        await cache.start()
        self.health_view = health_view = HealthView(store, keys)
        stack.push_async_callback(health_view.close)
        await health_view.start()
        # Drained nodes and the pause flag set with the admin CLI (drain, pause).
        self.operator_view = operator_view = OperatorStateView(store, keys, registry=self.registry)
        stack.push_async_callback(operator_view.close)
        await operator_view.start()
        # A watch-fed copy of the queue makes a claim one txn instead of a
        # read of the whole backlog.
        self.queue_view = queue_view = QueueView(store, keys)
        stack.push_async_callback(queue_view.close)
        await queue_view.start()
        self.queue = ReplicationQueue(
            store, keys, max_attempts=self.config.replication_attempts, view=queue_view
        )
        history = History(store, keys, writer=self.config.name)
        intents = IntentStore(store, keys)
        return _Views(
            self.repositories, cache, health_view, operator_view, self.queue, history, intents
        )

    def _open_server(
        self,
        stack: contextlib.AsyncExitStack,
        client_secrets: tuple[bytes, ...],
        server_tls: tls.ServerTLS | None,
    ) -> grpc.aio.Server:
        """Create the gRPC server and bind its port (ListenError if taken)."""
        config = self.config
        # Client secret on every call but health and votes (each vote carries
        # its transaction's own secret, checked by RefTransactionService).
        # First: a refused call reaches no handler and no other interceptor.
        self.auth = (
            AuthInterceptor(client_secrets, HEALTH_METHODS | VOTE_METHODS, role="proxy")
            if client_secrets
            else None
        )
        auth_interceptors: list[grpc.aio.ServerInterceptor] = (
            [self.auth] if self.auth is not None else []
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
                    public=True,
                ),
            ],
            options=server_options(config.limits.max_message_size, reuse_port=self.worker.pooled),
        )
        server = self.server
        # Without grace: the drain step, above it on the stack, is the graceful part.
        stack.push_async_callback(server.stop, 0)
        self.tls = tls.ReloadableServerTLS(server_tls) if server_tls is not None else None
        credentials = self.tls.credentials() if self.tls is not None else None
        self.port = bind_port(server, config.listen, credentials)
        if self.worker.pooled:
            # The shared port may hand a node's vote to any worker; this
            # worker's own port reaches the process that holds the transaction.
            self.vote_port = bind_port(server, vote_listen(config, self.worker.index), credentials)
        return server

    def reload(self) -> None:
        """SIGHUP: re-read the token files and the listener's TLS certificate.

        The client secrets (checked on the listener), the node secret (signing
        calls to nodes and replication) and the certificate, key and client CA.
        Secrets from the environment were dropped at start and stay. Raises
        without changing anything when a file cannot be used or the two
        secrets overlap.
        """
        config = self.config
        clients, nodes = load_proxy_secrets(config)
        if self.tls is not None:
            self.tls.reload()
        if config.auth_token_file and self.auth is not None:
            self.auth.replace_secrets(clients)
        if config.node_token_file:
            signing = signing_secret(nodes)
            if self.channels is not None:
                self.channels.secret = signing
            if self.replicator is not None:
                self.replicator.node_token = signing.decode() if signing else ""

    async def _open_health(
        self,
        stack: contextlib.AsyncExitStack,
        store: EtcdStore,
        keys: Keyspace,
        node_tls: tls.ClientTLS | None,
        views: _Views,
    ) -> HealthChecker:
        """Register this proxy (its membership lease) and start checking the nodes.

        Pooled workers but the first check the nodes for their own routing and
        publish nothing: the proxy is one member, with worker 0's view.
        """
        config = self.config
        membership: ProxyMembership | None = None
        if self.worker.first:
            self.membership = membership = ProxyMembership(
                store,
                keys,
                config.name,
                address=self.address,
                ttl=config.election_ttl,
                settings=cluster_settings(config),
            )
        node_map = {
            vs.name: {n.storage: n.address for n in vs.nodes} for vs in config.virtual_storages
        }
        # Health is open (no token) but not plaintext when nodes serve TLS.
        probe = GrpcHealthProbe(
            config.health_timeout,
            credentials=node_tls.credentials() if node_tls is not None else None,
        )
        # Closed last (its channels and their connection watches), also after a
        # failed start: the checker only closes probes it made itself.
        stack.push_async_callback(probe.close)
        self.checker = checker = HealthChecker(
            node_map,
            publish=membership.publish_health if membership is not None else None,
            interval=config.health_interval,
            timeout=config.health_timeout,
            probe=probe,
            observe_probe=self.metrics.observe_immediate_probe,
            answered=self.channels.revive if self.channels is not None else None,
        )
        # The checker closes first: it publishes through the membership.
        if membership is not None:
            stack.push_async_callback(membership.close)
        stack.push_async_callback(checker.close)
        await checker.check_once()
        if membership is not None:
            await membership.start(checker.local_view)
        await checker.start()
        cluster_metrics, nodes, health_view = self.cluster_metrics, self.nodes, views.health
        checker.add_listener(lambda view: cluster_metrics.update_health(local=view))
        cluster_metrics.update_health(local=checker.local_view)
        health_view.add_listener(
            lambda _old, new: cluster_metrics.update_health(
                consensus={vs: new.healthy(vs) for vs in nodes}, nodes=nodes
            )
        )
        # The consensus may already have changed (our own vote arrives through
        # the watch) before the listener existed: export the current one too.
        cluster_metrics.update_health(
            consensus={vs: health_view.healthy(vs) for vs in nodes}, nodes=nodes
        )
        # Passive health: a node another proxy just published unhealthy is
        # checked here at once, so the consensus (which needs this proxy's own
        # check, never its trust) forms without waiting for the next round.
        own = config.name

        def corroborate(proxy: str, suspected: frozenset[tuple[str, str]]) -> None:
            if proxy != own:
                for _vs, node in suspected:
                    checker.suspect(node, TRIGGER_PEER_VIEW)

        health_view.add_suspicion_listener(corroborate)
        # A forwarded call that could not reach a node (proxy/channels.py).
        channels = self.channels
        if channels is not None:
            channels.on_unreachable = checker.suspect
        return checker

    def _open_port_api(self, views: _Views, checker: HealthChecker) -> EtcdClusterPort:
        config = self.config
        self.port_api = EtcdClusterPort(
            self.nodes,
            {vs.name: vs.default_replication_factor for vs in config.virtual_storages},
            views.repositories,
            views.cache,
            views.health,
            checker.is_healthy,
            views.queue,
            self.metrics,
            draining=views.operator.draining,
            paused=views.operator.paused,
            stale_read_limit=config.stale_read_limit,
            history=views.history,
            intents=views.intents,
            proxy_name=config.name,
            incarnation=self._incarnation,
        )
        return self.port_api

    def _incarnation(self) -> float:
        """This proxy's membership ``started_at``, as other proxies read it.

        A pooled worker other than the first writes worker 0's: the verifier
        reads an intent as evidence once its proxy incarnation is gone, and the
        proxy's writes live as long as worker 0 (the parent stops every worker
        when one ends).
        """
        membership = self.membership
        if membership is not None:
            return round(membership.started_at, 3)
        return self._first_incarnation

    async def _wait_first_incarnation(self, health: HealthView) -> float:
        """Worker 0's membership ``started_at``, once this worker's view has it.

        Worker 0 registers before it serves, and the parent starts the other
        workers after that: the wait is normally none.
        """
        name = self.config.name
        async with asyncio.timeout(max(10.0, 3 * self.config.election_ttl)):
            # Polled: the view signals consensus changes, not a member's arrival.
            while (found := health.incarnations().get(name)) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        return round(found, 3)

    def _add_services(
        self,
        server: grpc.aio.Server,
        port_api: EtcdClusterPort,
        channels: NodeChannels,
        store: EtcdStore,
        keys: Keyspace,
        views: _Views,
        server_tls: tls.ServerTLS | None,
    ) -> None:
        config = self.config
        # Nodes dial back to vote: tls:// tells them to use TLS (storage/transaction.py).
        advertise = config.advertise or self.address
        if config.vote_advertise:
            advertise = config.vote_advertise[self.worker.index]
        elif self.vote_port:
            advertise = with_port(advertise, self.vote_port)
        if "://" not in advertise:
            advertise = tls.url(advertise, server_tls is not None)
        self.vote_address = advertise
        handler = ProxyHandler(
            self.registry_methods,
            port_api,
            channels,
            self.transactions,
            lambda: advertise,
            self.metrics,
            write_timeout=config.write_timeout,
            admission=self.admission,
            read_health=self.read_health,
        )
        self.verification = VerificationStore(store, keys)
        transaction_pb2_grpc.add_RefTransactionServicer_to_server(
            RefTransactionService(self.transactions, self.metrics), server
        )
        praefect_pb2_grpc.add_PraefectInfoServiceServicer_to_server(
            PraefectInfoService(
                self.nodes,
                views.repositories,
                views.cache,
                views.queue,
                channels,
                port_api.healthy,
                self.verification,
            ),
            server,
        )
        server_pb2_grpc.add_ServerServiceServicer_to_server(
            ServerInfoService(self.nodes, channels, port_api.healthy), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(_Health(self.admission.gate), server)
        server.add_generic_rpc_handlers([handler])

    def _plan_replication(
        self,
        store: EtcdStore,
        keys: Keyspace,
        channels: NodeChannels,
        port_api: EtcdClusterPort,
        views: _Views,
        node_secret: bytes | None,
    ) -> tuple[ReplicationWorkers, LeaderElection]:
        """Replication workers and the leader election, wired but not started."""
        config = self.config
        self.replicator = replicator = Replicator(
            views.repositories,
            views.cache,
            channels,
            port_api.healthy,
            node_token=node_secret.decode() if node_secret else "",
        )
        self.workers = workers = ReplicationWorkers(
            config.name,
            views.queue,
            replicator,
            healthy_targets(self.nodes, port_api.healthy),
            ReplicationMetrics(self.registry),
            workers=config.replication_workers,
            lease_ttl=config.election_ttl,
            paused=views.operator.paused,
        )
        self.election = election = LeaderElection(store, keys, config.name, ttl=config.election_ttl)
        cluster_metrics = self.cluster_metrics
        election.add_listener(lambda leading, _t: cluster_metrics.set_leader(leading))
        self.leader_tasks = LeaderTasks(
            election,
            views.repositories,
            views.cache,
            views.health,
            views.queue,
            self.metrics,
            cluster_metrics,
            reconcile_interval=config.reconcile_interval,
            wake=workers.wake.set,
            virtual_storages=list(self.nodes),
            draining=views.operator.draining,
            paused=views.operator.paused,
            history=views.history,
        )
        self.leader_tasks.install()
        assert self.verification is not None
        self.verifier = Verifier(
            views.repositories,
            views.cache,
            views.queue,
            NodeChecksums(channels),
            self.verification,
            port_api.healthy,
            fence=lambda: election.token,
            draining=views.operator.draining,
            paused=views.operator.paused,
            interval=config.verify_interval,
            intents=views.intents,
            members=views.health.incarnations,
            on_verdict=lambda vs, verdict: self.metrics.verifier_verdicts.labels(vs, verdict).inc(),
            refs=NodeRefs(channels),
            history=views.history,
        )
        for vs in self.nodes:
            for verdict in VERDICTS:  # every series exists from the start, at 0
                self.metrics.verifier_verdicts.labels(vs, verdict)
        election.run_while_leader("verifier", self.verifier.run)
        # Wake the workers when a node comes back: its jobs become runnable.
        views.health.add_listener(lambda _old, _new: workers.wake.set())
        # ... and when an operator resumes a paused cluster: held-back jobs become claimable.
        views.operator.add_listener(lambda _old, _new: workers.wake.set())
        return workers, election

    async def _open_metrics(self, stack: contextlib.AsyncExitStack) -> None:
        host, port = parse_address(self.config.metrics_listen)
        if self.worker.pooled:
            # The parent serves the configured address, merging every worker's
            # page read from here (worker_metrics): a private loopback port.
            host, port = "127.0.0.1", 0
        self.metrics_server = metrics_server = MetricsServer(self.registry, host, port)
        stack.push_async_callback(metrics_server.close)
        try:
            self.metrics_port = await metrics_server.start()
        except OSError as exc:
            raise ListenError(self.config.metrics_listen, exc.strerror or exc) from exc

    def _release_unhealthy_nodes(self, old: Consensus, new: Consensus) -> None:
        for virtual_storage in self.nodes:
            for node in old.healthy(virtual_storage) - new.healthy(virtual_storage):
                if self.transactions.node_unhealthy(node):
                    logger.warning(
                        "in-flight writes stop waiting for an unhealthy node",
                        extra=log.fields(node=node),
                    )

    # -- shutdown -------------------------------------------------------------------

    async def _drain(self) -> None:
        """The first step of ``close``.

        New client calls are refused (UNAVAILABLE, health NOT_SERVING) while the
        gRPC server keeps running: writes in flight still need this proxy's
        RefTransaction service for their votes, which a stopped server refuses.
        The server stops once they are done, or when the grace period is over.
        """
        assert self.server is not None
        grace = self._grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.admission.gate.drain()
        # Workers stop claiming now and finish their running jobs meanwhile;
        # closing revokes their lease, so a job cut short is re-claimed at once.
        workers = asyncio.ensure_future(
            self.workers.close(grace) if self.workers is not None else asyncio.sleep(0)
        )
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self.admission.gate.wait_idle()
            cut = self.admission.gate.inflight
            await self.server.stop(max(0.0, deadline - loop.time()))
            await workers
        finally:
            # Cut short: the workers' own cleanup, further down the stack, stops them now.
            workers.cancel()
        logger.info("drained", extra=log.fields(calls_cut_short=cut))


def vote_listen(config: ProxyConfig, index: int) -> str:
    """Where pooled worker ``index`` takes votes: its ``vote_listen`` entry, else
    any free port on the host of ``listen``."""
    if config.vote_listen:
        return config.vote_listen[index]
    host, _ = parse_address(config.listen)
    return join_address(host, 0)


def with_port(address: str, port: int) -> str:
    """``address`` (``host:port``, maybe with a ``scheme://``) with its port replaced."""
    scheme, sep, rest = address.rpartition("://")
    host, _ = parse_address(rest)
    return f"{scheme}{sep}{join_address(host, port)}"


@dataclass(frozen=True)
class _Views:
    """The watch-fed cluster state start() opened, handed to the later steps."""

    repositories: RepositoryStore
    cache: RepositoryCache
    health: HealthView
    operator: OperatorStateView
    queue: ReplicationQueue
    history: History
    intents: IntentStore


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
    worker: WorkerSlot = SINGLE,
) -> None:
    """Run until SIGTERM/SIGINT, then drain gracefully; a second signal stops at once."""
    proxy = ProxyServer(config, secrets=secrets, worker=worker)

    def ready() -> None:
        if ready_file is not None:
            line = f"{proxy.address} {proxy.metrics_port}"
            if worker.pooled:
                line += f" {proxy.vote_address} {os.getpid()}"
            ready_file.write_text(line + "\n")

    await run_until_signalled(
        proxy,
        grace=config.graceful_timeout,
        ready=ready,
        logger_name=logger.name,
        reload=proxy.reload,
    )
