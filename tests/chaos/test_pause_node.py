"""SIGSTOP of the primary node past the health timeout, then SIGCONT.

A paused node is not dead and not answering: connections stay open, calls
hang. It must be seen unhealthy within the health settings (two failed checks
of ``health.timeout`` each), no write may hang longer than the vote timeout,
writes resume on a new primary, and the node, resumed, is an outdated
secondary until replication repairs it.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.chaos import nemesis
from tests.chaos.conftest import Scenario, until

pytestmark = pytest.mark.timeout(180)

VOTE_TIMEOUT = 5.0
# Slack for a loaded machine on top of the vote timeout.
SLACK = 3.0


async def test_pause_primary_node(scenario: Scenario) -> None:
    cluster = await scenario.start(settings={"vote_timeout": f"{VOTE_TIMEOUT}s"})
    await scenario.run_workload()
    old = await scenario.steady()

    fault = await asyncio.to_thread(nemesis.pause_node, cluster, old, scenario.faults)
    unhealthy = await until(
        lambda: scenario.unhealthy(old) and time.monotonic(), 15, f"{old} to be seen unhealthy"
    )
    scenario.measurements["detected_unhealthy_s"] = round(unhealthy - fault.at, 2)
    await scenario.acknowledged(10, 30, "writes while the primary is paused", after=fault.at)
    assert scenario.primary() != old

    back = await asyncio.to_thread(nemesis.resume_node, cluster, old, scenario.faults)
    await scenario.acknowledged(10, 30, "writes after the node resumed", after=back.at)
    measured = await scenario.finish()

    # No write hung on the paused node for longer than the vote timeout.
    slow = [
        op
        for op in scenario.history.writes()
        if op.kind != "push" and op.end > fault.at and op.end - op.start > VOTE_TIMEOUT + SLACK
    ]
    assert not slow, [(o.key, o.outcome, round(o.end - o.start, 2), o.detail) for o in slow]
    recovery = measured[f"pause-node:{old}:first_ok_write_s"]
    assert recovery is not None and recovery < 15, recovery
