"""Process nemeses: kill -9 and SIGSTOP of nodes, proxies and etcd members,
etcd quorum loss, a primary lost while a secondary is outdated, restart
storms, and operator actions (switchover, replication factor) under load."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import ClassVar

from tests.chaos import nemesis as chaos_nemesis
from tests.faults.base import Fault, Nemesis
from tests.faults.context import RunContext
from tests.harness.node import NodeProcess


def _restart_node(node: NodeProcess) -> None:
    node.kill()
    node.start(timeout=60)


class _NodeNemesis(Nemesis):
    kind = "process"
    role: ClassVar[str] = "primary"  # primary | secondary

    def __init__(self) -> None:
        self.node = ""

    def _pick(self, run: RunContext) -> str:
        record = run.record(run.pick_repo())
        assert record.primary is not None
        if self.role == "primary":
            return record.primary
        return run.rng.choice([n for n in record.assigned if n != record.primary])


class KillPrimary(_NodeNemesis):
    name = "kill-primary"

    async def inject(self, run: RunContext) -> Fault:
        self.node = await asyncio.to_thread(self._pick, run)
        fault = run.fault(self, self.node, nodes_down=(self.node,))
        await asyncio.to_thread(run.node(self.node).kill)
        return fault

    async def heal(self, run: RunContext) -> None:
        await asyncio.to_thread(run.node(self.node).start, 60)


class KillSecondary(KillPrimary):
    name = "kill-secondary"
    role = "secondary"


class PausePrimary(_NodeNemesis):
    name = "pause-primary"

    async def inject(self, run: RunContext) -> Fault:
        self.node = await asyncio.to_thread(self._pick, run)
        fault = run.fault(self, self.node, nodes_down=(self.node,))
        run.node(self.node).pause()
        return fault

    async def heal(self, run: RunContext) -> None:
        run.node(self.node).resume()


class PauseSecondary(PausePrimary):
    name = "pause-secondary"
    role = "secondary"


class KillPrimaryWhileSecondaryOutdated(_NodeNemesis):
    """A secondary misses writes (paused), comes back outdated and catching up,
    and the primary is killed right then, with writes in flight: the failover
    must pick the replica that kept every write, the outdated one must catch up
    from it, and no write acknowledged meanwhile may be lost."""

    name = "kill-primary-secondary-outdated"
    hold = (5.0, 8.0)

    def __init__(self) -> None:
        super().__init__()
        self.outdated = ""
        self._fault: Fault | None = None
        self._killed = 0.0

    async def inject(self, run: RunContext) -> Fault:
        repo = run.pick_repo()
        record = await asyncio.to_thread(run.record, repo)
        assert record.primary is not None
        self.node = record.primary
        self.outdated = run.rng.choice([n for n in record.assigned if n != record.primary])
        fault = run.fault(
            self, f"{self.node} (outdated: {self.outdated})", nodes_down=(self.node, self.outdated)
        )
        # Each node is down only while it is stopped (``nodes_down_during``):
        # the secondary while paused, the primary from its kill to the heal.
        paused = time.monotonic()
        run.node(self.outdated).pause()
        try:
            # Writes go on without it: it is outdated once some are acknowledged.
            await run.acknowledged(10, 20.0)
        finally:
            run.node(self.outdated).resume()
            fault.nodes_down_during[self.outdated] = [(paused, time.monotonic())]
        await run.acknowledged(2, 10.0)
        self._fault, self._killed = fault, time.monotonic()
        await asyncio.to_thread(run.node(self.node).kill)
        # Repositories whose only up-to-date replica left alive is not the third
        # node cannot serve until the primary is back: expected, not a violation.
        third = [n for n in record.assigned if n not in (self.node, self.outdated)]
        records = await asyncio.to_thread(run.records)
        fault.repos_down = tuple(
            repo
            for repo, r in records.items()
            if not any(g == r.generation for n, g in r.replicas if n in third or n == self.outdated)
        )
        return fault

    async def heal(self, run: RunContext) -> None:
        await asyncio.to_thread(run.node(self.node).start, 60)
        if self._fault is not None:
            # Until then (a start that failed) the primary is down for the whole fault.
            self._fault.nodes_down_during[self.node] = [(self._killed, time.monotonic())]
            self._fault = None


class RestartStorm(Nemesis):
    """Every node restarted (kill -9, start) one after the other, twice. Each
    restart is its own fault (one node down at a time), logged under this name."""

    name = "node-restart-storm"
    kind = "process"
    hold = (0.5, 1.0)

    async def inject(self, run: RunContext) -> Fault:
        faults: list[Fault] = []
        for _ in range(2):
            for node in run.cluster.nodes:
                fault = run.fault(self, node.name, nodes_down=(node.name,))
                faults.append(fault)
                await asyncio.to_thread(_restart_node, node)
                fault.end = time.monotonic()
                await asyncio.sleep(run.rng.uniform(0.2, 1.0))
        # The last restart is the one the run closes at the heal.
        return faults[-1]

    async def heal(self, run: RunContext) -> None:
        return None


class _ProxyNemesis(Nemesis):
    kind = "process"
    leader: ClassVar[bool] = True
    hold = (4.0, 7.0)

    def __init__(self) -> None:
        self.proxy = ""

    def _pick(self, run: RunContext) -> str:
        leader = run.leader()
        names = [p.name for p in run.live_proxies()]
        if self.leader and leader in names:
            return leader
        return run.rng.choice([n for n in names if n != leader] or names)


class KillLeaderProxy(_ProxyNemesis):
    name = "kill-leader-proxy"

    async def inject(self, run: RunContext) -> Fault:
        self.proxy = await asyncio.to_thread(self._pick, run)
        fault = run.fault(self, self.proxy, proxies_down=(self.proxy,))
        await asyncio.to_thread(run.proxy(self.proxy).kill)
        return fault

    async def heal(self, run: RunContext) -> None:
        await asyncio.to_thread(run.proxy(self.proxy).start, 60)


class KillFollowerProxy(KillLeaderProxy):
    name = "kill-follower-proxy"
    leader = False


class PauseLeaderProxyPastLease(_ProxyNemesis):
    """The leader proxy stopped past its election lease (3 s in the suite), then
    resumed: it must notice it lost leadership and its replication claims, and
    everything it does after resuming must be fenced."""

    name = "pause-leader-proxy"
    hold = (5.0, 8.0)

    async def inject(self, run: RunContext) -> Fault:
        self.proxy = await asyncio.to_thread(self._pick, run)
        fault = run.fault(self, self.proxy, proxies_down=(self.proxy,))
        run.proxy(self.proxy).pause()
        return fault

    async def heal(self, run: RunContext) -> None:
        run.proxy(self.proxy).resume()


class PauseProxyMidRepair(Nemesis):
    """A proxy stopped past its lease TTL while one of its replication workers
    copies into a replica, then resumed: the job is taken over by another
    proxy and the resumed worker must record nothing (its claim is gone).

    To have copies to interrupt, a node is first paused long enough to miss
    writes; the proxy paused is the one holding a replication job's lock."""

    name = "pause-proxy-mid-repair"
    kind = "process"
    hold = (5.0, 8.0)

    def __init__(self) -> None:
        self.proxy = ""

    async def inject(self, run: RunContext) -> Fault:
        node = run.rng.choice(run.cluster.nodes)
        # Open from the start: the node's pause is part of the fault, and the
        # node is down only while paused (``nodes_down_during``).
        fault = run.fault(self, "?", nodes_down=(node.name,))
        paused = time.monotonic()
        node.pause()
        try:
            await run.acknowledged(8, 15.0)
        finally:
            node.resume()
            fault.nodes_down_during[node.name] = [(paused, time.monotonic())]
        holder = ""
        deadline = asyncio.get_running_loop().time() + 15.0
        while not holder and asyncio.get_running_loop().time() < deadline:
            try:
                workers = await asyncio.to_thread(chaos_nemesis.locks, run.cluster)
            except RuntimeError:
                workers = {}
            holder = next((w.split("/")[0] for w in workers.values() if w), "")
            if not holder:
                await asyncio.sleep(0.05)
        self.proxy = holder or (await asyncio.to_thread(run.leader)) or "proxy1"
        fault.target = self.proxy
        fault.proxies_down = (self.proxy,)
        fault.detail = f"{node.name} paused to outdate replicas; " + (
            "proxy held a replication job" if holder else "no job seen: leader paused"
        )
        run.proxy(self.proxy).pause()
        return fault

    async def heal(self, run: RunContext) -> None:
        run.proxy(self.proxy).resume()


