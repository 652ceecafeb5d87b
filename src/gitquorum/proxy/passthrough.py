"""Relaying one client call to one node, as raw bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from gitquorum.proxy.channels import NodeChannels
from gitquorum.wire.callstatus import StatusWatch
from gitquorum.wire.finishing import BackendError
from gitquorum.wire.registry import MethodInfo, Shape

Metadata = Sequence[tuple[str, str | bytes]]


def backend_error(code: grpc.StatusCode, details: str) -> BackendError:
    """A node's non-OK status, to be relayed to the client unchanged."""
    return BackendError(code, details)


async def chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The first request message (already read and rewritten), then the others."""
    yield first
    async for message in rest:
        yield message


class PassThrough:
    """Relay one call to one node."""

    def __init__(self, channels: NodeChannels, info: MethodInfo) -> None:
        self.channels = channels
        self.info = info

    async def call(
        self,
        node: str,
        first: bytes,
        rest: AsyncIterator[bytes],
        metadata: Metadata,
        timeout: float | None,
    ) -> AsyncIterator[bytes]:
        channel = self.channels.channel(node)
        outgoing = self.channels.forward_metadata(metadata)
        watch: StatusWatch | None = None
        call: grpc.aio.Call | None = None
        try:
            if self.info.shape is Shape.UNARY_UNARY:
                yield await channel.unary_unary(self.info.full_name)(
                    first, metadata=outgoing, timeout=timeout
                )
                return
            if self.info.shape is Shape.UNARY_STREAM:
                call = channel.unary_stream(self.info.full_name)(
                    first, metadata=outgoing, timeout=timeout
                )
            else:
                call = channel.stream_stream(self.info.full_name)(
                    chain(first, rest), metadata=outgoing, timeout=timeout
                )
                watch = StatusWatch(call)
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if watch is not None:
                code, details = await watch.resolve(code, details)
            raise backend_error(code, details) from None
        finally:
            # Abandoned mid-stream (the client went away): end the node's call
            # now, so its git process dies now, not when the call is collected.
            if call is not None and not call.done():
                call.cancel()
