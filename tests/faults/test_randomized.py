"""The randomized fault run of ``make test``: every nemesis in a seeded schedule
over twenty repositories, three proxies and three etcd members, checked during
the run and at its end (tests/faults/checker.py names every violation).

``GITQUORUM_FAULTS_SEED`` replays a schedule; ``GITQUORUM_FAULTS_DURATION``
sets its length (default 120 s). The long run (``make test-long``) is
tests/faults/long.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.workload import Chain
from tests.faults.run import FaultRun, RunSettings, seed_from_env, write_report
from tests.faults.schedule import all_nemeses

pytestmark = pytest.mark.timeout(900)


async def test_randomized_schedule(tmp_path: Path, chain: Chain) -> None:
    seed = seed_from_env()
    duration = float(os.environ.get("GITQUORUM_FAULTS_DURATION", "120"))
    run = FaultRun(tmp_path, chain, RunSettings(seed, duration, all_nemeses()))
    try:
        report = await run.execute()
        write_report(report, tmp_path / "report.json")
        print(f"report: {tmp_path / 'report.json'}")
        for row in report.table:
            print(row)
        print(report.figures)
        if report.violations:
            print(run.explain(report))
        assert not report.violations, f"seed {seed}: " + "; ".join(
            str(v) for v in report.violations[:10]
        )
        assert report.steps_run >= min(report.steps_planned, 5), report
    finally:
        await run.close()
