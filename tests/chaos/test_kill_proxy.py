"""kill -9 of the leader proxy while it runs writes and replication jobs.

Replication is slowed down (the relays in front of the source nodes are
throttled) so the leader is caught holding job claims when it dies. Then:
leadership moves to the surviving proxy, clients that retry against it
succeed, and the dead proxy's claimed jobs are taken over once its claim
lease expires and finish, so every replica converges.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from tests.chaos import checker, nemesis
from tests.chaos.conftest import CONVERGE_TIMEOUT, VERIFYING, Scenario, until
from tests.harness import gitrepo

pytestmark = pytest.mark.timeout(240)

EXTRA_REPOSITORIES = 4
BLOB_SIZE = 1_500_000
# Bytes per second per relayed connection while jobs run: a few seconds per job.
THROTTLE = 300_000


async def test_kill_leader_proxy(scenario: Scenario) -> None:
    # Writes in flight on the dead proxy are never recorded: the replicas that took
    # part may differ at equal generations until the verifier finds it.
    cluster = await scenario.start(relayed=("node1", "node2", "node3"), settings=VERIFYING)
    await scenario.run_workload()
    primary = scenario.primary()
    behind = next(n.name for n in cluster.nodes if n.name != primary)

    # A node misses the creation of a few repositories: jobs wait for it.
    await asyncio.to_thread(nemesis.kill_node, cluster, behind, scenario.faults)
    await until(lambda: scenario.unhealthy(behind), 15, f"{behind} to be seen unhealthy")
    extra = [f"chaos/extra-{i}.git" for i in range(EXTRA_REPOSITORIES)]
    for i, relative_path in enumerate(extra):
        source = await asyncio.to_thread(
            gitrepo.make_repo, scenario.base / f"extra-{i}", commits=1, binary_size=BLOB_SIZE
        )
        async with grpc.aio.insecure_channel(scenario.proxies[0]) as channel:
            await gitrepo.seed(channel, checker.repository(relative_path), source, scenario.base)
    for relay in cluster.relays.values():
        relay.throttle(THROTTLE)
    await asyncio.to_thread(nemesis.restart_node, cluster, behind, scenario.faults)

    # Catch the leader while its workers hold claims, and kill it.
    leader = await until(lambda: nemesis.leader(cluster), 15, "a leader")
    chaos_id = checker.metadata(scenario.proxies[0], scenario.relative_path).repository_id
    held = await until(
        lambda: {
            key
            for key, worker in nemesis.locks(cluster).items()
            if worker.startswith(f"{leader}/") and not key.endswith(f"/{chaos_id}")
        },
        30,
        f"the leader {leader} to claim a job of the new repositories",
    )
    fault = await asyncio.to_thread(nemesis.kill_proxy, cluster, leader, scenario.faults)

    survivor = next(p.name for p in cluster.proxies if p.name != leader)
    await until(lambda: nemesis.leader(cluster) == survivor, 20, f"{survivor} to lead")
    scenario.measurements["leader_moved_s"] = round(time.monotonic() - fault.at, 2)
    await scenario.acknowledged(10, 30, "writes through the surviving proxy", after=fault.at)

    # The dead proxy's claims vanish with its lease; the survivor redoes those jobs.
    await until(
        lambda: not any(w.startswith(f"{leader}/") for w in nemesis.locks(cluster).values()),
        20,
        f"the claims of {leader} to expire",
    )
    for relay in cluster.relays.values():
        relay.throttle(0)
    address = scenario.proxies[0]
    for relative_path in extra:
        await until(
            lambda rp=relative_path: checker.converged(cluster, address, rp),  # type: ignore[misc]
            CONVERGE_TIMEOUT,
            f"{relative_path} on every node",
        )
    # Every job the dead leader held was redone by the survivor: nothing is left of them.
    held_jobs = {key.removeprefix("locks/") for key in held}
    leftover = [key for key in nemesis.jobs(cluster) if any(h in key for h in held_jobs)]
    assert not leftover, leftover
    scenario.measurements["jobs_taken_over"] = len(held)

    measured = await scenario.finish()
    recovery = measured[f"kill-proxy:{leader}:first_ok_write_s"]
    assert recovery is not None and recovery < 15, recovery
