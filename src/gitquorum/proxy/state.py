"""The proxy's port to cluster state: what routing and finalizing need from etcd.

``ClusterPort`` is implemented over ``gitquorum.cluster`` (``cluster_port.py``);
keeping it narrow lets the handler be tested and reasoned about without etcd.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gitquorum.cluster.decisions import WriteResult as WriteResult
from gitquorum.proxy.router import RepositoryView
from gitquorum.proxy.routes import MutatorRoute


@dataclass(frozen=True)
class Placement:
    """Where a new repository goes."""

    repository_id: int
    replica_path: str
    primary: str
    assigned: tuple[str, ...]


class ClusterPort(Protocol):
    def virtual_storages(self) -> Sequence[str]: ...

    def nodes(self, virtual_storage: str) -> Sequence[str]: ...

    def healthy(self, virtual_storage: str) -> frozenset[str]: ...

    def draining(self, virtual_storage: str) -> frozenset[str]: ...

    def lookup(self, virtual_storage: str, relative_path: str) -> RepositoryView | None: ...

    async def ensure_writable(self, repo: RepositoryView) -> RepositoryView:
        """Elect a new primary lazily when the current one is not a valid primary."""
        ...

    async def place(self, virtual_storage: str, relative_path: str) -> Placement: ...

    async def record_creation(
        self, virtual_storage: str, relative_path: str, placement: Placement, result: WriteResult
    ) -> None:
        """Record a created repository; raise AlreadyExists when another create won."""
        ...

    async def record_write(
        self, virtual_storage: str, route: MutatorRoute, result: WriteResult
    ) -> None:
        """Bump the generation of ``updated``; mark ``outdated`` and queue their repair."""
        ...

    async def remove(self, virtual_storage: str, repo: RepositoryView) -> None: ...
