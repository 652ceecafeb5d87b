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

Passive health: a proxy that sees a node's connection fail (the health
channel's own connection dropping, a forwarded RPC refused, another proxy
publishing the node unhealthy) does not wait for the next interval: it checks
the node now (:meth:`HealthChecker.suspect`) and, if that check fails, once
more ``confirm_delay`` later, so the same two failed checks in a row turn the
node unhealthy within a fraction of a second, and the view is published at
once. Only this proxy's own checks count: a suspicion is never a vote, so one
proxy's blind spot still cannot fail a node over (the others check and keep
seeing it healthy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
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


def next_local_health(
    previous: bool | None, ok: bool, failures: int, unhealthy_after: int
) -> tuple[bool, int]:
    """(healthy in the local view, consecutive failures) after one check (pure).

    Healthy again after one good check; unhealthy after ``unhealthy_after``
    failed checks in a row; a node never checked before is unhealthy until a
    check succeeds (the first round has no history to be lenient with).
    """
    if ok:
        return True, 0
    failures += 1
    return bool(previous) and failures < unhealthy_after, failures


ConnectionLost = Callable[[str], None]


class GrpcHealthProbe:
    """``grpc.health.v1.Health/Check`` with a deadline; SERVING means healthy.

    Each node's channel is watched: when its connection drops (a killed node
    closes it at once, long before the next check), ``connection_lost`` is told
    the node's address.
    """

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
        self.connection_lost: ConnectionLost | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._watches: list[asyncio.Task[None]] = []

    async def __call__(self, address: str) -> bool:
        channel = self._channels.get(address)
        if channel is None:
            target = grpc_target(address)
            channel = self._channels[address] = (
                grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
                if self.credentials is None
                else grpc.aio.secure_channel(target, self.credentials, options=_CHANNEL_OPTIONS)
            )
            self._watches.append(
                asyncio.ensure_future(watch_connection(channel, address, self._lost))
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

    def _lost(self, address: str) -> None:
        if self.connection_lost is not None:
            self.connection_lost(address)

    async def close(self) -> None:
        watches, self._watches = self._watches, []
        for task in watches:
            task.cancel()
        for task in watches:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()


async def watch_connection(channel: grpc.aio.Channel, address: str, lost: ConnectionLost) -> None:
    """Call ``lost(address)`` whenever the channel's connection stops being READY.

    A channel leaves READY when its connection closes (the peer died or
    restarted, a GOAWAY), fails, or idles out: the first two are what a
    killed node looks like within milliseconds; an idle channel only costs a
    check that succeeds.
    """
    state = channel.get_state()
    while True:
        await channel.wait_for_state_change(state)
        previous, state = state, channel.get_state()
        if previous is grpc.ChannelConnectivity.READY and state is not previous:
            lost(address)


# Why a node was checked out of turn (the trigger label of the probe metric).
TRIGGER_CONNECTION_LOST = "connection-lost"  # the health channel's connection dropped
TRIGGER_RPC_FAILED = "rpc-failed"  # a forwarded call could not reach the node
TRIGGER_PEER_VIEW = "peer-view"  # another proxy published the node unhealthy

ProbeObserver = Callable[[str, str, str, bool], None]


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
        confirm_delay: float = 0.1,
        observe_probe: ProbeObserver | None = None,
        answered: Callable[[str], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``nodes``: virtual storage -> node -> address.

        ``confirm_delay``: the gap between the checks made out of turn for a
        suspected node (:meth:`suspect`). ``observe_probe(vs, node, trigger,
        healthy)`` counts each of them. ``answered(node)`` is told of every
        check a node answered, before the view it changes is told to anyone
        (the proxy revives its channel to the node: ``NodeChannels.revive``).
        """
        self.nodes = {vs: dict(members) for vs, members in nodes.items()}
        self.publish = publish
        self._own_probe = probe is None
        self.probe: Probe = probe or GrpcHealthProbe(timeout)
        if isinstance(self.probe, GrpcHealthProbe):
            self.probe.connection_lost = self._connection_lost
        self.interval = interval
        self.timeout = timeout
        self.unhealthy_after = max(1, unhealthy_after)
        self.confirm_delay = confirm_delay
        self.observe_probe = observe_probe
        self.answered = answered
        self._clock = clock
        self._failures: dict[tuple[str, str], int] = {}
        # When the check whose result the view holds started: a slower, older
        # check (a round that began before the node died) cannot undo a newer one.
        self._checked_at: dict[tuple[str, str], float] = {}
        self._view: dict[str, dict[str, bool]] = {}
        self._published: dict[str, dict[str, bool]] | None = None
        self._listeners: list[ViewListener] = []
        self._task: asyncio.Task[None] | None = None
        self._suspected: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._publishing = asyncio.Lock()
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
        started = self._clock()
        results = await asyncio.gather(*(self._check(address) for _, _, address in targets))
        view = {vs: dict(self._view.get(vs, {})) for vs in self.nodes}
        for (vs, node, _), ok in zip(targets, results, strict=True):
            self._apply(view, vs, node, ok, started)
        self.rounds += 1
        self._set_view(view)
        await self._publish_if_changed()
        return self.local_view

    def _apply(
        self, view: dict[str, dict[str, bool]], vs: str, node: str, ok: bool, started: float
    ) -> None:
        key = (vs, node)
        if ok and self.answered is not None:
            try:
                self.answered(node)
            except Exception:  # the view must still be applied and published
                log.exception("telling that node %s answered its check failed", node)
        if started < self._checked_at.get(key, float("-inf")):
            return  # a newer check of this node already decided
        self._checked_at[key] = started
        view[vs][node], self._failures[key] = next_local_health(
            self._view.get(vs, {}).get(node), ok, self._failures.get(key, 0), self.unhealthy_after
        )

    def _set_view(self, view: dict[str, dict[str, bool]]) -> None:
        if view != self._view:
            self._view = view
            for callback in list(self._listeners):
                callback(self.local_view)

    # -- passive health: checks out of turn ---------------------------------------------

    def suspect(self, node: str, trigger: str = TRIGGER_RPC_FAILED) -> None:
        """Check ``node`` now (it failed a connection): at most one such check
        sequence per node at a time; nothing happens for a node already unhealthy."""
        for vs, members in self.nodes.items():
            if node not in members or not self.is_healthy(vs, node):
                continue
            key = (vs, node)
            running = self._suspected.get(key)
            if running is not None and not running.done():
                continue
            self._suspected[key] = asyncio.ensure_future(
                self._check_out_of_turn(vs, node, members[node], trigger)
            )

    def _connection_lost(self, address: str) -> None:
        for members in self.nodes.values():
            for node, node_address in members.items():
                if node_address == address:
                    self.suspect(node, TRIGGER_CONNECTION_LOST)

    async def _check_out_of_turn(self, vs: str, node: str, address: str, trigger: str) -> None:
        """Checks ``confirm_delay`` apart until one succeeds or the node is unhealthy."""
        for attempt in range(self.unhealthy_after):
            if attempt:
                await asyncio.sleep(self.confirm_delay)
            started = self._clock()
            ok = await self._check(address)
            if self.observe_probe is not None:
                self.observe_probe(vs, node, trigger, ok)
            view = {name: dict(nodes) for name, nodes in self._view.items()}
            view.setdefault(vs, {})
            self._apply(view, vs, node, ok, started)
            self._set_view(view)
            if ok or not self.is_healthy(vs, node):
                break
        if not self.is_healthy(vs, node):
            log.warning("node %s seen unhealthy by a check out of turn (%s)", node, trigger)
        await self._publish_if_changed()

    async def _publish_if_changed(self) -> None:
        # One publication at a time: a check out of turn and a round finishing
        # together must not write an older view after a newer one.
        async with self._publishing:
            await self._publish_latest()

    async def _publish_latest(self) -> None:
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
        suspected, self._suspected = self._suspected, {}
        for task in suspected.values():
            task.cancel()
        for task in suspected.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_probe and isinstance(self.probe, GrpcHealthProbe):
            await self.probe.close()
