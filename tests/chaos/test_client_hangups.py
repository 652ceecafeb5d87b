"""Clients that hang up mid-write.

A share of the writes carry a deadline so short that it expires while the
replicas vote and commit: the proxy's call is cancelled at any point of the
write. Whatever the point, the outcome must still be recorded (or provably
nothing changed), and no acknowledged write is lost. Replicas can end up
differing at equal generations only in what nobody acknowledged: a write
abandoned after a decided vote whose outcome lands after a later write's
cannot demote the replicas that later outcome moved on (docs/failover.md,
"Concurrent write outcomes"), so they may keep part of it. The verifier is on
here and settles that by majority; the run must converge.
"""

from __future__ import annotations

import pytest

from tests.chaos.conftest import VERIFYING, Scenario
from tests.chaos.workload import Settings

pytestmark = pytest.mark.timeout(180)


async def test_clients_hanging_up_mid_write(scenario: Scenario) -> None:
    await scenario.start(settings=VERIFYING)
    await scenario.run_workload(Settings(impatient_ratio=0.5, impatient_timeout=(0.005, 0.3)))
    await scenario.acknowledged(150, 120, "writes among clients hanging up")
    measured = await scenario.finish()

    hung_up = [o for o in scenario.history.writes() if "DEADLINE_EXCEEDED" in o.detail]
    assert len(hung_up) >= 10, measured["operations"]
    measured["hung_up_writes"] = len(hung_up)
