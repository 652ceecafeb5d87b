"""The randomized, seeded schedule of faults.

A schedule is a list of steps -- which nemesis, how long the fault holds, how
long the cluster runs undisturbed before it -- drawn from one seed. The same
seed gives the same steps; which node or proxy a nemesis hits is drawn at run
time from the run's own seeded generator and the cluster's state then (the
primary of a repository depends on earlier failovers), so a replay repeats the
schedule and, state permitting, the targets.
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


# The cluster's recovery after a heal is part of a step's budget.
RECOVERY_ESTIMATE = 8.0


def plan(
    seed: int, nemeses: Sequence[type[Nemesis]], duration: float, gap: tuple[float, float]
) -> list[Step]:
    """Steps until their planned time (gap + hold + recovery) fills ``duration``.
    Every nemesis comes once before any comes twice (shuffled rounds)."""
    rng = random.Random(seed)
    steps: list[Step] = []
    spent = 0.0
    while True:
        round_ = list(nemeses)
        rng.shuffle(round_)
        for nemesis in round_:
            step = Step(
                nemesis.name,
                round(rng.uniform(*nemesis.hold), 2),
                round(rng.uniform(*gap), 2),
            )
            cost = step.gap + step.hold + RECOVERY_ESTIMATE
            if steps and spent + cost > duration:
                return steps
            steps.append(step)
            spent += cost
