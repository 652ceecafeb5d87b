"""The long fault runs (``make test-long``; deselected from ``make test``).

Every nemesis alone against the full workload (a short schedule of that one
fault, three times), then the randomized schedule of all of them for
``GITQUORUM_FAULTS_DURATION`` seconds (600 by default). The seed is printed;
``GITQUORUM_FAULTS_SEED`` replays it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.workload import Chain
from tests.faults.base import Nemesis
from tests.faults.run import FaultRun, RunSettings, seed_from_env, write_report
from tests.faults.schedule import all_nemeses

pytestmark = [pytest.mark.long, pytest.mark.timeout(7200)]

ALONE_DURATION = 3 * 20.0


async def _run(tmp_path: Path, chain: Chain, settings: RunSettings) -> None:
    run = FaultRun(tmp_path, chain, settings)
    try:
        report = await run.execute()
        write_report(report, tmp_path / "report.json")
        for row in report.table:
            print(row)
        print(report.figures)
        if report.violations:
            print(run.explain(report))
        assert not report.violations, f"seed {settings.seed}: " + "; ".join(
            str(v) for v in report.violations[:10]
        )
    finally:
        await run.close()


@pytest.mark.parametrize("nemesis", all_nemeses(), ids=lambda n: n.name)
async def test_nemesis_alone(tmp_path: Path, chain: Chain, nemesis: type[Nemesis]) -> None:
    await _run(tmp_path, chain, RunSettings(seed_from_env(), ALONE_DURATION, [nemesis]))


async def test_long_randomized_schedule(tmp_path: Path, chain: Chain) -> None:
    duration = float(os.environ.get("GITQUORUM_FAULTS_DURATION") or "600")
    await _run(tmp_path, chain, RunSettings(seed_from_env(), duration, all_nemeses()))
