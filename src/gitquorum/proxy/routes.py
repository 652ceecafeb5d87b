"""Route values: the immutable outcome of a routing decision.

The router decides; the handler executes. Each route names physical nodes and
the replica path, and renders itself for the RPC's log line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AccessorRoute:
    """A read served by one replica."""

    repository_id: int
    replica_path: str
    node: str
    reason: str  # "distributed" or "primary-only"

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
