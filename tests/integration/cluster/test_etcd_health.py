from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gitquorum.cluster.health import HealthChecker
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.membership import HealthView, ProxyMembership
from tests.harness.etcd import EtcdCluster, free_ports
from tests.integration.cluster.conftest import StoreFactory


class Node:
    """A storage node stand-in: a real gRPC server with the health service."""

    def __init__(self) -> None:
        self.server = grpc.aio.server()
        self.servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"tcp://127.0.0.1:{self.port}"

    async def serving(self, ok: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.servicer.set("", status)


@pytest.fixture
async def nodes() -> AsyncIterator[dict[str, Node]]:
    started = {name: Node() for name in ("n1", "n2")}
    for node in started.values():
        await node.server.start()
        await node.serving(True)
    yield started
    for node in started.values():
        await node.server.stop(None)


async def test_proxies_agree_by_half_when_one_disagrees(
    etcd1: EtcdCluster, make_store: StoreFactory, keys: Keyspace, nodes: dict[str, Node]
) -> None:
    unreachable = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    proxies = []
    for name in ("a", "b", "c"):
        store = make_store(etcd1)
        # Proxy c cannot reach n1 (a network problem on its side only).
        n1 = unreachable if name == "c" else nodes["n1"].address
        addresses = {"vs": {"n1": n1, "n2": nodes["n2"].address}}
        member = ProxyMembership(store, keys, name, ttl=2)
        checker = HealthChecker(addresses, publish=member.publish_health, interval=0.1, timeout=0.5)
        await checker.check_once()
        await member.start(checker.local_view)
        await checker.start()
        view = HealthView(store, keys)
        await view.start()
        proxies.append((member, checker, view))
    views = [view for _, _, view in proxies]

    async def all_agree(expected: set[str], live: set[str]) -> None:
        async with asyncio.timeout(10):
            for view in views:
                await view.wait_for(lambda c: c.healthy("vs") == expected and c.proxies == live)

    assert not proxies[2][1].is_healthy("vs", "n1") and proxies[0][1].is_healthy("vs", "n1")
    await all_agree({"n1", "n2"}, {"a", "b", "c"})
    # n2 stops serving: every proxy sees it, the consensus follows.
    await nodes["n2"].serving(False)
    await all_agree({"n1"}, {"a", "b", "c"})
    await nodes["n2"].serving(True)
    await all_agree({"n1", "n2"}, {"a", "b", "c"})
    # Proxy a dies (lease revoked, as after expiry): b and c disagree on n1, and
    # one of two live proxies is enough: c's blind spot does not fail n1 over.
    member_a, checker_a, view_a = proxies[0]
    await checker_a.close()
    await member_a.close()
    await view_a.close()
    views = views[1:]
    await all_agree({"n1", "n2"}, {"b", "c"})
    # n1 stops serving: b loses it too, no live proxy sees it.
    await nodes["n1"].serving(False)
    await all_agree({"n2"}, {"b", "c"})
    await nodes["n1"].serving(True)
    for member, checker, view in proxies[1:]:
        await checker.close()
        await member.close()
        await view.close()
