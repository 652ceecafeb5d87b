"""Routing: pure functions from a repository record and node health to a route.

The functions decide; the handler executes. A route is an immutable value that
names the physical nodes and the replica path, and renders itself for the
RPC's log line.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gitquorum.cluster.decisions import up_to_date_replicas
from gitquorum.cluster.repositories import MISSING, RepositoryRecord
from gitquorum.errors import FailedPrecondition, Unavailable

PRIMARY_ONLY_HEADER = "gitaly-route-repository-accessor-policy"
# Reads that must see the primary's view (sizes differ between packings).
FORCE_PRIMARY = frozenset({"/gitaly.RepositoryService/RepositorySize"})
LAST_RESORT = "last-resort"


# -- route values ----------------------------------------------------------------------


@dataclass(frozen=True)
class AccessorRoute:
    """A read served by one replica; the others in ``fallbacks`` take it over, in
    order, if that replica fails before answering (or is hedged)."""

    repository_id: int
    replica_path: str
    node: str
    reason: str  # "distributed", "primary-only" or "last-resort"
    fallbacks: tuple[str, ...] = ()

    @property
    def last_resort(self) -> bool:
        """Served by up-to-date replicas the health consensus calls unhealthy."""
        return self.reason == LAST_RESORT

    @property
    def candidates(self) -> tuple[str, ...]:
        return (self.node, *self.fallbacks)

    def describe(self) -> dict[str, object]:
        return {"route": "accessor", "node": self.node, "policy": self.reason}


@dataclass(frozen=True)
class MutatorRoute:
    """A write: primary plus up-to-date healthy secondaries, and who must catch up later."""

    repository_id: int
    replica_path: str
    primary: str
    secondaries: tuple[str, ...]
    # Assigned replicas left out of the write (unhealthy or outdated): they get jobs.
    replication_targets: tuple[str, ...]
    transactional: bool
    generation: int  # the repository generation the write starts from
    creates: bool = False  # the RPC creates the repository
    # The record revision the route was computed from: a replica repaired at
    # or after it may have lost this write to the repair's copy.
    revision: int = 0

    @property
    def participants(self) -> tuple[str, ...]:
        return (self.primary, *self.secondaries)

    def describe(self) -> dict[str, object]:
        return {
            "route": "mutator",
            "primary": self.primary,
            "secondaries": list(self.secondaries),
            "replication_targets": list(self.replication_targets),
            "transactional": self.transactional,
        }


@dataclass(frozen=True)
class MaintenanceRoute:
    """Sent to every healthy replica; generations unchanged."""

    repository_id: int
    replica_path: str
    nodes: tuple[str, ...]

    def describe(self) -> dict[str, object]:
        return {"route": "maintenance", "nodes": list(self.nodes)}


@dataclass(frozen=True)
class RemoveRoute:
    """Remove the record first, then every replica (best effort)."""

    repository_id: int
    replica_path: str
    nodes: tuple[str, ...]

    def describe(self) -> dict[str, object]:
        return {"route": "remove", "nodes": list(self.nodes)}


Route = AccessorRoute | MutatorRoute | MaintenanceRoute | RemoveRoute


# -- routing policy ------------------------------------------------------------------------


def _assigned(repo: RepositoryRecord, configured: Sequence[str]) -> list[str]:
    # An empty assignment means every configured node holds a replica.
    nodes = repo.assigned or frozenset(configured)
    return [n for n in configured if n in nodes]


def route_accessor(
    repo: RepositoryRecord,
    healthy: frozenset[str],
    configured: Sequence[str],
    *,
    primary_only: bool = False,
    choose: Callable[[Sequence[str]], str] = random.choice,
    draining: frozenset[str] = frozenset(),
    ejected: frozenset[str] = frozenset(),
    last_resort: bool = False,
) -> AccessorRoute:
    """One healthy, up-to-date replica, and the others as fallbacks.

    Drained nodes and nodes this proxy ejected from its read set (outliers)
    serve only when no other replica can: they come last among the fallbacks,
    so that a read still finds them when every other replica fails.

    With ``last_resort``, a read that has no healthy up-to-date replica goes
    to the up-to-date ones the health consensus calls unhealthy (reason
    "last-resort"; the reader bounds how long they may take to answer).
    Health decides where writes go and who may become primary; a read only
    needs a replica that holds every acknowledged write, and a replica
    recorded up to date does, whatever the checks say about its liveness: a
    node slow to answer checks under load, or one the other proxies cannot
    reach, still serves it instead of the read being refused.
    """
    up_to_date = up_to_date_replicas(repo)
    if repo.conflict:
        # No last resort: proxies whose views differ could read different sides.
        last_resort = False
        # Replicas disagree with no majority (the verifier): read one side only,
        # so that a write does not seem to come and go between reads: the
        # primary's, or while it cannot serve, always the same replica (the
        # first by name among the healthy up-to-date ones, whatever this proxy
        # ejected or an operator drained: every proxy must pick the same).
        if repo.primary in healthy and repo.primary in up_to_date:
            primary_only = True
        else:
            choose = min
            draining = ejected = frozenset()
    if primary_only:
        primary = repo.primary
        if primary is not None and primary in up_to_date and last_resort:
            reason = "primary-only" if primary in healthy else LAST_RESORT
            return AccessorRoute(repo.repository_id, repo.replica_path, primary, reason)
        if primary is None or primary not in healthy:
            raise Unavailable(f"repository unavailable: primary {primary or ''} is not healthy")
        if primary not in up_to_date:
            raise Unavailable("repository unavailable: primary is not up to date")
        return AccessorRoute(repo.repository_id, repo.replica_path, primary, "primary-only")
    assigned = _assigned(repo, configured)
    candidates = [n for n in assigned if n in healthy and n in up_to_date]
    if not candidates:
        last = [n for n in assigned if n in up_to_date] if last_resort else []
        if not last:
            raise Unavailable(
                f"repository unavailable: no healthy, up-to-date replica of {repo.relative_path!r}"
            )
        # The same order on every proxy, whatever each one ejected: replicas no
        # check vouches for are not verified either, and two of them that differ
        # would otherwise be read by turns. The primary first, then by name.
        last.sort(key=lambda n: (n != repo.primary, n))
        return AccessorRoute(
            repo.repository_id, repo.replica_path, last[0], LAST_RESORT, tuple(last[1:])
        )
    avoided = draining | ejected if ejected else draining
    preferred = [n for n in candidates if n not in avoided]
    if not preferred:
        # Ejection is this proxy's guess, draining an operator's wish: with only
        # such replicas left, serve from a drained one before an ejected one.
        preferred = [n for n in candidates if n not in ejected] or candidates
    node = choose(preferred)
    others = [n for n in preferred if n != node]
    if len(others) > 1:
        random.shuffle(others)
    last = [n for n in candidates if n not in preferred]
    if len(last) > 1:
        # Drained before ejected, as above.
        last.sort(key=lambda n: n in ejected)
    # In a conflict a retry or hedge on another replica could read the other side.
    fallbacks = () if repo.conflict else (*others, *last)
    return AccessorRoute(repo.repository_id, repo.replica_path, node, "distributed", fallbacks)


def route_mutator(
    repo: RepositoryRecord,
    healthy: frozenset[str],
    configured: Sequence[str],
    *,
    transactional: bool = True,
) -> MutatorRoute:
    primary = repo.primary
    if primary is None or primary not in healthy:
        raise Unavailable(f"repository unavailable: primary {primary or ''} is not healthy")
    up_to_date = up_to_date_replicas(repo)
    if primary not in up_to_date:
        raise FailedPrecondition("repository is in read-only mode: primary is not up to date")
    assigned = _assigned(repo, configured)
    secondaries = tuple(n for n in assigned if n != primary and n in healthy and n in up_to_date)
    if not transactional:
        secondaries_for_write: tuple[str, ...] = ()
        targets = tuple(n for n in assigned if n != primary)
    else:
        secondaries_for_write = secondaries
        targets = tuple(n for n in assigned if n != primary and n not in secondaries)
    return MutatorRoute(
        repository_id=repo.repository_id,
        replica_path=repo.replica_path,
        primary=primary,
        secondaries=secondaries_for_write,
        replication_targets=targets,
        transactional=transactional,
        generation=repo.generation,
        revision=repo.revision,
    )


def route_creation(
    repository_id: int,
    replica_path: str,
    primary: str,
    assigned: Sequence[str],
    healthy: frozenset[str],
) -> MutatorRoute:
    """A new repository: write to the healthy assigned nodes, queue the rest."""
    if primary not in healthy:
        raise Unavailable("no healthy node to create the repository on")
    secondaries = tuple(n for n in assigned if n != primary and n in healthy)
    targets = tuple(n for n in assigned if n != primary and n not in healthy)
    return MutatorRoute(
        repository_id=repository_id,
        replica_path=replica_path,
        primary=primary,
        secondaries=secondaries,
        replication_targets=targets,
        transactional=True,
        generation=-1,
        creates=True,
    )


def route_maintenance(
    repo: RepositoryRecord, healthy: frozenset[str], configured: Sequence[str]
) -> MaintenanceRoute:
    nodes = tuple(
        n
        for n in _assigned(repo, configured)
        if n in healthy and repo.replica_generation(n) > MISSING
    )
    if not nodes:
        raise Unavailable("repository unavailable: no healthy replica for maintenance")
    return MaintenanceRoute(repo.repository_id, repo.replica_path, nodes)


def route_removal(repo: RepositoryRecord, configured: Sequence[str]) -> RemoveRoute:
    present = repo.replica_nodes
    nodes = tuple(n for n in configured if n in present or n in repo.assigned)
    return RemoveRoute(repo.repository_id, repo.replica_path, nodes)
