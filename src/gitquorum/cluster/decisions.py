"""Pure cluster decisions over immutable repository records and the health consensus.

Every caller that picks a primary, a replication source or the repairs a
repository needs, or that settles which replicas took a write, asks these
functions instead of deciding on its own, so the leader, the write path, the
operator commands, the verifier and the info service cannot disagree. Nothing
here does I/O and nothing takes a grpc object: health, load, drained nodes,
pending jobs and what a write's calls and votes did are inputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace

from gitquorum.cluster.errors import WriteToOutdatedReplicas
from gitquorum.cluster.intents import StoredIntent
from gitquorum.cluster.queue import JobState, JobType, ReplicationJob
from gitquorum.cluster.repositories import MISSING, RepositoryRecord

# -- replica states --------------------------------------------------------------


def up_to_date_replicas(record: RepositoryRecord) -> frozenset[str]:
    """Replicas at the repository's generation."""
    return frozenset(n for n, g in record.replicas if g == record.generation)


def valid_primaries(record: RepositoryRecord, healthy: AbstractSet[str]) -> frozenset[str]:
    """Nodes that may serve as primary: healthy, up to date and assigned."""
    return frozenset(
        n
        for n, g in record.replicas
        if g == record.generation and n in healthy and record.is_assigned(n)
    )


def primary_is_valid(record: RepositoryRecord, healthy: AbstractSet[str]) -> bool:
    """Whether the current primary may stay primary (no failover needed)."""
    return record.primary is not None and record.primary in valid_primaries(record, healthy)


def outdated_replicas(record: RepositoryRecord) -> tuple[str, ...]:
    """Assigned nodes whose replica is behind or missing."""
    assigned = record.assigned or record.replica_nodes
    return tuple(n for n in assigned if record.replica_generation(n) < record.generation)


# -- primary ------------------------------------------------------------------------


def prefer_undrained(nodes: AbstractSet[str], draining: AbstractSet[str]) -> frozenset[str]:
    """Drained nodes last: the nodes not drained, or all of them if every one is."""
    return frozenset(nodes - draining) or frozenset(nodes)


def primary_load(records: Iterable[RepositoryRecord]) -> dict[str, int]:
    """node -> how many of ``records`` it is primary of."""
    return dict(Counter(r.primary for r in records if r.primary))


def choose_primary(
    record: RepositoryRecord,
    healthy: AbstractSet[str],
    *,
    load: Mapping[str, int],
    draining: AbstractSet[str] = frozenset(),
    exclude: AbstractSet[str] = frozenset(),
) -> str | None:
    """The node that should be ``record``'s primary.

    The current primary while it is a valid primary and not in ``exclude``: a
    primary is never moved without need. Otherwise the valid primary (healthy,
    up to date, assigned) outside ``exclude`` that is not drained (drained ones
    only when nothing else is), least loaded first so that a failed node's
    primaries spread over the others, ties by name so that every proxy decides
    alike. None when no replica qualifies: the repository is unavailable and
    never served from an outdated replica.
    """
    valid = valid_primaries(record, healthy)
    if record.primary in valid and record.primary not in exclude:
        return record.primary
    candidates = prefer_undrained(valid - exclude, draining)
    if not candidates:
        return None
    return min(candidates, key=lambda n: (load.get(n, 0), n))


# -- replication source -----------------------------------------------------------------


def choose_source(
    record: RepositoryRecord,
    healthy: AbstractSet[str],
    *,
    target: str,
    preferred: str | None = None,
) -> str | None:
    """The replica ``target`` should replicate from, or None if none can serve.

    Any healthy, up-to-date replica other than the target holds every
    acknowledged write. Among them: ``preferred`` (the source a job was queued
    with), then the primary, then assigned replicas (they keep receiving
    writes), then by name. None while the verifier reports a conflict
    (``settle_mismatch``): the up-to-date replicas disagree, and copying any
    of them would take a side that only an operator may take.
    """
    if record.conflict:
        return None
    candidates = (up_to_date_replicas(record) & healthy) - {target}
    if not candidates:
        return None
    if preferred in candidates:
        return preferred
    if record.primary in candidates:
        return record.primary
    return min(candidates, key=lambda n: (not record.is_assigned(n), n))


