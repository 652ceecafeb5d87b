"""The server edge: map exceptions to statuses, log each RPC, record metrics.

Wrapping the handlers here keeps every service free of ``context.abort``
calls and guarantees that no exception from a handler reaches grpc as an
unexplained UNKNOWN.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from gitquorum import log
from gitquorum.errors import GitquorumError, InvalidArgument, grpc_status
from gitquorum.metrics import RpcMetrics

logger = log.get("gitquorum.rpc")


class _Malformed:
    """Stands in for a request whose bytes did not decode."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    # grpc turns a deserializer exception into INTERNAL; we want INVALID_ARGUMENT,
    # so decoding failures travel to the handler wrapper as a value instead.
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Malformed(exc)

    return decode


def _check(request: Any) -> Any:
    if isinstance(request, _Malformed):
        raise InvalidArgument(f"malformed request: {request.error}")
    return request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _check(request)


def _checked(request: Any) -> Any:
    if hasattr(request, "__aiter__"):
        return _checked_stream(request)
    return _check(request)


def _code_name(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Applies to every service on the server (health included)."""

    def __init__(
        self,
        metrics: RpcMetrics | None,
        op_types: dict[str, str] | None = None,
        skip: Callable[[str], bool] | None = None,
    ) -> None:
        self.metrics = metrics
        self.op_types = op_types or {}
        # Methods whose handler does its own error mapping and logging (the
        # proxy's raw-bytes handler): wrapping them again would double-count.
        self.skip = skip

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if self.skip is not None and self.skip(method):
            return handler
        op_type = self.op_types.get(method, "")
        metadata = handler_call_details.invocation_metadata

        def finish(
            context: grpc.aio.ServicerContext, started: float, exc: BaseException | None
        ) -> None:
            code = _code_name(context)
            if isinstance(exc, asyncio.CancelledError):
                # The client went away (or the drain deadline passed): the
                # context still says nothing, which would count it as OK.
                code = "CANCELLED"
            elif exc is not None and not isinstance(exc, GitquorumError):
                code = "INTERNAL"
            elapsed = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.observe(method, op_type, code, elapsed)
            fields = log.fields(method=method, code=code, duration_ms=round(elapsed * 1000, 2))
            if method.startswith("/grpc.health.v1.Health/") and code == "OK":
                # Probed every second by every proxy: not worth a line each.
                logger.debug("rpc finished", extra=fields)
            elif code in ("OK", "NOT_FOUND", "INVALID_ARGUMENT", "ALREADY_EXISTS", "CANCELLED"):
                logger.info("rpc finished", extra=fields)
            else:
                logger.warning(
                    "rpc failed", extra=fields, exc_info=exc if code == "INTERNAL" else None
                )

        async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
            code, message = grpc_status(exc)
            await context.abort(code, message)

        def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
            async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
                log.correlation_id.set(log.correlation_from_metadata(metadata))
                started = time.perf_counter()
                error: BaseException | None = None
                try:
                    return await behavior(_checked(request), context)
                except asyncio.CancelledError as exc:
                    error = exc
                    raise
                except (GitquorumError, Exception) as exc:
                    if _is_abort(exc):
                        raise
                    error = exc
                    await abort(context, exc)
                finally:
                    finish(context, started, error)

            return wrapper

        def streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
            async def wrapper(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                log.correlation_id.set(log.correlation_from_metadata(metadata))
                started = time.perf_counter()
                error: BaseException | None = None
                try:
                    async for response in behavior(_checked(request), context):
                        yield response
                except asyncio.CancelledError as exc:
                    error = exc
                    raise
                except (GitquorumError, Exception) as exc:
                    if _is_abort(exc):
                        raise
                    error = exc
                    await abort(context, exc)
                finally:
                    finish(context, started, error)

            return wrapper

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                unary(handler.unary_unary),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                unary(handler.stream_unary),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                streaming(handler.unary_stream),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            streaming(handler.stream_stream),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


def _is_abort(exc: BaseException) -> bool:
    # context.abort raises a plain Exception subclass internal to grpc.aio.
    return type(exc).__name__ == "AbortError"