class _EtcdNemesis(Nemesis):
    kind = "etcd"

    def __init__(self) -> None:
        self.members: list[int] = []

    def applicable(self, run: RunContext) -> bool:
        return run.cluster.etcd is not None and len(run.cluster.etcd.members) >= 3

    def _etcd(self, run: RunContext):  # type: ignore[no-untyped-def]
        assert run.cluster.etcd is not None
        return run.cluster.etcd


class KillEtcdMember(_EtcdNemesis):
    name = "kill-etcd-member"

    async def inject(self, run: RunContext) -> Fault:
        etcd = self._etcd(run)
        leader = await asyncio.to_thread(etcd.leader_index)
        # Half the time the raft leader (an election follows).
        index = leader if leader is not None and run.rng.random() < 0.5 else run.rng.randrange(3)
        self.members = [index]
        fault = run.fault(self, f"etcd{index}" + (" (raft leader)" if index == leader else ""))
        await asyncio.to_thread(etcd.kill, index)
        return fault

    async def heal(self, run: RunContext) -> None:
        for index in self.members:
            await asyncio.to_thread(self._etcd(run).restart, index, 60)


class PauseEtcdMember(_EtcdNemesis):
    name = "pause-etcd-member"

    async def inject(self, run: RunContext) -> Fault:
        index = run.rng.randrange(3)
        self.members = [index]
        fault = run.fault(self, f"etcd{index}")
        await asyncio.to_thread(self._etcd(run).pause, index)
        return fault

    async def heal(self, run: RunContext) -> None:
        for index in self.members:
            await asyncio.to_thread(self._etcd(run).resume, index)


