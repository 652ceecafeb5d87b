"""Fixtures shared by every tier.

``node`` gives a target to run storage-node tests against: a real node
process (default) or, with GITQUORUM_TEST_THROUGH_PROXY=1, a proxy in front
of three nodes (available once the proxy exists). Tests address it only through
``target.address``, ``target.storage`` and ``target.repository(rel)``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from gitquorum.gitaly import shared_pb2
from tests.harness.node import NodeProcess

THROUGH_PROXY = os.environ.get("GITQUORUM_TEST_THROUGH_PROXY") == "1"


@dataclass
class Target:
    """Where storage-node tests send their RPCs."""

    address: str
    storage: str
    # Disk root of the storage when the target is one node; None through a proxy.
    storage_path: Path | None
    nodes: list[NodeProcess]

    def repository(self, relative_path: str | None = None) -> shared_pb2.Repository:
        rel = relative_path or f"test/{uuid.uuid4().hex}.git"
        return shared_pb2.Repository(storage_name=self.storage, relative_path=rel)

    def disk_path(self, repo: shared_pb2.Repository) -> Path:
        """Where a repository lives on disk (one node only)."""
        if self.storage_path is None:
            raise RuntimeError("no single disk path through the proxy")
        return self.storage_path / repo.relative_path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def node_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("node")
    node = NodeProcess("default", base / "storage", base / "logs").start()
    yield node
    node.terminate()


@pytest.fixture
def target(node_session: NodeProcess, request: pytest.FixtureRequest) -> Iterator[Target]:
    if not node_session.alive():
        node_session.start()
    yield Target(node_session.address, node_session.name, node_session.storage_path, [node_session])
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(f"--- node log ---\n{node_session.log_tail()}")


@pytest.fixture
async def channel(target: Target) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(target.address) as ch:
        yield ch


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
