"""The schedule on its own: a plan longer than its budget, drawn from the seed
alone, every nemesis once before any twice; a run takes steps from it until
the wall-clock budget is spent, however fast the cluster recovers."""

from __future__ import annotations

from typing import ClassVar

import pytest

from tests.faults import schedule
from tests.faults.base import Nemesis
from tests.faults.context import RunContext
from tests.faults.schedule import (
    RECOVERY_ESTIMATE,
    Step,
    expected_steps,
    fits,
    may_start,
    plan,
)

GAP = (3.0, 6.0)
SEEDS = (1, 71242770, 1637161381, 1916200104)


def nemesis(name: str, hold: tuple[float, float] = (4.0, 8.0)) -> type[Nemesis]:
    class One(Nemesis):
        kind: ClassVar[str] = "process"

        async def inject(self, run: RunContext):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        async def heal(self, run: RunContext) -> None:
            raise NotImplementedError

    One.name = name
    One.hold = hold
    return One


NEMESES = [nemesis(f"n{i}", (2.0 + i, 4.0 + i)) for i in range(7)]


def taken(
    steps: list[Step], budget: float, recovery: float, at_least: int = 0, overrun: float = 0.0
) -> tuple[int, float]:
    """How many steps a run takes, and the schedule's time, when every heal
    and recovery takes ``recovery`` seconds (as ``FaultRun.execute`` does)."""
    elapsed = 0.0
    count = 0
    for step in steps:
        if not may_start(step, elapsed, budget, count, at_least, overrun):
            break
        elapsed += step.gap + step.hold + recovery
        count += 1
    return count, elapsed


@pytest.mark.parametrize("seed", SEEDS)
def test_the_same_seed_gives_the_same_steps_and_a_longer_budget_only_adds_steps(seed: int) -> None:
    short = plan(seed, NEMESES, 120.0, GAP)
    long = plan(seed, NEMESES, 600.0, GAP)
    assert plan(seed, NEMESES, 600.0, GAP) == long
    assert long[: len(short)] == short
    assert len(long) > len(short)
    assert plan(seed + 1, NEMESES, 600.0, GAP) != long


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("duration", [1.0, 60.0, 120.0, 600.0, 3600.0])
def test_a_plan_covers_its_duration_even_if_the_cluster_recovers_at_once(
    seed: int, duration: float
) -> None:
    steps = plan(seed, NEMESES, duration, GAP)
    assert sum(s.gap + s.hold for s in steps) >= duration
    # ... and not by much: one step more than it needs.
    assert sum(s.gap + s.hold for s in steps[:-1]) < duration
    # A run that recovered at once still spends its budget before the plan ends.
    count, elapsed = taken(steps, duration, 0.0)
    assert elapsed <= duration or count == 1  # the first step always runs
    if count < len(steps):
        assert elapsed + steps[count].gap + steps[count].hold > duration


@pytest.mark.parametrize("seed", SEEDS)
def test_every_nemesis_comes_once_before_any_comes_twice(seed: int) -> None:
    steps = plan(seed, NEMESES, 600.0, GAP)
    names = [n.name for n in NEMESES]
    assert len(steps) > 2 * len(names)
    for i in range(0, len(steps) - len(names) + 1, len(names)):
        assert sorted(s.nemesis for s in steps[i : i + len(names)]) == sorted(names)
    first_repeat = next(
        i for i, s in enumerate(steps) if s.nemesis in {t.nemesis for t in steps[:i]}
    )
    assert first_repeat == len(names)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_nemesis_of_the_suite_comes_once_before_any_comes_twice(seed: int) -> None:
    nemeses = schedule.all_nemeses()
    steps = plan(seed, nemeses, 600.0, GAP)
    first = [s.nemesis for s in steps[: len(nemeses)]]
    assert sorted(first) == sorted(n.name for n in nemeses)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("recovery", [0.5, 2.0, RECOVERY_ESTIMATE, 15.0])
def test_a_run_spends_its_budget_and_not_a_step_more(seed: int, recovery: float) -> None:
    for budget in (120.0, 600.0):
        steps = plan(seed, NEMESES, budget, GAP)
        count, elapsed = taken(steps, budget, recovery)
        longest = max(s.gap + s.hold for s in steps)
        # Ends within the last step's recovery after the budget ...
        assert elapsed <= budget + recovery
        # ... and does not stop while a step could still have fit.
        assert count < len(steps)
        assert elapsed > budget - longest - recovery


def test_faster_recoveries_run_more_steps_than_the_estimate_expects() -> None:
    steps = plan(3, NEMESES, 600.0, GAP)
    expected = expected_steps(steps, 600.0)
    assert sum(s.gap + s.hold + RECOVERY_ESTIMATE for s in steps[:expected]) <= 600.0
    assert sum(s.gap + s.hold + RECOVERY_ESTIMATE for s in steps[: expected + 1]) > 600.0
    fast, _ = taken(steps, 600.0, 2.0)
    slow, _ = taken(steps, 600.0, RECOVERY_ESTIMATE)
    assert fast > slow >= expected
    assert expected_steps(steps[:1], 1.0) == 1
    assert expected_steps([], 60.0) == 0
    assert plan(3, [], 60.0, GAP) == []


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("recovery", [0.5, RECOVERY_ESTIMATE, 30.0, 45.0])
def test_slow_recoveries_cannot_shrink_a_run_below_its_least_steps(
    seed: int, recovery: float
) -> None:
    budget, overrun = 90.0, 60.0
    steps = plan(seed, NEMESES, budget, GAP)
    alone, _ = taken(steps, budget, recovery)
    count, elapsed = taken(steps, budget, recovery, at_least=3, overrun=overrun)
    if alone >= 3:
        # Fast enough: the least count changes nothing.
        assert count == alone
    else:
        # Slow: the run takes steps past its budget until it holds three ...
        assert count == 3 > alone
        assert elapsed > budget
    # ... and never starts one that ends past the overrun.
    before_last = elapsed - (steps[count - 1].gap + steps[count - 1].hold + recovery)
    assert count == 1 or fits(steps[count - 1], before_last, budget + overrun)


def test_past_the_overrun_no_step_starts_however_few_were_taken() -> None:
    step = Step(nemesis="n0", hold=5.0, gap=4.0)
    assert may_start(step, 500.0, 90.0, 0, at_least=3, overrun=60.0)  # the first
    assert may_start(step, 130.0, 90.0, 1, at_least=3, overrun=60.0)
    assert not may_start(step, 142.0, 90.0, 1, at_least=3, overrun=60.0)
    assert not may_start(step, 130.0, 90.0, 3, at_least=3, overrun=60.0)
    assert not may_start(step, 85.0, 90.0, 1)  # no least count: the budget alone
