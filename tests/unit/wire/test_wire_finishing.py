"""Finishing an RPC: the status an exception becomes, the log line's level, the metrics."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from prometheus_client import CollectorRegistry

from gitquorum import errors
from gitquorum.metrics import RpcMetrics
from gitquorum.wire.finishing import BackendError, RpcCall, log_level, op_label, status_of
from gitquorum.wire.registry import MethodRegistry

REGISTRY = MethodRegistry.from_descriptors()
EXISTS = "/gitaly.RepositoryService/RepositoryExists"
Code = grpc.StatusCode


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (BackendError(Code.NOT_FOUND, "no such ref"), (Code.NOT_FOUND, "no such ref")),
        (BackendError(Code.UNAVAILABLE, "down"), (Code.UNAVAILABLE, "down")),
        # A node that stopped mid-call: gRPC cancels the call with no reason of its own.
        (BackendError(Code.CANCELLED, ""), (Code.UNAVAILABLE, "node stopped during the call")),
        (
            BackendError(Code.CANCELLED, "CANCELLED"),
            (Code.UNAVAILABLE, "node stopped during the call"),
        ),
        # The node's own cancellations say why: relayed as they are.
        (BackendError(Code.CANCELLED, "hook cancelled"), (Code.CANCELLED, "hook cancelled")),
        (errors.NotFound("repository not found"), (Code.NOT_FOUND, "repository not found")),
        (errors.ResourceExhausted("too many"), (Code.RESOURCE_EXHAUSTED, "too many")),
        (NotImplementedError("later"), (Code.UNIMPLEMENTED, "method not implemented")),
        (ValueError("broke"), (Code.INTERNAL, "internal error: ValueError: broke")),
    ],
)
def test_status_of(exc: BaseException, expected: tuple[grpc.StatusCode, str]) -> None:
    assert status_of(exc) == expected


@pytest.mark.parametrize(
    ("method", "code", "level"),
    [
        ("/grpc.health.v1.Health/Check", "OK", logging.DEBUG),
        ("/grpc.health.v1.Health/Check", "UNAVAILABLE", logging.WARNING),
        ("/grpc.health.v1.Health/Check", "CANCELLED", logging.INFO),
        (EXISTS, "OK", logging.INFO),
        (EXISTS, "NOT_FOUND", logging.INFO),
        (EXISTS, "INVALID_ARGUMENT", logging.INFO),
        (EXISTS, "ALREADY_EXISTS", logging.INFO),
        (EXISTS, "CANCELLED", logging.INFO),
        (EXISTS, "UNAVAILABLE", logging.WARNING),
        (EXISTS, "INTERNAL", logging.WARNING),
        (EXISTS, "RESOURCE_EXHAUSTED", logging.WARNING),
        (EXISTS, "FAILED_PRECONDITION", logging.WARNING),
        (EXISTS, "DEADLINE_EXCEEDED", logging.WARNING),
        (EXISTS, "UNAUTHENTICATED", logging.WARNING),
    ],
)
def test_log_level(method: str, code: str, level: int) -> None:
    assert log_level(method, code) == level


@pytest.mark.parametrize(
    ("method", "label"),
    [
        (EXISTS, "accessor"),
        ("/gitaly.SSHService/SSHReceivePack", "mutator"),
        ("/gitaly.RepositoryService/OptimizeRepository", "maintenance"),
        ("/gitaly.ServerService/ServerInfo", ""),  # intercepted: no op type
        ("/grpc.health.v1.Health/Check", ""),  # not in the registry
    ],
)
def test_op_label(method: str, label: str) -> None:
    assert op_label(REGISTRY.get(method)) == label


class AbortError(Exception):
    """Named like grpc.aio's own: what context.abort raises."""


class FakeContext:
    def __init__(self, code: grpc.StatusCode | None = None) -> None:
        self._code = code
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self.aborted = (code, details)
        raise AbortError(details)


async def finish(
    exc: BaseException | None, context: FakeContext, caplog: pytest.LogCaptureFixture
) -> tuple[BaseException | None, float, logging.LogRecord]:
    """Run one call that raises ``exc``; what left it, its count and its log record."""
    registry = CollectorRegistry()
    call = RpcCall(EXISTS, "accessor", context, (), RpcMetrics(registry, "test"))  # type: ignore[arg-type]
    raised: BaseException | None = None
    with caplog.at_level(logging.DEBUG, logger="gitquorum.rpc"):
        try:
            async with call:
                call.fields["route"] = "node-a"
                if exc is not None:
                    raise exc
        except BaseException as error:
            raised = error
    code = call.fields["code"]
    count = registry.get_sample_value(
        "gitquorum_rpc_requests_total",
        {"component": "test", "method": EXISTS, "op_type": "accessor", "code": str(code)},
    )
    (record,) = [r for r in caplog.records if r.name == "gitquorum.rpc"]
    return raised, count or 0.0, record


@pytest.mark.parametrize(
    ("exc", "code", "aborted", "level"),
    [
        (None, "OK", None, logging.INFO),
        (errors.NotFound("gone"), "NOT_FOUND", (Code.NOT_FOUND, "gone"), logging.INFO),
        (
            BackendError(Code.CANCELLED, ""),
            "UNAVAILABLE",
            (Code.UNAVAILABLE, "node stopped during the call"),
            logging.WARNING,
        ),
        (
            ValueError("broke"),
            "INTERNAL",
            (Code.INTERNAL, "internal error: ValueError: broke"),
            logging.WARNING,
        ),
    ],
)
async def test_a_call_ends_with_one_status_one_count_one_line(
    exc: BaseException | None,
    code: str,
    aborted: tuple[grpc.StatusCode, str] | None,
    level: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    context = FakeContext()
    raised, count, record = await finish(exc, context, caplog)
    assert context.aborted == aborted
    assert isinstance(raised, AbortError) if aborted else raised is None
    assert count == 1
    assert record.levelno == level
    assert record.getMessage() == ("rpc finished" if level == logging.INFO else "rpc failed")
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["code"] == code and fields["route"] == "node-a"
    assert fields["method"] == EXISTS and fields["op_type"] == "accessor"
    assert (record.exc_info is not None) is (code == "INTERNAL")


@pytest.mark.parametrize("exc", [asyncio.CancelledError(), GeneratorExit()])
async def test_a_call_the_client_left_is_cancelled(
    exc: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    context = FakeContext()
    raised, count, record = await finish(exc, context, caplog)
    assert raised is exc and context.aborted is None
    assert count == 1 and record.fields["code"] == "CANCELLED"  # type: ignore[attr-defined]


async def test_a_handlers_own_abort_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    context = FakeContext(Code.PERMISSION_DENIED)
    exc = AbortError("aborted by the handler")
    raised, count, record = await finish(exc, context, caplog)
    assert raised is exc and context.aborted is None
    assert count == 1 and record.fields["code"] == "PERMISSION_DENIED"  # type: ignore[attr-defined]
