"""The node's per-repository concurrency limits, around a method's handler.

Mutators and expensive reads (``gitquorum.limits.EXPENSIVE_READS``) of one
repository share a bounded number of slots; a call over the limit waits in a
bounded queue, then fails with RESOURCE_EXHAUSTED. The repository is read from
the request's ``target_repository`` field (the proto annotations), in the
first message of a client stream, and keyed by storage and relative path.

The node applies ``limited_handler`` to each method once, at start-up,
inside the finishing layer (``storage.server``), so its ResourceExhausted
becomes a status and is logged like any other error. ``LimitInterceptor`` does
the same per call, installed inside ``ErrorInterceptor`` (after it in the
interceptor list).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any

import grpc

from gitquorum.errors import GitquorumError
from gitquorum.limits import Admission, RepositoryLimiter
from gitquorum.wire.paths import validate_relative
from gitquorum.wire.registry import MethodInfo, MethodRegistry, Op


def repository_key(info: MethodInfo, request: Any) -> Hashable | None:
    """(storage, relative path) of the request's target; None if it names none.

    A request without a valid target is not limited: its handler refuses it
    with a clear status at once, which costs no slot.
    """
    try:
        target = info.target_repository(request)
        return (target.storage_name, validate_relative(target.relative_path))
    except (GitquorumError, AttributeError, TypeError):
        return None


async def _chain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for request in rest:
        yield request


async def _nothing() -> AsyncIterator[Any]:
    return
    yield  # pragma: no cover - makes this an async generator


class LimitInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, admission: Admission, registry: MethodRegistry | None = None) -> None:
        self.admission = admission
        # The same annotation-driven table the proxy routes by.
        self.registry = registry or MethodRegistry.from_descriptors()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return limited_handler(handler, handler_call_details.method, self.admission, self.registry)


def limited_handler(
    handler: grpc.RpcMethodHandler, method: str, admission: Admission, registry: MethodRegistry
) -> grpc.RpcMethodHandler:
    """``handler`` under the limit ``method`` is subject to (itself when none).

    Depends on the method alone: the node applies it once per method at
    start-up, ``LimitInterceptor`` on every call.
    """
    info = registry.get(method)
    if info is None or info.op is Op.INTERCEPTED:
        return handler
    limiter = admission.limiter(info.full_name, info.op is Op.MUTATOR)
    if limiter is None or limiter.limit <= 0:
        return handler
    return _limited(handler, info, limiter)


def _limited(
    handler: grpc.RpcMethodHandler, info: MethodInfo, limiter: RepositoryLimiter
) -> grpc.RpcMethodHandler:
    deserialize = handler.request_deserializer
    serialize = handler.response_serializer

    if handler.unary_unary:
        unary_unary = handler.unary_unary

        async def uu(request: Any, context: grpc.aio.ServicerContext) -> Any:
            key = repository_key(info, request)
            if key is None:
                return await unary_unary(request, context)
            async with limiter.slot(key, context.time_remaining()):
                return await unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(uu, deserialize, serialize)

    if handler.unary_stream:
        unary_stream = handler.unary_stream

        async def us(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            key = repository_key(info, request)
            if key is None:
                async for response in unary_stream(request, context):
                    yield response
                return
            async with limiter.slot(key, context.time_remaining()):
                async for response in unary_stream(request, context):
                    yield response

        return grpc.unary_stream_rpc_method_handler(us, deserialize, serialize)

    if handler.stream_unary:
        stream_unary = handler.stream_unary

        async def su(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            first, stream = await _peek(requests)
            key = None if first is None else repository_key(info, first)
            if key is None:
                return await stream_unary(stream, context)
            async with limiter.slot(key, context.time_remaining()):
                return await stream_unary(stream, context)

        return grpc.stream_unary_rpc_method_handler(su, deserialize, serialize)

    stream_stream = handler.stream_stream

    async def ss(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        first, stream = await _peek(requests)
        key = None if first is None else repository_key(info, first)
        if key is None:
            async for response in stream_stream(stream, context):
                yield response
            return
        async with limiter.slot(key, context.time_remaining()):
            async for response in stream_stream(stream, context):
                yield response

    return grpc.stream_stream_rpc_method_handler(ss, deserialize, serialize)


async def _peek(requests: AsyncIterator[Any]) -> tuple[Any, AsyncIterator[Any]]:
    """The first request, and the whole stream again (first included) for the handler."""
    iterator = aiter(requests)
    try:
        first = await anext(iterator)
    except StopAsyncIteration:
        return None, _nothing()
    return first, _chain(first, iterator)
