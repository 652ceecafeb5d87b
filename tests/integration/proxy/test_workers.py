"""A proxy with two worker processes on one address (``workers: 2``).

What must stay single or whole across the workers: a vote reaches the worker
holding its transaction, the cluster sees one proxy (one member, one leader
candidate), one scrape of the proxy's metrics address shows every worker's
calls, the per-repository limits hold for the proxy as a whole, and SIGTERM
drains every worker. Connections are spread over the workers by the kernel (SO_REUSEPORT),
so each test opens many channels, each its own connection.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gitquorum.gitaly import repository_pb2, repository_pb2_grpc, server_pb2, server_pb2_grpc
from gitquorum.launch.process import wait_for
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.pooled import Worker, alive, workers_of
from tests.integration.cli.ops import cli
from tests.integration.limits.calls import hold_receive_pack, hold_upload_pack, status_of
from tests.integration.proxy import helpers
from tests.integration.proxy.pooled import connect, extra_proxy, pooled_cluster

# The proxy allows two mutators per repository: one per worker, no queue.
SETTINGS: dict[str, object] = {
    "workers": 2,
    "limits": {"mutator_concurrency": 2, "max_queued": 0, "queue_timeout": "1s"},
    "replication": {"reconcile_interval": "1s"},
}
# Fresh connections per test: the chance that all of them land on one worker is 2 / 2**N.
CONNECTIONS = 16


def draining(worker: Worker) -> bool:
    """Whether the worker answers health NOT_SERVING on its own port (for votes), or
    no longer listens: a worker with no call in flight is done draining at once."""
    with grpc.insecure_channel(worker.vote_address.rpartition("://")[2]) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.RpcError as exc:
            return bool(exc.code() == grpc.StatusCode.UNAVAILABLE)  # type: ignore[attr-defined]
    return bool(answer.status == health_pb2.HealthCheckResponse.NOT_SERVING)


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with pooled_cluster(tmp_path_factory.mktemp("workers"), SETTINGS) as cluster:
        yield cluster


def _new_repository(cluster: Cluster, source: Path) -> tuple[str, str]:
    """A repository with the source's history; (relative path, HEAD's id)."""
    relative_path = f"workers/{uuid.uuid4().hex}.git"
    address = cluster.proxies[0].address
    helpers.create(address, relative_path)
    helpers.push(address, relative_path, source, "HEAD:refs/heads/main")
    return relative_path, gitrepo.git("rev-parse", "HEAD", cwd=source).strip()


def test_workers_listen_on_one_address_and_vote_on_their_own(pooled: Cluster) -> None:
    proxy = pooled.proxies[0]
    workers = workers_of(proxy)
    assert {w.address for w in workers} == {proxy.address}
    votes = {w.vote_address for w in workers}
    assert len(votes) == 2 and proxy.address not in votes
    # Each worker's own page on a private port; the proxy's address is the parent's.
    ports = {w.metrics_port for w in workers}
    assert len(ports) == 2 and proxy.metrics_port not in ports


async def test_writes_through_the_shared_port_all_commit(pooled: Cluster, source: Path) -> None:
    """Votes reach the worker holding the transaction: a vote on the other one is NOT_FOUND."""
    proxy = pooled.proxies[0]
    relative_path, head = _new_repository(pooled, source)
    repo = helpers.repository(relative_path)
    before = helpers.generations(helpers.metadata(proxy.address, relative_path))
    for i in range(CONNECTIONS):
        async with connect(proxy.address) as channel:
            await repository_pb2_grpc.RepositoryServiceStub(channel).WriteRef(
                repository_pb2.WriteRefRequest(
                    repository=repo, ref=f"refs/heads/w{i}".encode(), revision=head.encode()
                ),
                timeout=30,
            )
    after = helpers.generations(helpers.metadata(proxy.address, relative_path))
    # Every replica took every write (none was left outdated by a lost vote).
    assert set(after) == set(before) and len(after) == 3
    assert all(after[node] == before[node] + CONNECTIONS for node in after), (before, after)
    refs = helpers.replica_refs(pooled, proxy.address, relative_path)
    for node, node_refs in refs.items():
        assert {f"refs/heads/w{i}" for i in range(CONNECTIONS)} <= set(node_refs), node
    # Both workers held transactions whose votes reached them.
    committed = []
    for worker in workers_of(proxy):
        text = helpers.scrape(worker.metrics_port)
        committed.append(helpers.sample(text, "gitquorum_transactions_total", outcome="committed"))
    assert all(count > 0 for count in committed), committed
    # The proxy's own scrape counts both workers' transactions, and shows both served.
    whole = helpers.scrape(proxy.metrics_port)
    assert helpers.sample(whole, "gitquorum_transactions_total", outcome="committed") == sum(
        committed
    )
    for index in ("0", "1"):
        assert helpers.sample(whole, "gitquorum_worker_rpc_requests_total", worker=index) > 0


def test_the_cluster_sees_one_proxy_and_one_leader_candidate(pooled: Cluster) -> None:
    proxy = pooled.proxies[0]
    status = cli(pooled, "status", "--json")
    assert status.code == 0, status
    proxies = status.json()["proxies"]
    assert [p["name"] for p in proxies] == ["proxy1"], proxies
    first, second = workers_of(proxy)
    # Worker 0 runs the election (and leads: it is the only proxy); worker 1 never runs it.
    wait_for(
        lambda: helpers.sample(helpers.scrape(first.metrics_port), "gitquorum_leader") == 1.0,
        30,
        0.1,
        "worker 0 to lead",
    )
    assert helpers.sample(helpers.scrape(second.metrics_port), "gitquorum_leader") == 0.0
    # The proxy's scrape: the proxy leads (worker 0's gauge, not a sum or worker 1's 0).
    assert helpers.sample(helpers.scrape(proxy.metrics_port), "gitquorum_leader") == 1.0


async def test_one_scrape_of_the_proxy_shows_every_workers_calls(pooled: Cluster) -> None:
    """The proxy's metrics address sums the workers' counters: nothing of worker 1 is missing."""
    proxy = pooled.proxies[0]
    workers = workers_of(proxy)
    method = "/gitaly.ServerService/ServerInfo"

    def served(port: int) -> float:
        return helpers.sample(helpers.scrape(port), "gitquorum_rpc_requests_total", method=method)

    start = [served(w.metrics_port) for w in workers]
    for _ in range(CONNECTIONS * 4):
        async with connect(proxy.address) as channel:
            await server_pb2_grpc.ServerServiceStub(channel).ServerInfo(
                server_pb2.ServerInfoRequest(), timeout=10
            )
        if all(served(w.metrics_port) > s for w, s in zip(workers, start, strict=True)):
            break
    else:
        pytest.fail("ServerInfo calls never reached both workers")
    each = [served(w.metrics_port) for w in workers]
    assert served(proxy.metrics_port) == sum(each), each
    whole = helpers.scrape(proxy.metrics_port)
    assert helpers.sample(whole, "gitquorum_worker_up") == 2.0


async def test_the_per_repository_limit_holds_across_workers(pooled: Cluster, source: Path) -> None:
    """Two mutators at once on one repository for the whole proxy, whichever worker takes them."""
    proxy = pooled.proxies[0]
    relative_path, _ = _new_repository(pooled, source)
    repo = helpers.repository(relative_path)
    channels = [connect(proxy.address) for _ in range(CONNECTIONS)]
    try:
        held = []
        refused = []
        for channel in channels:
            try:
                held.append(await hold_receive_pack(channel, repo, deadline=60))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                refused.append(exc)
        # Without the split each worker would admit two: up to four at once.
        assert 1 <= len(held) <= 2, len(held)
        assert len(held) + len(refused) == CONNECTIONS
        for call in held:
            await call.finish()
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


async def test_sigterm_drains_every_worker(pooled: Cluster, source: Path) -> None:
    """Calls in flight on both workers finish after SIGTERM; then parent and workers exit 0."""
    relative_path, _ = _new_repository(pooled, source)
    repo = helpers.repository(relative_path)
    proxy = extra_proxy(pooled, "proxy2").start()
    try:
        workers = workers_of(proxy)
        # Eight: within each worker's share (10) of the 20 expensive reads allowed.
        channels = [connect(proxy.address) for _ in range(8)]
        held = [await hold_upload_pack(channel, repo, deadline=60) for channel in channels]
        assert proxy.proc is not None
        proxy.proc.terminate()
        # Every worker drains (health NOT_SERVING on its own port); the held calls go on.
        for worker in workers:
            wait_for(lambda w=worker: draining(w), 10, 0.05, "the worker to drain")
        for call in held:
            code, details, _ = await status_of(call.finish())
            assert code == grpc.StatusCode.OK, details
        await asyncio.gather(*(channel.close() for channel in channels))
        assert proxy.proc.wait(30) == 0, proxy.log_tail()
        for worker in workers:
            wait_for(lambda w=worker: not alive(w.pid), 10, 0.05, "the worker to exit")
        log = proxy.log_tail(400)
        assert log.count('"msg": "drained", "calls_cut_short": 0') == 2, log
        assert "workers stopped" in log
    finally:
        proxy.terminate(10)
