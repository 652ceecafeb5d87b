"""The randomized fault run of ``make test``: the nemeses (all but the disk
rollbacks below) in a seeded schedule over twenty repositories, three
proxies and three etcd members, checked during the run and at its end
(tests/faults/checker.py names every violation).

``GITQUORUM_FAULTS_SEED`` replays a schedule; ``GITQUORUM_FAULTS_DURATION``
sets its length (default 120 s). The long run (``make test-long``,
tests/faults/test_long.py) runs every nemesis.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.workload import Chain
from tests.faults.run import RunSettings, run_and_check, seed_from_env
from tests.faults.schedule import all_nemeses

# Left out of the CI run, kept in the long run (make test-long): disks sent
# back in time. What they can cost is beyond the guarantee (docs/reliability.md,
# "Not guaranteed": a write held by one replica only, a rollback while an
# unfinished write's intent stands), and CI must stay a regression gate.
LONG_ONLY = {"replica-rollback", "primary-rollback", "replica-wipe"}

pytestmark = pytest.mark.timeout(900)


async def test_randomized_schedule(tmp_path: Path, chain: Chain) -> None:
    seed = seed_from_env()
    duration = float(os.environ.get("GITQUORUM_FAULTS_DURATION", "120"))
    nemeses = [n for n in all_nemeses() if n.name not in LONG_ONLY]
    report = await run_and_check(tmp_path, chain, RunSettings(seed, duration, nemeses))
    # The schedule ran (a run that injected almost nothing proves nothing):
    # several faults, holding a good part of the run. Not a step count from
    # an estimate: how many fit depends on how long injects and recoveries
    # take on the machine.
    held = sum(f["end"] - f["start"] for f in report.faults if f.get("end") is not None)
    assert report.steps_run >= 3 and held >= 0.25 * duration, (report.steps_run, held)
