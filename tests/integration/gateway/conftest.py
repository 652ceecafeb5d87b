"""Fixtures for the smart-HTTP gateway: a gateway in this process in front of
the session's real node (or, with GITQUORUM_TEST_THROUGH_PROXY=1, the proxy)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from gitquorum.gateway.http import GatewayConfig, GatewayServer
from gitquorum.gitaly import shared_pb2
from tests.conftest import Target
from tests.harness import gitrepo

MakeGateway = Callable[..., Awaitable[GatewayServer]]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gitrepo.make_repo(tmp_path_factory.mktemp("gateway") / "source", commits=5)


@pytest.fixture
async def make_gateway(target: Target) -> AsyncIterator[MakeGateway]:
    """Start gateways on free ports (in front of ``target`` unless told otherwise)."""
    started: list[GatewayServer] = []

    async def make(**settings: Any) -> GatewayServer:
        config = replace(GatewayConfig(proxy=target.address, storage=target.storage), **settings)
        gateway = GatewayServer(config)
        await gateway.start()
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        await gateway.close()


@pytest.fixture
async def gateway(make_gateway: MakeGateway) -> GatewayServer:
    return await make_gateway()


@pytest.fixture
async def seeded(
    channel: grpc.aio.Channel, target: Target, source: Path, tmp_path: Path
) -> shared_pb2.Repository:
    repo = target.repository()
    await gitrepo.seed(channel, repo, source, tmp_path)
    return repo


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def raw_request(port: int, request: bytes) -> RawResponse:
    """Send bytes as they are (no client-side path normalization) and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(30):
            data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(lines[0].split()[1]), headers, body)
