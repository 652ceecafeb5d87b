"""The fault suite's checker: every invariant a named violation.

Checked during the run (:func:`check_up_to_date`, every few seconds) and at
its end (the rest), over the recorded :class:`~tests.chaos.workload.History`
(one monotonic clock) and the state etcd records:

``up-to-date-missing-write``
    a replica etcd records as up to date lacks a write acknowledged before the
    record was read (the repair/catch-up holes: a replica recorded up to date
    without a write);
``lost-write``
    at the end, an acknowledged write is missing from a replica or from a read
    through a proxy;
``phantom``
    a ref holds a value no client wrote, or wrote with a definite failure;
``stale-read``
    a read missed a write acknowledged before it began -- through the same
    proxy, or through another one more than the documented bound
    (``stale_read_limit``) earlier;
``stuck-repository``
    after the last fault healed, a repository took no write within
    :data:`STUCK_BOUND` seconds;
``not-converged``
    assigned replicas not all up to date with one checksum and no lock file
    within :data:`CONVERGE_BOUND` seconds of the workload's end;
``repair-of-up-to-date-replica``
    the verifier found an up-to-date replica differing from the majority (or
    no majority) and no disk fault hit its node;
``replica-missing``
    a read found a replica etcd recorded up to date (before and after) missing
    on the node's disk, and no disk fault hit it;
``failed-read-while-available``
    a read failed while no active fault excused it (one that takes away what
    reads need by design, the client's own proxy, or every up-to-date replica
    of that repository).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import re
import statistics
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from gitquorum.cluster.repositories import RepositoryRecord
from tests.chaos.workload import SHARED, Chain, History, Op
from tests.faults.base import Fault

UP_TO_DATE_MISSING = "up-to-date-missing-write"
LOST = "lost-write"
PHANTOM = "phantom"
STALE = "stale-read"
STUCK = "stuck-repository"
NOT_CONVERGED = "not-converged"
REPAIR = "repair-of-up-to-date-replica"
UNAVAILABLE_READ = "failed-read-while-available"
MISSING_REPLICA = "replica-missing"
# A repository left unconverged by a verifier conflict between replicas that
# differ only by writes whose clients were told "outcome unknown" (a client
# hung up, a proxy died or stopped mid-write): the unfinished write's intent
# lets the verifier settle that (docs/failover.md, "Unfinished writes"), so it
# is a violation of its own, named apart from ``not-converged`` because the
# replicas lost nothing acknowledged.
KNOWN_CONFLICT = "conflict-after-abandoned-write"
# The during-run check ran less than half as often as it should: the run saw too
# little to vouch for anything.
BLIND = "checker-blind"

# The longest the during-run check may go without a sample (a round that read
# etcd), from the run's start to its end: a longer spell is blind, however
# many rounds the rest of the run had. Above an etcd-quorum-loss hold plus a
# failed round's timeout and the next round.
BLIND_GAP = 30.0

# The documented bound on cross-proxy staleness (docs/failover.md, "Reads
# across proxies": stale_read_limit, 5 s by default).
STALE_BOUND = 5.0
# After the last fault heals, every repository takes a write within this.
STUCK_BOUND = 30.0
# After the workload stops, every repository converges within this.
CONVERGE_BOUND = 90.0
# A failed read this soon after a fault healed is still the fault's.
HEAL_GRACE = 3.0
# A disk fault excuses repairs of its node's replicas, and stale reads of its
# replica, until this long after it healed (the verifier needs a round or two
# to find and repair them).
DISK_EXEMPTION = 60.0
# A rolled-back replica's backup, when the fault does not say when it was taken
# (``Fault.backup_at``), is assumed taken at most this long before the fault.
BACKUP_AGE = 10.0


@dataclass(frozen=True)
class Violation:
    name: str
    repo: str
    detail: str
    at: float

    def __str__(self) -> str:
        return f"[{self.name}] {self.repo} at {self.at:.2f}: {self.detail}"


# -- the history, per repository -------------------------------------------------------------


# (time the records were read, repository -> nodes recorded up to date)
Timeline = Sequence[tuple[float, Mapping[str, frozenset[str]]]]
# Record versions that lived between two samples of the timeline (read back
# from etcd's history): repository -> (sample before, sample after, nodes up
# to date), each current at some moment between the two samples.
Transients = Mapping[str, Sequence[tuple[float, float, frozenset[str]]]]


def transients(
    repo: str,
    times: Sequence[float],
    revisions: Sequence[int],
    versions: Iterable[tuple[int, RepositoryRecord]],
    answered: Sequence[float] | None = None,
) -> list[tuple[float, float, frozenset[str]]]:
    """Where each version of ``repo``'s record (its mod_revision and record)
    lies between the samples asked for at ``times``, answered at
    ``answered`` (default: the same) at etcd ``revisions``: a version written
    after the sample at revision r_k and at or before the one at r_k+1 was
    written after t_k (sample k was served after it was asked for) and
    before sample k+1 was answered, so it was current at some moment in
    between (perhaps only for milliseconds). Versions outside the samples
    are left out."""
    ends = answered if answered is not None else times
    found = []
    for mod_revision, record in versions:
        k = bisect.bisect_left(revisions, mod_revision)  # revisions[k - 1] < mod <= revisions[k]
        if 0 < k < len(revisions):
            found.append((times[k - 1], ends[k], frozenset(up_to_date_replicas(record))))
    return found


@dataclass
class Acks:
    """One repository's acknowledged writes, indexed by acknowledgement time."""

    creates: list[Op] = field(default_factory=list)  # create / push, sorted by end
    shared: list[tuple[float, int]] = field(default_factory=list)  # (end, chain position)
    shared_max: list[int] = field(default_factory=list)  # running max of positions
    written: dict[str, set[str]] = field(default_factory=dict)  # ref -> maybe-written values
    ends: list[float] = field(default_factory=list)

    def floor(self, before: float | None) -> int:
        """The highest shared-branch position acknowledged before ``before``."""
        if not self.shared:
            return 0
        index = (
            len(self.shared) if before is None else bisect.bisect_left(self.shared, (before, -1))
        )
        return self.shared_max[index - 1] if index else 0

    def creates_before(self, before: float | None) -> list[Op]:
        if before is None:
            return self.creates
        return self.creates[: bisect.bisect_left(self.ends, before)]


