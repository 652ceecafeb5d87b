"""Node health: local gRPC health checks and the cluster-wide consensus over them.

Every proxy checks every node with ``grpc.health.v1.Health/Check`` (default
every 1 s, 1 s timeout) and publishes its *view* (virtual storage -> node ->
healthy) in its membership key, only when the view changes. A node is healthy
for the cluster when **at least half of the live proxies** (rounded up; with
one proxy, that proxy) currently see it healthy (:func:`consensus`, a pure
function of a :class:`HealthSnapshot`). Half, not a strict majority, is
Praefect's rule: with two proxies a strict majority needs both, so one proxy
that cannot reach a node (its own network path, not the node) would fail the
node over for everyone. That proxy still routes around the node on its own
(the proxy intersects the consensus with its local view). A proxy is live
while its lease-bound membership key exists, so a crashed proxy stops voting
once its lease expires.

Flapping guard: a node turns unhealthy in the local view after
``unhealthy_after`` consecutive failed checks (default 2, i.e. about 2 s) and
healthy again after one successful check. With one check a single slow answer
could start a failover; Praefect waits ten seconds, which is longer than
gitquorum's failover target.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gitquorum.cluster.periodic import run_periodically

log = logging.getLogger(__name__)

# virtual storage -> node -> healthy
HealthMap = Mapping[str, Mapping[str, bool]]
Probe = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True)
class HealthSnapshot:
    """Live proxies and each one's published view, as read at one moment."""

    proxies: frozenset[str]
    views: Mapping[str, HealthMap] = field(default_factory=dict)


@dataclass(frozen=True)
class Consensus:
    """Healthy nodes per virtual storage by at least half of the live proxies (immutable)."""

    healthy_nodes: Mapping[str, frozenset[str]]
    proxies: frozenset[str] = frozenset()

    def healthy(self, virtual_storage: str) -> frozenset[str]:
        return self.healthy_nodes.get(virtual_storage, frozenset())

    def is_healthy(self, virtual_storage: str, node: str) -> bool:
        return node in self.healthy(virtual_storage)


def votes_needed(live_proxies: int) -> int:
    """Healthy votes a node needs: at least half of the live proxies, rounded up,
    and never fewer than one (1 of 1, 1 of 2, 2 of 3, 2 of 4, 3 of 5)."""
    return max(1, (live_proxies + 1) // 2)


def consensus(snapshot: HealthSnapshot) -> Consensus:
    """Nodes seen healthy by at least half of the live proxies (:func:`votes_needed`).

    A live proxy without a published view counts as seeing nothing healthy;
    views of proxies that are not live are ignored.
    """
    live = snapshot.proxies
    needed = votes_needed(len(live))
    votes: Counter[tuple[str, str]] = Counter()
    for proxy in live:
        for virtual_storage, nodes in snapshot.views.get(proxy, {}).items():
            for node, healthy in nodes.items():
                if healthy:
                    votes[(virtual_storage, node)] += 1
    healthy_nodes: dict[str, set[str]] = {}
    for (virtual_storage, node), count in votes.items():
        if count >= needed:
            healthy_nodes.setdefault(virtual_storage, set()).add(node)
    return Consensus({vs: frozenset(nodes) for vs, nodes in healthy_nodes.items()}, live)


def grpc_target(address: str) -> str:
    """A node address as a gRPC target ("tcp://h:p" -> "h:p"; unix: paths stay)."""
    if address.startswith("tcp://"):
        return address[len("tcp://") :]
    return address


# A node that comes back must be seen at the next check: while a node is down,
# gRPC's reconnect backoff grows towards two minutes by default, and a call on a
# channel waiting to reconnect fails at once without trying (seen in the failover
# benchmark: a restarted node stayed "unhealthy" for 6 s).
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)


