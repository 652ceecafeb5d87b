"""Proxy membership and the watch-fed cluster health view.

Each proxy owns one key, ``proxies/<name>``, attached to its own lease. The
value carries the proxy's address, its current health view and hashes of its
cluster-wide settings (compared by ``gitquorum check``), so joining,
leaving (lease expiry) and changing a vote are each one atomic change that
every other proxy sees in the same watch event: the consensus never counts a
proxy whose vote it has not seen yet.

:class:`ProxyMembership` writes this proxy's key and re-registers under a new
lease if the old one is lost. :class:`HealthView` follows all members through
the watch (no polling) and recomputes :func:`~gitquorum.cluster.health.consensus`
on every change, notifying listeners and waiters when it differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from tenacity import wait_fixed

from gitquorum.cluster.clock import REAL_CLOCK, Clock
from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.cluster.health import Consensus, HealthMap, HealthSnapshot, consensus
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.lease import LeaseKeeper
from gitquorum.cluster.mirror import PrefixMirror
from gitquorum.cluster.store import EventType, KeyValue, Store, WatchEvent
from gitquorum.cluster.store_retry import StoreRetry, report, store_failure

log = logging.getLogger(__name__)


# How long a health consensus outlives every membership key vanishing at
# once: about a lease's lifetime, the time the proxies take to register again.
EMPTY_HOLD = 10.0


def encode_member(
    address: str,
    started_at: float,
    health: HealthMap,
    settings: Mapping[str, str] | None = None,
) -> bytes:
    value: dict[str, object] = {
        "address": address,
        "started_at": round(started_at, 3),
        "health": {vs: dict(sorted(nodes.items())) for vs, nodes in sorted(health.items())},
    }
    if settings:
        # Hashes of the cluster-wide settings, compared by `gitquorum check`.
        value["settings"] = dict(sorted(settings.items()))
    return json.dumps(value, separators=(",", ":")).encode()


def decode_incarnation(value: bytes) -> float:
    """A member's ``started_at``: tells a restarted proxy from its earlier self."""
    try:
        return float(json.loads(value).get("started_at", 0.0))
    except (ValueError, TypeError, AttributeError):
        return 0.0


def decode_member(value: bytes) -> tuple[str, HealthMap]:
    data = json.loads(value)
    health = {
        str(vs): {str(node): bool(ok) for node, ok in nodes.items()}
        for vs, nodes in (data.get("health") or {}).items()
    }
    return str(data.get("address", "")), health


class ProxyMembership:
    def __init__(
        self,
        store: Store,
        keys: Keyspace,
        proxy: str,
        *,
        address: str = "",
        ttl: float = 5.0,
        clock: Clock | None = None,
        retry_delay: float = 0.5,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.proxy = proxy
        self.settings = dict(settings or {})
        self.key = keys.proxy(proxy)
        self.address = address
        self.ttl = ttl
        self.clock: Clock = clock or REAL_CLOCK
        self.retry_delay = retry_delay
        self.started_at = time.time()
        self.keeper: LeaseKeeper | None = None
        self._health: HealthMap = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.registrations = 0

    @property
    def registered(self) -> bool:
        return self.keeper is not None and self.keeper.alive

    async def start(self, health: HealthMap | None = None) -> None:
        """Register (raises StoreUnavailable if etcd is unreachable), then supervise."""
        if health is not None:
            self._health = health
        await self._register()
        self._task = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"membership:{self.proxy}"
        )

    async def _register(self) -> None:
        async with self._lock:
            keeper = LeaseKeeper(
                self.store, self.ttl, name=f"member:{self.proxy}", clock=self.clock
            )
            await keeper.start()
            try:
                await self.store.put(self.key, self._value(), lease=keeper.lease_id)
            except BaseException:
                await keeper.close(revoke=True)
                raise
            self.keeper = keeper
            self.registrations += 1

    @property
    def _until_registered(self) -> StoreRetry:
        return StoreRetry(
            retry_on=store_failure,
            wait=wait_fixed(self.retry_delay),
            sleep=self.clock.sleep,
            before_retry=report(
                lambda exc: log.info("registration of %s failed: %s", self.proxy, exc)
            ),
        )

    def _value(self) -> bytes:
        return encode_member(self.address, self.started_at, self._health, self.settings)

    async def _supervise(self) -> None:
        while True:
            keeper = self.keeper
            if keeper is not None:
                await keeper.lost.wait()
                await keeper.close(revoke=False)
            log.warning("proxy %s lost its membership lease; registering again", self.proxy)
            await self._until_registered(self._register)

    async def publish_health(self, health: HealthMap) -> None:
        """Store this proxy's view of node health (raises StoreUnavailable)."""
        self._health = health
        async with self._lock:
            keeper = self.keeper
            if keeper is None or not keeper.alive:
                # Re-registration will publish the latest view.
                raise StoreUnavailable(f"proxy {self.proxy} is not registered")
            await self.store.put(self.key, self._value(), lease=keeper.lease_id)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.keeper is not None:
            await self.keeper.close(revoke=True)