def index(ops: Iterable[Op], chain: Chain, lost: Collection[int] = ()) -> dict[str, Acks]:
    """``lost``: ``id()`` of acknowledged writes a disk fault took from every
    holder (:func:`lost_to_disk`): no longer required anywhere, still allowed."""
    acks: dict[str, Acks] = {}
    for op in ops:
        if not op.is_write:
            continue
        entry = acks.setdefault(op.repo, Acks())
        # In flight ("") or unknown: it may be on the replicas.
        if op.outcome != "failed":
            entry.written.setdefault(op.key, set()).add(op.value)
        if op.outcome != "ok" or id(op) in lost:
            continue
        if op.kind == "cas":
            entry.shared.append((op.end, chain.counter(op.value) or 0))
        else:
            entry.creates.append(op)
    for entry in acks.values():
        entry.creates.sort(key=lambda o: o.end)
        entry.ends = [o.end for o in entry.creates]
        entry.shared.sort()
        highest = 0
        for _, position in entry.shared:
            highest = max(highest, position)
            entry.shared_max.append(highest)
    return acks


def check_refs(
    refs: Mapping[str, str],
    acks: Acks,
    chain: Chain,
    seed: Mapping[str, str],
    before: float | None,
    missing: str,
) -> tuple[list[str], list[str]]:
    """(missing writes, phantoms) of one replica's or one proxy's refs.

    ``before``: only writes acknowledged before it must be there (None: all).
    """
    lost: list[str] = []
    phantoms: list[str] = []
    for op in acks.creates_before(before):
        if refs.get(op.key) != op.value:
            lost.append(
                f"{missing}: {op.kind} of {op.key}={op.value[:10]} acknowledged at "
                f"{op.end:.2f} via {op.proxy}, found {refs.get(op.key, 'nothing')[:10]}"
            )
    shared = refs.get(SHARED, "")
    position = chain.counter(shared)
    floor = acks.floor(before)
    if position is None:
        phantoms.append(f"{missing}: {SHARED}={shared[:10]!r} is not a chain commit")
    elif position < floor:
        lost.append(f"{missing}: {SHARED} at position {position}, below acknowledged {floor}")
    for name, value in refs.items():
        if seed.get(name) == value or value in acks.written.get(name, ()):
            continue
        phantoms.append(f"{missing}: {name}={value[:10]} never written by a client")
    return lost, phantoms


def lost_to_disk(ops: Iterable[Op], faults: Sequence[Fault], timeline: Timeline) -> set[int]:
    """Acknowledged writes whose every holder lost them to a disk fault: the
    replicas recorded up to date right after the acknowledgement (the first
    record read after it) were all rolled back or wiped, and the write was
    acknowledged between the damaged replica's backup and its node's power
    loss. An acknowledged write held by one replica only (its secondaries
    outdated at that moment) is lost when that disk goes back in time: the
    disk lost it, not the cluster (counted, not a violation;
    docs/reliability.md).

    The backup: ``Fault.backup_at`` when the rollback could vouch for its
    copy (the replica was up to date in the record read just before it: the
    copy holds every write acknowledged before); otherwise (a wipe, a copy of
    an outdated replica) from :data:`BACKUP_AGE` before the fault's start,
    as the backup is taken at most that long before. Returns the ``id()``
    of those operations."""
    damaged = [f for f in faults if f.disk_repos and f.disk_nodes]
    if not damaged or not timeline:
        return set()
    times = [t for t, _ in timeline]
    lost: set[int] = set()
    for op in ops:
        if not op.is_write or op.outcome != "ok":
            continue
        i = bisect.bisect_left(times, op.end)
        if i >= len(timeline):
            continue
        holders = timeline[i][1].get(op.repo)
        if not holders:
            continue
        rolled = {
            n
            for f in damaged
            if op.repo in f.disk_repos and _backup_time(f) <= op.end <= _power_loss(f)
            for n in f.disk_nodes
        }
        if holders <= rolled:
            lost.add(id(op))
    return lost


