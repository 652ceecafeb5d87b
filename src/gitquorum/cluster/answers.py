"""What the client of a write is told: the primary's own answer, or "outcome unknown".

Beside ``decisions`` (who took a write), this rule decides what the client may
be told about it. A replica applies a transactional write's update only after
a COMMIT answer, and a vote is answered COMMIT only once its subtransaction is
decided. So a write with no decided subtransaction (or only the closing zero
vote, which changes nothing) was applied nowhere, and the primary's own error
is a true definite failure. Once a non-zero update was decided, any replica
that got the COMMIT may have applied it: a failure of the primary then, or of
the finalizer, says nothing about the other replicas, and the client gets the
one unknown-outcome status (``gitquorum.errors.OutcomeUnknown``), never a
refusal such as FAILED_PRECONDITION or ABORTED.
"""

from __future__ import annotations

import enum

from gitquorum.cluster.decisions import OK, VoteTally, WriteState


class Answer(enum.Enum):
    # The primary's own status: OK with its responses, or its error, which is
    # then a definite failure (nothing was applied anywhere).
    PRIMARY = "primary"
    # The write may be applied on some replica: ``OutcomeUnknown``.
    UNKNOWN = "unknown"


def may_be_applied(votes: VoteTally) -> bool:
    """Whether some replica may have applied the write's update.

    True as soon as one subtransaction was decided, unless every one was
    decided for the zero vote. An undecided subtransaction after decided zero
    votes counts as possibly applied: the rule errs towards "unknown".
    """
    return votes.decided > 0 and not votes.changed_nothing


def client_answer(write: WriteState, *, recorded: bool = True) -> Answer:
    """The answer owed to the client of a write whose primary's call is over.

    ``recorded`` is False when the finalizer could not record the outcome
    (etcd unreachable, the replicas outdated meanwhile, any other failure):
    the replicas that took part may hold the write whatever the primary said.
    """
    if not recorded:
        return Answer.UNKNOWN
    if write.legs[write.primary].status == OK:
        return Answer.PRIMARY
    if write.votes is None:
        # Not transactional: the primary is the only replica written to, and
        # its error is its own account of what it did.
        return Answer.PRIMARY
    return Answer.UNKNOWN if may_be_applied(write.votes) else Answer.PRIMARY
