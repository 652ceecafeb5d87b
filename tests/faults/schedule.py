"""The randomized, seeded schedule of faults.

A schedule is a list of steps -- which nemesis, how long the fault holds, how
long the cluster runs undisturbed before it -- drawn from one seed. The same
seed gives the same steps; which node or proxy a nemesis hits is drawn at run
time from the run's own seeded generator and the cluster's state then (the
primary of a repository depends on earlier failovers), so a replay repeats the
schedule and, state permitting, the targets. A run takes steps from the plan
until its wall-clock budget is spent: how far it gets depends on how fast the
cluster recovers, not on an estimate of it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from tests.faults import disk, network, processes
from tests.faults.base import Nemesis


def all_nemeses() -> list[type[Nemesis]]:
    found: list[type[Nemesis]] = [*processes.NEMESES, *network.NEMESES, *disk.NEMESES]
    try:
        from tests.faults import clock
    except ImportError:  # pragma: no cover - the clock nemesis is optional on a machine
        return found
    return found + list(clock.NEMESES)


def nemesis_by_name(name: str) -> type[Nemesis] | None:
    return next((n for n in all_nemeses() if n.name == name), None)


@dataclass(frozen=True)
class Step:
    nemesis: str
    hold: float
    gap: float  # undisturbed running before the fault


# What a heal and the cluster's recovery after it take, on average: only to
# say how many steps a budget should hold (:func:`expected_steps`). The run
# itself keeps going until its wall-clock budget is spent, however fast it
# recovers.
RECOVERY_ESTIMATE = 8.0


def plan(
    seed: int, nemeses: Sequence[type[Nemesis]], duration: float, gap: tuple[float, float]
) -> list[Step]:
    """Steps whose undisturbed gaps and holds alone cover ``duration``: more
    than a run with that budget can take, as every step lasts at least its gap
    and hold, so the run stops at its budget, not at the end of the plan.

    Every nemesis comes once before any comes twice (shuffled rounds). The
    steps are drawn one after another from ``seed``: the same seed gives the
    same sequence, and a longer duration only adds steps at its end."""
    if not nemeses:
        return []
    rng = random.Random(seed)
    steps: list[Step] = []
    spent = 0.0
    while True:
        round_ = list(nemeses)
        rng.shuffle(round_)
        for nemesis in round_:
            if spent >= duration and steps:
                return steps
            step = Step(
                nemesis.name,
                round(rng.uniform(*nemesis.hold), 2),
                round(rng.uniform(*gap), 2),
            )
            steps.append(step)
            spent += step.gap + step.hold


def expected_steps(steps: Sequence[Step], budget: float) -> int:
    """How many of ``steps``, from the first, fit in ``budget`` seconds when
    each takes its gap, its hold and ``RECOVERY_ESTIMATE`` (at least one)."""
    spent = 0.0
    for count, step in enumerate(steps):
        spent += step.gap + step.hold + RECOVERY_ESTIMATE
        if spent > budget:
            return max(count, 1)
    return len(steps)


def fits(step: Step, elapsed: float, budget: float) -> bool:
    """Whether ``step`` may start ``elapsed`` seconds into a schedule of
    ``budget`` seconds: its gap and hold end within the budget (its recovery
    may run past it), so a run takes about its budget, not a step more."""
    return elapsed + step.gap + step.hold <= budget


def may_start(
    step: Step, elapsed: float, budget: float, taken: int, at_least: int = 0, overrun: float = 0.0
) -> bool:
    """Whether a run that has taken ``taken`` steps in ``elapsed`` seconds takes
    ``step``: the first always, then each that :func:`fits` the budget; and
    past the budget, while fewer than ``at_least`` were taken, each whose gap
    and hold end within ``overrun`` seconds more. A machine whose recoveries are
    slow (interpreters starting on saturated cores) must not shrink the
    schedule a run asks for to one or two faults."""
    if taken == 0 or fits(step, elapsed, budget):
        return True
    return taken < at_least and fits(step, elapsed, budget + overrun)
