"""What the client of a write is told, for every way a write ends (cluster.answers).

The table is the rule of docs/failover.md, "Honest answers": the primary's own
status when it succeeded or when nothing was applied anywhere, the one
unknown-outcome status (UNAVAILABLE, "outcome unknown: ...") as soon as some
replica may hold the update.
"""

from __future__ import annotations

import grpc
import pytest

from gitquorum import log
from gitquorum.cluster.answers import Answer, client_answer, may_be_applied
from gitquorum.cluster.decisions import LegState, VoterTally, VoteTally, WriteState
from gitquorum.wire.finishing import OUTCOME_UNKNOWN_CODE, OUTCOME_UNKNOWN_PREFIX, OutcomeUnknown

P, S1, S2 = "p", "s1", "s2"


def tally(
    subs: int, decided: int, changed_nothing: bool = False, primary_committed: int | None = None
) -> VoteTally:
    committed = decided if primary_committed is None else primary_committed
    voter = VoterTally(committed=committed, votes_cast=subs)
    return VoteTally(
        subtransactions=subs,
        decided=decided,
        changed_nothing=changed_nothing,
        voters={P: voter, S1: VoterTally(decided, subs), S2: VoterTally(decided, subs)},
    )


def ended(primary: str, votes: VoteTally | None) -> WriteState:
    legs = {P: LegState(primary), S1: LegState("OK"), S2: LegState("OK")}
    return WriteState(P, (S1, S2), (), legs, votes)


PRIMARY, UNKNOWN = Answer.PRIMARY, Answer.UNKNOWN

# (how the write ended, its state, whether the finalizer recorded it, the answer)
TABLE: list[tuple[str, WriteState, bool, Answer]] = [
    ("every replica committed", ended("OK", tally(2, 2)), True, PRIMARY),
    ("succeeded without changing a ref", ended("OK", tally(1, 1, True)), True, PRIMARY),
    ("succeeded, no vote at all", ended("OK", tally(0, 0)), True, PRIMARY),
    ("primary refused before voting", ended("INVALID_ARGUMENT", tally(0, 0)), True, PRIMARY),
    ("primary's vote not decided (lost, timed out)", ended("ABORTED", tally(1, 0)), True, PRIMARY),
    ("primary died before any decision", ended("UNAVAILABLE", tally(1, 0)), True, PRIMARY),
    (
        "primary failed; only the zero vote decided",
        ended("INTERNAL", tally(1, 1, True)),
        True,
        PRIMARY,
    ),
    (
        "primary failed at commit time (disk full)",
        ended("FAILED_PRECONDITION", tally(2, 1, primary_committed=1)),
        True,
        UNKNOWN,
    ),
    ("primary aborted after the decision", ended("ABORTED", tally(1, 1)), True, UNKNOWN),
    ("primary died after the decision", ended("UNAVAILABLE", tally(2, 1)), True, UNKNOWN),
    ("primary given up after the decision", ended("UNAVAILABLE", tally(1, 1)), True, UNKNOWN),
    (
        "primary cancelled by its node after the decision",
        ended("CANCELLED", tally(2, 2)),
        True,
        UNKNOWN,
    ),
    (
        "primary failed; a zero vote decided, then another undecided",
        ended("INTERNAL", tally(2, 1, changed_nothing=False)),
        True,
        UNKNOWN,
    ),
    ("primary succeeded, finalizer failed", ended("OK", tally(2, 2)), False, UNKNOWN),
    ("primary failed, finalizer failed", ended("UNAVAILABLE", tally(2, 1)), False, UNKNOWN),
    ("not transactional, primary succeeded", ended("OK", None), True, PRIMARY),
    ("not transactional, primary failed", ended("INTERNAL", None), True, PRIMARY),
]


@pytest.mark.parametrize(
    ("write", "recorded", "answer"),
    [pytest.param(w, r, a, id=name) for name, w, r, a in TABLE],
)
def test_how_a_write_ends_decides_the_answer(
    write: WriteState, recorded: bool, answer: Answer
) -> None:
    assert client_answer(write, recorded=recorded) is answer


@pytest.mark.parametrize(
    ("votes", "applied"),
    [
        (tally(0, 0), False),
        (tally(3, 0), False),
        (tally(1, 1, changed_nothing=True), False),
        (tally(1, 1), True),
        (tally(2, 1), True),
    ],
)
def test_an_update_may_be_applied_once_a_non_zero_vote_was_decided(
    votes: VoteTally, applied: bool
) -> None:
    assert may_be_applied(votes) is applied


def test_the_unknown_outcome_error_has_one_code_prefix_and_the_correlation_id() -> None:
    token = log.correlation_id.set("abc123")
    try:
        error = OutcomeUnknown("the primary failed")
    finally:
        log.correlation_id.reset(token)
    assert error.code is OUTCOME_UNKNOWN_CODE is grpc.StatusCode.UNAVAILABLE
    assert error.message == f"{OUTCOME_UNKNOWN_PREFIX}the primary failed (correlation id abc123)"
    assert error.reason == "the primary failed"
