"""The randomized fault run of ``make test``: the nemeses (all but the disk
rollbacks below) in a seeded schedule over twenty repositories, three
proxies and three etcd members, checked during the run and at its end
(tests/faults/checker.py names every violation).

``GITQUORUM_FAULTS_SEED`` replays a schedule; ``GITQUORUM_FAULTS_DURATION``
sets its length (default 75 s, bounded by the suite's time; the long run
is where long schedules belong). The long run (``make test-long``,
tests/faults/test_long.py) runs every nemesis.
"""

from __future__ import annotations

import os
from collections.abc import Set as AbstractSet
from pathlib import Path

import pytest

from tests.chaos.workload import Chain
from tests.faults.run import Report, RunSettings, run_and_check, seed_from_env
from tests.faults.schedule import all_nemeses
from tests.harness.cluster import WORKERS_ENV
from tests.harness.node import NODE_WORKERS_ENV

# Left out of the CI run, kept in the long run (make test-long): disks sent
# back in time. What they can cost is beyond the guarantee (docs/reliability.md,
# "Not guaranteed": a write held by one replica only, a rollback while an
# unfinished write's intent stands), and CI must stay a regression gate.
LONG_ONLY = {"replica-rollback", "primary-rollback", "replica-wipe"}

pytestmark = pytest.mark.timeout(900)

# Faults every run holds, the last ones past its budget if it must: on
# saturated cores a pooled node's restart took 20-30 s, and a 90 s schedule
# (seed 956123128) held two kills only, 79 s of faults between them.
MIN_STEPS = 3
OVERRUN = 60.0

# The run with worker processes: a shorter schedule, every proxy and node of two.
WORKERS_DURATION = 90.0
# Left out of that run (kept in the single-process one and in the long run with
# workers): six node restarts in a row take about 105 s with pooled nodes under
# the suite's load, so a schedule that drew the storm first ran it alone
# (CI of 7591eac, seed 2043640674: one step of the three the run requires).
WORKERS_LEFT_OUT = {"node-restart-storm"}


async def test_randomized_schedule(tmp_path: Path, chain: Chain) -> None:
    await _randomized(tmp_path, chain, float(os.environ.get("GITQUORUM_FAULTS_DURATION", "75")))


async def test_randomized_schedule_with_worker_processes(
    tmp_path: Path, chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every proxy and node runs as a parent of two workers (docs/workers.md): votes
    reach the worker holding the transaction through a relay each, and the
    process nemeses hit parents and workers alike."""
    monkeypatch.setenv(WORKERS_ENV, "2")
    monkeypatch.setenv(NODE_WORKERS_ENV, "2")
    report = await _randomized(tmp_path, chain, WORKERS_DURATION, left_out=WORKERS_LEFT_OUT)
    assert (report.figures["proxy_workers"], report.figures["node_workers"]) == (2, 2)
    assert not set(report.figures["nemeses_run"]) & WORKERS_LEFT_OUT


async def _randomized(
    tmp_path: Path, chain: Chain, duration: float, left_out: AbstractSet[str] = frozenset()
) -> Report:
    seed = seed_from_env()
    nemeses = [n for n in all_nemeses() if n.name not in LONG_ONLY | left_out]
    settings = RunSettings(seed, duration, nemeses, min_steps=MIN_STEPS, overrun=OVERRUN)
    report = await run_and_check(tmp_path, chain, settings)
    # The schedule ran (a run that injected almost nothing proves nothing):
    # several faults, holding a good part of the run. Not a step count from
    # an estimate: how many fit depends on how long injects and recoveries
    # take on the machine, so the run goes past its budget for the third.
    held = sum(f["end"] - f["start"] for f in report.faults if f.get("end") is not None)
    assert report.steps_run >= MIN_STEPS and held >= 0.25 * duration, (report.steps_run, held)
    return report
