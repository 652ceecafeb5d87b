"""Network paths of the fault suite and the nemeses that cut, slow and degrade them.

:class:`Paths` puts a relay (:mod:`tests.faults.relay`) on every path a
proxy depends on, so that each can be hit alone:

* ``<proxy>-><node>`` -- one proxy's path to one node (its gRPC channel);
* ``<proxy>-><etcd member>`` -- one proxy's path to one etcd member (all of a
  proxy's together: the proxy cut off from etcd only);
* ``nodes-><proxy>`` -- the vote dial-back: every node reaches the proxy
  through it, because the proxy's ``advertise`` address (what it puts into a
  write's transaction metadata for the nodes' ``VoteTransaction`` calls) is
  this relay's. The nodes share one such path per proxy: the address is one
  per proxy. A proxy of N worker processes (``workers``) has one per worker,
  ``nodes-><proxy>/<i>``: each worker takes votes on a fixed port of its own
  (``vote_listen``) and advertises this relay (``vote_advertise``); the
  dial-back nemesis cuts them together.

Clients reach the proxies directly, and etcd members reach each other
directly. A path's condition is the sum of the layers put on it
(:meth:`Paths.apply`, one per nemesis): cut if any layer cuts it, latencies
add up, losses compound; removing a layer restores the rest. What "cut",
"latency" and "loss" mean on a TCP path is in :mod:`tests.faults.relay`.

The relays run in a child process (the relay hub) so that the cluster's
traffic does not share the test process's GIL with the workload;
``GITQUORUM_RELAY_HUB=thread`` runs them on a thread instead (for comparing).
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from gitquorum.config import parse_address
from gitquorum.worker_pool import join_address
from tests.faults.base import Fault, Nemesis
from tests.faults.relay import Hub, Shape, open_hub
from tests.harness.pooled import fixed_ports

if TYPE_CHECKING:
    from tests.faults.cluster import FaultCluster
    from tests.faults.context import RunContext

HUB_ENV = "GITQUORUM_RELAY_HUB"


def node_path(proxy: str, node: str) -> str:
    return f"{proxy}->{node}"


def etcd_path(proxy: str, member: str) -> str:
    return f"{proxy}->{member}"


def dialback_path(proxy: str, worker: int | None = None) -> str:
    return f"nodes->{proxy}" if worker is None else f"nodes->{proxy}/{worker}"


def merge(layers: list[Shape]) -> Shape:
    """The condition of a path carrying every one of ``layers``."""
    kept = 1.0
    for layer in layers:
        kept *= 1.0 - layer.loss
    return Shape(
        cut=any(layer.cut for layer in layers),
        latency=sum(layer.latency for layer in layers),
        loss=1.0 - kept if layers else 0.0,
        stall=max((layer.stall for layer in layers), default=Shape.stall),
    )


def _split_scheme(address: str) -> tuple[str, str]:
    scheme, sep, rest = address.rpartition("://")
    return (scheme + sep, rest)


class Paths:
    """Every path of a :class:`~tests.faults.cluster.FaultCluster`, behind relays."""

    def __init__(self, mode: str | None = None) -> None:
        self.mode = mode or os.environ.get(HUB_ENV, "process")
        self.hub: Hub | None = None
        self.addresses: dict[str, str] = {}  # path -> relay address
        self.proxies: dict[str, list[str]] = {}  # proxy -> its paths
        self.etcd: dict[str, list[str]] = {}  # proxy -> its paths to etcd members
        self.dialback: dict[str, list[str]] = {}  # proxy -> its vote paths (one per worker)
        self._layers: dict[str, dict[str, Shape]] = {}  # path -> owner -> layer
        self._lock = threading.Lock()

    # -- set-up, from FaultCluster ------------------------------------------------------

    def proxy_config(
        self, cluster: FaultCluster, proxy: str, config: dict[str, object]
    ) -> dict[str, object]:
        """``config`` with the proxy's nodes, etcd endpoints and vote address relayed."""
        if self.hub is None:
            logs = cluster.base / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            self.hub = open_hub(self.mode, logs / "relay-hub.log")
        assert cluster.etcd is not None
        own = self.proxies.setdefault(proxy, [])
        storages: Any = config["virtual_storages"]
        for storage in storages:
            for entry in storage["nodes"]:
                entry["address"] = self._relay(
                    own, node_path(proxy, entry["storage"]), entry["address"]
                )
        etcd: Any = config["etcd"]
        self.etcd[proxy] = [etcd_path(proxy, member.name) for member in cluster.etcd.members]
        etcd["endpoints"] = [
            self._relay(own, name, endpoint)
            for name, endpoint in zip(self.etcd[proxy], etcd["endpoints"], strict=True)
        ]
        workers = config.get("workers", 1)
        if isinstance(workers, int) and workers > 1:
            # Fixed vote ports, known before the proxy starts, so each can be
            # relayed; below the ephemeral range, so a restart can bind them again.
            host, _ = parse_address(str(config["listen"]))
            votes = [join_address(host, port) for port in fixed_ports(workers)]
            self.dialback[proxy] = [dialback_path(proxy, i) for i in range(workers)]
            config["vote_listen"] = votes
            config["vote_advertise"] = [
                self._relay(own, name, vote)
                for name, vote in zip(self.dialback[proxy], votes, strict=True)
            ]
        else:
            self.dialback[proxy] = [dialback_path(proxy)]
            config["advertise"] = self._relay(own, dialback_path(proxy), str(config["listen"]))
        return config

    def _relay(self, own: list[str], name: str, upstream: str) -> str:
        scheme, address = _split_scheme(upstream)
        if name not in self.addresses:
            assert self.hub is not None
            answer = self.hub.call({"op": "add", "name": name, "upstream": address})
            self.addresses[name] = answer["address"]
            own.append(name)
        return scheme + self.addresses[name]

    # -- which paths ----------------------------------------------------------------------

    def to_node(self, node: str, proxies: list[str] | None = None) -> list[str]:
        """The paths from ``proxies`` (default: every proxy) to ``node``."""
        names = [node_path(p, node) for p in (proxies if proxies is not None else self.proxies)]
        return [n for n in names if n in self.addresses]

    def to_proxy(self, proxy: str) -> list[str]:
        """The nodes' vote paths to ``proxy`` (one per worker process)."""
        return list(self.dialback[proxy])

    def to_etcd(self, proxy: str) -> list[str]:
        """``proxy``'s paths to every etcd member."""
        return list(self.etcd[proxy])

    # -- control (blocking, milliseconds: call through asyncio.to_thread from a loop) -----

    def apply(self, owner: str, names: list[str], layer: Shape) -> None:
        """Put ``owner``'s ``layer`` on the paths ``names`` (replacing its earlier one)."""
        with self._lock:
            for name in names:
                self._layers.setdefault(name, {})[owner] = layer
            self._push(names, reset=False)

    def remove(self, owner: str, reset: bool = False) -> list[str]:
        """Take ``owner``'s layers off; ``reset`` aborts connections a cut froze."""
        with self._lock:
            names = [n for n, layers in self._layers.items() if layers.pop(owner, None)]
            self._push(names, reset=reset)
            return names

    def cut(self, *names: str, owner: str = "manual") -> None:
        self.apply(owner, list(names), Shape(cut=True))

    def heal(self, owner: str = "manual", reset: bool = False) -> None:
        self.remove(owner, reset)

    def slow(self, *names: str, latency: float, owner: str = "manual") -> None:
        self.apply(owner, list(names), Shape(latency=latency))

    def lossy(self, *names: str, loss: float, stall: float = 0.2, owner: str = "manual") -> None:
        self.apply(owner, list(names), Shape(loss=loss, stall=stall))

    def shape(self, name: str) -> Shape:
        with self._lock:
            return merge(list(self._layers.get(name, {}).values()))

    def _push(self, names: list[str], reset: bool) -> None:
        assert self.hub is not None
        by_shape: dict[Shape, list[str]] = {}
        for name in names:
            by_shape.setdefault(merge(list(self._layers.get(name, {}).values())), []).append(name)
        for shape, group in by_shape.items():
            fields = {k: getattr(shape, k) for k in ("cut", "latency", "loss", "stall")}
            self.hub.call({"op": "set", "names": group, "shape": fields, "reset": reset})

    def stats(self) -> dict[str, Any]:
        assert self.hub is not None
        return self.hub.call({"op": "stats"})

    def cpu_seconds(self) -> float:
        return self.hub.cpu_seconds() if self.hub is not None else 0.0

    def close(self) -> None:
        if self.hub is not None:
            self.hub.close()
            self.hub = None