# Why a repair fails while its replica has no healthy, up-to-date source
# (``Replicator._source``; also while a verifier conflict stands).
NO_SOURCE = "no healthy, up-to-date replica to replicate from"


# -- repairs ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Repair:
    """One replication job a repository needs: bring ``target`` up to date from ``source``."""

    kind: JobType
    target: str
    source: str


# (virtual storage, target node, repository id) of a job still to run or running.
PendingKey = tuple[str, str, int]

# Failed and dead jobs are retried by the queue (dead ones with a backoff of up
# to an hour): a new job would only duplicate them, and a replica whose repair
# keeps failing would gain a job, soon dead, on every reconciliation pass.
_PENDING_STATES = frozenset({JobState.READY, JobState.IN_PROGRESS, JobState.FAILED, JobState.DEAD})


def pending_repairs(jobs: Iterable[ReplicationJob]) -> frozenset[PendingKey]:
    """The replicas a job is already queued for, dead jobs included: the queue
    retries those itself, so the reconciler never adds a second one."""
    return frozenset(
        (j.virtual_storage, j.target_node, j.repository_id)
        for j in jobs
        if j.state in _PENDING_STATES
    )


def repairs(
    record: RepositoryRecord,
    healthy: AbstractSet[str],
    *,
    targets: Collection[str] | None = None,
    pending: AbstractSet[PendingKey] = frozenset(),
) -> tuple[Repair, ...]:
    """The replication jobs ``record`` needs, one per outdated assigned replica.

    ``targets`` limits them to those nodes (the replicas a write or a check
    found behind); a replica in ``pending`` already has a job. A target that is
    down still gets its job: workers hold it until the node is back, which then
    catches up at once instead of waiting for the next reconciliation. A
    replica that does not exist yet is created (CREATE), one that is behind is
    updated (UPDATE). Without a healthy, up-to-date source nothing can be
    repaired and nothing is queued.
    """
    found = []
    for node in outdated_replicas(record):
        if targets is not None and node not in targets:
            continue
        if (record.virtual_storage, node, record.repository_id) in pending:
            continue
        source = choose_source(record, healthy, target=node)
        if source is None:
            continue
        missing = record.replica_generation(node) == MISSING
        found.append(Repair(JobType.CREATE if missing else JobType.UPDATE, node, source))
    return tuple(found)


# -- write outcome ---------------------------------------------------------------------
#
# Which replicas took a mutator's write, from its transaction's votes and the
# final status of each node's call. The fan-out summarizes both once the
# primary's call is over (or the client went away) and records the answer.

OK = "OK"  # the status name of a call that succeeded


@dataclass(frozen=True)
class WriteResult:
    """Which replicas took a write: the finalizer's input."""

    updated: frozenset[str]
    outdated: frozenset[str]
    reason: str


@dataclass(frozen=True)
class LegState:
    """How one node's call of a write ended."""

    # Final gRPC status name ("OK", "UNAVAILABLE", ...); None while the call runs.
    status: str | None = None
    # Left the write (too slow, unhealthy, or unable to hold the decided update).
    dropped: bool = False

    @property
    def finished(self) -> bool:
        return self.status is not None


@dataclass(frozen=True)
class VoterTally:
    """One voter's part in the transaction."""

    committed: int = 0  # subtransactions it committed (a prefix)
    votes_cast: int = 0
    # Its last vote was cast in the committed phase, i.e. after it applied the update.
    last_vote_committed: bool = False
    failed: bool = False  # lost a vote, was cancelled, or its stream failed


