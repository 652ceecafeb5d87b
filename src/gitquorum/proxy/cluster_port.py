"""The proxy's port to cluster state: what routing and finalizing need from etcd.

``ClusterPort`` is implemented over ``gitquorum.cluster`` (``cluster_port.py``);
keeping it narrow lets the handler be tested and reasoned about without etcd.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gitquorum.cluster.decisions import WriteResult
from gitquorum.cluster.intents import WriteIntent
from gitquorum.cluster.repositories import CreationPlan, RepositoryRecord
from gitquorum.proxy.routing import MutatorRoute


class ClusterPort(Protocol):
    def virtual_storages(self) -> Sequence[str]: ...

    def nodes(self, virtual_storage: str) -> Sequence[str]: ...

    def healthy(self, virtual_storage: str) -> frozenset[str]: ...

    def draining(self, virtual_storage: str) -> frozenset[str]: ...

    def lookup(self, virtual_storage: str, relative_path: str) -> RepositoryRecord | None: ...

    async def ensure_writable(self, repo: RepositoryRecord) -> RepositoryRecord:
        """Elect a new primary lazily when the current one is not a valid primary."""
        ...

    async def wait_for_failover(
        self, repo: RepositoryRecord, unreachable: str, timeout: float
    ) -> RepositoryRecord | None:
        """Wait until a write whose primary refused its connection may go on
        (a new primary, or the old one no longer valid); None after ``timeout``."""
        ...

    async def place(self, virtual_storage: str, relative_path: str) -> CreationPlan: ...

    async def record_creation(
        self, virtual_storage: str, relative_path: str, plan: CreationPlan, result: WriteResult
    ) -> None:
        """Record a created repository; raise AlreadyExists when another create won."""
        ...

    async def record_write(
        self,
        virtual_storage: str,
        route: MutatorRoute,
        result: WriteResult,
        intent: WriteIntent | None = None,
    ) -> None:
        """Bump the generation of ``updated``; mark ``outdated`` and queue their
        repair; remove ``intent`` in the same txn if the outcome accounts for
        every replica (``cluster.intents``)."""
        ...

    def intent_for(self, virtual_storage: str, route: MutatorRoute) -> WriteIntent | None:
        """The intent a write on ``route`` puts before its first COMMIT (None: none)."""
        ...

    async def record_intent(self, intent: WriteIntent) -> None:
        """Put ``intent``; raising refuses the write's COMMIT (nothing applied)."""
        ...

    async def forget_intent(self, intent: WriteIntent) -> None:
        """Remove the intent of a write that changed nothing (best effort)."""
        ...

    async def remove(self, virtual_storage: str, repo: RepositoryRecord) -> None: ...
