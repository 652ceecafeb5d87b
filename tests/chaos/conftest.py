"""Chaos tests: a real cluster, a recorded workload, one nemesis per test, a checker.

Each test gets its own cluster (etcd, three nodes, two proxies, replication
factor 3): a fault must not leak into the next test. :class:`Scenario` runs
the common script -- seed a repository, start the workload, (the test injects
its fault and heals it), stop the workload, wait (bounded) for the replicas
to converge, then check every invariant of ``checker`` and report the time
from the fault to the first acknowledged write.

Nodes listed in ``relayed`` are reached by the proxies through a
:class:`~tests.chaos.nemesis.Relay` (the relay's address is the node's address
in the proxies' configuration), so a test can cut them off the network.

Blocking calls (process control, polling) run in threads so the workload's
event loop keeps going while a fault is injected. Timings are deadlines, not
sleeps: the machine running these may be loaded.

Set ``GITQUORUM_CHAOS_RESULTS=/path/file.jsonl`` to collect each test's
measurements (time from fault to first acknowledged write, operation counts).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.chaos import checker
from tests.chaos.nemesis import FaultLog, Relay
from tests.chaos.workload import SHARED, Chain, History, Op, Settings, Workload, build_chain
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.integration.proxy.helpers import samples, scrape

CHAIN_LENGTH = 3000
# Repairs start within a second. The verifier stays out of the way: replicas must
# converge through the write path and replication alone, and the convergence check
# sees any divergence.
PROXY_SETTINGS: dict[str, object] = {
    "replication": {"reconcile_interval": "1s", "verify_interval": "10m"},
}
# For faults that leave replicas differing at equal generations, which only the
# verifier (the up-to-date replicas compared, settled by majority) finds and
# repairs: it checks every replica every few seconds.
VERIFYING: dict[str, object] = {
    "replication": {"reconcile_interval": "1s", "verify_interval": "3s"},
}
DIVERGED = "replica differs from the primary"
CONVERGE_TIMEOUT = 45.0
# After convergence, how long every proxy may take to serve reads again.
SERVE_TIMEOUT = 15.0
START_ATTEMPTS = 3
STEADY_ATTEMPTS = 5


@dataclass
class ChaosCluster(Cluster):
    """A ``Cluster`` whose proxies reach some nodes through relays."""

    relayed: tuple[str, ...] = ()
    relays: dict[str, Relay] = field(default_factory=dict)

    def proxy_config(self, name: str, port: int) -> dict[str, object]:
        config = super().proxy_config(name, port)
        storages: Any = config["virtual_storages"]
        for entry in storages[0]["nodes"]:
            node = entry["storage"]
            if node in self.relayed:
                if node not in self.relays:
                    self.relays[node] = Relay(self.node(node).address, node).start()
                entry["address"] = self.relays[node].address
        return config

    def close(self) -> None:
        super().close()
        for relay in self.relays.values():
            relay.close()


async def until(
    predicate: Callable[[], Any],
    within: float,
    what: str,
    explain: Callable[[], str] | None = None,
) -> Any:
    """Poll ``predicate`` (run in a thread) until truthy, or fail after ``within``
    seconds; ``explain`` says, in the failure, what was seen last (a CI log
    keeps little else)."""
    deadline = time.monotonic() + within
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f": {await asyncio.to_thread(explain)}" if explain is not None else ""
            raise TimeoutError(f"timed out after {within}s waiting for {what}{seen}")
        await asyncio.sleep(0.1)


class Scenario:
    def __init__(self, base: Path, chain: Chain, name: str) -> None:
        self.base = base
        self.chain = chain
        self.name = name
        self.cluster: ChaosCluster | None = None
        self.history = History()
        self.faults = FaultLog()
        self.relative_path = f"chaos/{uuid.uuid4().hex}.git"
        self.workload: Workload | None = None
        self.seed_refs: dict[str, str] = {}
        self.measurements: dict[str, Any] = {}

    # -- set-up ----------------------------------------------------------------------------

    async def start(
        self,
        *,
        etcd_size: int = 1,
        relayed: tuple[str, ...] = (),
        settings: dict[str, object] | None = None,
    ) -> ChaosCluster:
        for attempt in range(1, START_ATTEMPTS + 1):
            cluster = ChaosCluster(
                self.base / f"cluster{attempt}" if attempt > 1 else self.base / "cluster",
                nodes_count=3,
                proxies_count=2,
                replication_factor=3,
                etcd_size=etcd_size,
                proxy_settings={**PROXY_SETTINGS, **(settings or {})},
                relayed=relayed,
            )
            try:
                await asyncio.to_thread(cluster.start)
                break
            except RuntimeError as exc:
                # A free port picked by the harness can be taken by another process
                # before the node binds it (other test suites share the machine).
                if "Address already in use" not in str(exc) or attempt == START_ATTEMPTS:
                    raise
        self.cluster = cluster
        await self._seed()
        return cluster

    async def _seed(self) -> None:
        assert self.cluster is not None
        proxy = self.cluster.proxies[0].address
        async with grpc.aio.insecure_channel(proxy) as channel:
            await gitrepo.seed(
                channel, checker.repository(self.relative_path), self.chain.path, self.base
            )
        self.seed_refs = gitrepo.refs(self.chain.path)
        await until(
            lambda: checker.converged(self.cluster, proxy, self.relative_path),  # type: ignore[arg-type]
            CONVERGE_TIMEOUT,
            "the seeded repository on every node",
        )

    @property
    def proxies(self) -> list[str]:
        assert self.cluster is not None
        return [p.address for p in self.cluster.proxies if p.alive()]

    def primary(self) -> str:
        return checker.metadata(self.proxies[0], self.relative_path).primary

    async def steady(self, writes: int = 3) -> str:
        """Let every replica catch up, then resume writing; returns the primary.

        Under a continuous stream of writes to one repository an outdated replica
        never catches up (each replication round ends behind the latest write, see
        docs/failover.md), and concurrent compare-and-swaps of one branch leave a
        secondary outdated now and then. A fault meant to be survived by failover
        is injected only once the writers are back at work on a repository whose
        secondaries are all valid primaries.
        """
        assert self.cluster is not None and self.workload is not None
        for _ in range(STEADY_ATTEMPTS):
            self.workload.writing.clear()
            try:
                await until(
                    lambda: checker.converged(self.cluster, self.proxies[0], self.relative_path),  # type: ignore[arg-type]
                    CONVERGE_TIMEOUT,
                    "every replica up to date before the fault",
                )
            finally:
                self.workload.writing.set()
            await self.acknowledged(writes, 30, "writes before the fault", after=time.monotonic())
            # The writes since may have outdated the secondaries again (contended
            # compare-and-swaps, more frequent on a loaded machine): the fault
            # goes in only while a secondary is still a valid primary.
            if await asyncio.to_thread(self._valid_secondary):
                return self.primary()
        raise TimeoutError(f"no valid secondary after {STEADY_ATTEMPTS} rounds of catching up")

    def _valid_secondary(self) -> bool:
        return bool(self.valid_secondaries())

    def valid_secondaries(self) -> list[str]:
        """Secondaries that are valid primaries now (healthy, up to date, assigned)."""
        meta = checker.metadata(self.proxies[0], self.relative_path)
        return sorted(
            r.storage for r in meta.replicas if r.storage != meta.primary and r.valid_primary
        )

    def record_external_write(self, kind: str, ref: str, value: str) -> None:
        """A write the test made itself (acknowledged), for the checker."""
        now = time.monotonic()
        self.history.add(Op("test", kind, ref, value, now, now, "ok"))

    def push_in_flight(self) -> bool:
        return any(o.kind == "push" and not o.outcome for o in self.history.ops)

    def unhealthy(self, node: str) -> bool:
        """``node`` is unhealthy by the consensus of the proxies (as reported by one of them)."""
        meta = checker.metadata(self.proxies[0], self.relative_path)
        return any(r.storage == node and not r.healthy for r in meta.replicas)

    def failovers(self) -> float:
        """``gitquorum_failovers_total`` summed over the live proxies."""
        assert self.cluster is not None
        total = 0.0
        for proxy in self.cluster.proxies:
            if proxy.alive():
                total += sum(
                    samples(scrape(proxy.metrics_port), "gitquorum_failovers_total").values()
                )
        return total

    async def run_workload(
        self, settings: Settings | None = None, warmup_writes: int = 20
    ) -> Workload:
        assert self.cluster is not None
        self.workload = await Workload(
            [p.address for p in self.cluster.proxies],
            self.relative_path,
            self.chain,
            self.history,
            self.base,
            settings,
        ).start()
        await self.acknowledged(warmup_writes, 60, "the workload to warm up")
        return self.workload

    async def acknowledged(
        self, count: int, within: float, what: str, after: float | None = None
    ) -> float:
        """Wait for ``count`` acknowledged writes (started after ``after``); returns the time."""

        def enough() -> bool:
            since = after if after is not None else float("-inf")
            return sum(1 for o in self.history.writes("ok") if o.start >= since) >= count

        deadline = time.monotonic() + within
        while not enough():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out after {within}s waiting for {what}: {self.history.summary()}"
                )
            await asyncio.sleep(0.05)
        return time.monotonic()

    # -- the end -----------------------------------------------------------------------------

    async def finish(self) -> dict[str, Any]:
        """Stop the workload, wait for convergence, check every invariant."""
        assert self.cluster is not None and self.workload is not None
        await self.workload.stop()
        self._write_history()
        proxies = self.proxies
        started = time.monotonic()
        final = await until(
            lambda: checker.converged(self.cluster, proxies[0], self.relative_path),  # type: ignore[arg-type]
            CONVERGE_TIMEOUT,
            "every replica to be up to date with equal checksums",
            lambda: checker.explain_unconverged(self.cluster, proxies[0], self.relative_path),  # type: ignore[arg-type]
        )
        self.measurements["converged_after_stop_s"] = round(time.monotonic() - started, 2)
        # The final reads go through every proxy: each must serve again first. One
        # whose watches are still reconnecting after an etcd outage refuses reads
        # for a moment (stale state); one that never comes back fails here.
        await until(
            lambda: checker.serves_reads(proxies, self.relative_path),
            SERVE_TIMEOUT,
            "every proxy to serve reads again",
        )
        self.measurements["proxies_serving_after_stop_s"] = round(time.monotonic() - started, 2)
        problems = checker.check_reads(self.history, self.chain, self.seed_refs)
        problems += await asyncio.to_thread(
            checker.check_final,
            self.cluster,
            proxies,
            self.relative_path,
            self.history,
            self.chain,
            self.seed_refs,
            final,
        )
        self.measurements.update(
            test=self.name,
            operations=self.history.summary(),
            acknowledged_writes=len(self.history.writes("ok")),
            shared_position=max(
                (
                    self.chain.counter(o.value) or 0
                    for o in self.history.writes("ok")
                    if o.key == SHARED
                ),
                default=0,
            ),
        )
        for fault in self.faults.faults:
            recovery = self.history.first_ok_write_after(fault.at)
            self.measurements[f"{fault.name}:{fault.target}:first_ok_write_s"] = (
                round(recovery, 2) if recovery is not None else None
            )
        self.measurements["verifier_repairs"] = self.verifier_repairs()
        self._report()
        assert not problems, "invariants violated:\n" + "\n".join(problems[:50])
        return self.measurements

    def verifier_repairs(self) -> int:
        """Replicas the verifier found differing from their primary (proxy logs)."""
        assert self.cluster is not None
        return sum(
            proxy.log_path.read_text(errors="replace").count(DIVERGED)
            for proxy in self.cluster.proxies
            if proxy.log_path.exists()
        )

    def _write_history(self) -> None:
        # The whole history stays next to the cluster's logs, for post-mortems.
        with open(self.base / "history.jsonl", "w") as out:
            for op in self.history.ops:
                out.write(json.dumps(op.__dict__) + "\n")
            for fault in self.faults.faults:
                out.write(
                    json.dumps({"fault": fault.name, "target": fault.target, "at": fault.at}) + "\n"
                )

    def _report(self) -> None:
        print(f"chaos {self.name}: {json.dumps(self.measurements, sort_keys=True)}")
        path = os.environ.get("GITQUORUM_CHAOS_RESULTS")
        if path:
            with open(path, "a") as out:
                out.write(json.dumps(self.measurements, sort_keys=True) + "\n")

    def dump_failures(self) -> str:
        lines = [f"history: {self.history.summary()}"]
        for op in self.history.ops:
            if op.outcome != "ok":
                lines.append(
                    f"  {op.process} {op.kind} {op.key} {op.outcome} "
                    f"[{op.start:.2f}-{op.end:.2f}] via {op.proxy}: {op.detail[:200]}"
                )
        for fault in self.faults.faults:
            lines.append(f"fault {fault.name} {fault.target} at {fault.at:.2f}")
        return "\n".join(lines[:200])


@pytest.fixture(scope="session")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    return build_chain(tmp_path_factory.mktemp("chaos-seed") / "chain.git", CHAIN_LENGTH)


@pytest.fixture
async def scenario(
    tmp_path: Path, chain: Chain, request: pytest.FixtureRequest
) -> AsyncIterator[Scenario]:
    current = Scenario(tmp_path, chain, request.node.name)
    try:
        yield current
    finally:
        if current.workload is not None:
            await current.workload.stop_quietly()
        if current.cluster is not None:
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                print(current.dump_failures())
                print(current.cluster.log_tail())
            await asyncio.to_thread(current.cluster.close)