@dataclass(frozen=True)
class VoteTally:
    """A transaction's votes, frozen at the moment the outcome is decided."""

    subtransactions: int  # how many were opened (one per vote round)
    decided: int  # how many were decided (committed); they form a prefix
    # Every decided vote was the zero vote: no reference moved anywhere.
    changed_nothing: bool
    voters: Mapping[str, VoterTally]
    # The write's intent could not be recorded before its first COMMIT
    # (``cluster.intents``): every voter was told ABORT, nothing applied.
    refused_commit: bool = False

    @property
    def had_votes(self) -> bool:
        return self.subtransactions > 0

    def committed_nodes(self) -> frozenset[str]:
        """Voters that committed every subtransaction (at least one was held)."""
        if self.subtransactions == 0:
            return frozenset()
        return frozenset(
            node
            for node, state in self.voters.items()
            if not state.failed and state.committed == self.subtransactions
        )


@dataclass(frozen=True)
class WriteState:
    """Everything the outcome of one write depends on."""

    primary: str
    secondaries: tuple[str, ...]
    # Assigned replicas left out of the write: outdated whatever happens.
    replication_targets: tuple[str, ...]
    legs: Mapping[str, LegState]
    votes: VoteTally | None  # None: the write was not transactional

    @property
    def participants(self) -> tuple[str, ...]:
        return (self.primary, *self.secondaries)


def holds_decided_update(votes: VoteTally, node: str) -> bool:
    """``node`` provably applied exactly the decided update: it committed every
    decided subtransaction, voted in every one, and its last vote was cast in the
    committed phase, i.e. after its update was applied."""
    state = votes.voters[node]
    return (
        votes.decided > 0
        and state.committed == votes.decided
        and state.votes_cast == votes.subtransactions
        and state.last_vote_committed
    )


def may_hold_decided_update(votes: VoteTally | None, node: str) -> bool:
    """Whether a secondary still running after its primary failed can end up
    holding what the quorum decided: only if it committed every decided
    subtransaction, since none can be decided any more without the primary."""
    if votes is None or votes.decided == 0:
        return False
    return votes.voters[node].committed >= votes.decided


def _ok_primary_holds(votes: VoteTally, primary: str) -> bool:
    """Whether a primary whose call ended OK applied every decided update. A
    node's transactional call ends OK only if every vote it cast was answered
    COMMIT (``storage/voting.py``), and no subtransaction is decided without
    the primary's vote: so it committed each one it voted in, those are the
    decided ones, and a last vote in the committed phase was cast after
    applying. Subtransactions only secondaries opened later are never
    decided and say nothing about it."""
    state = votes.voters[primary]
    return (
        votes.decided > 0
        and state.committed == votes.decided == state.votes_cast
        and state.last_vote_committed
    )


def write_outcome(write: WriteState) -> WriteResult:
    """The outcome of a write whose primary's call is over."""
    targets = frozenset(write.replication_targets)
    primary = write.legs[write.primary]
    votes = write.votes
    if votes is None:
        if primary.status == OK:
            return WriteResult(frozenset({write.primary}), targets, "primary-only")
        return WriteResult(frozenset(), frozenset(), "primary-failed")
    if not votes.had_votes or votes.changed_nothing:
        # Every ref change on a node is voted on: no vote (or only the
        # closing zero vote) means nothing changed.
        return WriteResult(frozenset(), frozenset(), "no-votes")
    if votes.refused_commit and votes.decided == 0:
        # No COMMIT that changes a reference went out: nothing applied anywhere.
        return WriteResult(frozenset(), frozenset(), "intent-not-recorded")
    committed = votes.committed_nodes()
    if primary.status == OK and _ok_primary_holds(votes, write.primary):
        # Only matters when the tally marks the primary failed: cancelled as a
        # voter after its call succeeded (its node seen unhealthy while a
        # secondary's call still ran, or timed out by a secondary's later
        # vote), it holds the write all the same. Counted out, the outcome
        # named nobody and demoted a secondary that held the acknowledged
        # write too (long seed 745480504: one copy where there were two,
        # then that one was lost with its disk).
        committed = committed | {write.primary}
    secondaries = frozenset(write.secondaries)
    if write.primary not in committed:
        if primary.status != OK:
            failed = primary_failed_outcome(write)
            if failed is not None:
                return failed
        return WriteResult(frozenset(), secondaries | targets, "primary-not-committed")
    updated = {write.primary} | {
        node
        for node in secondaries & committed
        if write.legs[node].status == primary.status and not write.legs[node].dropped
    }
    outdated = (secondaries - updated) | targets
    reason = "committed" if not (secondaries - updated) else "secondaries-outdated"
    return WriteResult(frozenset(updated), frozenset(outdated), reason)


