"""Last-resort reads: the real handler in front of scripted nodes, none of
them healthy by consensus (docs/failover.md).

The repository's up-to-date replicas are n1 (primary) and n2 (n3 is
outdated); the consensus calls every node unhealthy, so each read goes to the
first of n1, n2 that answers a health check within ``reads.last_resort_timeout``.
Each scripted node serves the health service: a hung node hangs there too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2
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

Behaviour = Callable[[], AsyncIterator[bytes]]


async def _hang() -> AsyncIterator[bytes]:
    await asyncio.Event().wait()
    yield b""


async def _slow() -> AsyncIterator[bytes]:
    """A live node whose read takes longer than the bound (and than the
    longest hedge delay, 1 s)."""
    await asyncio.sleep(BOUND * 5)
    yield b"slow answer"


class Gone(Exception):
    """The node answers its health check, then goes away mid-read."""


async def _gone() -> AsyncIterator[bytes]:
    raise Gone
    yield b""


async def _answer() -> AsyncIterator[bytes]:
    yield b"answer"


class NoneHealthy(FakeCluster):
    def healthy(self, virtual_storage: str) -> frozenset[str]:
        return frozenset()


HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def _nodes(script: dict[str, Behaviour]) -> Callable[[str], grpc.GenericRpcHandler]:
    def handler(node: str) -> grpc.GenericRpcHandler:
        behaviour = script.get(node, _answer)

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                if details.method == HEALTH_CHECK:

                    async def check(request: bytes, context: object) -> bytes:
                        if behaviour is _hang:
                            await asyncio.Event().wait()
                        return health_pb2.HealthCheckResponse(
                            status=health_pb2.HealthCheckResponse.SERVING
                        ).SerializeToString()

                    return grpc.unary_unary_rpc_method_handler(check)
                info = REGISTRY.get(details.method)
                if info is None:
                    return None

                async def stream(
                    request: bytes, context: grpc.aio.ServicerContext
                ) -> AsyncIterator[bytes]:
                    try:
                        async for message in behaviour():
                            yield message
                    except Gone:
                        await context.abort(grpc.StatusCode.UNAVAILABLE, "node going away")

                async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                    try:
                        return [m async for m in behaviour()][-1]
                    except Gone:
                        await context.abort(grpc.StatusCode.UNAVAILABLE, "node going away")
                        raise

                if info.shape is Shape.UNARY_UNARY:
                    return grpc.unary_unary_rpc_method_handler(unary)
                return grpc.unary_stream_rpc_method_handler(stream)

        return Handler()

    return handler


async def _read(
    script: dict[str, Behaviour], method: str, settings: ReadsConfig
) -> tuple[list[bytes] | grpc.aio.AioRpcError, float]:
    """What a client reading through the proxy gets, and the proxy's counter."""
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry)
    health = ReadHealth(settings, metrics)
    async with running_proxy(
        _nodes(script), NODES, NoneHealthy(), metrics=metrics, read_health=health
    ) as running:
        try:
            if method == FIND_COMMIT:
                request = commit_pb2.FindCommitRequest(repository=repository(), revision=b"main")
                unary = running.channel.unary_unary(method)
                got: list[bytes] | grpc.aio.AioRpcError = [
                    await unary(request.SerializeToString(), timeout=WAIT)
                ]
            else:
                blobs = blob_pb2.GetBlobsRequest(repository=repository())
                stream = running.channel.unary_stream(method)
                got = [m async for m in stream(blobs.SerializeToString(), timeout=WAIT)]
        except grpc.aio.AioRpcError as exc:
            got = exc
        served = registry.get_sample_value("gitquorum_read_last_resort_total") or 0.0
    return got, served


SETTINGS = ReadsConfig(hedging=False, last_resort_timeout=BOUND)
BOTH = pytest.mark.parametrize("method", [FIND_COMMIT, GET_BLOBS])


@BOTH
async def test_replicas_no_proxy_calls_healthy_still_serve_reads(method: str) -> None:
    got, served = await _read({}, method, SETTINGS)
    assert got == [b"answer"]
    assert served == 1


@BOTH
async def test_the_first_replica_answering_its_check_serves_the_read(method: str) -> None:
    got, _ = await _read({"n1": _hang, "n2": _answer}, method, SETTINGS)
    assert got == [b"answer"]


@BOTH
async def test_with_no_replica_answering_its_check_the_read_fails_at_the_bound(
    method: str,
) -> None:
    got, _ = await _read({"n1": _hang, "n2": _hang}, method, SETTINGS)
    assert isinstance(got, grpc.aio.AioRpcError)
    # UNAVAILABLE, not the client's DEADLINE_EXCEEDED (WAIT is far longer).
    assert got.code() is grpc.StatusCode.UNAVAILABLE
    assert "did not answer" in (got.details() or "")


@BOTH
async def test_a_live_replica_slower_than_the_bound_still_answers(method: str) -> None:
    got, _ = await _read({"n1": _slow, "n2": _hang}, method, SETTINGS)
    assert got == [b"slow answer"]


async def test_with_the_last_resort_off_such_reads_are_refused() -> None:
    settings = ReadsConfig(hedging=False, last_resort=False)
    got, served = await _read({}, GET_BLOBS, settings)
    assert isinstance(got, grpc.aio.AioRpcError)
    assert got.code() is grpc.StatusCode.UNAVAILABLE
    assert served == 0


@BOTH
async def test_a_replica_that_failed_its_check_is_no_fallback(method: str) -> None:
    # n1 (checked first) hangs; n2 answers its check, then goes away mid-read:
    # the read must not fall back to n1 and wait for the client's deadline.
    got, _ = await _read({"n1": _hang, "n2": _gone}, method, SETTINGS)
    assert isinstance(got, grpc.aio.AioRpcError)
    assert got.code() is grpc.StatusCode.UNAVAILABLE
    assert "did not answer" in (got.details() or "")


async def test_a_last_resort_read_is_not_hedged() -> None:
    # With hedging on, a read slower than the longest hedge delay would go to
    # n2 as well; replicas no check vouches for are not verified either.
    settings = ReadsConfig(hedging=True, last_resort_timeout=BOUND)
    got, _ = await _read({"n1": _slow, "n2": _answer}, FIND_COMMIT, settings)
    assert got == [b"slow answer"]
