"""Sending one call to several nodes without a transaction: maintenance and removal."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

import grpc

from gitquorum.proxy.channels import NodeChannels
from gitquorum.proxy.passthrough import Metadata, backend_error, chain
from gitquorum.wire.registry import MethodInfo


async def broadcast(
    channels: NodeChannels,
    info: MethodInfo,
    payloads: Mapping[str, bytes],
    rest: AsyncIterator[bytes],
    metadata: Metadata,
    timeout: float | None,
) -> AsyncIterator[bytes]:
    """Every node in parallel; the first node's responses, or the first error."""
    outgoing = channels.forward_metadata(metadata)

    async def one(node: str) -> list[bytes]:
        call = channels.channel(node).stream_stream(info.full_name)(
            chain(payloads[node], _empty()), metadata=outgoing, timeout=timeout
        )
        return [response async for response in call]

    nodes = list(payloads)
    results = await asyncio.gather(*(one(n) for n in nodes), return_exceptions=True)
    for result in results:
        if isinstance(result, grpc.aio.AioRpcError):
            raise backend_error(result.code(), result.details() or "")
        if isinstance(result, BaseException):
            raise result
    first = results[0]
    assert isinstance(first, list)
    for response in first:
        yield response


async def best_effort(
    channels: NodeChannels,
    info: MethodInfo,
    payloads: Mapping[str, bytes],
    metadata: Metadata,
    timeout: float,
) -> None:
    """Every node in parallel, failures ignored (a removal's replicas)."""
    outgoing = channels.forward_metadata(metadata)

    async def one(node: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await channels.channel(node).unary_unary(info.full_name)(
                payloads[node], metadata=outgoing, timeout=timeout
            )

    await asyncio.gather(*(one(n) for n in payloads))


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator
