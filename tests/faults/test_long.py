"""The long fault run (``make test-long``; deselected from ``make test``).

The randomized schedule of every nemesis -- or of the ones named in
``GITQUORUM_FAULTS_NEMESES`` (comma-separated) -- for
``GITQUORUM_FAULTS_DURATION`` seconds of wall clock (600 by default: steps are
taken until they have passed, however fast the cluster recovers). The seed is
printed; ``GITQUORUM_FAULTS_SEED`` replays it. Each nemesis alone, one run
each, is ``make test-nemeses`` (tests/faults/test_each_alone.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.workload import Chain
from tests.faults.base import Nemesis
from tests.faults.run import RunSettings, run_and_check, seed_from_env
from tests.faults.schedule import all_nemeses, nemesis_by_name

pytestmark = [pytest.mark.long, pytest.mark.timeout(24 * 3600)]


def chosen() -> list[type[Nemesis]]:
    names = [n for n in os.environ.get("GITQUORUM_FAULTS_NEMESES", "").split(",") if n]
    if not names:
        return all_nemeses()
    found = [nemesis_by_name(n) for n in names]
    unknown = [n for n, f in zip(names, found, strict=True) if f is None]
    assert not unknown, f"unknown nemeses {unknown}; known: {[n.name for n in all_nemeses()]}"
    return [f for f in found if f is not None]


async def test_long_randomized_schedule(tmp_path: Path, chain: Chain) -> None:
    seed = seed_from_env()
    duration = float(os.environ.get("GITQUORUM_FAULTS_DURATION") or "600")
    report = await run_and_check(tmp_path, chain, RunSettings(seed, duration, chosen()))
    # The long run is the one that covers every nemesis: one this machine
    # cannot run (no root for tmpfs, no cc, no libfaketime) fails it, loudly.
    assert report.figures["nemeses_skipped"] == [], report.figures["nemeses_skipped"]