def _backup_time(fault: Fault) -> float:
    """From when writes may be missing from the damaged replica's backup."""
    if fault.backup_at is not None and math.isfinite(fault.backup_at):
        return fault.backup_at
    return fault.start - BACKUP_AGE


def _power_loss(fault: Fault) -> float:
    return fault.power_loss if fault.power_loss is not None else fault.start


# -- during the run --------------------------------------------------------------------------


def up_to_date_replicas(record: RepositoryRecord) -> list[str]:
    return [n for n, g in record.replicas if g == record.generation]


def check_blind(
    began: float, ended: float, samples: Sequence[float], interval: float, detail: str
) -> list[Violation]:
    """``BLIND`` when the during-run check took fewer than half the samples
    due (one per ``interval``), or went longer than ``BLIND_GAP`` without one.

    ``samples``: when each round that read etcd began. ``detail`` is added to
    the violation (what the rounds cost, how many could not read etcd).
    """
    expected = (ended - began) / interval
    edges = [began, *sorted(samples), ended]
    gap, gap_at = max((b - a, a) for a, b in itertools.pairwise(edges))
    found = []
    if len(samples) < expected / 2:
        found.append(
            f"{len(samples)} rounds in {ended - began:.0f}s (expected about {expected:.0f})"
        )
    if gap > BLIND_GAP:
        found.append(f"no round for {gap:.0f}s from {gap_at - began:.0f}s into the run")
    if not found:
        return []
    return [Violation(BLIND, "*", f"the during-run check: {'; '.join(found)}; {detail}", ended)]


def check_up_to_date(
    records: Mapping[str, RepositoryRecord],
    read_at: float,
    replica_refs: Mapping[tuple[str, str], Mapping[str, str] | None],
    acks: Mapping[str, Acks],
    chain: Chain,
    seed: Mapping[str, str],
    exempt: Iterable[tuple[str, str]],
    now: float,
) -> list[Violation]:
    """Every replica recorded up to date (records read at ``read_at``) holds every
    write acknowledged before ``read_at``. ``replica_refs[(repo, node)]`` was read
    from the replica's disk after the records; None: unreadable (a copy replacing
    it, a wiped disk), judged at the end instead."""
    exempted = set(exempt)
    problems: list[Violation] = []
    for repo, record in records.items():
        entry = acks.get(repo, Acks())
        for node in up_to_date_replicas(record):
            if (repo, node) in exempted:
                continue
            refs = replica_refs.get((repo, node))
            if refs is None:
                continue
            lost, phantoms = check_refs(
                refs, entry, chain, seed, read_at, f"replica on {node} (recorded up to date)"
            )
            problems += [Violation(UP_TO_DATE_MISSING, repo, d, now) for d in lost]
            problems += [Violation(PHANTOM, repo, d, now) for d in phantoms]
    return problems


# -- reads -----------------------------------------------------------------------------------


@dataclass
class ReadFindings:
    violations: list[Violation] = field(default_factory=list)
    # Reads that missed a write another proxy acknowledged before they began,
    # within the documented bound: allowed, counted.
    cross_proxy_lag: int = 0
    # Stale reads of a repository whose replica a disk fault rolled back, before
    # the verifier found it: the disk lost the write, the cluster could not know.
    from_restored_replica: int = 0


def _restored(read: Op, faults: Sequence[Fault], acks: Acks, chain: Chain) -> bool:
    """Whether a stale read may have been served by a replica a disk fault
    rolled back or wiped, before the verifier could repair it (``acks``: the
    repository's acknowledged writes, to see which the read missed).

    With the fault's ``backup_at`` known: the read began after the power loss
    (the replica came back only then) and at most :data:`DISK_EXEMPTION`
    after the heal, and the oldest write it missed was acknowledged after the
    backup (one older is in the restored copy: the read came from elsewhere).
    A read that missed only writes lost to the disk (not in ``acks``) is the
    disk's. A wipe, or a copy of an outdated replica, holds nothing to vouch
    for: the backup is then taken :data:`BACKUP_AGE` before the fault
    (``_backup_time``). Without ``backup_at``: any read of the repository from the fault's
    start to :data:`DISK_EXEMPTION` after its heal."""
    if read.key == SHARED:
        # The first shared-branch write acknowledged above the position it saw.
        first = bisect.bisect_right(acks.shared_max, chain.counter(read.value) or 0)
        missed = acks.shared[first][0] if first < len(acks.shared) else None
    else:
        write = next((o for o in acks.creates if o.key == read.key), None)
        missed = write.end if write is not None else None
    for f in faults:
        if read.repo not in f.disk_repos:
            continue
        until = (f.end if f.end is not None else float("inf")) + DISK_EXEMPTION
        if f.backup_at is None:
            if f.start <= read.end and read.start <= until:
                return True
            continue
        if _power_loss(f) <= read.start <= until and (missed is None or missed >= _backup_time(f)):
            return True
    return False


