"""A read through one proxy sees what another proxy acknowledged once its cache caught up.

Each proxy routes from its own watch-fed cache, so a change acknowledged by
proxy A reaches proxy B's cache one watch delivery later. The probe is a
repository created through A and looked up through B with
``RepositoryExists``, which B answers from its cache alone: "not found" means
B's cache has not reached A's revision yet. The bound asserted is far above the
watch lag measured on a quiet machine (a few milliseconds, docs/benchmarks.md)
and far below ``stale_read_limit``: a broken or silent watch fails it.
"""

from __future__ import annotations

import time
import uuid

import grpc

from gitquorum.gitaly import repository_pb2, repository_pb2_grpc
from tests.harness.cluster import Cluster
from tests.integration.proxy import helpers
from tests.integration.proxy.helpers import repository

ROUNDS = 20
# Acknowledged by A -> visible through B, on a machine that may be loaded.
VISIBLE_WITHIN = 1.0


async def test_a_repository_created_through_one_proxy_is_seen_by_the_other(
    healthy: Cluster,
) -> None:
    writer, reader = healthy.proxies[0], healthy.proxies[1]
    lags: list[float] = []
    missed_at_once = 0
    async with (
        grpc.aio.insecure_channel(writer.address) as a,
        grpc.aio.insecure_channel(reader.address) as b,
    ):
        create = repository_pb2_grpc.RepositoryServiceStub(a).CreateRepository
        exists = repository_pb2_grpc.RepositoryServiceStub(b).RepositoryExists
        for _ in range(ROUNDS):
            repo = repository(f"proxy/cross-{uuid.uuid4().hex}.git")
            await create(repository_pb2.CreateRepositoryRequest(repository=repo), timeout=30)
            acknowledged = time.monotonic()
            request = repository_pb2.RepositoryExistsRequest(repository=repo)
            first = True
            while not (await exists(request, timeout=5)).exists:
                missed_at_once += first
                first = False
                assert time.monotonic() - acknowledged < VISIBLE_WITHIN, (
                    f"proxy {reader.name} did not see a repository {writer.name} created "
                    f"within {VISIBLE_WITHIN}s"
                )
            lags.append(time.monotonic() - acknowledged)
    print(
        f"visible through the other proxy after max {max(lags) * 1000:.1f} ms; "
        f"{missed_at_once} of {ROUNDS} reads right after the acknowledgement missed it"
    )

    # The writer measured its own watch lag for every creation it recorded; the
    # reader exports how long ago it last heard from etcd (under the 5 s limit).
    written = helpers.scrape(writer.metrics_port)
    assert helpers.sample(written, "gitquorum_cluster_watch_lag_seconds_count") >= ROUNDS
    ages = helpers.samples(
        helpers.scrape(reader.metrics_port), "gitquorum_cluster_state_age_seconds"
    )
    assert len(ages) == 1 and 0.0 <= next(iter(ages.values())) < 5.0, ages
