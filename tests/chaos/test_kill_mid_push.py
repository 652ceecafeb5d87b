"""kill -9 of a node in the middle of writes, between votes.

The node is first paused (SIGSTOP) while writes are in flight: the other
replicas vote and wait for it, some writes are caught between their
prepare and commit votes. Then it is killed. The primary is hit first (its
writes' outcomes are decided by what the quorum committed), then, once it is
back, a secondary. Every invariant must hold afterwards.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.chaos import nemesis
from tests.chaos.conftest import Scenario, until

pytestmark = pytest.mark.timeout(240)

# Shorter than the health detection: the node dies while writes wait for its votes.
PAUSE = 0.3


async def _pause_then_kill(scenario: Scenario, node: str) -> nemesis.Fault:
    assert scenario.cluster is not None
    # Strike while a real git push is in flight, not just RPCs.
    await until(lambda: scenario.push_in_flight(), 30, "a git push in flight")
    fault = await asyncio.to_thread(nemesis.pause_node, scenario.cluster, node, scenario.faults)
    await asyncio.sleep(PAUSE)  # the fault itself: votes pile up on a stopped node
    await asyncio.to_thread(nemesis.kill_node, scenario.cluster, node, scenario.faults)
    return fault


async def test_kill_nodes_between_votes(scenario: Scenario) -> None:
    cluster = await scenario.start()
    await scenario.run_workload()

    primary = await scenario.steady()
    fault = await _pause_then_kill(scenario, primary)
    await scenario.acknowledged(10, 30, "writes after the primary died", after=fault.at)
    assert scenario.primary() != primary
    back = await asyncio.to_thread(nemesis.restart_node, cluster, primary, scenario.faults)
    await scenario.acknowledged(5, 30, "writes with the node back", after=back.at)

    current = await scenario.steady()
    secondary = next(n.name for n in cluster.nodes if n.name != current)
    second = await _pause_then_kill(scenario, secondary)
    await scenario.acknowledged(10, 30, "writes after a secondary died", after=second.at)
    back = await asyncio.to_thread(nemesis.restart_node, cluster, secondary, scenario.faults)
    await scenario.acknowledged(5, 30, "writes with both nodes back", after=back.at)

    measured = await scenario.finish()
    for node in (primary, secondary):
        recovery = measured[f"pause-node:{node}:first_ok_write_s"]
        assert recovery is not None and recovery < 15, (node, recovery)
