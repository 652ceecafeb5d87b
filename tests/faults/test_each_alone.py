"""Each nemesis alone (``make test-nemeses``; neither ``make test`` nor
``make test-long`` runs it).

One fault run per nemesis of the suite, that nemesis the only one in its
schedule, for ``GITQUORUM_FAULTS_EACH_DURATION`` seconds each (60 by
default), checked as the long run is: no violation, and a nemesis this
machine cannot run (no root for tmpfs, no cc, no libfaketime) fails its run.
``GITQUORUM_FAULTS_SEED`` replays every run with that seed; one nemesis is
``-k <name>``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.workload import Chain
from tests.faults.base import Nemesis
from tests.faults.run import RunSettings, run_and_check, seed_from_env
from tests.faults.schedule import all_nemeses

pytestmark = [pytest.mark.long, pytest.mark.timeout(3600)]


@pytest.mark.parametrize("nemesis", all_nemeses(), ids=lambda n: n.name)
async def test_each_nemesis_alone(tmp_path: Path, chain: Chain, nemesis: type[Nemesis]) -> None:
    seed = seed_from_env()
    duration = float(os.environ.get("GITQUORUM_FAULTS_EACH_DURATION") or "60")
    report = await run_and_check(tmp_path, chain, RunSettings(seed, duration, [nemesis]))
    assert report.figures["nemeses_skipped"] == [], report.figures["nemeses_skipped"]
    assert report.figures["nemeses_run"] == [nemesis.name], report.figures["nemeses_run"]
