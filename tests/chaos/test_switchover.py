"""A planned switchover (``gitquorum switchover``) under the workload.

Moving the primary on purpose is one compare-and-swap to a valid primary:
no write may fail or end in doubt because of it. Writes to refs nobody else
touches must all succeed; the shared branch's compare-and-swaps can only lose
to each other (contention), never to the switchover.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from tests.chaos.conftest import Scenario, until

pytestmark = pytest.mark.timeout(180)

SWITCHES = 3
# Targets picked per switchover at most: one can be outdated by a racing write
# between the look and the move.
PICKS = 5
# A lost compare-and-swap race: the old value moved, or another writer held the ref.
CONTENTION = ("FAILED_PRECONDITION", "ABORTED")


def switchover(config: str, relative_path: str, target: str) -> dict[str, object]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gitquorum.cli.main",
            "switchover",
            "--repository",
            relative_path,
            "--to",
            target,
            "--config",
            config,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    answer: dict[str, object] = json.loads(proc.stdout) if proc.stdout.strip() else {}
    assert proc.returncode == 0 or _target_became_invalid(answer), proc.stdout + proc.stderr
    return answer


def _target_became_invalid(answer: dict[str, object]) -> bool:
    """The move was refused because its target stopped being a valid primary
    between the test's look and the command (a write racing the look, e.g. a
    contended compare-and-swap, outdated it): the refusal is right, and the test
    picks a target again."""
    moves = answer.get("moves")
    return (
        isinstance(moves, list)
        and len(moves) == 1
        and not moves[0].get("ok")
        and "is not a valid primary" in str(moves[0].get("detail", ""))
    )


async def test_planned_switchover_fails_no_write(scenario: Scenario) -> None:
    cluster = await scenario.start()
    await scenario.run_workload()
    config = str(cluster.proxies[0].config_path)

    for _ in range(SWITCHES):
        # A planned move targets an up-to-date replica: one that is a valid primary
        # now (a contended compare-and-swap can leave another secondary outdated,
        # and an operator moves a primary only to a replica `gitquorum status`
        # shows as valid).
        for _attempt in range(PICKS):
            old = await scenario.steady()
            candidates = await asyncio.to_thread(scenario.valid_secondaries)
            assert candidates, "steady() returned without a valid secondary"
            target = candidates[0]
            fault = scenario.faults.record("switchover", f"{old}->{target}")
            answer = await asyncio.to_thread(switchover, config, scenario.relative_path, target)
            if not _target_became_invalid(answer):
                break
        else:
            raise AssertionError(f"no switchover went through in {PICKS} picks: {answer}")

        def moved(target: str = target) -> bool:
            return scenario.primary() == target

        await until(moved, 10, f"{target} as primary")
        await scenario.acknowledged(10, 30, "writes after the switchover", after=fault.at)
    await scenario.finish()

    broken = [
        o
        for o in scenario.history.writes()
        if o.outcome != "ok" and not (o.kind == "cas" and o.detail.startswith(CONTENTION))
    ]
    assert not broken, [(o.kind, o.key, o.outcome, o.detail) for o in broken]
