"""A node that comes back is reachable at once through the proxy's channel to it.

Real grpc servers on loopback. While a node is down, grpc's reconnect backoff
keeps the proxy's channel in TRANSIENT_FAILURE, and every call made in that
state fails at once ("failed to connect to all addresses") until the backoff
ends, even when the node is back. The health checker's own channel reconnects
sooner; a node it sees answering again got the first writes routed to it
failed (a CreateRepository whose primary had just restarted failed with
"failed to connect to all addresses ... Connection refused" in CI and in 2 of
8 local runs of tests/integration/proxy/test_read_availability.py on
d94f7e9). The health checker now tells ``NodeChannels.revive`` of every check
a node answered, and ``connect`` revives the channel of a node that answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gitquorum.cluster.health import HealthChecker
from gitquorum.proxy.channels import NodeChannels, Reach

NODE = "node1"
# Enough failed attempts for grpc's backoff to grow past a hundred ms.
BACKOFF_GROWN = 0.6


@dataclass
class Node:
    port: int
    server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server()
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        assert port, "the port was taken while the node was down"
        self.port = port
        await server.start()
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        self.server = server

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.stop(None)
        self.server = None


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    node = Node(0)
    await node.start()
    yield node
    if node.server is not None:
        await node.stop()


async def _check(channels: NodeChannels) -> health_pb2.HealthCheckResponse:
    stub = health_pb2_grpc.HealthStub(channels.channel(NODE))
    return await stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0)


async def _down_with_backoff(node: Node, channels: NodeChannels) -> None:
    """Stop the node, then let calls fail until the channel's backoff has grown."""
    assert (await _check(channels)).status == health_pb2.HealthCheckResponse.SERVING
    await node.stop()
    loop = asyncio.get_running_loop()
    until = loop.time() + BACKOFF_GROWN
    while loop.time() < until:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _check(channels)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        await asyncio.sleep(0.05)
    # Between two attempts (an attempt to a closed port is refused at once).
    until = loop.time() + 2.0
    while channels.channel(NODE).get_state() is not grpc.ChannelConnectivity.TRANSIENT_FAILURE:
        assert loop.time() < until, "the channel never waited out a backoff"
        await asyncio.sleep(0.01)


async def test_a_revived_channel_reaches_the_node_at_once(node: Node) -> None:
    channels = NodeChannels({NODE: node.address})
    try:
        await _down_with_backoff(node, channels)
        old = channels.channel(NODE)
        await node.start()
        assert channels.revive(NODE)
        assert channels.channel(NODE) is not old
        assert (await _check(channels)).status == health_pb2.HealthCheckResponse.SERVING
        # Connected now: nothing more to revive.
        assert not channels.revive(NODE)
    finally:
        await channels.close()


async def test_a_connected_channel_is_not_replaced(node: Node) -> None:
    channels = NodeChannels({NODE: node.address})
    try:
        await _check(channels)
        channel = channels.channel(NODE)
        assert not channels.revive(NODE)
        assert channels.channel(NODE) is channel
        assert not channels.revive("never-dialled")
    finally:
        await channels.close()


async def test_connect_revives_the_channel_of_a_node_that_answers_its_checks(node: Node) -> None:
    """A write's primary that restarted before the health checker saw it down."""
    channels = NodeChannels({NODE: node.address})
    try:
        await _down_with_backoff(node, channels)
        await node.start()
        channels.answering = lambda name: name == NODE
        assert await channels.connect(NODE, 2.0) is Reach.CONNECTED
        assert (await _check(channels)).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channels.close()


async def test_connect_still_refuses_a_down_node_that_answers_no_checks(node: Node) -> None:
    channels = NodeChannels({NODE: node.address})
    try:
        await _down_with_backoff(node, channels)
        channel = channels.channel(NODE)
        assert await channels.connect(NODE, 2.0) is Reach.REFUSED
        assert channels.channel(NODE) is channel  # no revival: it answers no checks
        # Said to answer, but down: a fresh attempt is refused too, quickly.
        channels.answering = lambda _name: True
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await channels.connect(NODE, 2.0) is Reach.REFUSED
        assert loop.time() - started < 1.0
    finally:
        await channels.close()


async def test_the_health_checker_revives_the_channel_before_its_view_says_healthy(
    node: Node,
) -> None:
    """The routing follows the view: by then the channel must connect."""
    channels = NodeChannels({NODE: node.address})
    checker = HealthChecker(
        {"default": {NODE: node.address}}, answered=channels.revive, unhealthy_after=1
    )
    states: list[grpc.ChannelConnectivity] = []
    try:
        await checker.check_once()
        await _down_with_backoff(node, channels)
        await checker.check_once()
        assert not checker.is_healthy("default", NODE)
        checker.add_listener(lambda _view: states.append(channels.channel(NODE).get_state()))
        await node.start()
        # The checker's own channel may wait out a (shorter) backoff too.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while not checker.is_healthy("default", NODE) and loop.time() < deadline:
            await checker.check_once()
            await asyncio.sleep(0.05)
        assert checker.is_healthy("default", NODE)
        assert states and states[0] is not grpc.ChannelConnectivity.TRANSIENT_FAILURE
        assert (await _check(channels)).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await checker.close()
        await channels.close()
