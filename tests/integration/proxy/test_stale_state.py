"""A proxy cut off from etcd serves reads for ``stale_read_limit`` (5 s), then refuses them.

etcd (one member) is paused with SIGSTOP, so the proxy's watch goes silent
without an error, the hardest case to notice. The proxy last heard from etcd
at most one progress interval (1 s) before the pause: reads started up to
``LIMIT - 1 s`` (less a margin) after the pause must be served, and reads
started later than ``LIMIT`` (plus a margin for a loaded machine) must get
``UNAVAILABLE`` "cluster state is stale". Once etcd is back, reads resume.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from gitquorum.config import ProxyConfig
from gitquorum.gitaly import ref_pb2, ref_pb2_grpc
from tests.harness.cluster import Cluster
from tests.harness.node import wait_for
from tests.integration.proxy import helpers
from tests.integration.proxy.helpers import repository

LIMIT = ProxyConfig.stale_read_limit  # the default, not overridden here
PROGRESS_INTERVAL = 1.0
MARGIN = 0.5
LATE_MARGIN = 1.5


@pytest.fixture(scope="module")
def etcd_cut(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("stale-state")
    with (
        Cluster(base, nodes_count=1, proxies_count=1, replication_factor=1).start().reporting() as c
    ):
        yield c


@dataclass(frozen=True)
class Read:
    at: float  # seconds after etcd was paused
    code: grpc.StatusCode
    detail: str


def _read(
    stub: ref_pb2_grpc.RefServiceStub, request: ref_pb2.FindDefaultBranchNameRequest, paused: float
) -> Read:
    started = time.monotonic()
    try:
        stub.FindDefaultBranchName(request, timeout=2)
        return Read(started - paused, grpc.StatusCode.OK, "")
    except grpc.RpcError as exc:
        return Read(started - paused, exc.code(), exc.details() or "")


def test_reads_are_served_until_the_limit_then_refused(etcd_cut: Cluster, tmp_path: Path) -> None:
    assert LIMIT == 5.0
    proxy = etcd_cut.proxies[0]
    assert etcd_cut.etcd is not None
    relative_path = f"proxy/stale-{uuid.uuid4().hex}.git"
    helpers.create(proxy.address, relative_path)
    request = ref_pb2.FindDefaultBranchNameRequest(repository=repository(relative_path))
    reads: list[Read] = []
    with grpc.insecure_channel(proxy.address) as channel:
        stub = ref_pb2_grpc.RefServiceStub(channel)
        assert _read(stub, request, 0.0).code is grpc.StatusCode.OK
        paused = time.monotonic()
        etcd_cut.etcd.pause(0)
        try:
            while time.monotonic() - paused < LIMIT + LATE_MARGIN + 1.0:
                reads.append(_read(stub, request, paused))
                time.sleep(0.1)
            age = helpers.sample(
                helpers.scrape(proxy.metrics_port), "gitquorum_cluster_state_age_seconds"
            )
        finally:
            etcd_cut.etcd.resume(0)
        served_by = LIMIT - PROGRESS_INTERVAL - MARGIN
        early = [r for r in reads if r.at < served_by and r.code is not grpc.StatusCode.OK]
        assert not early, f"reads refused before {served_by}s: {early}"
        late = [r for r in reads if r.at > LIMIT + LATE_MARGIN]
        assert late, "no read after the limit"
        served = [r for r in late if r.code is grpc.StatusCode.OK]
        assert not served, f"reads served after {LIMIT + LATE_MARGIN}s: {served}"
        for r in late:
            assert r.code is grpc.StatusCode.UNAVAILABLE, r
            assert "cluster state is stale: no contact with etcd" in r.detail, r
        assert age > LIMIT, age
        first_refused = min(r.at for r in reads if r.code is not grpc.StatusCode.OK)
        last_served = max(r.at for r in reads if r.code is grpc.StatusCode.OK)
        print(f"paused: last read served at {last_served:.2f}s, refused from {first_refused:.2f}s")

        # etcd back: the watch reconnects and reads are served again.
        wait_for(
            lambda: _read(stub, request, paused).code is grpc.StatusCode.OK,
            30,
            interval=0.2,
            what="reads to be served again once etcd is back",
        )
