"""Routing policy: pure functions from repository state and node health to a route."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from gitquorum.errors import FailedPrecondition, Unavailable
from gitquorum.proxy.routes import AccessorRoute, MaintenanceRoute, MutatorRoute, RemoveRoute

PRIMARY_ONLY_HEADER = "gitaly-route-repository-accessor-policy"
# Reads that must see the primary's view (sizes differ between packings).
FORCE_PRIMARY = frozenset({"/gitaly.RepositoryService/RepositorySize"})


@dataclass(frozen=True)
class RepositoryView:
    """What routing needs to know about one repository (a snapshot)."""

    repository_id: int
    virtual_storage: str
    relative_path: str
    replica_path: str
    primary: str
    generation: int
    # node -> replica generation (-1: not created yet)
    replicas: Mapping[str, int] = field(default_factory=dict)
    assigned: frozenset[str] = frozenset()

    def up_to_date(self) -> frozenset[str]:
        return frozenset(n for n, g in self.replicas.items() if g == self.generation)


def _assigned(repo: RepositoryView, configured: Sequence[str]) -> list[str]:
    # An empty assignment means every configured node holds a replica.
    nodes = repo.assigned or frozenset(configured)
    return [n for n in configured if n in nodes]


def route_accessor(
    repo: RepositoryView,
    healthy: frozenset[str],
    configured: Sequence[str],
    *,
    primary_only: bool = False,
    choose: Callable[[Sequence[str]], str] = random.choice,
    draining: frozenset[str] = frozenset(),
) -> AccessorRoute:
    if primary_only:
        if repo.primary not in healthy:
            raise Unavailable(f"repository unavailable: primary {repo.primary} is not healthy")
        if repo.primary not in repo.up_to_date():
            raise Unavailable("repository unavailable: primary is not up to date")
        return AccessorRoute(repo.repository_id, repo.replica_path, repo.primary, "primary-only")
    up_to_date = repo.up_to_date()
    candidates = [n for n in _assigned(repo, configured) if n in healthy and n in up_to_date]
    preferred = [n for n in candidates if n not in draining] or candidates
    if not preferred:
        raise Unavailable(
            f"repository unavailable: no healthy, up-to-date replica of {repo.relative_path!r}"
        )
    return AccessorRoute(repo.repository_id, repo.replica_path, choose(preferred), "distributed")


def route_mutator(
    repo: RepositoryView,
    healthy: frozenset[str],
    configured: Sequence[str],
    *,
    transactional: bool = True,
) -> MutatorRoute:
    if repo.primary not in healthy:
        raise Unavailable(f"repository unavailable: primary {repo.primary} is not healthy")
    up_to_date = repo.up_to_date()
    if repo.primary not in up_to_date:
        raise FailedPrecondition("repository is in read-only mode: primary is not up to date")
    assigned = _assigned(repo, configured)
    secondaries = tuple(
        n for n in assigned if n != repo.primary and n in healthy and n in up_to_date
    )
    if not transactional:
        secondaries_for_write: tuple[str, ...] = ()
        targets = tuple(n for n in assigned if n != repo.primary)
    else:
        secondaries_for_write = secondaries
        targets = tuple(n for n in assigned if n != repo.primary and n not in secondaries)
    return MutatorRoute(
        repository_id=repo.repository_id,
        replica_path=repo.replica_path,
        primary=repo.primary,
        secondaries=secondaries_for_write,
        replication_targets=targets,
        transactional=transactional,
        generation=repo.generation,
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
    repo: RepositoryView, healthy: frozenset[str], configured: Sequence[str]
) -> MaintenanceRoute:
    nodes = tuple(
        n for n in _assigned(repo, configured) if n in healthy and repo.replicas.get(n, -1) >= 0
    )
    if not nodes:
        raise Unavailable("repository unavailable: no healthy replica for maintenance")
    return MaintenanceRoute(repo.repository_id, repo.replica_path, nodes)


def route_removal(repo: RepositoryView, configured: Sequence[str]) -> RemoveRoute:
    nodes = tuple(n for n in configured if n in repo.replicas or n in repo.assigned)
    return RemoveRoute(repo.repository_id, repo.replica_path, nodes)
