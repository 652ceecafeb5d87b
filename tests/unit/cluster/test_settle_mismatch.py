"""The verifier's majority rule (``decisions.settle_mismatch``): one table row per case."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import pytest

from gitquorum.cluster.decisions import (
    Repair,
    choose_source,
    explaining_writes,
    repairs,
    settle_mismatch,
)
from gitquorum.cluster.intents import StoredIntent
from gitquorum.cluster.queue import JobType
from gitquorum.cluster.repositories import MISSING, RepositoryRecord, decode_record, encode_record

ALL = frozenset({"n1", "n2", "n3"})
NONE: frozenset[str] = frozenset()
CREATE, UPDATE = JobType.CREATE, JobType.UPDATE


def rec(
    replicas: Mapping[str, int],
    primary: str | None = "n1",
    generation: int = 5,
    assigned: tuple[str, ...] = ("n1", "n2", "n3"),
    conflict: tuple[str, ...] = (),
) -> RepositoryRecord:
    record = RepositoryRecord(1, "vs", "r.git", primary, assigned, generation, ())
    return replace(record.with_replicas(replicas), conflict=conflict)


THREE = rec({"n1": 5, "n2": 5, "n3": 5})
TWO = rec({"n1": 5, "n2": 5}, assigned=("n1", "n2"))
# n3 is behind: only n1 and n2 are up to date, so only they count.
N3_BEHIND = rec({"n1": 5, "n2": 5, "n3": 4})
FIVE = rec({"n1": 5, "n2": 5, "n3": 5, "n4": 5, "n5": 5}, assigned=("n1", "n2", "n3", "n4", "n5"))


@dataclass(frozen=True)
class Case:
    record: RepositoryRecord
    checksums: Mapping[str, str | None]
    demoted: frozenset[str] = NONE
    primary: str | None = "n1"
    repairs: tuple[Repair, ...] = ()
    conflict: bool = False
    recorded_conflict: tuple[str, ...] = ()
    changed: bool = False
    healthy: frozenset[str] = ALL
    # Primaries of unfinished writes (intents) standing for the repository.
    unfinished: tuple[str, ...] = ()
    reference: str | None = None


CASES = {
    "all agree": Case(THREE, {"n1": "a", "n2": "a", "n3": "a"}),
    "secondary in the minority is demoted and repaired from the primary": Case(
        THREE,
        {"n1": "a", "n2": "a", "n3": "b"},
        demoted=frozenset({"n3"}),
        repairs=(Repair(UPDATE, "n3", "n1"),),
        changed=True,
    ),
    "primary in the minority is demoted, repaired from the majority and replaced": Case(
        THREE,
        {"n1": "lost", "n2": "a", "n3": "a"},
        demoted=frozenset({"n1"}),
        primary="n2",
        repairs=(Repair(UPDATE, "n1", "n2"),),
        changed=True,
    ),
    "the new primary is the least loaded member of the majority": Case(
        rec({"n1": 5, "n2": 5, "n3": 5}, primary="n2"),
        {"n1": "a", "n2": "lost", "n3": "a"},
        demoted=frozenset({"n2"}),
        primary="n3",  # n1 carries load 2 in the test
        repairs=(Repair(UPDATE, "n2", "n3"),),
        changed=True,
    ),
    "an unhealthy majority member is no source and no primary": Case(
        THREE,
        {"n1": "lost", "n2": "a", "n3": "a"},
        healthy=frozenset({"n1", "n3"}),
        demoted=frozenset({"n1"}),
        primary="n3",
        repairs=(Repair(UPDATE, "n1", "n3"),),
        changed=True,
    ),
    "a missing secondary is demoted": Case(
        THREE,
        {"n1": "a", "n2": None, "n3": "a"},
        demoted=frozenset({"n2"}),
        repairs=(Repair(UPDATE, "n2", "n1"),),
        changed=True,
    ),
    "a missing replica at generation 0 is recreated": Case(
        rec({"n1": 0, "n2": 0, "n3": 0}, generation=0),
        {"n1": "a", "n2": None, "n3": "a"},
        demoted=frozenset({"n2"}),
        repairs=(Repair(CREATE, "n2", "n1"),),
        changed=True,
    ),
    "two replicas, one missing: created from the other": Case(
        TWO,
        {"n1": "a", "n2": None},
        demoted=frozenset({"n2"}),
        repairs=(Repair(UPDATE, "n2", "n1"),),
        changed=True,
    ),
    "two replicas that differ: conflict, nothing demoted": Case(
        TWO,
        {"n1": "a", "n2": "b"},
        conflict=True,
        recorded_conflict=("n1", "n2"),
        changed=True,
    ),
    "three all different: conflict": Case(
        THREE,
        {"n1": "a", "n2": "b", "n3": "c"},
        conflict=True,
        recorded_conflict=("n1", "n2", "n3"),
        changed=True,
    ),
    "two answers that differ, one silent: conflict over the answers": Case(
        THREE,
        {"n1": "a", "n2": "b"},
        conflict=True,
        recorded_conflict=("n1", "n2"),
        changed=True,
    ),
    "a missing replica beside a silent one decides nothing": Case(
        THREE,
        {"n1": "a", "n2": None},
        conflict=True,
        recorded_conflict=("n1", "n2"),
        changed=True,
    ),
    "one answer of three is no majority and no conflict": Case(THREE, {"n2": "a"}),
    "two agreeing answers of five are no majority": Case(FIVE, {"n1": "a", "n2": "a"}),
    "two agreeing answers of five beside a third: conflict": Case(
        FIVE,
        {"n1": "a", "n2": "a", "n3": "b"},
        conflict=True,
        recorded_conflict=("n1", "n2", "n3"),
        changed=True,
    ),
    "three of five agree: both others demoted": Case(
        FIVE,
        {"n1": "a", "n2": "a", "n3": "a", "n4": "b", "n5": "c"},
        demoted=frozenset({"n4", "n5"}),
        repairs=(Repair(UPDATE, "n4", "n1"), Repair(UPDATE, "n5", "n1")),
        changed=True,
    ),
    "every replica missing: conflict, nothing to repair from": Case(
        TWO, {"n1": None, "n2": None}, conflict=True, recorded_conflict=("n1", "n2"), changed=True
    ),
    "the only up-to-date replica missing: conflict": Case(
        rec({"n1": 5, "n2": 3}),
        {"n1": None},
        conflict=True,
        recorded_conflict=("n1",),
        changed=True,
    ),
    "outdated replicas do not vote": Case(
        N3_BEHIND,
        {"n1": "a", "n2": "b", "n3": "b"},
        conflict=True,
        recorded_conflict=("n1", "n2"),
        changed=True,
    ),
    "a majority clears an earlier conflict": Case(
        replace(THREE, conflict=("n1", "n2")),
        {"n1": "a", "n2": "a", "n3": "a"},
        changed=True,
    ),
    "too few answers keep an earlier conflict": Case(
        replace(THREE, conflict=("n1", "n2")), {"n1": "a"}, recorded_conflict=("n1", "n2")
    ),
    "the same conflict again changes nothing": Case(
        replace(TWO, conflict=("n1", "n2")),
        {"n1": "a", "n2": "b"},
        conflict=True,
        recorded_conflict=("n1", "n2"),
    ),
    # -- an unfinished write explains a difference without a majority ----------
    "two that differ beside an unfinished write: its primary is the reference": Case(
        N3_BEHIND,
        {"n1": "with-write", "n2": "without"},
        unfinished=("n1",),
        reference="n1",
        demoted=frozenset({"n2"}),
        repairs=(Repair(UPDATE, "n2", "n1"),),
        changed=True,
    ),
    "the unfinished write's primary may be the secondary now": Case(
        N3_BEHIND,
        {"n1": "a", "n2": "b"},
        unfinished=("n2",),
        reference="n2",
        demoted=frozenset({"n1"}),
        primary="n2",
        repairs=(Repair(UPDATE, "n1", "n2"),),
        changed=True,
    ),
    "a writer's primary that did not answer: the record's primary": Case(
        N3_BEHIND,
        {"n1": "a", "n2": "b"},
        unfinished=("n3",),
        reference="n1",
        demoted=frozenset({"n2"}),
        repairs=(Repair(UPDATE, "n2", "n1"),),
        changed=True,
    ),
    "an unfinished write settles an earlier conflict": Case(
        replace(TWO, conflict=("n1", "n2")),
        {"n1": "a", "n2": "b"},
        unfinished=("n1",),
        reference="n1",
        demoted=frozenset({"n2"}),
        repairs=(Repair(UPDATE, "n2", "n1"),),
        changed=True,
    ),
    "a missing writer's primary is never the reference": Case(
        THREE,
        {"n1": None, "n2": "a", "n3": "b"},
        unfinished=("n1", "n3"),
        reference="n3",
        demoted=frozenset({"n1", "n2"}),
        primary="n3",
        repairs=(Repair(UPDATE, "n1", "n3"), Repair(UPDATE, "n2", "n3")),
        changed=True,
    ),
    "a wiped replica beside two that differ by an unfinished write": Case(
        THREE,
        {"n1": "with-write", "n2": "without", "n3": None},
        unfinished=("n1",),
        reference="n1",
        demoted=frozenset({"n2", "n3"}),
        repairs=(Repair(UPDATE, "n2", "n1"), Repair(UPDATE, "n3", "n1")),
        changed=True,
    ),
    "three all different, one unfinished write explains at most two: conflict": Case(
        THREE,
        {"n1": "a", "n2": "b", "n3": "c"},
        unfinished=("n2",),
        conflict=True,
        recorded_conflict=("n1", "n2", "n3"),
        changed=True,
    ),
    "three all different with two unfinished writes: one reference": Case(
        THREE,
        {"n1": "a", "n2": "b", "n3": "c"},
        unfinished=("n2", "n1"),
        reference="n2",
        demoted=frozenset({"n1", "n3"}),
        primary="n2",
        repairs=(Repair(UPDATE, "n1", "n2"), Repair(UPDATE, "n3", "n2")),
        changed=True,
    ),
    "a silent up-to-date replica: an unfinished write settles nothing": Case(
        THREE,
        {"n1": "a", "n2": "b"},
        unfinished=("n1",),
        conflict=True,
        recorded_conflict=("n1", "n2"),
        changed=True,
    ),
    "a majority still decides with an unfinished write standing": Case(
        THREE,
        {"n1": "a", "n2": "b", "n3": "b"},
        unfinished=("n1",),
        demoted=frozenset({"n1"}),
        primary="n2",
        repairs=(Repair(UPDATE, "n1", "n2"),),
        changed=True,
    ),
    "agreeing replicas with an unfinished write standing: nothing to do": Case(
        N3_BEHIND, {"n1": "a", "n2": "a"}, unfinished=("n1",)
    ),
    "one answer with an unfinished write standing decides nothing": Case(
        THREE, {"n2": "a"}, unfinished=("n1",)
    ),
    "every replica missing with an unfinished write: still a conflict": Case(
        TWO,
        {"n1": None, "n2": None},
        unfinished=("n1",),
        conflict=True,
        recorded_conflict=("n1", "n2"),
        changed=True,
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_settle_mismatch(case: Case) -> None:
    settled = settle_mismatch(
        case.record, case.checksums, case.healthy, load={"n1": 2}, unfinished=case.unfinished
    )
    assert settled.reference == case.reference
    assert settled.demoted == case.demoted
    assert settled.record.primary == case.primary
    assert settled.repairs == case.repairs
    assert settled.conflict is case.conflict
    assert settled.record.conflict == case.recorded_conflict
    assert settled.changed is case.changed
    assert settled.changed is (settled.record != case.record)
    generation = case.record.generation
    for node in settled.demoted:
        assert settled.record.replica_generation(node) in (generation - 1, MISSING)
    for node in settled.majority:
        assert settled.record.replica_generation(node) == generation
    # Every repair copies from a replica that agreed with the majority.
    assert all(r.source in settled.majority for r in settled.repairs)
    if case.conflict:
        assert settled.record.replicas == case.record.replicas


def test_a_silent_up_to_date_primary_is_never_the_source() -> None:
    # The primary n1 did not answer. Of four up-to-date replicas, two agreeing
    # are no majority, however likely the primary would be to agree with them.
    record = rec({"n1": 5, "n2": 5, "n3": 5, "n4": 5}, assigned=("n1", "n2", "n3", "n4"))
    settled = settle_mismatch(record, {"n2": "a", "n3": "a", "n4": "b"}, ALL | {"n4"}, load={})
    assert settled.conflict and not settled.demoted
    # Of five, three are: n5 is repaired from one of them, not from the primary
    # (choose_source's usual first choice), whose content nobody checked.
    settled = settle_mismatch(
        FIVE, {"n2": "a", "n3": "a", "n4": "a", "n5": "b"}, ALL | {"n4", "n5"}, load={}
    )
    assert settled.demoted == {"n5"}
    assert settled.record.primary == "n1"  # silent, not demoted: it stays
    assert settled.repairs == (Repair(UPDATE, "n5", "n2"),)


def test_a_conflict_stops_every_repair_of_the_repository() -> None:
    # n3 is outdated; n1 and n2 disagree. Repairing n3 from either would make a
    # majority out of a copy and then overwrite the other.
    conflicted = replace(N3_BEHIND, conflict=("n1", "n2"))
    assert choose_source(conflicted, ALL, target="n3") is None
    assert repairs(conflicted, ALL) == ()
    assert repairs(N3_BEHIND, ALL) == (Repair(UPDATE, "n3", "n1"),)


def test_the_conflict_is_stored_with_the_record_and_only_when_set() -> None:
    plain = encode_record(THREE)
    assert b"conflict" not in plain  # records without one keep their usual value
    marked = replace(THREE, conflict=("n1", "n2"))
    assert decode_record("vs", 1, encode_record(marked)).conflict == ("n1", "n2")
    assert decode_record("vs", 1, plain).conflict == ()


# -- which intents may explain a mismatch (decisions.explaining_writes) ---------------


def _intent(
    revision: int,
    primary: str,
    *,
    proxy: str = "p1",
    incarnation: float = 1.0,
    participants: tuple[str, ...] = ("n1", "n2"),
    finished: bool = False,
    routed_revision: int = 0,
) -> StoredIntent:
    return StoredIntent(
        f"k{revision}",
        revision,
        revision,
        primary,
        5,
        proxy,
        incarnation,
        frozenset(participants),
        finished,
        routed_revision=routed_revision,
    )


ANSWERED = frozenset({"n1", "n2"})
# n2's last repair was recorded against revision 40 of the record.
REPAIRED_N2 = replace(THREE, repaired=(("n2", 40),))


@pytest.mark.parametrize(
    ("intents", "members", "expected"),
    [
        # The writer's incarnation is a live member: still its own to finish.
        ([_intent(1, "n1")], {"p1": 1.0}, ()),
        # Dead writer, or the same name restarted (another incarnation).
        ([_intent(1, "n1")], {}, ("n1",)),
        ([_intent(1, "n1")], {"p1": 2.0}, ("n1",)),
        # Finished by its finalizer (outcome left replicas unaccounted for).
        ([_intent(1, "n1", finished=True)], {"p1": 1.0}, ("n1",)),
        # Not sent to every replica that answered: explains nothing there.
        ([_intent(1, "n1", participants=("n1", "n3"))], {}, ()),
        # Newest first.
        ([_intent(1, "n1"), _intent(7, "n2")], {}, ("n2", "n1")),
        # n2 took no part, but was repaired from a replica after the write was
        # routed (revision 40 >= 30): it holds a state of the write's, with or
        # without it.
        ([_intent(1, "n1", participants=("n1", "n3"), routed_revision=30)], {}, ("n1",)),
        ([_intent(1, "n1", participants=("n1", "n3"), routed_revision=40)], {}, ("n1",)),
        # Repaired before the write was routed: its difference is not the write's.
        ([_intent(1, "n1", participants=("n1", "n3"), routed_revision=41)], {}, ()),
        # An intent of a version that did not say where it was routed.
        ([_intent(1, "n1", participants=("n1", "n3"))], {}, ()),
    ],
)
def test_explaining_writes(
    intents: list[StoredIntent], members: dict[str, float], expected: tuple[str, ...]
) -> None:
    assert explaining_writes(intents, ANSWERED, members, REPAIRED_N2) == expected
