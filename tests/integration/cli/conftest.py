"""A shared cluster (3 nodes, 2 proxies) for the admin commands that leave it intact;
destructive scenarios (data loss, pause) start their own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.cluster import Cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = Cluster(tmp_path_factory.mktemp("admin"), proxies_count=2).start()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def show_logs(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(cluster.log_tail())
