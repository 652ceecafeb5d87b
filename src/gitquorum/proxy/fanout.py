"""Carrying one client call to one or several nodes, as raw bytes.

``PassThrough`` relays a call to one node. ``Fanout`` sends a mutator's stream
to the primary and every participating secondary under a transaction: the
client sees only the primary's responses; responses that follow the first
vote are held back until the finalizer has recorded the outcome in etcd, so
nothing is acknowledged that the cluster state does not know about.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from gitquorum import log
from gitquorum.errors import Unavailable
from gitquorum.proxy.channels import NodeChannels
from gitquorum.proxy.metrics import ProxyMetrics
from gitquorum.proxy.registry import MethodInfo, Shape
from gitquorum.proxy.routes import MutatorRoute
from gitquorum.proxy.state import WriteResult
from gitquorum.proxy.transactions import Transaction, TransactionManager
from gitquorum.storage.transaction import Transaction as NodeTransaction
from gitquorum.storage.transaction import encode_metadata

logger = log.get("gitquorum.proxy.fanout")
_END = object()
Metadata = Sequence[tuple[str, str | bytes]]


def _backend_error(exc: grpc.aio.AioRpcError) -> Exception:
    from gitquorum.proxy.handler import BackendError

    return BackendError(exc.code(), exc.details() or "")


async def _requests(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
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
                    _requests(first, rest), metadata=outgoing, timeout=timeout
                )
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise _backend_error(exc) from None


@dataclass
class _Leg:
    """One node's part in a fan-out."""

    node: str
    queue: asyncio.Queue[object] = field(default_factory=lambda: asyncio.Queue(maxsize=64))
    call: grpc.aio.StreamStreamCall | None = None
    task: asyncio.Task[None] | None = None
    code: grpc.StatusCode | None = None  # final status; None while running
    details: str = ""
    dropped: bool = False

    async def requests(self, first: bytes) -> AsyncIterator[bytes]:
        yield first
        while True:
            item = await self.queue.get()
            if item is _END:
                return
            assert isinstance(item, bytes)
            yield item