def check_reads(
    history: History,
    acks: Mapping[str, Acks],
    chain: Chain,
    seed: Mapping[str, str],
    faults: Sequence[Fault] = (),
) -> ReadFindings:
    found = ReadFindings()
    stale: list[tuple[Op, str]] = []
    by_proxy: dict[tuple[str, str], list[Op]] = {}
    for op in history.writes("ok"):
        by_proxy.setdefault((op.repo, op.proxy), []).append(op)
    per_proxy = {key: index(ops, chain) for key, ops in by_proxy.items()}
    for read in history.reads():
        entry = acks.get(read.repo, Acks())
        own = per_proxy.get((read.repo, read.proxy), {}).get(read.repo, Acks())
        if read.key == SHARED:
            position = chain.counter(read.value)
            if position is None or (
                read.value != seed.get(SHARED) and read.value not in entry.written.get(SHARED, ())
            ):
                found.violations.append(
                    Violation(
                        PHANTOM,
                        read.repo,
                        f"read of {SHARED} via {read.proxy} returned "
                        f"{read.value[:10]!r}, never written",
                        read.end,
                    )
                )
                continue
            needed = max(own.floor(read.start), entry.floor(read.start - STALE_BOUND))
            if position < needed:
                stale.append(
                    (read, f"saw {SHARED} at {position}, {needed} was acknowledged before")
                )
            elif position < entry.floor(read.start):
                found.cross_proxy_lag += 1
            continue
        if read.value and read.value not in entry.written.get(read.key, ()):
            found.violations.append(
                Violation(
                    PHANTOM,
                    read.repo,
                    f"read of {read.key} via {read.proxy} returned "
                    f"{read.value[:10]}, never written",
                    read.end,
                )
            )
            continue
        write = (
            next((o for o in entry.creates if o.key == read.key), None) if read.expects else None
        )
        if write is None or write.end >= read.start or read.value == write.value:
            continue
        if write.proxy == read.proxy or write.end < read.start - STALE_BOUND:
            stale.append(
                (
                    read,
                    f"{read.key} found {read.value[:10] or 'nothing'}, acknowledged at "
                    f"{write.end:.2f} via {write.proxy}",
                )
            )
        else:
            found.cross_proxy_lag += 1
    for read, what in stale:
        if _restored(read, faults, acks.get(read.repo, Acks()), chain):
            found.from_restored_replica += 1
            continue
        found.violations.append(
            Violation(
                STALE,
                read.repo,
                f"read via {read.proxy} [{read.start:.2f}-{read.end:.2f}]: {what}",
                read.end,
            )
        )
    return found


# Why a failed read was excused (the table's columns).
EXCUSE_BY_DESIGN = "by_design"  # the fault takes reads away (etcd without quorum)
EXCUSE_OWN_PROXY = "own_proxy"  # the client's own proxy was down
EXCUSE_NO_REPLICA = "no_replica"  # no up-to-date replica alive and reachable
EXCUSES = (EXCUSE_BY_DESIGN, EXCUSE_OWN_PROXY, EXCUSE_NO_REPLICA)


def excused(
    read: Op,
    faults: Sequence[Fault],
    timeline: Timeline = (),
    proxy_name: str = "",
    between: Transients | None = None,
) -> Fault | None:
    """The fault that excuses a failed read, if any (``_excuse``)."""
    found = _excuse(read, faults, timeline, proxy_name, between)
    return found[0] if found is not None else None


def excuse_reason(
    read: Op,
    faults: Sequence[Fault],
    timeline: Timeline = (),
    proxy_name: str = "",
    between: Transients | None = None,
) -> str | None:
    """Why a failed read is excused (one of ``EXCUSES``), or None."""
    found = _excuse(read, faults, timeline, proxy_name, between)
    return found[1] if found is not None else None


