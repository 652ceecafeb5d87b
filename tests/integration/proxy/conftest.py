"""A real cluster behind the proxy: etcd, three nodes and two proxies.

``cluster`` is shared by the whole folder (start-up costs seconds); tests that
stop nodes use ``fault_cluster`` (their own, per module) so they cannot leave
the shared one degraded. Both are checked healthy before every test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.integration.proxy.helpers import wait_all_healthy

SETTINGS: dict[str, object] = {
    # Repairs start within a second. The verifier keeps its default interval:
    # it checks each new replica once, then leaves replicas that tests tamper
    # with alone (they must be caught by the vote, not by the verifier).
    "replication": {"reconcile_interval": "1s"},
}


def _start(base: Path, proxies: int) -> Cluster:
    return Cluster(base, nodes_count=3, proxies_count=proxies, proxy_settings=SETTINGS).start()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = _start(tmp_path_factory.mktemp("proxy-cluster"), proxies=2)
    yield started
    started.close()


@pytest.fixture(scope="module")
def fault_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = _start(tmp_path_factory.mktemp("fault-cluster"), proxies=1)
    yield started
    started.close()


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "rep_call", None)
    return bool(report is not None and report.failed)


@pytest.fixture
def healthy(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The shared cluster, every node up and healthy by every proxy's consensus."""
    wait_all_healthy(cluster)
    yield cluster
    if _failed(request):
        print(cluster.log_tail())


@pytest.fixture
def faulty(fault_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The module's own cluster, restored (every node up and healthy) before each test."""
    for node in fault_cluster.nodes:
        if not node.alive():
            node.start()
    wait_all_healthy(fault_cluster)
    yield fault_cluster
    if _failed(request):
        print(fault_cluster.log_tail())


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local repository with history, branches, tags and a 3 MB binary file."""
    return gitrepo.make_repo(
        tmp_path_factory.mktemp("proxy-source") / "source",
        commits=5,
        branches=("feature",),
        binary_size=3 * 1024 * 1024,
    )


@pytest.fixture
def relative_path() -> str:
    return f"proxy/{uuid.uuid4().hex}.git"