class Fanout:
    def __init__(
        self,
        channels: NodeChannels,
        info: MethodInfo,
        route: MutatorRoute,
        transactions: TransactionManager,
        vote_address: str,
        metrics: ProxyMetrics,
        write_timeout: float,
    ) -> None:
        self.channels = channels
        self.info = info
        self.route = route
        self.transactions = transactions
        self.vote_address = vote_address
        self.metrics = metrics
        self.write_timeout = write_timeout

    def _metadata(self, node: str, tx: Transaction | None, incoming: Metadata) -> list[tuple[str, str | bytes]]:
        extra: list[tuple[str, str]] = []
        if tx is not None:
            extra = encode_metadata(
                NodeTransaction(
                    tx.id, node, node == self.route.primary, f"tcp://{self.vote_address}", tx.token
                )
            )
        return self.channels.forward_metadata(incoming, extra)

    async def run(
        self,
        payloads: Mapping[str, bytes],
        rest: AsyncIterator[bytes],
        metadata: Metadata,
        timeout: float | None,
        finalize: Callable[[WriteResult], Awaitable[None]],
    ) -> AsyncIterator[bytes]:
        route = self.route
        tx = (
            self.transactions.register(route.primary, list(route.secondaries))
            if route.transactional
            else None
        )
        legs = {node: _Leg(node) for node in route.participants}
        primary = legs[route.primary]

        def drop(leg: _Leg, reason: str) -> None:
            if leg.dropped:
                return
            leg.dropped = True
            if tx is not None:
                tx.cancel_voter(leg.node)
            if leg.call is not None:
                leg.call.cancel()
            logger.warning("replica left the write", extra=log.fields(node=leg.node, reason=reason))

        async def pump() -> None:
            try:
                async for message in rest:
                    for leg in legs.values():
                        if leg.dropped or leg.code is not None:
                            continue
                        try:
                            await asyncio.wait_for(leg.queue.put(message), self.write_timeout)
                        except TimeoutError:
                            drop(leg, "not reading its requests")
            finally:
                for leg in legs.values():
                    if not leg.dropped and leg.code is None:
                        try:
                            await asyncio.wait_for(leg.queue.put(_END), self.write_timeout)
                        except TimeoutError:
                            drop(leg, "not reading its requests")

        async def drive_secondary(leg: _Leg) -> None:
            assert leg.call is not None
            try:
                async for _ in leg.call:
                    pass
                leg.code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                leg.code, leg.details = exc.code(), exc.details() or ""
                if tx is not None:
                    tx.cancel_voter(leg.node)
            except asyncio.CancelledError:
                leg.code = grpc.StatusCode.CANCELLED
                raise

        for leg in legs.values():
            channel = self.channels.channel(leg.node)
            leg.call = channel.stream_stream(self.info.full_name)(
                leg.requests(payloads[leg.node]),
                metadata=self._metadata(leg.node, tx, metadata),
                timeout=timeout,
            )
            if leg is not primary:
                leg.task = asyncio.ensure_future(drive_secondary(leg))
        pump_task = asyncio.ensure_future(pump())
        held: list[bytes] = []
        try:
            try:
                assert primary.call is not None
                async for response in primary.call:
                    if tx is not None and tx.had_votes:
                        held.append(response)
                    else:
                        yield response
                primary.code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                primary.code, primary.details = exc.code(), exc.details() or ""
                if tx is not None:
                    tx.cancel_voter(route.primary)
            await self._settle(legs, drop)
            result = self._result(tx, legs)
            self._count(result)
            if result.updated or result.outdated:
                await self._finalize(finalize, result)
            for response in held:
                yield response
            if primary.code is not grpc.StatusCode.OK:
                from gitquorum.proxy.handler import BackendError

                raise BackendError(primary.code or grpc.StatusCode.UNKNOWN, primary.details)
        finally:
            pump_task.cancel()
            for leg in legs.values():
                if leg.code is None and leg.call is not None:
                    leg.call.cancel()
                if leg.task is not None and not leg.task.done():
                    leg.task.cancel()
            if tx is not None:
                self.transactions.unregister(tx.id)

    async def _settle(self, legs: Mapping[str, _Leg], drop: Callable[[_Leg, str], None]) -> None:
        """Give secondaries a bounded time to finish after the primary did."""
        tasks = [leg.task for leg in legs.values() if leg.task is not None]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=self.write_timeout)
        for leg in legs.values():
            if leg.task in pending:
                drop(leg, "did not finish in time")
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    def _result(self, tx: Transaction | None, legs: Mapping[str, _Leg]) -> WriteResult:
        route = self.route
        targets = frozenset(route.replication_targets)
        primary = legs[route.primary]
        if tx is None:
            if primary.code is grpc.StatusCode.OK:
                return WriteResult(frozenset({route.primary}), targets, "primary-only")
            return WriteResult(frozenset(), frozenset(), "primary-failed")
        if not tx.had_votes:
            # Every ref change on a node is voted on: no vote means nothing changed.
            return WriteResult(frozenset(), frozenset(), "no-votes")
        committed = tx.committed_nodes()
        secondaries = frozenset(route.secondaries)
        if route.primary not in committed:
            return WriteResult(frozenset(), secondaries | targets, "primary-not-committed")
        updated = {route.primary} | {
            node
            for node in secondaries & committed
            if legs[node].code is primary.code and not legs[node].dropped
        }
        outdated = (secondaries - updated) | targets
        reason = "committed" if not (secondaries - updated) else "secondaries-outdated"
        return WriteResult(frozenset(updated), frozenset(outdated), reason)

    def _count(self, result: WriteResult) -> None:
        self.metrics.transactions.labels(result.reason).inc()

    async def _finalize(
        self, finalize: Callable[[WriteResult], Awaitable[None]], result: WriteResult
    ) -> None:
        """Record the outcome before anything more reaches the client.

        Shielded so a client hanging up cannot leave a committed write unrecorded.
        """
        task = asyncio.ensure_future(finalize(result))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), 30)
            raise
        except Unavailable:
            raise
        except Exception as exc:
            if isinstance(exc, Unavailable):
                raise
            from gitquorum.errors import GitquorumError

            if isinstance(exc, GitquorumError):
                raise
            raise Unavailable(f"write could not be recorded: {exc}") from exc

    # -- maintenance and removal ---------------------------------------------------------

    @staticmethod
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
                _requests(payloads[node], _empty()), metadata=outgoing, timeout=timeout
            )
            return [response async for response in call]

        nodes = list(payloads)
        results = await asyncio.gather(*(one(n) for n in nodes), return_exceptions=True)
        for result in results:
            if isinstance(result, grpc.aio.AioRpcError):
                raise _backend_error(result)
            if isinstance(result, BaseException):
                raise result
        first = results[0]
        assert isinstance(first, list)
        for response in first:
            yield response

    @staticmethod
    async def best_effort(
        channels: NodeChannels,
        info: MethodInfo,
        payloads: Mapping[str, bytes],
        metadata: Metadata,
        timeout: float,
    ) -> None:
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
