"""kill -9 of a repository's primary node under load.

The leader (or lazily, the write path) elects a healthy, up-to-date
secondary; writes resume within seconds; the old primary, restarted, is a
secondary and replication brings it up to date. No acknowledged write is lost.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.chaos import nemesis
from tests.chaos.conftest import Scenario, until

pytestmark = pytest.mark.timeout(180)


async def test_kill_primary_node(scenario: Scenario) -> None:
    cluster = await scenario.start()
    await scenario.run_workload()
    old = await scenario.steady()

    fault = await asyncio.to_thread(nemesis.kill_node, cluster, old, scenario.faults)
    await scenario.acknowledged(10, 30, "writes after the primary died", after=fault.at)
    new = await until(lambda: (p := scenario.primary()) != old and p, 10, "a new primary")
    assert new != old
    assert scenario.failovers() >= 1

    back = await asyncio.to_thread(nemesis.restart_node, cluster, old, scenario.faults)
    await scenario.acknowledged(10, 30, "writes after the old primary came back", after=back.at)
    # A former primary that comes back is a secondary (its replica missed writes).
    assert scenario.primary() != old

    measured = await scenario.finish()
    recovery = measured[f"kill-node:{old}:first_ok_write_s"]
    assert recovery is not None and recovery < 15, recovery