# -- the nemeses --------------------------------------------------------------------------------


class PathNemesis(Nemesis):
    """A fault on some paths: a layer owned by this nemesis, removed by ``heal``."""

    kind = "network"
    # Whether the heal aborts connections the cut froze (else they resume).
    reset: ClassVar[bool] = False

    def __init__(self) -> None:
        self.owner = f"{type(self).__name__}-{id(self)}"

    def applicable(self, run: RunContext) -> bool:
        return isinstance(run.cluster.paths, Paths) and run.cluster.paths.hub is not None

    async def _apply(self, run: RunContext, names: list[str], layer: Shape) -> None:
        await asyncio.to_thread(run.cluster.paths.apply, self.owner, names, layer)

    async def heal(self, run: RunContext) -> None:
        await asyncio.to_thread(run.cluster.paths.remove, self.owner, self.reset)


async def _pick_node(run: RunContext, primary_share: float) -> str:
    """A repository's primary with probability ``primary_share``, else any node."""
    roll = run.rng.random()
    repo = run.pick_repo()
    other = run.rng.choice([n.name for n in run.cluster.nodes])
    if roll < primary_share:
        return await asyncio.to_thread(run.primary, repo)
    return other


def _pick_proxy(run: RunContext) -> str:
    names = sorted(p.name for p in run.live_proxies()) or sorted(run.cluster.paths.proxies)
    return run.rng.choice(names)