class GrpcHealthProbe:
    """``grpc.health.v1.Health/Check`` with a deadline; SERVING means healthy."""

    def __init__(
        self,
        timeout: float = 1.0,
        *,
        service: str = "",
        metadata: tuple[tuple[str, str], ...] = (),
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.timeout = timeout
        self.service = service
        self.metadata = metadata
        # TLS to nodes that serve it (the proxy's node_tls, docs/security.md).
        self.credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def __call__(self, address: str) -> bool:
        channel = self._channels.get(address)
        if channel is None:
            target = grpc_target(address)
            channel = self._channels[address] = (
                grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
                if self.credentials is None
                else grpc.aio.secure_channel(target, self.credentials, options=_CHANNEL_OPTIONS)
            )
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service=self.service),
                timeout=self.timeout,
                metadata=self.metadata or None,
            )
        except grpc.aio.AioRpcError as exc:
            log.debug("health check of %s failed: %s", address, exc.code().name)
            return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()


ViewListener = Callable[[HealthMap], None]


class HealthChecker:
    """Checks every node periodically; publishes the local view when it changes."""

    def __init__(
        self,
        nodes: Mapping[str, Mapping[str, str]],
        *,
        publish: Callable[[HealthMap], Awaitable[None]] | None = None,
        probe: Probe | None = None,
        interval: float = 1.0,
        timeout: float = 1.0,
        unhealthy_after: int = 2,
    ) -> None:
        """``nodes``: virtual storage -> node -> address."""
        self.nodes = {vs: dict(members) for vs, members in nodes.items()}
        self.publish = publish
        self._own_probe = probe is None
        self.probe: Probe = probe or GrpcHealthProbe(timeout)
        self.interval = interval
        self.timeout = timeout
        self.unhealthy_after = max(1, unhealthy_after)
        self._failures: dict[tuple[str, str], int] = {}
        self._view: dict[str, dict[str, bool]] = {}
        self._published: dict[str, dict[str, bool]] | None = None
        self._listeners: list[ViewListener] = []
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0

    @property
    def local_view(self) -> HealthMap:
        return {vs: dict(nodes) for vs, nodes in self._view.items()}

    def is_healthy(self, virtual_storage: str, node: str) -> bool:
        return self._view.get(virtual_storage, {}).get(node, False)

    def add_listener(self, callback: ViewListener) -> None:
        """``callback(view)`` whenever the local view changes."""
        self._listeners.append(callback)

    async def _check(self, address: str) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                return await self.probe(address)
        except Exception:
            return False

    async def check_once(self) -> HealthMap:
        """One round over all nodes in parallel; returns the (possibly new) view."""
        targets = [
            (vs, node, address)
            for vs, members in self.nodes.items()
            for node, address in members.items()
        ]
        results = await asyncio.gather(*(self._check(address) for _, _, address in targets))
        view: dict[str, dict[str, bool]] = {vs: {} for vs in self.nodes}
        for (vs, node, _), ok in zip(targets, results, strict=True):
            key = (vs, node)
            previous = self._view.get(vs, {}).get(node)
            if ok:
                self._failures[key] = 0
                view[vs][node] = True
            else:
                self._failures[key] = self._failures.get(key, 0) + 1
                # The first round has no history to be lenient with.
                view[vs][node] = bool(previous) and self._failures[key] < self.unhealthy_after
        self.rounds += 1
        if view != self._view:
            self._view = view
            for callback in list(self._listeners):
                callback(self.local_view)
        await self._publish_if_changed()
        return self.local_view

    async def _publish_if_changed(self) -> None:
        if self.publish is None or self._published == self._view:
            return
        snapshot = {vs: dict(nodes) for vs, nodes in self._view.items()}
        try:
            await self.publish(snapshot)
        except Exception as exc:
            # Retried on the next round. What etcd holds is unknown now (the
            # membership re-registers with the view of the last *attempt*), so
            # forget what was published: otherwise a view that flips back to the
            # last published one is never sent again, and a re-registration can
            # leave a stale view in etcd for good.
            log.warning("publishing the health view failed: %s", exc)
            self._published = None
            return
        self._published = snapshot

    async def start(self) -> None:
        """Run a first round (so the first published view is real), then loop."""
        await self.check_once()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="health-checker")

    async def _run(self) -> None:
        # A fixed rate: a slow round (a node timing out) does not delay the next.
        await run_periodically(self.check_once, self.interval, from_start=True)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._own_probe and isinstance(self.probe, GrpcHealthProbe):
            await self.probe.close()