def primary_failed_outcome(write: WriteState) -> WriteResult | None:
    """The outcome when the primary's call failed, if it can be known for sure.

    Marking every secondary outdated (the general rule) would leave a
    repository whose primary died mid-write without any valid primary, i.e.
    unavailable until that node returns. Two cases are certain instead:

    * no subtransaction was decided (the primary's vote is part of every
      decision), or no voter received a COMMIT: none changed;
    * some were: a secondary whose call ended after it committed every
      decided subtransaction and whose last vote, in every subtransaction,
      was a committed-phase one (cast only after applying the update) holds
      exactly the decided update. Those secondaries move to the next
      generation; the primary, which may or may not have applied it, becomes
      outdated and is repaired by replication. The client gets "outcome
      unknown" (``cluster.answers``), and the write is now kept.
    """
    votes = write.votes
    if votes is None:
        return None
    if (
        votes.decided == 0
        or votes.changed_nothing
        or not any(state.committed for state in votes.voters.values())
    ):
        # Nothing decided, only the zero vote, or no COMMIT reached anyone (the
        # tally is frozen: a decision whose intent gate opened after every
        # voter had left the write sent none).
        return WriteResult(frozenset(), frozenset(), "primary-failed-before-commit")
    holders = frozenset(
        node
        for node in write.secondaries
        if not write.legs[node].dropped
        and write.legs[node].finished
        and holds_decided_update(votes, node)
    )
    if not holders:
        return None
    outdated = (
        (frozenset(write.secondaries) - holders)
        | frozenset(write.replication_targets)
        | {write.primary}
    )
    return WriteResult(holders, frozenset(outdated), "primary-failed-after-commit")


def abandoned_outcome(write: WriteState) -> WriteResult:
    """Who holds a write whose call ended before its outcome was known.

    The caller stopped the transaction first, which freezes who received a
    COMMIT. Nobody did: nothing changed. Otherwise the replicas that provably
    applied the decided update (``holds_decided_update``, as in
    ``primary_failed_outcome`` but the primary included) move on, and the
    others are outdated. If none provably holds it, the primary stays the
    reference and every secondary is outdated.
    """
    votes = write.votes
    targets = frozenset(write.replication_targets)
    participants = frozenset(write.participants)
    if (
        votes is None
        or votes.changed_nothing
        or not any(state.committed for state in votes.voters.values())
    ):
        return WriteResult(frozenset(), frozenset(), "abandoned-before-commit")
    holders = frozenset(node for node in participants if holds_decided_update(votes, node))
    if not holders:
        return WriteResult(
            frozenset(), frozenset(write.secondaries) | targets, "primary-not-committed"
        )
    return WriteResult(holders, (participants - holders) | targets, "abandoned-after-commit")


# -- recording a write's outcome -------------------------------------------------------
#
# Several writes of one repository can be in flight at once, and their outcomes
# reach etcd in any order. Each one is recorded by one compare-and-swap over the
# record as read, so outcomes are serialized; this rule makes every order safe.


@dataclass(frozen=True)
class RecordedOutcome:
    """The record a write's outcome leaves, and what the rule did to get there."""

    record: RepositoryRecord  # the input record itself when nothing changes
    bumped: frozenset[str]  # moved to the new generation with the repository
    demoted: frozenset[str]  # no longer up to date
    # Named outdated by the write but left up to date: they moved past the
    # generation the write started from, or they are the last up-to-date replica.
    spared: frozenset[str]


