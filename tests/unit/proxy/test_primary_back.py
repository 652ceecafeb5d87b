"""A write whose primary is back before any failover goes to it.

The real handler and fan-out in front of scripted nodes (as in
``test_honest_answers.py``). The primary, n1, goes down long enough for the
proxy's channel to it to wait out a reconnect backoff, then comes back on its
address. The next write finds that channel refused: it asks for a check of
n1 (here the check answers at once, as the health checker's out-of-turn check
does, and revives the channel), and no failover comes (n1 is healthy). The
write must go to n1 as soon as its connection is up, instead of waiting its
whole budget for a failover and failing UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import CollectorRegistry

from gitquorum.cluster.repositories import RepositoryRecord
from gitquorum.gitaly import repository_pb2
from gitquorum.proxy.channels import Reach
from gitquorum.proxy.metrics import ProxyMetrics
from gitquorum.proxy.vote_counting import TransactionManager
from tests.unit.proxy.handler_parts import RunningProxy, running_proxy
from tests.unit.proxy.test_honest_answers import (
    APPLIES,
    PATH,
    Proxy,
    RecordingCluster,
    ScriptedNodes,
    record,
    repository,
)

PRIMARY = "n1"


class NoFailover(RecordingCluster):
    """n1 stays healthy by consensus: no failover ever moves the write on."""

    def __init__(self) -> None:
        super().__init__()
        self.failover_waits = 0

    async def wait_for_failover(
        self, repo: RepositoryRecord, unreachable: str, timeout: float
    ) -> RepositoryRecord | None:
        self.failover_waits += 1
        await asyncio.sleep(timeout)  # no failover comes within the write's budget
        return None


async def _refused_then_back(running: RunningProxy, nodes: ScriptedNodes) -> None:
    """Stop n1, let the proxy's channel to it back off, start n1 again on its address."""
    await running.servers[PRIMARY].stop(None)
    loop = asyncio.get_running_loop()
    until = loop.time() + 0.6  # a few refused attempts: the backoff grows
    while loop.time() < until:
        assert await running.channels.connect(PRIMARY, 1.0) is not Reach.CONNECTED
        await asyncio.sleep(0.05)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([nodes.handler(PRIMARY)])
    assert server.add_insecure_port(running.addresses[PRIMARY])
    await server.start()
    running.servers[PRIMARY] = server


@pytest.fixture
async def proxy_and_parts() -> AsyncIterator[tuple[Proxy, RunningProxy, ProxyMetrics]]:
    transactions = TransactionManager(vote_timeout=5.0)
    nodes = ScriptedNodes(transactions)
    cluster = NoFailover()
    cluster.records[PATH] = record({"n1": 1, "n2": 1, "n3": 1}, primary=PRIMARY)
    nodes.scripts.update(dict.fromkeys(("n1", "n2", "n3"), APPLIES))
    metrics = ProxyMetrics(CollectorRegistry())
    async with running_proxy(
        nodes.handler, ("n1", "n2", "n3"), cluster, transactions=transactions, metrics=metrics
    ) as running:
        yield Proxy(cluster, nodes, running.channel), running, metrics


async def test_a_write_goes_to_its_primary_once_its_connection_is_back(
    proxy_and_parts: tuple[Proxy, RunningProxy, ProxyMetrics],
) -> None:
    proxy, running, metrics = proxy_and_parts
    await _refused_then_back(running, proxy.nodes)
    checks: list[str] = []

    def checked(node: str, trigger: str) -> None:
        checks.append(node)
        running.channels.revive(node)  # the check n1 answers revives its channel

    running.channels.on_unreachable = checked
    assert await proxy.write() is None
    assert checks == [PRIMARY]
    assert isinstance(proxy.cluster, NoFailover) and proxy.cluster.failover_waits == 1
    assert proxy.nodes.cast.get(PRIMARY, 0) >= 1  # n1 took part in the write
    retried = metrics.write_retries.labels("default", "retried")._value.get()
    assert retried == 1


async def test_a_write_whose_primary_stays_refused_still_gives_up() -> None:
    """No check answered (n1 down), no failover: the definite UNAVAILABLE, as before."""
    transactions = TransactionManager(vote_timeout=5.0)
    nodes = ScriptedNodes(transactions)
    cluster = NoFailover()
    cluster.records[PATH] = record({"n1": 1, "n2": 1, "n3": 1}, primary=PRIMARY)
    nodes.scripts.update(dict.fromkeys(("n1", "n2", "n3"), APPLIES))
    async with running_proxy(
        nodes.handler, ("n1", "n2", "n3"), cluster, transactions=transactions, write_timeout=1.0
    ) as running:
        await running.servers[PRIMARY].stop(None)
        running.channels.on_unreachable = lambda node, trigger: None
        request = repository_pb2.WriteRefRequest(
            repository=repository(), ref=b"refs/heads/main", revision=b"1" * 40
        )
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            # No client deadline: the proxy's write budget (1 s) ends the wait.
            await running.channel.unary_unary("/gitaly.RepositoryService/WriteRef")(
                request.SerializeToString()
            )
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "its primary cannot be reached" in (failed.value.details() or "")
    assert nodes.cast == {}  # nothing was sent to any node
    assert cluster.failover_waits == 1


async def test_a_write_waits_until_its_reconnected_primary_is_healthy_here_too(
    proxy_and_parts: tuple[Proxy, RunningProxy, ProxyMetrics],
) -> None:
    """The checks the refusal asked for failed (n1 was still down): this proxy's
    view dropped n1 while the consensus kept it (no failover). The connection
    comes back first; the write goes on once this proxy sees n1 healthy again,
    instead of failing at once with "primary n1 is not healthy"."""
    proxy, running, _ = proxy_and_parts
    cluster = proxy.cluster
    assert isinstance(cluster, NoFailover)
    await _refused_then_back(running, proxy.nodes)
    running.channels.on_unreachable = lambda node, trigger: cluster.unhealthy.add(node)
    write = asyncio.ensure_future(proxy.write())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while cluster.failover_waits == 0:
        assert loop.time() < deadline, "the write never waited"
        await asyncio.sleep(0.01)
    assert await running.channels.wait_connected(PRIMARY, 5.0)  # back, by its own backoff
    # It keeps waiting while n1 is unhealthy here (it failed at once before).
    finished, _ = await asyncio.wait({write}, timeout=0.3)
    assert not finished, write.result()
    cluster.unhealthy.discard(PRIMARY)  # the next check n1 answers
    assert await asyncio.wait_for(write, 5.0) is None
    assert proxy.nodes.cast.get(PRIMARY, 0) >= 1