def _excuse(
    read: Op,
    faults: Sequence[Fault],
    timeline: Timeline = (),
    proxy_name: str = "",
    between: Transients | None = None,
) -> tuple[Fault, str] | None:
    """The fault that excuses a failed read, if any: one that takes away what
    reads need by design, the client's own proxy, or every replica of the
    repository recorded up to date around the read (stopped at some moment of
    the read, or cut off from the read's proxy). Recorded up to date: in a
    sample of the records around the read, or in a version of the record
    that lived between two of them (``between``: a replica demoted and
    repaired within one sampling interval leaves a window no sample shows)."""
    active = [
        f
        for f in faults
        if f.start <= read.end
        and read.start <= (f.end if f.end is not None else float("inf")) + f.recovery
    ]
    for fault in active:
        if read.end < fault.start + fault.excuse_after:
            continue
        if not fault.reads_available:
            return fault, EXCUSE_BY_DESIGN
        if read.proxy in fault.proxies_down and _proxy_down_at(fault, read):
            return fault, EXCUSE_OWN_PROXY
        if read.repo in fault.repos_down:
            return fault, EXCUSE_NO_REPLICA
    if not active or not timeline:
        return None
    # What each fault took from this read: its nodes down at some moment of the
    # read (a node brought back mid-fault only in its windows, ``_node_down_at``)
    # and those cut off from the read's proxy.
    took = [
        (
            f,
            {n for n in f.nodes_down if _node_down_at(f, n, read)}
            | {n for p, n in f.unreachable if p == proxy_name},
        )
        for f in active
    ]
    gone = {n for _, nodes in took for n in nodes}
    if not gone:
        return None
    times = [t for t, _ in timeline]
    first, last = sample_window(times, read.start, read.end)
    candidates = [timeline[i][1].get(read.repo) for i in range(first, last + 1)]
    if between:
        # A version that may have been current at some moment of the read.
        candidates += [
            nodes
            for before, after, nodes in between.get(read.repo, ())
            if before < read.end and after > read.start
        ]
    for up_to_date in candidates:
        if up_to_date is not None and up_to_date <= gone:
            culprit = next((f for f, nodes in took if nodes & up_to_date), None)
            return culprit or next(f for f, nodes in took if nodes), EXCUSE_NO_REPLICA
    return None


def sample_window(times: Sequence[float], start: float, end: float) -> tuple[int, int]:
    """The samples around ``[start, end]``: the last taken at or before
    ``start`` and the first at or after ``end`` (clamped to the timeline)."""
    first = max(bisect.bisect_right(times, start) - 1, 0)
    last = min(bisect.bisect_left(times, end), len(times) - 1)
    return first, last


def _proxy_down_at(fault: Fault, op: Op) -> bool:
    """Whether ``fault``'s down proxies were down at some moment of ``op``."""
    windows = fault.proxies_down_during
    return not windows or any(op.start <= end and op.end >= start for start, end in windows)


def _node_down_at(fault: Fault, node: str, op: Op) -> bool:
    """Whether ``node`` of ``fault``'s down nodes was down at some moment of
    ``op``: in one of its windows, each until the fault's recovery after its end
    (the proxies seeing it back); without windows, the whole fault."""
    windows = fault.nodes_down_during.get(node)
    return not windows or any(
        op.start <= end + fault.recovery and op.end >= start for start, end in windows
    )


def with_proxy_addresses(faults: Sequence[Fault], proxy_names: Mapping[str, str]) -> list[Fault]:
    """The faults with their down proxies named by address too (reads record addresses)."""
    return [
        replace(
            f,
            proxies_down=tuple(a for a, n in proxy_names.items() if n in f.proxies_down)
            + f.proxies_down,
        )
        for f in faults
    ]


def check_failed_reads(
    history: History,
    faults: Sequence[Fault],
    proxy_names: Mapping[str, str],
    timeline: Timeline = (),
    between: Transients | None = None,
) -> list[Violation]:
    """Failed reads no fault excuses. ``proxy_names``: address -> proxy name."""
    problems: list[Violation] = []
    named = with_proxy_addresses(faults, proxy_names)
    for read in history.ops:
        if read.kind != "read" or read.outcome != "failed":
            continue
        if excused(read, named, timeline, proxy_names.get(read.proxy, ""), between) is None:
            during = [
                f.nemesis
                for f in named
                if f.start <= read.end and read.start <= (f.end or float("inf")) + f.recovery
            ]
            problems.append(
                Violation(
                    UNAVAILABLE_READ,
                    read.repo,
                    f"read via {read.proxy} [{read.start:.2f}-"
                    f"{read.end:.2f}] failed ({read.detail[:120]}) during {during or 'no fault'}",
                    read.end,
                )
            )
    return problems


# -- the verifier's repairs ------------------------------------------------------------------

DEMOTED = "verification failed: replicas differing from the majority demoted"
NO_MAJORITY = "replicas disagree with no majority: nothing repaired, see gitquorum dataloss"
# The verifier took a side because writes nobody acknowledged explain the
# difference (docs/failover.md "Unfinished writes"): counted with the repairs,
# not a violation — the side taken holds every acknowledged write, which the
# lost-write and up-to-date-missing-write checks hold it to.
SETTLED = "replicas differing by an unfinished write settled"


@dataclass(frozen=True)
class Repair:
    repo: str
    nodes: tuple[str, ...]
    at: float  # monotonic
    conflict: bool
    proxy: str = ""  # whose log (its file's stem)
    unfinished: bool = False  # settled on an unfinished write's intent (``SETTLED``)
    # A majority verdict whose demoted replicas unfinished writes of gone
    # proxies went to: excused only next to a write of unknown outcome.
    majority_unfinished: bool = False
    # The correlation ids of the unfinished writes the verdict names (their
    # intents'): each must be a write whose client was never told an outcome.
    correlation_ids: tuple[str, ...] = ()
    # Replicas the verifier found missing on disk (``missing_on_disk``).
    missing: tuple[str, ...] = ()
    # The references the repair changes (``differing_refs``, at most the
    # first 20 of ``refs_count``); None when the verifier could not read them.
    refs: tuple[str, ...] | None = None
    refs_count: int | None = None
    # Each of those references' object on each compared replica ("": absent).
    values: Mapping[str, Mapping[str, str]] | None = None
    # Each demoted replica's repair source.
    sources: Mapping[str, str] = field(default_factory=dict)
    # Where it was read: "history" (etcd, in the verdict's txn) or "log", and
    # the name of its history entry (a log line names its own).
    source: str = "log"
    entry: str = ""