def record_outcome(
    record: RepositoryRecord,
    started_at: int,
    result: WriteResult,
    *,
    routed_at: int,
    healthy: AbstractSet[str],
) -> RecordedOutcome:
    """The repository record after ``result``, for a write routed at generation
    ``started_at`` from the record at revision ``routed_at``.

    ``record`` is the record as read now: other outcomes, repairs, failovers
    and verifier results may have changed it since the write was routed.

    * Some replica took the write: those of ``result.updated`` still up to date
      (at the record's generation: they also hold every write recorded since)
      move with the repository to the next generation; every other replica is
      then behind, so no demotion is needed. If none of them is up to date the
      write went only to replicas that missed another recorded write:
      :class:`WriteToOutdatedReplicas`, nothing is recorded (the client learns
      the outcome is unknown).
    * A replica a repair recorded at or after the revision the write was
      routed from (``repaired_at >= routed_at``) does not count as holding it:
      the write may have landed on it while the repair's copy was overwriting
      its references, which would undo the write there. It stays where it is
      and falls behind (repaired again). A repair recorded before the routing
      revision finished its copy before the write was routed: no overlap.
    * Nobody is known to hold it: the replicas of ``result.outdated`` that are
      up to date are demoted (one below the repository's generation), but only
      those that have not moved past ``started_at``. A replica at a later
      generation got there through an outcome or a repair recorded after this
      write started; that newer record of it stands, and this write, which
      nobody acknowledged, cannot take it back.
    * The demotions never empty the up-to-date set. Every replica recorded up
      to date holds every acknowledged write, so keeping one of them is always
      safe; if the demotions would remove them all, one is kept and the others
      are demoted so that they are repaired from it. The one kept should be
      able to serve: the primary if it is ``healthy`` (the repository stays
      writable without a failover), else the first ``healthy`` one by name
      (failover can pick it), and only when none is healthy the primary, or
      else the first by name.
    """
    generation = record.generation
    replicas = dict(record.replicas)
    if result.updated:
        bumped = frozenset(
            n
            for n in result.updated
            if replicas.get(n) == generation and record.repaired_at(n) < routed_at
        )
        if not bumped:
            raise WriteToOutdatedReplicas(
                f"repository {record.repository_id}: none of {sorted(result.updated)} is at "
                f"generation {generation}"
            )
        for node in bumped:
            replicas[node] = generation + 1
        new = record.with_replicas(replicas, generation=generation + 1)
        return RecordedOutcome(new, bumped, frozenset(), frozenset())
    current = up_to_date_replicas(record)
    named = current & result.outdated
    demoted = frozenset(n for n in named if replicas[n] <= started_at)
    if demoted and demoted == current:
        demoted -= {_replica_to_keep(record.primary, demoted, healthy)}
    if not demoted:
        return RecordedOutcome(record, frozenset(), frozenset(), named)
    for node in demoted:
        replicas[node] = generation - 1
    new = record.with_replicas(replicas)
    return RecordedOutcome(new, frozenset(), demoted, named - demoted)


def _replica_to_keep(
    primary: str | None, candidates: frozenset[str], healthy: AbstractSet[str]
) -> str:
    """Which of ``candidates`` (every up-to-date replica) stays up to date: keeping
    an unhealthy one while a healthy one is demoted would leave the repository
    without a valid primary although a healthy replica holds every acknowledged
    write."""
    serving = candidates & healthy
    if primary in serving:
        return primary
    if serving:
        return min(serving)
    if primary in candidates:
        return primary
    return min(candidates)


# -- settling a checksum mismatch -------------------------------------------------------
#
# The verifier compares the checksums of a repository's up-to-date replicas.
# Every one of them should hold every acknowledged write, so they should all
# agree; when they do not, one of them lost data (power loss, a restored backup,
# bit rot) or gained something nobody acknowledged. Which one is decided by the
# replicas themselves, never by the primary's word: the primary may be the one
# that lost data, and a repair copies its source over the target (prune and
# force), so repairing from a wrong source copies the loss everywhere.


