"""The server edge: statuses, malformed requests, metrics and log lines, in process."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from gitquorum import errors, log
from gitquorum.gitaly import (
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
    ssh_pb2,
    ssh_pb2_grpc,
)
from gitquorum.metrics import RpcMetrics
from gitquorum.wire.finishing import op_label
from gitquorum.wire.interceptor import ErrorInterceptor
from gitquorum.wire.registry import MethodRegistry

EXISTS = "/gitaly.RepositoryService/RepositoryExists"
BUNDLE = "/gitaly.RepositoryService/CreateBundle"
FROM_BUNDLE = "/gitaly.RepositoryService/CreateRepositoryFromBundle"
UPLOAD_PACK = "/gitaly.SSHService/SSHUploadPack"

REGISTRY = MethodRegistry.from_descriptors()

# Truncated length-delimited field, and a string field holding invalid UTF-8.
GARBAGE = [b"\x0a\xff", b"\x0a\x03\x12\x01\xff", b"\xff\xff\xff\xff"]

ERROR_CLASSES = [
    errors.InvalidArgument,
    errors.NotFound,
    errors.AlreadyExists,
    errors.FailedPrecondition,
    errors.Aborted,
    errors.Unavailable,
    errors.Unauthenticated,
    errors.PermissionDenied,
    errors.ResourceExhausted,
    errors.DeadlineExceeded,
    errors.Unimplemented,
    errors.DataLoss,
    errors.Canceled,
    errors.Internal,
]
BY_NAME = {cls.__name__: cls for cls in ERROR_CLASSES}


async def behave(instruction: str, context: grpc.aio.ServicerContext) -> None:
    """Act on an instruction carried in relative_path: raise, abort, or nothing."""
    kind, _, arg = instruction.partition(":")
    if kind == "raise":
        if arg in BY_NAME:
            raise BY_NAME[arg](f"{arg} happened")
        if arg == "NotImplementedError":
            raise NotImplementedError("later")
        raise ValueError("something broke")
    if kind == "abort":
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "aborted by the handler")
    if kind == "sleep":
        await asyncio.sleep(float(arg))


class FakeRepositoryService(repository_pb2_grpc.RepositoryServiceServicer):
    async def RepositoryExists(
        self, request: repository_pb2.RepositoryExistsRequest, context: grpc.aio.ServicerContext
    ) -> repository_pb2.RepositoryExistsResponse:
        await behave(request.repository.relative_path, context)
        if request.repository.relative_path == "set-code":
            context.set_code(grpc.StatusCode.OUT_OF_RANGE)
            context.set_details("set by the handler")
        return repository_pb2.RepositoryExistsResponse(exists=True)

    async def CreateBundle(
        self, request: repository_pb2.CreateBundleRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[repository_pb2.CreateBundleResponse]:
        yield repository_pb2.CreateBundleResponse(data=b"first")
        await behave(request.repository.relative_path, context)
        yield repository_pb2.CreateBundleResponse(data=b"second")

    async def CreateRepositoryFromBundle(
        self,
        request_iterator: AsyncIterator[repository_pb2.CreateRepositoryFromBundleRequest],
        context: grpc.aio.ServicerContext,
    ) -> repository_pb2.CreateRepositoryFromBundleResponse:
        async for request in request_iterator:
            await behave(request.repository.relative_path, context)
        return repository_pb2.CreateRepositoryFromBundleResponse()

    # CalculateChecksum is left to the generated base class: UNIMPLEMENTED.


class FakeSSHService(ssh_pb2_grpc.SSHServiceServicer):
    async def SSHUploadPack(
        self,
        request_iterator: AsyncIterator[ssh_pb2.SSHUploadPackRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ssh_pb2.SSHUploadPackResponse]:
        async for request in request_iterator:
            await behave(request.repository.relative_path, context)
            yield ssh_pb2.SSHUploadPackResponse(stdout=request.stdin)


class Edge:
    def __init__(self, channel: grpc.aio.Channel, registry: CollectorRegistry, logs: io.StringIO):
        self.channel = channel
        self.registry = registry
        self.logs = logs
        self.repository = repository_pb2_grpc.RepositoryServiceStub(channel)
        self.ssh = ssh_pb2_grpc.SSHServiceStub(channel)

    def count(self, method: str, code: str) -> float:
        value = self.registry.get_sample_value(
            "gitquorum_rpc_requests_total",
            {
                "component": "test",
                "method": method,
                "op_type": op_label(REGISTRY.get(method)),
                "code": code,
            },
        )
        return value or 0.0

    async def recorded(self, method: str, code: str, expected: float = 1.0) -> float:
        """The counter once it reaches ``expected``.

        The status can reach the client before the server-side bookkeeping
        after ``context.abort`` has run, so poll briefly instead of reading once.
        """
        deadline = asyncio.get_running_loop().time() + 5
        while self.count(method, code) < expected:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.005)
        return self.count(method, code)

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.logs.getvalue().splitlines()]

    def raw(self, method: str, kind: str) -> Callable[..., Any]:
        factory = getattr(self.channel, kind)
        return factory(method, request_serializer=None, response_deserializer=None)  # type: ignore[no-any-return]


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    registry = CollectorRegistry()
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor(RpcMetrics(registry, "test"), REGISTRY)]
    )
    repository_pb2_grpc.add_RepositoryServiceServicer_to_server(FakeRepositoryService(), server)
    ssh_pb2_grpc.add_SSHServiceServicer_to_server(FakeSSHService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    handler.setFormatter(log.JsonFormatter())
    rpc_logger = logging.getLogger("gitquorum.rpc")
    rpc_logger.addHandler(handler)
    previous_level = rpc_logger.level
    rpc_logger.setLevel(logging.INFO)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Edge(channel, registry, logs)
    finally:
        rpc_logger.removeHandler(handler)
        rpc_logger.setLevel(previous_level)
        await server.stop(None)


def exists_request(instruction: str) -> repository_pb2.RepositoryExistsRequest:
    return repository_pb2.RepositoryExistsRequest(
        repository=shared_pb2.Repository(storage_name="default", relative_path=instruction)
    )


async def test_ok(edge: Edge) -> None:
    response = await edge.repository.RepositoryExists(exists_request("ok"))
    assert response.exists
    assert await edge.recorded(EXISTS, "OK") == 1


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
async def test_unary_domain_error_maps_to_its_code(
    edge: Edge, cls: type[errors.GitquorumError]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await edge.repository.RepositoryExists(exists_request(f"raise:{cls.__name__}"))
    assert exc.value.code() == cls.code
    assert exc.value.details() == f"{cls.__name__} happened"
    assert await edge.recorded(EXISTS, cls.code.name) == 1


async def test_unknown_exception_is_internal(edge: Edge) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await edge.repository.RepositoryExists(exists_request("raise:ValueError"))
    assert exc.value.code() == grpc.StatusCode.INTERNAL
    assert "ValueError: something broke" in (exc.value.details() or "")
    assert await edge.recorded(EXISTS, "INTERNAL") == 1
    (line,) = [entry for entry in edge.log_lines() if entry["method"] == EXISTS]
    assert line["level"] == "warning"
    assert line["code"] == "INTERNAL"
    assert "ValueError" in line["error"]  # the traceback is logged for INTERNAL


async def test_not_implemented(edge: Edge) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await edge.repository.RepositoryExists(exists_request("raise:NotImplementedError"))
    assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # A method the servicer does not define at all.
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await edge.repository.CalculateChecksum(repository_pb2.CalculateChecksumRequest())
    assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_handler_abort_and_set_code_are_kept(edge: Edge) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await edge.repository.RepositoryExists(exists_request("abort"))
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert exc.value.details() == "aborted by the handler"
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await edge.repository.RepositoryExists(exists_request("set-code"))
    assert exc.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert await edge.recorded(EXISTS, "PERMISSION_DENIED") == 1
    assert await edge.recorded(EXISTS, "OUT_OF_RANGE") == 1


async def test_server_streaming_error_after_messages(edge: Edge) -> None:
    call = edge.repository.CreateBundle(
        repository_pb2.CreateBundleRequest(
            repository=shared_pb2.Repository(storage_name="s", relative_path="raise:NotFound")
        )
    )
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for response in call:
            received.append(response.data)
    assert received == [b"first"]
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert exc.value.details() == "NotFound happened"
    call = edge.repository.CreateBundle(
        repository_pb2.CreateBundleRequest(
            repository=shared_pb2.Repository(storage_name="s", relative_path="raise:KeyError")
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for _ in call:
            pass
    assert exc.value.code() == grpc.StatusCode.INTERNAL
    assert await edge.recorded(BUNDLE, "NOT_FOUND") == 1
    assert await edge.recorded(BUNDLE, "INTERNAL") == 1


async def test_client_streaming_error(edge: Edge) -> None:
    async def requests() -> AsyncIterator[repository_pb2.CreateRepositoryFromBundleRequest]:
        yield repository_pb2.CreateRepositoryFromBundleRequest(data=b"x")
        yield repository_pb2.CreateRepositoryFromBundleRequest(
            repository=shared_pb2.Repository(relative_path="raise:AlreadyExists")
        )

    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await edge.repository.CreateRepositoryFromBundle(requests())
    assert exc.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_undecodable_unary_request(edge: Edge, garbage: bytes) -> None:
    call = edge.raw(EXISTS, "unary_unary")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call(garbage)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in (exc.value.details() or "")
    assert await edge.recorded(EXISTS, "INVALID_ARGUMENT") == 1
    # The server is unharmed.
    assert (await edge.repository.RepositoryExists(exists_request("ok"))).exists


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_undecodable_server_streaming_request(edge: Edge, garbage: bytes) -> None:
    call = edge.raw(BUNDLE, "unary_stream")(garbage)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for _ in call:
            pass
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("position", [0, 2])
async def test_undecodable_client_streaming_request(edge: Edge, position: int) -> None:
    good = repository_pb2.CreateRepositoryFromBundleRequest(data=b"ok").SerializeToString()
    messages = [good, good, good]
    messages[position] = GARBAGE[0]

    async def requests() -> AsyncIterator[bytes]:
        for message in messages:
            yield message

    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await edge.raw(FROM_BUNDLE, "stream_unary")(requests())
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in (exc.value.details() or "")


async def test_undecodable_bidi_request(edge: Edge) -> None:
    good = ssh_pb2.SSHUploadPackRequest(stdin=b"hello").SerializeToString()

    async def requests() -> AsyncIterator[bytes]:
        yield good
        yield GARBAGE[1]

    call = edge.raw(UPLOAD_PACK, "stream_stream")(requests())
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for raw in call:
            received.append(ssh_pb2.SSHUploadPackResponse.FromString(raw).stdout)
    assert received == [b"hello"]
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_bidi_domain_error(edge: Edge) -> None:
    async def requests() -> AsyncIterator[ssh_pb2.SSHUploadPackRequest]:
        yield ssh_pb2.SSHUploadPackRequest(stdin=b"one")
        yield ssh_pb2.SSHUploadPackRequest(
            repository=shared_pb2.Repository(relative_path="raise:FailedPrecondition")
        )

    received = []
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for response in edge.ssh.SSHUploadPack(requests()):
            received.append(response.stdout)
    assert received == [b"one"]
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_log_line_carries_caller_correlation_id(edge: Edge) -> None:
    await edge.repository.RepositoryExists(
        exists_request("ok"), metadata=(("x-gitquorum-correlation-id", "trace-1234"),)
    )
    await edge.repository.RepositoryExists(
        exists_request("ok"), metadata=(("x-gitlab-correlation-id", "gitlab-5678"),)
    )
    await edge.repository.RepositoryExists(exists_request("ok"))
    assert await edge.recorded(EXISTS, "OK", 3) == 3
    lines = [entry for entry in edge.log_lines() if entry.get("method") == EXISTS]
    assert [entry["correlation_id"] for entry in lines[:2]] == ["trace-1234", "gitlab-5678"]
    # Without one, a fresh id is made up so every line can still be followed.
    assert len(lines[2]["correlation_id"]) == 32
    for entry in lines:
        assert entry["code"] == "OK"
        assert entry["msg"] == "rpc finished"
        assert entry["duration_ms"] >= 0


async def test_client_cancellation_is_not_internal(edge: Edge) -> None:
    call = edge.repository.RepositoryExists(exists_request("sleep:5"))
    await asyncio.sleep(0.2)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    def recorded() -> float:
        return sum(edge.count(EXISTS, code) for code in ("OK", "CANCELLED", "INTERNAL", "UNKNOWN"))

    deadline = asyncio.get_running_loop().time() + 5
    while recorded() == 0:
        assert asyncio.get_running_loop().time() < deadline, "cancelled RPC never recorded"
        await asyncio.sleep(0.02)
    assert edge.count(EXISTS, "INTERNAL") == 0
    assert await edge.recorded(EXISTS, "CANCELLED") == 1