# What a proxy logged, with its time and the proxy's name.
Logged = TypeVar("Logged", "Repair", "MissingReplica")


def unskew(logged: Sequence[Logged], faults: Sequence[Fault]) -> list[Logged]:
    """Repairs (or missing replicas) logged by a proxy whose wall clock a clock
    fault shifted, put back on the run's clock (the fault's detail says the
    skew: "wall clock +600s")."""
    fixed: list[Logged] = []
    for item in logged:
        at = item.at
        for fault in faults:
            match = re.search(r"wall clock ([+-]\d+)s", fault.detail)
            if fault.kind != "clock" or fault.target != item.proxy or match is None:
                continue
            candidate = item.at - float(match.group(1))
            end = fault.end if fault.end is not None else float("inf")
            if fault.start <= candidate <= end:
                at = candidate
        fixed.append(replace(item, at=at))
    return fixed


def log_entries(
    logs: Iterable[Path], needles: Sequence[str], wall_to_monotonic: float
) -> Iterator[tuple[str, str, Mapping[str, Any], float]]:
    """(log's stem, message, fields, monotonic time) of every JSON line of
    ``logs`` that contains one of ``needles``."""
    from datetime import UTC, datetime

    for path in logs:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if not any(n in line for n in needles):
                continue
            try:
                entry = json.loads(line)
                wall = (
                    datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
                    .replace(tzinfo=UTC)
                    .timestamp()
                )
            except (ValueError, KeyError):
                continue  # torn by a concurrent write, or not a log line
            yield (
                path.stem,
                str(entry.get("msg", "")),
                entry.get("fields", entry),
                (wall - wall_to_monotonic),
            )


def verifier_repairs(logs: Iterable[Path], wall_to_monotonic: float) -> list[Repair]:
    """Repairs and conflicts the verifier logged (JSON lines of every proxy)."""
    repairs: list[Repair] = []
    for proxy, msg, fields, at in log_entries(
        logs, (DEMOTED, NO_MAJORITY, SETTLED), wall_to_monotonic
    ):
        conflict = msg == NO_MAJORITY
        nodes = fields.get("replicas" if conflict else "demoted", ())
        repairs.append(
            Repair(
                fields.get("relative_path", "?"),
                tuple(nodes),
                at,
                conflict,
                proxy,
                unfinished=msg == SETTLED,
                majority_unfinished=msg == DEMOTED
                and bool(int(fields.get("unfinished_writes", 0))),
                correlation_ids=tuple(fields.get("unfinished_correlation_ids", ())),
                missing=tuple(fields.get("missing_on_disk", ())),
                entry=str(fields.get("history_entry") or ""),
                **_differing(fields),
            )
        )
    return repairs


def _differing(details: Mapping[str, Any]) -> dict[str, Any]:
    """The differing references of a verdict's log line or history entry."""
    refs = details.get("differing_refs")
    values = details.get("differing_values")
    return {
        "refs": tuple(refs) if isinstance(refs, list) else None,
        "refs_count": details.get("differing_refs_count"),
        "values": values if isinstance(values, dict) else None,
        "sources": dict(details.get("sources") or {}),
    }


def history_repairs(entries: Iterable[Mapping[str, Any]], wall_to_monotonic: float) -> list[Repair]:
    """Repairs and conflicts of the verifier's verdicts recorded in etcd's
    ``history/`` (each in its verdict's txn: present even when the leader
    died before its log line). ``entries``: the decoded JSON values, each
    with its key's last segment as ``entry``."""
    repairs: list[Repair] = []
    for entry in entries:
        if entry.get("kind") != "verdict":
            continue
        details = entry.get("details") or {}
        conflict = entry.get("reason") == "conflict"
        nodes = details.get("conflict" if conflict else "demoted") or []
        if not nodes:
            continue  # a conflict cleared: nothing repaired
        ids = details.get("unfinished_correlation_ids") or []
        repairs.append(
            Repair(
                str(entry.get("path", "?")),
                tuple(nodes),
                float(entry["at"]) - wall_to_monotonic,
                conflict,
                str(entry.get("by", "")),
                unfinished=entry.get("reason") == "unfinished-write",
                majority_unfinished=entry.get("reason") == "majority" and bool(ids),
                correlation_ids=tuple(ids),
                missing=tuple(details.get("missing_on_disk") or ()),
                source="history",
                entry=str(entry.get("entry", "")),
                **_differing(details),
            )
        )
    return repairs


# How far apart a verdict's history entry and its log line may be stamped
# (both from the leader's wall clock; the line is written after the txn).
SAME_VERDICT_WITHIN = 5.0


