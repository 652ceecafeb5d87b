"""The outcome of a write from its votes and legs (cluster.decisions, write outcome)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from gitquorum.cluster.decisions import (
    LegState,
    VoterTally,
    VoteTally,
    WriteResult,
    WriteState,
    abandoned_outcome,
    holds_decided_update,
    may_hold_decided_update,
    primary_failed_outcome,
    write_outcome,
)

P, S1, S2, T = "p", "s1", "s2", "t"
OK, FAILED = LegState("OK"), LegState("UNAVAILABLE")
RUNNING = LegState(None)
DROPPED = LegState("CANCELLED", dropped=True)


def held(subs: int = 2) -> VoterTally:
    """Committed every one of ``subs`` subtransactions, last vote after applying."""
    return VoterTally(committed=subs, votes_cast=subs, last_vote_committed=True)


def votes(
    subs: int = 2,
    decided: int | None = None,
    changed_nothing: bool = False,
    **voters: VoterTally,
) -> VoteTally:
    everyone = {P: held(subs), S1: held(subs), S2: held(subs)}
    everyone.update(voters)
    return VoteTally(
        subtransactions=subs,
        decided=subs if decided is None else decided,
        changed_nothing=changed_nothing,
        voters=everyone,
    )


def write(
    tally: VoteTally | None,
    secondaries: tuple[str, ...] = (S1, S2),
    targets: tuple[str, ...] = (T,),
    **legs: LegState,
) -> WriteState:
    states: dict[str, LegState] = {node: OK for node in (P, *secondaries)}
    states.update(legs)
    return WriteState(P, secondaries, targets, states, tally)


def result(updated: set[str], outdated: set[str], reason: str) -> WriteResult:
    return WriteResult(frozenset(updated), frozenset(outdated), reason)


def _ids(cases: Mapping[str, object]) -> list[str]:
    return list(cases)


# A primary cancelled as a voter after committing everything: it counts as
# committed only if its call ended OK (cases below), never when it failed.
PRIMARY_GONE = VoterTally(committed=2, votes_cast=2, last_vote_committed=True, failed=True)
PREPARED_ONLY = VoterTally(committed=2, votes_cast=2, last_vote_committed=False)

WRITE_CASES: dict[str, tuple[WriteState, WriteResult]] = {
    "not transactional, primary ok": (
        write(None, secondaries=(), targets=(S1, S2)),
        result({P}, {S1, S2}, "primary-only"),
    ),
    "not transactional, primary failed": (
        write(None, secondaries=(), targets=(S1, S2), p=FAILED),
        result(set(), set(), "primary-failed"),
    ),
    "no votes": (write(votes(subs=0)), result(set(), set(), "no-votes")),
    "no votes, primary failed": (write(votes(subs=0), p=FAILED), result(set(), set(), "no-votes")),
    "only the zero vote": (
        write(votes(subs=1, changed_nothing=True)),
        result(set(), set(), "no-votes"),
    ),
    "primary and every secondary committed": (
        write(votes()),
        result({P, S1, S2}, {T}, "committed"),
    ),
    "every replica took part and committed": (
        write(votes(), targets=()),
        result({P, S1, S2}, set(), "committed"),
    ),
    "primary alone": (
        write(votes(), secondaries=(), targets=(S1, S2)),
        result({P}, {S1, S2}, "committed"),
    ),
    "secondary dropped": (
        write(votes(), s2=DROPPED),
        result({P, S1}, {S2, T}, "secondaries-outdated"),
    ),
    "secondary ended with another status": (
        write(votes(), s2=LegState("CANCELLED")),
        result({P, S1}, {S2, T}, "secondaries-outdated"),
    ),
    "secondary still running": (
        write(votes(), s2=RUNNING),
        result({P, S1}, {S2, T}, "secondaries-outdated"),
    ),
    "secondary committed only the first subtransaction": (
        write(votes(s2=VoterTally(committed=1, votes_cast=2))),
        result({P, S1}, {S2, T}, "secondaries-outdated"),
    ),
    "secondary failed as a voter": (
        write(votes(s1=VoterTally(committed=2, votes_cast=2, failed=True))),
        result({P, S2}, {S1, T}, "secondaries-outdated"),
    ),
    "primary committed, its call then failed: secondaries with the same status count": (
        write(votes(), p=FAILED, s1=FAILED),
        result({P, S1}, {S2, T}, "secondaries-outdated"),
    ),
    "primary seen unhealthy after its call ended ok, a secondary still running": (
        # node_unhealthy cancels the primary as a voter; its call had already
        # succeeded, having applied every decided update (seed 745480504).
        write(votes(p=PRIMARY_GONE)),
        result({P, S1, S2}, {T}, "committed"),
    ),
    "primary seen unhealthy after its call ended ok, one secondary": (
        write(votes(p=PRIMARY_GONE), secondaries=(S1,)),
        result({P, S1}, {T}, "committed"),
    ),
    "primary timed out by a secondary's later vote after its call ended ok": (
        # The secondary opened a third subtransaction nobody decided.
        write(
            VoteTally(
                subtransactions=3,
                decided=2,
                changed_nothing=False,
                voters={P: PRIMARY_GONE, S1: VoterTally(committed=2, votes_cast=3), S2: held(2)},
            )
        ),
        # The primary counts; the secondaries are judged by the tally as before
        # (the undecided subtransaction counts them out).
        result({P}, {S1, S2, T}, "secondaries-outdated"),
    ),
    "primary cancelled after a prepared-phase last vote, its call ok": (
        write(votes(p=VoterTally(committed=2, votes_cast=2, failed=True))),
        result(set(), {S1, S2, T}, "primary-not-committed"),
    ),
    "primary outvoted, its call ok": (
        write(votes(p=VoterTally(committed=0, votes_cast=2, failed=True))),
        result(set(), {S1, S2, T}, "primary-not-committed"),
    ),
    "primary failed before any decision": (
        write(votes(subs=1, decided=0, p=VoterTally(votes_cast=1, failed=True)), p=FAILED),
        result(set(), set(), "primary-failed-before-commit"),
    ),
    "primary failed after commit, both secondaries hold it": (
        write(votes(p=PRIMARY_GONE), p=FAILED),
        result({S1, S2}, {P, T}, "primary-failed-after-commit"),
    ),
    "primary failed after commit, one secondary holds it": (
        write(votes(p=PRIMARY_GONE, s2=VoterTally(committed=1, votes_cast=2)), p=FAILED),
        result({S1}, {P, S2, T}, "primary-failed-after-commit"),
    ),
    "primary failed after commit, a holder was dropped": (
        write(votes(p=PRIMARY_GONE, s2=VoterTally(committed=1)), p=FAILED, s1=DROPPED),
        result(set(), {S1, S2, T}, "primary-not-committed"),
    ),
    "primary failed after commit, the holder's call still runs": (
        write(votes(p=PRIMARY_GONE, s2=PREPARED_ONLY), p=FAILED, s1=RUNNING),
        result(set(), {S1, S2, T}, "primary-not-committed"),
    ),
    "primary failed after commit, no holder (last votes prepared)": (
        write(votes(p=PRIMARY_GONE, s1=PREPARED_ONLY, s2=PREPARED_ONLY), p=FAILED),
        result(set(), {S1, S2, T}, "primary-not-committed"),
    ),
    "primary failed after commit, a later subtransaction undecided": (
        write(
            votes(
                subs=3,
                decided=2,
                p=PRIMARY_GONE,
                s1=VoterTally(committed=2, votes_cast=3, last_vote_committed=True),
                s2=VoterTally(committed=2, votes_cast=2, last_vote_committed=True),
            ),
            p=FAILED,
        ),
        result({S1}, {P, S2, T}, "primary-failed-after-commit"),
    ),
}


@pytest.mark.parametrize(("state", "expected"), WRITE_CASES.values(), ids=_ids(WRITE_CASES))
def test_write_outcome(state: WriteState, expected: WriteResult) -> None:
    assert write_outcome(state) == expected


PRIMARY_FAILED_CASES: dict[str, tuple[WriteState, WriteResult | None]] = {
    "not transactional": (write(None, secondaries=(), p=FAILED), None),
    "nothing decided": (
        write(votes(subs=1, decided=0), p=FAILED),
        result(set(), set(), "primary-failed-before-commit"),
    ),
    "decided, but no COMMIT reached anyone": (
        # The intent's gate opened after every voter had left the write (the
        # primary's call failed, the secondaries were dropped): they got ABORT.
        # On fe399bc every secondary was named outdated, the primary alone kept.
        write(
            votes(
                subs=1,
                decided=1,
                p=VoterTally(votes_cast=1, failed=True),
                s1=VoterTally(votes_cast=1, failed=True),
                s2=VoterTally(votes_cast=1, failed=True),
            ),
            p=FAILED,
        ),
        result(set(), set(), "primary-failed-before-commit"),
    ),
    "only the zero vote decided": (
        write(votes(subs=1, changed_nothing=True, p=PRIMARY_GONE), p=FAILED),
        result(set(), set(), "primary-failed-before-commit"),
    ),
    "decided, a holder": (
        write(votes(p=PRIMARY_GONE, s2=PREPARED_ONLY), p=FAILED),
        result({S1}, {P, S2, T}, "primary-failed-after-commit"),
    ),
    "decided, no holder": (
        write(votes(p=PRIMARY_GONE, s1=PREPARED_ONLY, s2=PREPARED_ONLY), p=FAILED),
        None,
    ),
}


@pytest.mark.parametrize(
    ("state", "expected"), PRIMARY_FAILED_CASES.values(), ids=_ids(PRIMARY_FAILED_CASES)
)
def test_primary_failed_outcome(state: WriteState, expected: WriteResult | None) -> None:
    assert primary_failed_outcome(state) == expected


NOBODY_COMMITTED = VoterTally(committed=0, votes_cast=1)

ABANDONED_CASES: dict[str, tuple[WriteState, WriteResult]] = {
    "not transactional": (
        write(None, secondaries=(), targets=(S1, S2), p=RUNNING),
        result(set(), set(), "abandoned-before-commit"),
    ),
    "before any commit": (
        write(
            votes(subs=1, decided=0, p=NOBODY_COMMITTED, s1=NOBODY_COMMITTED, s2=NOBODY_COMMITTED),
            p=RUNNING,
        ),
        result(set(), set(), "abandoned-before-commit"),
    ),
    "only the zero vote committed": (
        write(votes(subs=1, changed_nothing=True), p=RUNNING),
        result(set(), set(), "abandoned-before-commit"),
    ),
    "after commit, primary and one secondary hold it": (
        write(votes(s2=PREPARED_ONLY), p=RUNNING, s1=RUNNING, s2=RUNNING),
        result({P, S1}, {S2, T}, "abandoned-after-commit"),
    ),
    "after commit, every participant holds it": (
        write(votes(), p=RUNNING),
        result({P, S1, S2}, {T}, "abandoned-after-commit"),
    ),
    "after commit, only a secondary holds it": (
        write(votes(p=PREPARED_ONLY, s2=VoterTally(committed=1, votes_cast=2)), p=RUNNING),
        result({S1}, {P, S2, T}, "abandoned-after-commit"),
    ),
    "after commit, no holder: the primary stays the reference": (
        write(votes(p=PREPARED_ONLY, s1=PREPARED_ONLY, s2=PREPARED_ONLY), p=RUNNING),
        result(set(), {S1, S2, T}, "primary-not-committed"),
    ),
}


@pytest.mark.parametrize(("state", "expected"), ABANDONED_CASES.values(), ids=_ids(ABANDONED_CASES))
def test_abandoned_outcome(state: WriteState, expected: WriteResult) -> None:
    assert abandoned_outcome(state) == expected


HOLDS_CASES: dict[str, tuple[VoteTally, bool]] = {
    "committed every decided one, last vote committed": (votes(s1=held(2)), True),
    "nothing decided": (votes(subs=1, decided=0, s1=VoterTally(votes_cast=1)), False),
    "committed fewer than decided": (
        votes(s1=VoterTally(committed=1, votes_cast=2, last_vote_committed=True)),
        False,
    ),
    "did not vote in every subtransaction": (
        votes(subs=3, decided=2, s1=VoterTally(2, 2, last_vote_committed=True)),
        False,
    ),
    "last vote in the prepared phase": (votes(s1=PREPARED_ONLY), False),
}


@pytest.mark.parametrize(("tally", "expected"), HOLDS_CASES.values(), ids=_ids(HOLDS_CASES))
def test_holds_decided_update(tally: VoteTally, expected: bool) -> None:
    assert holds_decided_update(tally, S1) is expected


MAY_HOLD_CASES: dict[str, tuple[VoteTally | None, bool]] = {
    "not transactional": (None, False),
    "nothing decided": (votes(subs=1, decided=0), False),
    "committed fewer than decided": (votes(s1=VoterTally(committed=1, votes_cast=2)), False),
    "committed every decided one": (votes(s1=VoterTally(committed=2, votes_cast=2)), True),
    "committed every decided one, more undecided": (
        votes(subs=3, decided=2, s1=VoterTally(committed=2, votes_cast=3)),
        True,
    ),
}


@pytest.mark.parametrize(("tally", "expected"), MAY_HOLD_CASES.values(), ids=_ids(MAY_HOLD_CASES))
def test_may_hold_decided_update(tally: VoteTally | None, expected: bool) -> None:
    assert may_hold_decided_update(tally, S1) is expected


def test_committed_nodes_needs_a_vote_and_every_subtransaction() -> None:
    assert votes(subs=0).committed_nodes() == frozenset()
    tally = votes(s1=VoterTally(committed=1, votes_cast=2), s2=PRIMARY_GONE)
    assert tally.committed_nodes() == frozenset({P})


def test_a_write_whose_intent_was_not_recorded_changed_nothing() -> None:
    # The gate failed: every voter was told ABORT, so nobody committed, and a
    # primary whose call still ended OK (a push reports per-ref failures in
    # its stream) outdates nobody.
    refused = VoteTally(
        subtransactions=1,
        decided=0,
        changed_nothing=False,
        voters={n: VoterTally(votes_cast=1, failed=True) for n in (P, S1)},
        refused_commit=True,
    )
    assert write_outcome(write(refused, secondaries=(S1,))) == result(
        set(), set(), "intent-not-recorded"
    )
