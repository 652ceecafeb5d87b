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
a node answered; those waiting on the replaced channel follow the new one.
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


async def _back_and_revived(node: Node, channels: NodeChannels) -> grpc.aio.Channel:
    """Down until its channel backs off, started again, its channel revived:
    the channel it replaced."""
    await _down_with_backoff(node, channels)
    old = channels.channel(NODE)
    await node.start()
    assert channels.revive(NODE)
    return old


async def test_a_revived_channel_reaches_the_node_at_once(node: Node) -> None:
    channels = NodeChannels({NODE: node.address})
    try:
        old = await _back_and_revived(node, channels)
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


async def test_a_refused_channel_is_not_replaced_while_the_node_is_down(node: Node) -> None:
    """Only a check the node answered revives: a down node stays refused."""
    channels = NodeChannels({NODE: node.address})
    try:
        await _down_with_backoff(node, channels)
        channel = channels.channel(NODE)
        assert await channels.connect(NODE, 2.0) is Reach.REFUSED
        assert channels.channel(NODE) is channel
    finally:
        await channels.close()


async def test_waiters_follow_the_channel_that_replaced_theirs(node: Node) -> None:
    """A write waiting on a refused channel is told of the revived one, not of
    the old one's refusal (it would wait for a failover that never comes)."""
    channels = NodeChannels({NODE: node.address})
    try:
        await _down_with_backoff(node, channels)
        waiting = asyncio.ensure_future(channels.wait_connected(NODE, 10.0))
        await node.start()
        assert channels.revive(NODE)
        assert await asyncio.wait_for(waiting, 5.0) is True
        # Asked after the revival, with the old channel still refused: the current one.
        assert await channels.connect(NODE, 2.0) is Reach.CONNECTED
    finally:
        await channels.close()


async def test_a_retired_channel_still_carries_calls_until_it_is_closed(node: Node) -> None:
    """Calls begun on the replaced channel (a stream a draining node still
    serves, a repair holding its stub) are not cut by the revival."""
    channels = NodeChannels({NODE: node.address})
    try:
        old = await _back_and_revived(node, channels)
        assert old.get_state() is not grpc.ChannelConnectivity.SHUTDOWN
        stub = health_pb2_grpc.HealthStub(old)
        # Refused (its backoff) or answered once it reconnects: never cancelled.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while True:
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is grpc.StatusCode.UNAVAILABLE
                assert loop.time() < deadline, "the old channel never reconnected"
                await asyncio.sleep(0.05)
                continue
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            break
    finally:
        await channels.close()
    assert old.get_state() is grpc.ChannelConnectivity.SHUTDOWN  # closed with the rest


async def test_nothing_is_revived_once_the_channels_are_closed(node: Node) -> None:
    channels = NodeChannels({NODE: node.address})
    await _down_with_backoff(node, channels)
    channel = channels.channel(NODE)
    await channels.close()
    await node.start()
    assert not channels.revive(NODE)
    assert channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN


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