@dataclass(frozen=True)
class Settlement:
    """What one round of checksums decides for a repository."""

    record: RepositoryRecord  # the record to store: the input itself when nothing changes
    changed: bool  # ``record`` differs from the input and must be written
    agreed: str | None  # the checksum a majority of the up-to-date replicas agree on
    majority: frozenset[str]  # the up-to-date replicas holding ``agreed``
    demoted: frozenset[str]  # up-to-date replicas that differ from the majority
    repairs: tuple[Repair, ...]  # one per demoted replica, each from a majority source
    # The up-to-date replicas disagree and no majority holds one checksum:
    # nothing is demoted or repaired, and the record reports the conflict.
    conflict: bool
    # No majority, but an unfinished write explains the difference: the
    # replica ``agreed`` names was taken as the reference.
    reference: str | None = None


def settle_mismatch(
    record: RepositoryRecord,
    checksums: Mapping[str, str | None],
    healthy: AbstractSet[str],
    *,
    load: Mapping[str, int],
    draining: AbstractSet[str] = frozenset(),
    unfinished: Sequence[str] = (),
) -> Settlement:
    """Settle the checksums of ``record``'s up-to-date replicas by majority.

    ``checksums`` maps the replicas that answered to their checksum (None: the
    replica does not exist on disk); replicas that did not answer are absent,
    and replicas not up to date are ignored. The majority is counted over the
    replicas *recorded* up to date, not over those that answered: two answers
    out of five up-to-date replicas decide nothing.

    * A checksum held by more than half of the up-to-date replicas is the
      truth: the replicas that answered something else (or are missing) are
      demoted and repaired from a healthy member of that majority. A primary
      among them also loses its role to a member of the majority
      (``choose_primary`` with the others excluded), in the same record. A
      conflict reported earlier is cleared.
    * A missing replica holds nothing that a repair could destroy: when every
      up-to-date replica answered and all those that exist agree, the missing
      ones are demoted and created from them even without a majority (two
      replicas, one of them deleted).
    * Otherwise, if the answers disagree (or every up-to-date replica answered
      and none holds a majority), nothing is demoted or repaired and the
      record's ``conflict`` names the up-to-date replicas that answered: an
      operator decides (``accept-dataloss``), or a later check that finds a
      majority settles it.
    * Unless writes whose outcome is not recorded explain the difference
      (``unfinished``: the primaries of the intents ``explaining_writes``
      keeps, ``cluster.intents``), every up-to-date replica answered, and
      there are at most ``len(unfinished) + 1`` different checksums (a
      missing replica is none: it is recreated from the reference): every
      up-to-date replica still holds every acknowledged write, and they differ
      by writes nobody acknowledged; either side is then a correct state. The
      reference is the first of ``unfinished`` that exists on disk (the
      replica such a write's outcome rules keep), else the record's primary,
      else the first by name; those differing from it are demoted and
      repaired from it as from a majority. What this cannot tell apart: a
      disk that lost acknowledged writes while such a write stood
      (docs/failover.md "Unfinished writes").
    * Answers that agree without being a majority (too few answered) decide
      nothing and change nothing.
    """
    voters = up_to_date_replicas(record)
    answers = {node: checksum for node, checksum in checksums.items() if node in voters}
    present = Counter(checksum for checksum in answers.values() if checksum is not None)
    agreed = next((c for c, count in present.items() if 2 * count > len(voters)), None)
    everyone = bool(voters) and answers.keys() == voters
    if agreed is None and everyone and len(present) == 1:
        (agreed,) = present
    reference = None
    # Every up-to-date replica answered (a silent one may hold what the others
    # lost), and the writes can account for the states seen: each one is
    # applied or not, so n of them explain at most n + 1 different replicas.
    # A replica missing on disk is no state to explain: it holds nothing a
    # repair could destroy (a wiped disk beside an unfinished write).
    states = len({c for c in answers.values() if c is not None})
    if (
        agreed is None
        and everyone
        and len(set(answers.values())) > 1
        and 0 < states <= len(unfinished) + 1
    ):
        reference = _reference_replica(record, answers, unfinished)
        agreed = answers[reference] if reference is not None else None
    if agreed is None:
        disagree = len(set(answers.values())) > 1 or everyone
        conflict = tuple(sorted(answers)) if disagree else record.conflict
        new = replace(record, conflict=conflict)
        return Settlement(new, new != record, None, frozenset(), frozenset(), (), conflict=disagree)
    majority = frozenset(n for n, c in answers.items() if c == agreed)
    demoted = frozenset(answers) - majority
    replicas = dict(record.replicas)
    for node in demoted:
        replicas[node] = record.generation - 1
    new = record.with_replicas(replicas, conflict=())
    if record.primary in demoted:
        chosen = choose_primary(
            new, healthy, load=load, draining=draining, exclude=voters - majority
        )
        if chosen is not None:
            new = replace(new, primary=chosen)
    found = []
    for node in sorted(demoted):
        # Only a majority member may be the source: an up-to-date replica that
        # did not answer is no evidence of anything.
        source = choose_source(new, healthy & majority, target=node)
        if source is None:
            continue
        missing = new.replica_generation(node) == MISSING
        found.append(Repair(JobType.CREATE if missing else JobType.UPDATE, node, source))
    return Settlement(
        new,
        new != record,
        agreed,
        majority,
        demoted,
        tuple(found),
        conflict=False,
        reference=reference,
    )