def merge_repairs(recorded: Sequence[Repair], logged: Sequence[Repair]) -> list[Repair]:
    """The verdicts recorded in etcd, and those only logged (an entry trimmed
    from the bounded history): a log line is its entry's verdict (it names
    it); a line that names none (an older proxy) is a recorded verdict of the
    same repository and replicas stamped within ``SAME_VERDICT_WITHIN``."""
    merged = list(recorded)
    entries = {r.entry for r in recorded if r.entry}
    for repair in logged:
        if repair.entry:
            # The line names its entry: the same verdict iff that entry is there.
            same = repair.entry in entries
        else:
            same = any(
                r.repo == repair.repo
                and set(r.nodes) == set(repair.nodes)
                and r.conflict == repair.conflict
                and abs(r.at - repair.at) <= SAME_VERDICT_WITHIN
                for r in recorded
            )
        if not same:
            merged.append(repair)
    return merged


def abandoned_only(
    replicas: Mapping[str, Mapping[str, str]], acks: Acks, chain: Chain, seed: Mapping[str, str]
) -> bool:
    """Whether replicas in a verifier conflict differ only by writes of unknown
    outcome: each holds every acknowledged write, and every ref on which they
    differ has, on each side, a seed value, nothing, or a value only an
    unknown (or unfinished) write wrote."""
    acked = {(o.key, o.value) for o in acks.creates}
    for refs in replicas.values():
        lost, phantoms = check_refs(refs, acks, chain, seed, None, "")
        if lost or phantoms:
            return False
    names = {name for refs in replicas.values() for name in refs}
    for name in names:
        values = {refs.get(name, "") for refs in replicas.values()}
        if len(values) == 1:
            continue
        for value in values - {"", seed.get(name, "")}:
            if (name, value) in acked:
                return False
            if name == SHARED and chain.counter(value) is not None:
                # A shared-branch position beyond the highest acknowledged one.
                if (chain.counter(value) or 0) <= acks.floor(None):
                    return False
    return True


# How far apart a verdict's log time and a client's acknowledgement may look
# on the run's clock although the acknowledgement came after (the verdict's
# time is read from a proxy's wall clock).
VERDICT_CLOCK_SLACK = 1.0


def explained_by_unknown_write(
    repair: Repair, ops: Sequence[Op], chain: Chain | None = None
) -> bool:
    """A verdict taken on writes that are over without an outcome saying who
    holds them (their proxy gone, or finished with the replicas they named
    outdated spared, or standing past the intent grace: a write left committed
    on some replicas by a proxy paused or killed mid-write, or by a client that
    hung up) -- settled on their intents, or a majority verdict whose demoted
    replicas or whole majority they went to -- is excused only when one of
    them, matched by the correlation id its intent carries, is a write of that
    repository whose client was not told it succeeded before the verdict: an
    outcome never told (unknown), or an acknowledgement after the verdict (a
    proxy paused past its lease that resumed and finished the write: its
    outcome removes the intent, so the verdict cannot have come after it).
    The replicas then differ by a write nobody had acknowledged, not by a disk
    that lost one. A definitely failed write applied nothing and explains
    nothing. A real loss is still caught by `up-to-date-missing-write` during
    the run and `lost-write` at the end.

    Causal when the verifier named the references its repair changes (with
    each side's object): every one of them must be such a write's, and the
    demoted replica must lack no write to it acknowledged before the verdict
    (``_ref_explained``)."""
    if not (repair.unfinished or repair.majority_unfinished) or not repair.correlation_ids:
        return False
    wanted = set(repair.correlation_ids)
    explaining = [
        op
        for op in ops
        if op.is_write
        and op.repo == repair.repo
        and op.correlation in wanted
        and (
            # "": still in flight when its writer was stopped.
            op.outcome in ("unknown", "")
            or (op.outcome == "ok" and op.end >= repair.at - VERDICT_CLOCK_SLACK)
        )
    ]
    if not explaining:
        return False
    if repair.refs is None:
        # The verifier could not list the references in time: one such write
        # is all there is to go on (counted apart in the report).
        return True
    if not repair.refs or (repair.refs_count or 0) > len(repair.refs):
        # Checksums that differ with no reference differing (HEAD, say), or
        # more references than were named: nothing shows the writes explain it.
        return False
    if repair.values is None:
        # An older line without the objects: every reference must be one of
        # those writes'.
        return set(repair.refs) <= {op.key for op in explaining}
    acked = [
        op
        for op in ops
        if op.is_write
        and op.repo == repair.repo
        and op.outcome == "ok"
        and op.end < repair.at - VERDICT_CLOCK_SLACK
    ]
    return all(
        _ref_explained(name, repair.values.get(name, {}), repair, explaining, acked, chain)
        for name in repair.refs
    )