class EtcdQuorumLoss(_EtcdNemesis):
    """Two of three etcd members killed: writes fail closed, reads go on from
    the cached state up to the stale-read limit, then are refused."""

    name = "etcd-quorum-loss"
    reads_available = False
    hold = (4.0, 9.0)

    async def inject(self, run: RunContext) -> Fault:
        self.members = sorted(run.rng.sample(range(3), 2))
        # Reads go on from the proxies' cache up to the stale-read limit (5 s):
        # failed reads before 3 s are violations.
        fault = run.fault(self, ",".join(f"etcd{i}" for i in self.members), excuse_after=3.0)
        for index in self.members:
            await asyncio.to_thread(self._etcd(run).kill, index)
        return fault

    async def heal(self, run: RunContext) -> None:
        for index in self.members:
            await asyncio.to_thread(self._etcd(run).restart, index, 60)


def _cli(run: RunContext, *args: str) -> dict[str, object]:
    proxy = run.live_proxies()[0]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gitquorum.cli.main",
            *args,
            "--config",
            str(proxy.config_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"gitquorum {' '.join(args)}: {proc.stdout}{proc.stderr}")
    answer: dict[str, object] = json.loads(proc.stdout or "{}")
    return answer


class Switchover(Nemesis):
    """A planned switchover of a repository to a valid secondary, under load."""

    name = "switchover"
    kind = "operations"
    hold = (1.0, 2.0)

    async def inject(self, run: RunContext) -> Fault:
        for _ in range(10):
            repo = run.pick_repo()
            record = await asyncio.to_thread(run.record, repo)
            targets = [
                n for n, g in record.replicas if n != record.primary and g == record.generation
            ]
            if targets:
                target = run.rng.choice(targets)
                fault = run.fault(self, f"{repo}: {record.primary} -> {target}")
                try:
                    await asyncio.to_thread(
                        _cli, run, "switchover", "--repository", repo, "--to", target
                    )
                except RuntimeError as exc:
                    # Refused (the target fell behind meanwhile): an answer, not a fault.
                    fault.detail = str(exc)[:200]
                return fault
            await asyncio.sleep(0.5)
        return run.fault(self, "no repository with a valid secondary")

    async def heal(self, run: RunContext) -> None:
        return None


class ReplicationFactorChange(Nemesis):
    """A repository's replication factor lowered to 2 under load, then raised to 3."""

    name = "replication-factor-change"
    kind = "operations"
    hold = (3.0, 6.0)

    def __init__(self) -> None:
        self.repo = ""

    async def inject(self, run: RunContext) -> Fault:
        self.repo = run.pick_repo()
        fault = run.fault(self, f"{self.repo}: 3 -> 2 -> 3")
        await asyncio.to_thread(
            _cli,
            run,
            "set-replication-factor",
            "--repository",
            self.repo,
            "--replication-factor",
            "2",
        )
        return fault

    async def heal(self, run: RunContext) -> None:
        await asyncio.to_thread(
            _cli,
            run,
            "set-replication-factor",
            "--repository",
            self.repo,
            "--replication-factor",
            "3",
        )


NEMESES: list[type[Nemesis]] = [
    KillPrimary,
    KillSecondary,
    PausePrimary,
    PauseSecondary,
    KillPrimaryWhileSecondaryOutdated,
    RestartStorm,
    KillLeaderProxy,
    KillFollowerProxy,
    PauseLeaderProxyPastLease,
    PauseProxyMidRepair,
    KillEtcdMember,
    PauseEtcdMember,
    EtcdQuorumLoss,
    Switchover,
    ReplicationFactorChange,
]
