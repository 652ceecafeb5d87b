"""Last-resort reads: the real handler in front of scripted nodes, none of
them healthy by consensus (docs/failover.md).

The repository's up-to-date replicas are n1 and n2 (n3 is outdated); the
consensus calls every node unhealthy, so each read goes to n1 or n2 as a last
resort, bounded by ``reads.last_resort_timeout`` until its first response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from prometheus_client import CollectorRegistry

from gitquorum.config import ReadsConfig
from gitquorum.gitaly import blob_pb2, commit_pb2
from gitquorum.proxy.metrics import ProxyMetrics
from gitquorum.proxy.read_health import ReadHealth
from gitquorum.wire.registry import Shape
from tests.unit.proxy.handler_parts import running_proxy
from tests.unit.proxy.test_read_availability import (
    FIND_COMMIT,
    GET_BLOBS,
    NODES,
    REGISTRY,
    WAIT,
    FakeCluster,
    repository,
)

BOUND = 0.3


class NoneHealthy(FakeCluster):
    def healthy(self, virtual_storage: str) -> frozenset[str]:
        return frozenset()


Behaviour = Callable[[], AsyncIterator[bytes]]


async def _hang() -> AsyncIterator[bytes]:
    await asyncio.Event().wait()
    yield b""


async def _slow_stream() -> AsyncIterator[bytes]:
    """A first message at once, the second long after the bound."""
    yield b"first"
    await asyncio.sleep(BOUND * 3)
    yield b"second"


async def _answer() -> AsyncIterator[bytes]:
    yield b"answer"


def _nodes(behaviour: Behaviour) -> Callable[[str], grpc.GenericRpcHandler]:
    def handler(node: str) -> grpc.GenericRpcHandler:
        class Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                info = REGISTRY.get(details.method)
                if info is None:
                    return None

                async def stream(request: bytes, context: object) -> AsyncIterator[bytes]:
                    async for message in behaviour():
                        yield message

                async def unary(request: bytes, context: object) -> bytes:
                    return [m async for m in behaviour()][-1]

                if info.shape is Shape.UNARY_UNARY:
                    return grpc.unary_unary_rpc_method_handler(unary)
                return grpc.unary_stream_rpc_method_handler(stream)

        return Handler()

    return handler


async def _read(
    behaviour: Behaviour, method: str, settings: ReadsConfig
) -> tuple[list[bytes] | grpc.aio.AioRpcError, float]:
    """What a client reading through the proxy gets, and the proxy's counter."""
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry)
    health = ReadHealth(settings, metrics)
    async with running_proxy(
        _nodes(behaviour), NODES, NoneHealthy(), metrics=metrics, read_health=health
    ) as running:
        if method == FIND_COMMIT:
            request = commit_pb2.FindCommitRequest(repository=repository(), revision=b"main")
            call: object = running.channel.unary_unary(method)(
                request.SerializeToString(), timeout=WAIT
            )
        else:
            request = blob_pb2.GetBlobsRequest(repository=repository())
            call = running.channel.unary_stream(method)(request.SerializeToString(), timeout=WAIT)
        try:
            if method == FIND_COMMIT:
                got: list[bytes] | grpc.aio.AioRpcError = [await call]  # type: ignore[misc]
            else:
                got = [m async for m in call]  # type: ignore[attr-defined]
        except grpc.aio.AioRpcError as exc:
            got = exc
        served = registry.get_sample_value("gitquorum_read_last_resort_total") or 0.0
    return got, served


SETTINGS = ReadsConfig(hedging=False, last_resort_timeout=BOUND)


@pytest.mark.parametrize("method", [FIND_COMMIT, GET_BLOBS])
async def test_replicas_no_proxy_calls_healthy_still_serve_reads(method: str) -> None:
    got, served = await _read(_answer, method, SETTINGS)
    assert got == [b"answer"]
    assert served == 1


@pytest.mark.parametrize("method", [FIND_COMMIT, GET_BLOBS])
async def test_a_last_resort_read_of_a_hung_node_fails_at_the_bound(method: str) -> None:
    got, _ = await _read(_hang, method, SETTINGS)
    assert isinstance(got, grpc.aio.AioRpcError)
    # UNAVAILABLE, not the client's DEADLINE_EXCEEDED (WAIT is far longer).
    assert got.code() is grpc.StatusCode.UNAVAILABLE
    assert "no healthy, up-to-date replica" in (got.details() or "")


async def test_the_bound_ends_with_the_first_response_of_a_stream() -> None:
    got, _ = await _read(_slow_stream, GET_BLOBS, SETTINGS)
    assert got == [b"first", b"second"]


async def test_with_the_last_resort_off_such_reads_are_refused() -> None:
    settings = ReadsConfig(hedging=False, last_resort=False)
    got, served = await _read(_answer, GET_BLOBS, settings)
    assert isinstance(got, grpc.aio.AioRpcError)
    assert got.code() is grpc.StatusCode.UNAVAILABLE
    assert served == 0
