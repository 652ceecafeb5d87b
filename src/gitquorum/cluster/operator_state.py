"""Operator state in etcd: drained nodes and the cluster-wide pause.

Keys (under the cluster prefix, see ``docs/keyspace.md``; no lease, written by
the admin CLI, read by every proxy through a watch)::

    operator/paused                      -> {"since": <unix s>, "reason": "...", "by": "..."}
    operator/drained/<vs>/<node>         -> {"since": <unix s>, "reason": "...", "by": "..."}

* A **drained** node keeps its replicas and keeps taking part in writes, but
  gets no new primaries (failover, lazy election and repository creation skip
  it while any other candidate exists) and no reads while another healthy,
  up-to-date replica can serve them. ``gitquorum drain`` also moves its
  current primaries away.
* **Paused**: the cluster stops acting on its own for maintenance: no
  failover (neither the leader's nor the lazy one at write time), no
  reconciliation and no replication jobs claimed. Health, generations and
  the queue are still recorded and published, so nothing is lost while
  paused and everything resumes from the current state.

Proxies follow the prefix with :class:`OperatorStateView`, so the request
path reads a local frozenset, never etcd.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gitquorum.cluster.keys import Keyspace, check_name
from gitquorum.cluster.mirror import PrefixMirror
from gitquorum.cluster.store import Compare, EventType, KeyValue, Op, Store, WatchEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Mark:
    """When and why an operator set a state (shown by ``gitquorum status``)."""

    since: float
    reason: str = ""
    by: str = ""

    def encode(self) -> bytes:
        value: dict[str, object] = {"since": round(self.since, 3)}
        if self.reason:
            value["reason"] = self.reason
        if self.by:
            value["by"] = self.by
        return json.dumps(value, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, value: bytes) -> Mark:
        try:
            data = json.loads(value)
            return cls(
                float(data.get("since", 0.0)), str(data.get("reason", "")), str(data.get("by", ""))
            )
        except (ValueError, TypeError, AttributeError):
            # A hand-edited value still marks the state: presence is what counts.
            return cls(0.0)


@dataclass(frozen=True)
class OperatorSnapshot:
    """Drained nodes (virtual storage -> node -> mark) and the pause mark, if paused."""

    drained: Mapping[str, Mapping[str, Mark]] = field(default_factory=dict)
    pause: Mark | None = None

    @property
    def paused(self) -> bool:
        return self.pause is not None

    def draining(self, virtual_storage: str) -> frozenset[str]:
        return frozenset(self.drained.get(virtual_storage, {}))


class OperatorKeys:
    """The operator keys of one cluster (built here: only this module writes them)."""

    def __init__(self, keys: Keyspace) -> None:
        self.prefix = f"{keys.prefix}operator/"

    @property
    def paused(self) -> str:
        return f"{self.prefix}paused"

    def drained_prefix(self) -> str:
        return f"{self.prefix}drained/"

    def drained(self, virtual_storage: str, node: str) -> str:
        vs = check_name("virtual storage", virtual_storage)
        return f"{self.drained_prefix()}{vs}/{check_name('node', node)}"

    def parse(self, key: str) -> tuple[str, str] | None:
        """(virtual storage, node) of a drained key; None for any other key."""
        rest = key[len(self.drained_prefix()) :] if key.startswith(self.drained_prefix()) else ""
        vs, sep, node = rest.partition("/")
        if not sep or not vs or not node or "/" in node:
            return None
        return vs, node


def snapshot_of(okeys: OperatorKeys, kvs: Sequence[KeyValue]) -> OperatorSnapshot:
    drained: dict[str, dict[str, Mark]] = {}
    pause: Mark | None = None
    for kv in kvs:
        if kv.key == okeys.paused:
            pause = Mark.decode(kv.value)
            continue
        parsed = okeys.parse(kv.key)
        if parsed is not None:
            drained.setdefault(parsed[0], {})[parsed[1]] = Mark.decode(kv.value)
    return OperatorSnapshot(drained, pause)


class OperatorState:
    """Reads and writes operator state; every write is one idempotent etcd request."""

    def __init__(
        self, store: Store, keys: Keyspace, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.keys = OperatorKeys(keys)
        self.clock = clock

    async def snapshot(self) -> OperatorSnapshot:
        result = await self.store.get_prefix(self.keys.prefix)
        return snapshot_of(self.keys, result.kvs)

    async def _create(self, key: str, mark: Mark) -> bool:
        # Create-if-absent keeps the first mark: re-draining must not reset "since".
        result = await self.store.txn([Compare.absent(key)], [Op.put(key, mark.encode())])
        return result.succeeded

    async def drain(
        self, virtual_storage: str, node: str, *, reason: str = "", by: str = ""
    ) -> bool:
        """Mark ``node`` drained; False when it already was."""
        return await self._create(
            self.keys.drained(virtual_storage, node), Mark(self.clock(), reason, by)
        )

    async def undrain(self, virtual_storage: str, node: str) -> bool:
        """Clear the mark; False when the node was not drained."""
        return await self.store.delete(self.keys.drained(virtual_storage, node)) > 0

    async def pause(self, *, reason: str = "", by: str = "") -> bool:
        """Pause automatic failover and repair; False when already paused."""
        return await self._create(self.keys.paused, Mark(self.clock(), reason, by))

    async def resume(self) -> bool:
        """Lift the pause; False when the cluster was not paused."""
        return await self.store.delete(self.keys.paused) > 0


SnapshotListener = Callable[[OperatorSnapshot, OperatorSnapshot], None]


class OperatorStateView(Collector):
    """Operator state kept current by a watch; ``draining`` and ``paused`` are O(1).

    With a registry it also exports ``gitquorum_operator_paused`` and
    ``gitquorum_node_draining``: maintenance mode left on by mistake is worth
    an alert, and a scrape shows that this proxy has applied a change.
    """

    def __init__(
        self, store: Store, keys: Keyspace, *, registry: CollectorRegistry | None = None
    ) -> None:
        self.okeys = OperatorKeys(keys)
        self._kvs: dict[str, KeyValue] = {}
        self._snapshot = OperatorSnapshot()
        self._draining: dict[str, frozenset[str]] = {}
        self._listeners: list[SnapshotListener] = []
        self._mirror = PrefixMirror(store, self.okeys.prefix, reset=self._reset, apply=self._apply)
        if registry is not None:
            registry.register(self)

    async def start(self) -> None:
        """Load the current state (raises StoreUnavailable), then follow the watch."""
        await self._mirror.start()

    async def close(self) -> None:
        await self._mirror.close()

    @property
    def snapshot(self) -> OperatorSnapshot:
        return self._snapshot

    @property
    def revision(self) -> int:
        return self._mirror.revision

    async def wait_for_revision(self, revision: int) -> None:
        await self._mirror.wait_for_revision(revision)

    def draining(self, virtual_storage: str) -> frozenset[str]:
        return self._draining.get(virtual_storage, frozenset())

    def paused(self) -> bool:
        return self._snapshot.pause is not None

    def add_listener(self, callback: SnapshotListener) -> None:
        """``callback(old, new)`` whenever the operator state changes."""
        self._listeners.append(callback)

    def _reset(self, kvs: Sequence[KeyValue], _revision: int) -> None:
        self._kvs = {kv.key: kv for kv in kvs}
        self._rebuild()

    def _apply(self, events: Sequence[WatchEvent], _revision: int) -> None:
        for event in events:
            if event.type is EventType.DELETE:
                self._kvs.pop(event.kv.key, None)
            else:
                self._kvs[event.kv.key] = event.kv
        self._rebuild()

    def _rebuild(self) -> None:
        old = self._snapshot
        new = snapshot_of(self.okeys, list(self._kvs.values()))
        self._snapshot = new
        self._draining = {vs: new.draining(vs) for vs in new.drained}
        if new == old:
            return
        log.info(
            "operator state changed: paused=%s drained=%s",
            new.paused,
            {vs: sorted(nodes) for vs, nodes in new.drained.items()},
        )
        for callback in list(self._listeners):
            try:
                callback(old, new)
            except Exception:
                log.exception("operator state listener failed")

    # -- Prometheus collector --------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot
        paused = GaugeMetricFamily(
            "gitquorum_operator_paused",
            "1 while an operator has paused automatic failover and repair.",
        )
        paused.add_metric([], 1.0 if snapshot.paused else 0.0)
        yield paused
        draining = GaugeMetricFamily(
            "gitquorum_node_draining",
            "1 for each node an operator has drained (no new primaries, no reads).",
            labels=["virtual_storage", "node"],
        )
        for vs, nodes in sorted(snapshot.drained.items()):
            for node in sorted(nodes):
                draining.add_metric([vs, node], 1.0)
        yield draining


__all__ = [
    "Mark",
    "OperatorKeys",
    "OperatorSnapshot",
    "OperatorState",
    "OperatorStateView",
    "snapshot_of",
]