class ProxyToNodeCut(PathNemesis):
    """Every proxy's path to one node cut: the node looks dead to everyone, yet runs."""

    name = "proxy-to-node-cut"

    async def inject(self, run: RunContext) -> Fault:
        node = await _pick_node(run, 0.5)
        names = run.cluster.paths.to_node(node)
        fault = run.fault(self, node, unreachable=tuple(_pairs(names)))
        await self._apply(run, names, Shape(cut=True))
        return fault


class OneProxyToNodeCut(PathNemesis):
    """One proxy's path to one node (most often a primary) cut; the others see it."""

    name = "one-proxy-to-node-cut"

    async def inject(self, run: RunContext) -> Fault:
        node = await _pick_node(run, 0.75)
        proxy = _pick_proxy(run)
        names = [node_path(proxy, node)]
        fault = run.fault(self, names[0], unreachable=tuple(_pairs(names)))
        await self._apply(run, names, Shape(cut=True))
        return fault


class DialBackCut(PathNemesis):
    """The nodes' vote path to one proxy cut: its writes get no votes (fail or time out)."""

    name = "dial-back-cut"

    async def inject(self, run: RunContext) -> Fault:
        proxy = _pick_proxy(run)
        names = run.cluster.paths.to_proxy(proxy)
        fault = run.fault(self, proxy, detail="votes from every node to this proxy blackholed")
        await self._apply(run, names, Shape(cut=True))
        return fault


class ProxyEtcdCut(PathNemesis):
    """One proxy cut off from every etcd member; its nodes and clients still reach it.

    Held past the stale-read limit (5 s) and the lease TTL: the proxy refuses
    reads, loses its membership (and leadership), and fails writes closed. Its
    clients' failed reads are excluded (``proxies_down``); the other proxies
    must serve as before.
    """

    name = "proxy-etcd-cut"
    hold = (7.0, 12.0)

    async def inject(self, run: RunContext) -> Fault:
        proxy = _pick_proxy(run)
        names = run.cluster.paths.to_etcd(proxy)
        # The cut proxy serves reads from its cache up to the stale-read limit
        # (5 s): its failed reads before 3 s are violations.
        fault = run.fault(
            self, proxy, proxies_down=(proxy,), detail="cut from etcd only", excuse_after=3.0
        )
        await self._apply(run, names, Shape(cut=True))
        return fault


class SlowPath(PathNemesis):
    """50-200 ms added each way on one proxy's path to one node."""

    name = "slow-path"

    async def inject(self, run: RunContext) -> Fault:
        node = await _pick_node(run, 0.5)
        proxy = _pick_proxy(run)
        latency = round(run.rng.uniform(0.05, 0.2), 3)
        names = [node_path(proxy, node)]
        fault = run.fault(self, names[0], detail=f"+{latency * 1000:.0f} ms each way")
        await self._apply(run, names, Shape(latency=latency))
        return fault


class LossyPath(PathNemesis):
    """One proxy's path to one node loses 2-10 % of its chunks (each a 200-400 ms stall)."""

    name = "lossy-path"

    async def inject(self, run: RunContext) -> Fault:
        node = await _pick_node(run, 0.5)
        proxy = _pick_proxy(run)
        loss = round(run.rng.uniform(0.02, 0.1), 3)
        stall = round(run.rng.uniform(0.2, 0.4), 3)
        names = [node_path(proxy, node)]
        fault = run.fault(
            self, names[0], detail=f"{loss:.1%} of chunks stalled {stall * 1000:.0f} ms"
        )
        await self._apply(run, names, Shape(loss=loss, stall=stall))
        return fault


def _pairs(names: list[str]) -> list[tuple[str, str]]:
    """(proxy, node) of each ``<proxy>-><node>`` path."""
    return [(a, b) for a, _, b in (n.partition("->") for n in names)]


NEMESES: list[type[Nemesis]] = [
    ProxyToNodeCut,
    OneProxyToNodeCut,
    DialBackCut,
    ProxyEtcdCut,
    SlowPath,
    LossyPath,
]

__all__ = ["NEMESES", "Paths", "merge"]