def explaining_writes(
    intents: Sequence[StoredIntent],
    answered: AbstractSet[str],
    members: Mapping[str, float],
    record: RepositoryRecord,
) -> tuple[str, ...]:
    """The primaries of the intents that may explain a mismatch between the
    ``answered`` replicas, newest first: writes that are over (finished by
    their finalizer, or their proxy incarnation is not among ``members``,
    name -> incarnation; a write still in flight is its own proxy's to
    account for) and that reached every replica that answered (a write can
    only explain a difference on replicas it reached).

    A replica reached a write if it took part in it, or if a repair of it was
    recorded against a revision of ``record`` at or after the one the write
    was routed at: it holds a copy of a replica's state from some point of
    the write, with or without it. (Counting participants alone, a replica
    caught up while an abandoned write was in flight, that differs from a
    participant by that write only, made a conflict nobody but an operator
    could settle.)"""

    def reached(intent: StoredIntent) -> bool:
        return all(
            node in intent.participants
            or (intent.routed_revision > 0 and record.repaired_at(node) >= intent.routed_revision)
            for node in answered
        )

    over = [i for i in intents if i.is_evidence(members) and reached(i) and i.primary]
    return tuple(i.primary for i in sorted(over, key=lambda i: i.create_revision, reverse=True))


def write_in_flight(intents: Sequence[StoredIntent], members: Mapping[str, float]) -> bool:
    """Whether a write of the repository may still be committing: an intent
    its live proxy has not finished. Replicas differ for a moment while its
    COMMITs land (longer when one of its replicas is cut off and its proxy
    waits out ``write_timeout`` before recording the outcome), so no verdict
    is taken on checksums read meanwhile."""
    return any(not i.is_evidence(members) for i in intents)


def _reference_replica(
    record: RepositoryRecord, answers: Mapping[str, str | None], unfinished: Sequence[str]
) -> str | None:
    """The side taken when an unfinished write explains a mismatch: a replica
    that exists on disk, preferring the writes' primaries, then the record's."""
    holders = sorted(node for node, checksum in answers.items() if checksum is not None)
    for node in (*unfinished, record.primary):
        if node in holders:
            return node
    return holders[0] if holders else None


# -- a write whose primary could not be reached ------------------------------------------


def failover_done(
    record: RepositoryRecord | None, unreachable: str, healthy: AbstractSet[str]
) -> bool:
    """Whether a write held back because ``unreachable`` (its primary) refused its
    connection may go on: the record names another primary, or the cluster no
    longer counts ``unreachable`` as a valid primary (the write's lazy failover
    then chooses one), or the repository is gone (the retry answers NOT_FOUND).

    Only the consensus (``healthy``) decides: one proxy that cannot connect to
    a node must not move the primary away from it (its blind spot).
    """
    if record is None:
        return True
    return record.primary != unreachable or not primary_is_valid(record, healthy)
