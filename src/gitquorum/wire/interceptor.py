"""The server edge for servicer-based services, on nodes and proxies alike.

Every handler is wrapped in the RPC-finishing layer (``wire.finishing``):
services stay free of ``context.abort`` calls, and no exception from a handler
reaches grpc as an unexplained UNKNOWN. Undecodable requests become
INVALID_ARGUMENT instead of grpc's INTERNAL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from gitquorum.errors import InvalidArgument
from gitquorum.metrics import RpcMetrics
from gitquorum.wire.finishing import RpcCall, op_label
from gitquorum.wire.registry import MethodRegistry


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


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Applies to every service on the server (health included)."""

    def __init__(
        self,
        metrics: RpcMetrics | None,
        registry: MethodRegistry | None = None,
        skip: Callable[[str], bool] | None = None,
        *,
        public: bool = False,
    ) -> None:
        self.metrics = metrics
        # Where the op_type label comes from; without one, every label is empty.
        self.registry = registry
        # Methods whose handler finishes its calls itself (the proxy's
        # raw-bytes handler): wrapping them again would double-count.
        self.skip = skip
        # The proxy's: failures reach clients as ``finishing.public_status`` says.
        self.public = public

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
        info = self.registry.get(method) if self.registry is not None else None
        op_type = op_label(info)
        metadata = handler_call_details.invocation_metadata

        def call(context: grpc.aio.ServicerContext) -> RpcCall:
            return RpcCall(method, op_type, context, metadata, self.metrics, public=self.public)

        return finishing_handler(handler, call)


def finishing_handler(
    handler: grpc.RpcMethodHandler, call: Callable[[grpc.aio.ServicerContext], RpcCall]
) -> grpc.RpcMethodHandler:
    """``handler`` with every call inside ``call(context)`` and its request checked.

    Built per call by ``ErrorInterceptor``; a server that knows its methods in
    advance (the node) builds it once per method instead.
    """

    def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with call(context):
                return await behavior(_checked(request), context)

        return wrapper

    def streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with call(context):
                async for response in behavior(_checked(request), context):
                    yield response

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