def _ref_explained(
    name: str,
    values: Mapping[str, str],
    repair: Repair,
    explaining: Sequence[Op],
    acked: Sequence[Op],
    chain: Chain | None,
) -> bool:
    """Whether each demoted replica's difference from its source on reference
    ``name`` is one of the explaining writes: one side holds that write's
    object, and the demoted side lacks no write to the reference acknowledged
    before the verdict (on the shared branch: it is not behind the source
    along the chain). A replica that lost an acknowledged write is not
    excused because an unknown write touched the same reference."""
    written = {op.value for op in explaining if op.key == name}
    for node in repair.nodes:
        mine, theirs = values.get(node, ""), values.get(repair.sources.get(node, ""), "")
        if mine == theirs:
            continue
        if not written & {mine, theirs}:
            return False
        if any(op.key == name and op.value == theirs for op in acked):
            if name != SHARED or chain is None:
                return False
            position, source = chain.counter(mine), chain.counter(theirs)
            if position is None or (source is not None and position < source):
                return False
    return True


def check_repairs(
    repairs: Sequence[Repair],
    faults: Sequence[Fault],
    ops: Sequence[Op] = (),
    chain: Chain | None = None,
) -> list[Violation]:
    problems: list[Violation] = []
    for repair in repairs:
        explained = explained_by_unknown_write(repair, ops, chain)
        for node in repair.nodes:
            # A replica gone from disk is no state a write explains.
            if explained and node not in repair.missing:
                continue
            exempt = any(
                node in f.disk_nodes
                and repair.repo in f.disk_repos
                and f.start <= repair.at
                and repair.at <= (f.end if f.end is not None else float("inf")) + DISK_EXEMPTION
                for f in faults
            )
            if not exempt:
                what = (
                    "no majority among the up-to-date replicas"
                    if repair.conflict
                    else "demoted by the verifier"
                )
                if node in repair.missing:
                    what += " (missing on disk)"
                problems.append(
                    Violation(
                        REPAIR,
                        repair.repo,
                        f"replica on {node} recorded up to date: {what}",
                        repair.at,
                    )
                )
    return problems


# -- replicas missing on disk ----------------------------------------------------------------


@dataclass(frozen=True)
class MissingReplica:
    """A read that found a replica missing on its node's disk (the proxy's
    log line of the read names it in ``replica_missing``)."""

    repo: str
    node: str
    at: float  # monotonic
    proxy: str = ""


def missing_replicas(logs: Iterable[Path], wall_to_monotonic: float) -> list[MissingReplica]:
    """The replicas the proxies' reads found missing (JSON lines of every proxy)."""
    return [
        MissingReplica(str(fields.get("relative_path", "?")), str(node), at, proxy)
        for proxy, _msg, fields, at in log_entries(logs, ('"replica_missing"',), wall_to_monotonic)
        for node in fields.get("replica_missing", ())
    ]


def check_missing_replicas(
    found: Sequence[MissingReplica],
    faults: Sequence[Fault],
    timeline: Timeline,
    answered: Sequence[float] | None = None,
) -> list[Violation]:
    """A replica recorded up to date (in the last during-run record answered
    before the read; ``answered``: when each sample's answer came, its read
    time if not given) that a read found missing on disk, with no disk fault
    on that replica: the cluster lost a replica it vouched for (the
    during-run check only counts such a replica unreadable). Reads that met
    it went on to another replica; this is about the replica, not them.
    Nothing in the cluster removes an up-to-date replica's directory
    (repairs fetch in place; a lowered replication factor leaves the replica
    on disk), so whether a later record still lists it does not matter: the
    verifier may have demoted it already.

    Not counted: a disk fault's own replica (wiped, or its node's disk sent
    back to before the repository existed) until the verifier's repair is
    due; a read before the first record."""
    problems: list[Violation] = []
    # A record asked for before the miss and answered after it may already
    # show the replica repaired and promoted again: it does not say what was
    # recorded when the read met the replica missing.
    times = list(answered) if answered is not None else [t for t, _ in timeline]
    for miss in found:
        disk = any(
            miss.node in f.disk_nodes
            and miss.repo in f.disk_repos
            and f.start
            <= miss.at
            <= (f.end if f.end is not None else float("inf")) + DISK_EXEMPTION
            for f in faults
        )
        if disk:
            continue
        i = bisect.bisect_right(times, miss.at)
        if i == 0:
            continue  # before the first record: nothing to hold it to
        if miss.node in timeline[i - 1][1].get(miss.repo, frozenset()):
            problems.append(
                Violation(
                    MISSING_REPLICA,
                    miss.repo,
                    f"replica on {miss.node} recorded up to date (record at "
                    f"{timeline[i - 1][0]:.2f}) missing on disk for a read via {miss.proxy}",
                    miss.at,
                )
            )
    return problems


# -- figures ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def longest_write_gap(history: History, start: float, end: float) -> float:
    """The longest time, within [start, end], some repository that was being
    written went without an acknowledged write."""
    by_repo: dict[str, list[float]] = {}
    for op in history.writes("ok"):
        by_repo.setdefault(op.repo, []).append(op.end)
    longest = 0.0
    for ends in by_repo.values():
        points = sorted([start, *[e for e in ends if start < e < end], end])
        longest = max(longest, max(b - a for a, b in itertools.pairwise(points)))
    return longest
