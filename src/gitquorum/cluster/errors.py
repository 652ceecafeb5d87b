"""Errors raised by the cluster layer, placed in the project-wide hierarchy.

Every etcd failure surfaces as :class:`StoreUnavailable` (UNAVAILABLE): the
proxy fails closed and never acknowledges what etcd did not record.
"""

from __future__ import annotations

from gitquorum.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)


class StoreUnavailable(Unavailable):
    """The store could not be reached or refused the request.

    For a write (put, delete, txn) the outcome is unknown: it may have been
    applied. Callers resolve that by re-reading, never by assuming failure.
    Its message quotes the etcd client: not for clients of the proxy.
    """

    for_clients = False


class LeaseExpired(StoreUnavailable):
    """The lease is gone (expired, revoked or never granted)."""


class Compacted(StoreUnavailable):
    """The requested revision was compacted away; read the current state again."""

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class NotLeader(FailedPrecondition):
    """A leader-only operation was attempted by a proxy that does not lead."""


class LeadershipLost(NotLeader):
    """The fencing token was rejected: another leader was elected meanwhile."""


class Conflict(Aborted):
    """A compare-and-swap kept losing races; the caller may retry later."""


class RepositoryNotFound(NotFound):
    pass


class RepositoryExists(AlreadyExists):
    pass


class NoHealthyNode(Unavailable):
    """No healthy node can take the role asked for (e.g. a new primary)."""


class WriteToOutdatedReplicas(FailedPrecondition):
    """None of the replicas that took part in a write is at the current generation."""


class DowngradeAttempted(FailedPrecondition):
    """Replication would move a replica to a generation it is already at or past."""


class InvalidReplicationFactor(InvalidArgument):
    pass


class ClaimLost(Aborted):
    """The replication job's lock is no longer held by this worker (its lease expired)."""


class SourceRuledOut(Conflict):
    """A repair's source stopped being a source while the copy ran: demoted (a
    write outcome or the verifier found it behind or in the minority), repaired
    anew, or caught in a verifier conflict. The copy may hold what the
    verdict ruled against: nothing is recorded, the repair copies again."""
