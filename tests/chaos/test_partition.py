"""A secondary cut off the network (a blackholing relay in front of it).

Calls to it hang instead of failing: it must be seen unhealthy within the
health settings, writes go on with the primary and the other secondary
(waiting at most the write timeout for the lost one while it is still
counted in), and once the cut heals, replication brings it up to date.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.chaos.conftest import Scenario, until

pytestmark = pytest.mark.timeout(180)

WRITE_TIMEOUT = 5.0
SLACK = 3.0


async def test_cut_off_a_secondary(scenario: Scenario) -> None:
    cluster = await scenario.start(
        relayed=("node1", "node2", "node3"), settings={"write_timeout": f"{WRITE_TIMEOUT}s"}
    )
    await scenario.run_workload()
    primary = await scenario.steady()
    secondary = next(n.name for n in cluster.nodes if n.name != primary)
    relay = cluster.relays[secondary]

    fault = scenario.faults.record("cut-secondary", secondary)
    await asyncio.to_thread(relay.cut)
    unhealthy = await until(
        lambda: scenario.unhealthy(secondary) and time.monotonic(), 15, f"{secondary} unhealthy"
    )
    scenario.measurements["detected_unhealthy_s"] = round(unhealthy - fault.at, 2)
    await scenario.acknowledged(20, 30, "writes without the cut-off secondary", after=fault.at)
    assert scenario.primary() == primary  # a secondary's loss needs no failover

    heal = scenario.faults.record("heal-secondary", secondary)
    await asyncio.to_thread(relay.heal)
    await until(lambda: not scenario.unhealthy(secondary), 20, f"{secondary} healthy again")
    await scenario.acknowledged(10, 30, "writes after the cut healed", after=heal.at)
    await scenario.finish()

    slow = [
        o
        for o in scenario.history.writes()
        if o.kind != "push" and o.end > fault.at and o.end - o.start > WRITE_TIMEOUT + SLACK
    ]
    assert not slow, [(o.key, o.outcome, round(o.end - o.start, 2), o.detail) for o in slow]
    # Losing a secondary never costs an acknowledged write its answer.
    doubtful = [o for o in scenario.history.writes("unknown") if o.kind == "create"]
    assert not doubtful, [(o.key, o.detail) for o in doubtful]