ConsensusListener = Callable[[Consensus, Consensus], None]
# (proxy, nodes it newly sees unhealthy as (virtual storage, node) pairs)
SuspicionListener = Callable[[str, frozenset[tuple[str, str]]], None]


def newly_unhealthy(old: HealthMap | None, new: HealthMap) -> frozenset[tuple[str, str]]:
    """Nodes a proxy's published view turned unhealthy (pure): a proxy that
    joins seeing a node unhealthy counts too."""
    before = old or {}
    return frozenset(
        (vs, node)
        for vs, nodes in new.items()
        for node, healthy in nodes.items()
        if not healthy and before.get(vs, {}).get(node, True)
    )


class HealthView:
    """Every live proxy's vote, kept current by the watch; exposes the consensus.

    On every change of the consensus: listeners run (synchronously, with the
    old and new value), ``changed`` is set (consumers clear it) and
    :meth:`wait_for` waiters re-check their predicate.
    """

    def __init__(
        self,
        store: Store,
        keys: Keyspace,
        *,
        clock: Clock | None = None,
        empty_hold: float = EMPTY_HOLD,
    ) -> None:
        self.keys = keys
        self._clock: Clock = clock or REAL_CLOCK
        self._members: dict[str, tuple[str, HealthMap]] = {}
        self._incarnations: dict[str, float] = {}
        # Every membership key gone at once: the last consensus (and who was
        # live) is kept for ``empty_hold`` seconds from then (see _recompute).
        self.empty_hold = empty_hold
        self._emptied_at: float | None = None
        self._held_incarnations: dict[str, float] = {}
        self._hold_task: asyncio.Task[None] | None = None
        self._consensus = Consensus({}, frozenset())
        self._listeners: list[ConsensusListener] = []
        self._suspicion_listeners: list[SuspicionListener] = []
        self._changed = asyncio.Condition()
        self.changed = asyncio.Event()
        self.version = 0
        self._mirror = PrefixMirror(
            store, keys.proxies(), reset=self._reset, apply=self._apply, clock=clock
        )

    @property
    def consensus(self) -> Consensus:
        return self._consensus

    @property
    def revision(self) -> int:
        return self._mirror.revision

    @property
    def last_sync(self) -> float:
        return self._mirror.last_sync

    def healthy(self, virtual_storage: str) -> frozenset[str]:
        return self._consensus.healthy(virtual_storage)

    def snapshot(self) -> HealthSnapshot:
        return HealthSnapshot(
            frozenset(self._members), {name: view for name, (_, view) in self._members.items()}
        )

    def proxies(self) -> dict[str, str]:
        """Live proxies and their addresses."""
        return {name: address for name, (address, _) in self._members.items()}

    def incarnations(self) -> dict[str, float]:
        """Live proxies and their ``started_at``: which process holds each name
        (while every key is gone and the consensus is held, those of then)."""
        if not self._incarnations and self._holding():
            return dict(self._held_incarnations)
        return dict(self._incarnations)

    def _holding(self) -> bool:
        return (
            self._emptied_at is not None and self._clock.now() - self._emptied_at < self.empty_hold
        )

    def add_listener(self, callback: ConsensusListener) -> None:
        """``callback(old, new)`` whenever the consensus changes."""
        self._listeners.append(callback)

    def add_suspicion_listener(self, callback: SuspicionListener) -> None:
        """``callback(proxy, nodes)`` when a proxy publishes nodes it newly sees
        unhealthy (passive health: the others check those nodes at once)."""
        self._suspicion_listeners.append(callback)

    async def start(self) -> None:
        await self._mirror.start()

    async def close(self) -> None:
        if self._hold_task is not None:
            self._hold_task.cancel()
        await self._mirror.close()

    async def _end_hold(self) -> None:
        """Recompute once the hold is over (nothing else may change meanwhile)."""
        await self._clock.sleep(self.empty_hold)
        self._hold_task = None
        self._recompute()

    async def wait_for(self, predicate: Callable[[Consensus], bool]) -> Consensus:
        """Wait until the consensus satisfies ``predicate`` (bound it with ``asyncio.timeout``)."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self._consensus))
        return self._consensus

    def _name(self, key: str) -> str:
        return key[len(self.keys.proxies()) :]

    def _reset(self, kvs: Sequence[KeyValue], _revision: int) -> None:
        members: dict[str, tuple[str, HealthMap]] = {}
        for kv in kvs:
            with contextlib.suppress(ValueError):
                members[self._name(kv.key)] = decode_member(kv.value)
        self._members = members
        self._incarnations = {
            self._name(kv.key): decode_incarnation(kv.value)
            for kv in kvs
            if self._name(kv.key) in members
        }
        self._recompute()

    def _apply(self, events: Sequence[WatchEvent], _revision: int) -> None:
        for event in events:
            name = self._name(event.kv.key)
            if event.type is EventType.DELETE:
                self._members.pop(name, None)
                self._incarnations.pop(name, None)
            else:
                try:
                    member = decode_member(event.kv.value)
                except ValueError:
                    log.warning("ignoring malformed membership value of %s", name)
                    continue
                previous = self._members.get(name)
                self._members[name] = member
                self._incarnations[name] = decode_incarnation(event.kv.value)
                self._tell_suspicions(name, previous[1] if previous else None, member[1])
        self._recompute()

    def _tell_suspicions(self, proxy: str, old: HealthMap | None, new: HealthMap) -> None:
        suspected = newly_unhealthy(old, new)
        if not suspected:
            return
        for callback in list(self._suspicion_listeners):
            try:
                callback(proxy, suspected)
            except Exception:
                log.exception("suspicion listener failed")

    def _recompute(self) -> None:
        snapshot = self.snapshot()
        if snapshot.proxies:
            self._emptied_at = None
            self._held_incarnations = dict(self._incarnations)
        elif self._consensus.proxies:
            # Every membership key gone at once: the proxies' leases were all
            # lost together (their keep-alives went to a paused etcd member)
            # and are being replaced. A consensus of no live proxy would call
            # every node unhealthy and refuse every read for that moment; the
            # last one stands for ``empty_hold`` seconds instead. No single
            # proxy's view takes over: one proxy must never fail a node over
            # on its own (its blind spot).
            if self._emptied_at is None:
                self._emptied_at = self._clock.now()
                with contextlib.suppress(RuntimeError):  # no loop: nothing to end it
                    self._hold_task = asyncio.get_running_loop().create_task(self._end_hold())
            if self._holding():
                return
        new = consensus(snapshot)
        old = self._consensus
        if new == old:
            return
        self._consensus = new
        self.version += 1
        self.changed.set()
        for callback in list(self._listeners):
            try:
                callback(old, new)
            except Exception:
                log.exception("consensus listener failed")

        async def wake() -> None:
            async with self._changed:
                self._changed.notify_all()

        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(wake())


def members_view(health: Mapping[str, HealthMap]) -> HealthSnapshot:
    """A snapshot from proxy -> view (all given proxies live); handy in tests and tools."""
    return HealthSnapshot(frozenset(health), dict(health))
