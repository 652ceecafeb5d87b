"""Recording write outcomes (decisions.record_outcome): the rule and a table of interleavings.

Every interleaving starts from a repository at generation 5 whose three
replicas are up to date, p primary. Writes name the generation they were
routed at; repairs, failovers and verifier results change the record between
outcomes the way their stored operations do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import pytest

from gitquorum.cluster.decisions import (
    WriteResult,
    record_outcome,
    up_to_date_replicas,
)
from gitquorum.cluster.errors import WriteToOutdatedReplicas
from gitquorum.cluster.repositories import RepositoryRecord

P, S1, S2 = "p", "s1", "s2"
ALL = frozenset({P, S1, S2})
G = 5


def record(generation: int = G, primary: str = P, **replicas: int) -> RepositoryRecord:
    current = {P: generation, S1: generation, S2: generation}
    current.update(replicas)
    return RepositoryRecord(1, "vs", "a.git", primary, (P, S1, S2), generation, ()).with_replicas(
        current
    )


def result(updated: Sequence[str] = (), outdated: Sequence[str] = ()) -> WriteResult:
    return WriteResult(frozenset(updated), frozenset(outdated), "test")


# -- the rule ---------------------------------------------------------------------------


def test_replicas_that_took_the_write_and_were_up_to_date_move_on() -> None:
    out = record_outcome(record(s2=G - 1), G, result([P, S1, S2], []), routed_at=0, healthy=ALL)
    assert out.record.generation == G + 1
    assert dict(out.record.replicas) == {P: G + 1, S1: G + 1, S2: G - 1}
    assert out.bumped == {P, S1}
    assert not out.demoted and not out.spared


def test_a_write_taken_only_by_outdated_replicas_is_refused() -> None:
    with pytest.raises(WriteToOutdatedReplicas):
        record_outcome(
            record(G + 1, s1=G, s2=G), G, result([S1, S2], [P]), routed_at=0, healthy=ALL
        )


def test_nobody_holding_the_write_demotes_the_named_replicas_still_at_its_start() -> None:
    out = record_outcome(record(), G, result([], [S1, S2]), routed_at=0, healthy=ALL)
    assert out.record.generation == G
    assert up_to_date_replicas(out.record) == {P}
    assert out.demoted == {S1, S2}
    assert dict(out.record.replicas)[S1] == G - 1


def test_replicas_that_moved_past_the_writes_start_are_not_demoted() -> None:
    current = record(G + 1, s2=G)  # p and s1 took a write recorded since
    out = record_outcome(current, G, result([], [S1, S2]), routed_at=0, healthy=ALL)
    assert out.record is current
    assert up_to_date_replicas(out.record) == {P, S1}
    assert out.spared == {S1}


def test_already_outdated_replicas_are_left_alone() -> None:
    current = record(s1=G - 2)
    out = record_outcome(current, G, result([], [S1]), routed_at=0, healthy=ALL)
    assert out.record is current
    assert not out.demoted and not out.spared


def test_demotions_that_would_empty_the_set_keep_the_primary() -> None:
    current = record(p=G - 1, primary=S2)
    out = record_outcome(current, G, result([], [S1, S2]), routed_at=0, healthy=ALL)
    assert up_to_date_replicas(out.record) == {S2}
    assert out.demoted == {S1}
    assert out.spared == {S2}


def test_demotions_that_would_empty_the_set_keep_the_first_by_name_without_the_primary() -> None:
    current = record(p=G - 1)  # the primary is outdated (failover still to come)
    out = record_outcome(current, G, result([], [S1, S2]), routed_at=0, healthy=ALL)
    assert up_to_date_replicas(out.record) == {S1}
    assert out.demoted == {S2}


@pytest.mark.parametrize(
    ("primary", "outdated_primary", "healthy", "kept"),
    [
        # the primary if healthy
        (P, False, ALL, P),
        (P, False, {P}, P),
        # else a healthy replica, by name
        (P, False, {S1, S2}, S1),
        (P, False, {S2}, S2),
        (S2, False, {P, S1}, P),
        (None, False, {S1, S2}, S1),
        (P, True, {S2}, S2),  # the primary not up to date: s1 and s2 demoted
        (P, True, {P, S2}, S2),
        # none healthy: the primary, else the first by name
        (P, False, frozenset(), P),
        (S1, False, {"other"}, S1),
        (None, False, frozenset(), P),
        (P, True, frozenset(), S1),
    ],
)
def test_demotions_that_would_empty_the_set_keep_a_replica_that_can_serve(
    primary: str | None, outdated_primary: bool, healthy: set[str], kept: str
) -> None:
    """Every up-to-date replica named outdated: the one kept is the primary if
    healthy, a healthy replica by name, then the primary, then the first by name."""
    current = replace(record(**({P: G - 1} if outdated_primary else {})), primary=primary)
    named = [S1, S2] if outdated_primary else [P, S1, S2]
    out = record_outcome(current, G, result([], named), routed_at=0, healthy=frozenset(healthy))
    assert up_to_date_replicas(out.record) == {kept}
    assert out.demoted == set(named) - {kept}
    assert out.spared == {kept}


def test_a_demotion_at_generation_zero_forgets_the_replica_as_before() -> None:
    out = record_outcome(record(0), 0, result([], [S1]), routed_at=0, healthy=ALL)
    assert S1 not in dict(out.record.replicas)


# -- interleavings -----------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    started_at: int
    updated: tuple[str, ...] = ()
    outdated: tuple[str, ...] = ()


@dataclass(frozen=True)
class Repair:
    target: str  # copied from an up-to-date replica: moves to the repository's generation


@dataclass(frozen=True)
class Failover:
    primary: str


@dataclass(frozen=True)
class Verifier:
    node: str  # found behind: marked outdated


Step = Write | Repair | Failover | Verifier


def apply(
    current: RepositoryRecord, step: Step, healthy: frozenset[str]
) -> tuple[RepositoryRecord, bool]:
    """The record after ``step``; False when a write was refused."""
    replicas = dict(current.replicas)
    if isinstance(step, Write):
        outcome = result(step.updated, step.outdated)
        try:
            out = record_outcome(current, step.started_at, outcome, routed_at=0, healthy=healthy)
        except WriteToOutdatedReplicas:
            return current, False
        return out.record, True
    if isinstance(step, Repair):
        replicas[step.target] = current.generation
        return current.with_replicas(replicas), True
    if isinstance(step, Failover):
        assert replicas[step.primary] == current.generation, "failover to a valid primary"
        return replace(current, primary=step.primary), True
    replicas[step.node] = min(replicas[step.node], current.generation - 1)
    return current.with_replicas(replicas), True


@dataclass(frozen=True)
class Case:
    steps: tuple[Step, ...]
    generation: int
    up_to_date: frozenset[str]
    refused: int = 0  # how many writes were refused (WriteToOutdatedReplicas)
    healthy: frozenset[str] = ALL  # the health view the outcomes are recorded with


CASES = {
    # The interleaving from the report: A moves the repository on with s1
    # alone; B, routed before A was recorded, holds nobody and names s1, s2.
    "late-no-holder-after-single-holder": Case(
        (Write(G, (S1,), (P, S2)), Write(G, (), (S1, S2))), G + 1, frozenset({S1})
    ),
    "no-holder-then-single-holder": Case(
        (Write(G, (), (S1, S2)), Write(G, (S1,), (P, S2))), G, frozenset({P}), refused=1
    ),
    "two-committed-writes": Case(
        (Write(G, (P, S1, S2)), Write(G, (P, S1), (S2,))), G + 2, frozenset({P, S1})
    ),
    "crossed-secondaries": Case(
        (Write(G, (P, S1), (S2,)), Write(G, (P, S2), (S1,))), G + 2, frozenset({P})
    ),
    "late-no-holder-after-full-commit": Case(
        (Write(G, (P, S1, S2)), Write(G, (), (S1, S2))), G + 1, frozenset({P, S1, S2})
    ),
    "no-holder-at-its-own-generation": Case((Write(G, (), (S1, S2)),), G, frozenset({P})),
    "late-no-holder-after-repair-moved-target-on": Case(
        (
            Verifier(S2),
            Write(G, (P, S1), (S2,)),
            Repair(S2),
            Write(G, (), (S1, S2)),
        ),
        G + 1,
        frozenset({P, S1, S2}),
    ),
    "two-primaries-no-holder-outcomes-keep-the-new-primary": Case(
        (
            Verifier(P),
            Failover(S1),
            Write(G, (), (P, S2)),  # routed to s1 after the failover
            Write(G, (), (S1, S2)),  # routed to p before it
        ),
        G,
        frozenset({S1}),
    ),
    "no-holder-with-outdated-primary-keeps-one-by-name": Case(
        (Verifier(P), Write(G, (), (S1, S2))), G, frozenset({S1})
    ),
    # As above, but the new primary s1 has failed since: the healthy s2 is
    # kept, so failover has a replica to move the primary to.
    "two-primaries-no-holder-outcome-keeps-a-healthy-replica": Case(
        (Verifier(P), Failover(S1), Write(G, (), (S1, S2))),
        G,
        frozenset({S2}),
        healthy=frozenset({P, S2}),
    ),
    "no-holder-with-outdated-primary-keeps-a-healthy-one-by-name": Case(
        (Verifier(P), Write(G, (), (S1, S2))), G, frozenset({S2}), healthy=frozenset({S2})
    ),
    "single-holder-then-full-commit-from-the-same-start": Case(
        (Write(G, (S1,), (P, S2)), Write(G, (P, S1, S2))), G + 2, frozenset({S1})
    ),
    "stale-holders-refused-after-single-holder": Case(
        (Write(G, (S1,), (P, S2)), Write(G, (P, S2), (S1,))),
        G + 1,
        frozenset({S1}),
        refused=1,
    ),
    "outcome-after-a-newer-write-and-a-repair": Case(
        (
            Write(G, (P, S1), (S2,)),
            Repair(S2),
            Write(G + 1, (), (S1, S2)),
            Write(G, (), (S1, S2)),
        ),
        G + 1,
        frozenset({P}),
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_interleavings(case: Case) -> None:
    current = record()
    refused = 0
    for step in case.steps:
        current, recorded = apply(current, step, case.healthy)
        refused += not recorded
        assert up_to_date_replicas(current), f"no up-to-date replica after {step}"
    assert current.generation == case.generation
    assert up_to_date_replicas(current) == case.up_to_date
    assert refused == case.refused
