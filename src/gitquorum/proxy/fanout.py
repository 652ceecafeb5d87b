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
from gitquorum.cluster.errors import WriteToOutdatedReplicas
from gitquorum.errors import Unavailable
from gitquorum.proxy.channels import NodeChannels
from gitquorum.proxy.metrics import ProxyMetrics
from gitquorum.proxy.routes import MutatorRoute
from gitquorum.proxy.state import WriteResult
from gitquorum.proxy.transactions import Transaction, TransactionManager
from gitquorum.wire.callstatus import StatusWatch
from gitquorum.wire.finishing import BackendError
from gitquorum.wire.registry import MethodInfo, Shape
from gitquorum.wire.transaction_metadata import COMMITTED, encode_metadata
from gitquorum.wire.transaction_metadata import Transaction as NodeTransaction

logger = log.get("gitquorum.proxy.fanout")
_END = object()
Metadata = Sequence[tuple[str, str | bytes]]


def _backend_error(exc: grpc.aio.AioRpcError) -> Exception:
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
                    _requests(first, rest), metadata=outgoing, timeout=timeout
                )
                watch = StatusWatch(call)
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            if watch is None:
                raise _backend_error(exc) from None
            code, details = await watch.resolve(exc.code(), exc.details() or "")
            raise BackendError(code, details) from None
        finally:
            # Abandoned mid-stream (the client went away): end the node's call
            # now, so its git process dies now, not when the call is collected.
            if call is not None and not call.done():
                call.cancel()


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
    # The primary's call, given up because the transaction counts it as failed.
    abandoned: bool = False
    watch: StatusWatch | None = None

    def requests(self, first: bytes) -> _LegRequests:
        return _LegRequests(first, self)

    async def fail(self, exc: grpc.aio.AioRpcError) -> None:
        """Record the node's final status (not grpc.aio's write race, see StatusWatch)."""
        code, details = exc.code(), exc.details() or ""
        if self.watch is not None:
            code, details = await self.watch.resolve(code, details)
        self.code, self.details = code, details


class _LegRequests:
    """The requests one node receives: the first message, then the shared stream.

    A plain async iterator rather than an async generator: grpc.aio cancels its
    consumer mid-``queue.get()`` when a call ends early, and an async generator
    finalized in that state logs "aclose(): asynchronous generator is already
    running" errors.
    """

    def __init__(self, first: bytes, leg: _Leg) -> None:
        self._first: bytes | None = first
        self._leg = leg

    def __aiter__(self) -> _LegRequests:
        return self

    async def __anext__(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        item = await self._leg.queue.get()
        if item is _END:
            raise StopAsyncIteration
        assert isinstance(item, bytes)
        return item


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

    def _metadata(
        self, node: str, tx: Transaction | None, incoming: Metadata
    ) -> list[tuple[str, str | bytes]]:
        extra: list[tuple[str, str]] = []
        if tx is not None:
            extra = encode_metadata(
                NodeTransaction(
                    tx.id,
                    node,
                    node == self.route.primary,
                    # tls://host:port from a TLS proxy (server.py); plain host:port is tcp.
                    self.vote_address
                    if "://" in self.vote_address
                    else f"tcp://{self.vote_address}",
                    tx.token,
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

        ended = False  # set once the call is over: nothing left for pump() to cancel

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
            except Exception as exc:
                # The client's stream broke (or the call already ended): the nodes
                # must not mistake that for the end of the requests and act on a
                # truncated stream, so their calls are cancelled instead.
                for leg in legs.values():
                    if leg.code is None and leg.call is not None and not ended:
                        drop(leg, f"client stream failed: {type(exc).__name__}")
                return
            # Only a complete client stream ends the nodes' streams.
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
                await leg.fail(exc)
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
            leg.watch = StatusWatch(leg.call)
            if leg is not primary:
                leg.task = asyncio.ensure_future(drive_secondary(leg))
        pump_task = asyncio.ensure_future(pump())
        # A primary that stopped answering (it did not vote within the vote timeout,
        # or the cluster found it unhealthy: a paused or partitioned node) can no
        # longer commit anything: its call is given up instead of holding the
        # client until the client's deadline.
        give_up = (
            asyncio.ensure_future(self._give_up_when_lost(tx, primary)) if tx is not None else None
        )
        held: list[bytes] = []
        outcome_known = False
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
                await primary.fail(exc)
                if tx is not None:
                    tx.cancel_voter(route.primary)
            except asyncio.CancelledError:
                # grpc.aio raises CancelledError from a call cancelled locally: only
                # a give-up is handled here, never a cancellation of this task.
                task = asyncio.current_task()
                if not primary.abandoned or (task is not None and task.cancelling()):
                    raise
                primary.code = grpc.StatusCode.UNAVAILABLE
                primary.details = (
                    f"primary node {route.primary} did not vote in time; "
                    "the write's outcome is unknown"
                )
            await self._settle(legs, drop, tx)
            result = self._result(tx, legs)
            outcome_known = True
            self._count(result)
            if result.updated or result.outdated:
                await self._finalize(finalize, result)
            for response in held:
                yield response
            if primary.code is not grpc.StatusCode.OK:
                raise BackendError(primary.code or grpc.StatusCode.UNKNOWN, primary.details)
        finally:
            ended = True
            pump_task.cancel()
            if give_up is not None:
                give_up.cancel()
            for leg in legs.values():
                if leg.code is None and leg.call is not None:
                    leg.call.cancel()
                # End every leg's request stream: grpc.aio's consumer of a call the
                # node already ended would otherwise wait on the queue forever and be
                # garbage-collected pending ("Task was destroyed but it is pending").
                with contextlib.suppress(asyncio.QueueFull):
                    leg.queue.put_nowait(_END)
                if leg.task is not None and not leg.task.done():
                    leg.task.cancel()
            if tx is not None:
                if not outcome_known and tx.had_votes:
                    self._record_abandoned(tx, finalize)
                self.transactions.unregister(tx.id)

    @staticmethod
    async def _give_up_when_lost(tx: Transaction, primary: _Leg) -> None:
        await tx.primary_unresponsive.wait()
        if primary.code is None and primary.call is not None:
            primary.abandoned = True
            logger.warning(
                "giving up on the primary",
                extra=log.fields(node=primary.node, reason="not answering"),
            )
            primary.call.cancel()

    async def _settle(
        self,
        legs: Mapping[str, _Leg],
        drop: Callable[[_Leg, str], None],
        tx: Transaction | None,
    ) -> None:
        """Give secondaries a bounded time to finish after the primary did.

        A failed primary decides the write: every secondary that cannot hold
        what the quorum decided (it did not commit every decided subtransaction,
        and none can be decided any more without the primary) is cancelled at
        once rather than holding the client for ``write_timeout``. Only the
        secondaries that committed every decided subtransaction get the bounded
        time: they are just finishing, and ``_result`` keeps the write they hold.
        """
        if legs[self.route.primary].code is not grpc.StatusCode.OK:
            decided = _decided(tx)
            for leg in legs.values():
                if leg.task is None or leg.code is not None:
                    continue
                if tx is None or decided == 0 or tx.voters[leg.node].committed < decided:
                    drop(leg, "the primary failed")
        tasks = [leg.task for leg in legs.values() if leg.task is not None]
        if not tasks:
            return
        # Secondaries the cluster finds unhealthy meanwhile are dropped at once.
        watcher = asyncio.ensure_future(self._drop_lost(tx, legs, drop)) if tx is not None else None
        try:
            _done, pending = await asyncio.wait(tasks, timeout=self.write_timeout)
        finally:
            if watcher is not None:
                watcher.cancel()
        for leg in legs.values():
            if leg.task in pending:
                drop(leg, "did not finish in time")
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    @staticmethod
    async def _drop_lost(
        tx: Transaction, legs: Mapping[str, _Leg], drop: Callable[[_Leg, str], None]
    ) -> None:
        while True:
            tx.secondary_lost.clear()
            for node in tx.lost_secondaries:
                leg = legs.get(node)
                if leg is not None and leg.code is None:
                    drop(leg, "unhealthy")
            await tx.secondary_lost.wait()

    def _result(self, tx: Transaction | None, legs: Mapping[str, _Leg]) -> WriteResult:
        route = self.route
        targets = frozenset(route.replication_targets)
        primary = legs[route.primary]
        if tx is None:
            if primary.code is grpc.StatusCode.OK:
                return WriteResult(frozenset({route.primary}), targets, "primary-only")
            return WriteResult(frozenset(), frozenset(), "primary-failed")
        if not tx.had_votes or tx.changed_nothing:
            # Every ref change on a node is voted on: no vote (or only the
            # closing zero vote) means nothing changed.
            return WriteResult(frozenset(), frozenset(), "no-votes")
        committed = tx.committed_nodes()
        secondaries = frozenset(route.secondaries)
        if route.primary not in committed:
            if primary.code is not grpc.StatusCode.OK:
                failed = self._primary_failed(tx, legs, secondaries, targets)
                if failed is not None:
                    return failed
            return WriteResult(frozenset(), secondaries | targets, "primary-not-committed")
        updated = {route.primary} | {
            node
            for node in secondaries & committed
            if legs[node].code is primary.code and not legs[node].dropped
        }
        outdated = (secondaries - updated) | targets
        reason = "committed" if not (secondaries - updated) else "secondaries-outdated"
        return WriteResult(frozenset(updated), frozenset(outdated), reason)

    def _primary_failed(
        self,
        tx: Transaction,
        legs: Mapping[str, _Leg],
        secondaries: frozenset[str],
        targets: frozenset[str],
    ) -> WriteResult | None:
        """The outcome when the primary's call failed, if it can be known for sure.

        Marking every secondary outdated (the general rule) would leave a
        repository whose primary died mid-write without any valid primary, i.e.
        unavailable until that node returns. Two cases are certain instead:

        * no subtransaction was decided: the primary's vote is part of every
          decision, so no replica received a COMMIT and none changed;
        * some were: a secondary whose call ended after it committed every
          decided subtransaction and whose last vote, in every subtransaction,
          was a committed-phase one (cast only after applying the update) holds
          exactly the decided update. Those secondaries move to the next
          generation; the primary, which may or may not have applied it, becomes
          outdated and is repaired by replication. The client still gets the primary's
          error: the write's outcome is unknown to it, and it is now kept.
        """
        decided = _decided(tx)
        if decided == 0:
            return WriteResult(frozenset(), frozenset(), "primary-failed-before-commit")
        holders = frozenset(
            node
            for node in secondaries
            if not legs[node].dropped and legs[node].code is not None and _holds(tx, node, decided)
        )
        if not holders:
            return None
        outdated = (secondaries - holders) | targets | {self.route.primary}
        return WriteResult(holders, frozenset(outdated), "primary-failed-after-commit")

    def _record_abandoned(
        self, tx: Transaction, finalize: Callable[[WriteResult], Awaitable[None]]
    ) -> None:
        """Record a write whose call ended before its outcome was known.

        The client hung up, or its deadline passed, while the replicas were
        voting or committing: some of them may hold the update. Left unrecorded,
        replicas would differ at equal generations for good. Stopping the
        transaction freezes who received a COMMIT (every waiting or later vote
        now gets STOP and aborts), so the outcome can be decided now and
        recorded in the background.
        """
        tx.stop()
        result = self._abandoned_result(tx)
        self._count(result)
        logger.warning(
            "write abandoned mid-transaction",
            extra=log.fields(
                reason=result.reason,
                updated=sorted(result.updated),
                outdated=sorted(result.outdated),
            ),
        )
        if not (result.updated or result.outdated):
            return

        async def record() -> None:
            try:
                async with asyncio.timeout(30):
                    await finalize(result)
            except Exception:
                logger.exception("recording an abandoned write failed")

        task = asyncio.ensure_future(record())
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    def _abandoned_result(self, tx: Transaction) -> WriteResult:
        """Who holds an abandoned write, from the frozen transaction.

        Nobody received a COMMIT: nothing changed. Otherwise the replicas that
        provably applied the decided update (``_holds``, as in ``_primary_failed``
        but the primary included) move on, and the others are outdated. If none
        provably holds it, the primary stays the reference and every secondary
        is outdated.
        """
        route = self.route
        targets = frozenset(route.replication_targets)
        participants = frozenset(route.participants)
        if tx.changed_nothing or not any(state.committed for state in tx.voters.values()):
            return WriteResult(frozenset(), frozenset(), "abandoned-before-commit")
        decided = _decided(tx)
        holders = frozenset(node for node in participants if _holds(tx, node, decided))
        if not holders:
            return WriteResult(
                frozenset(), frozenset(route.secondaries) | targets, "primary-not-committed"
            )
        return WriteResult(holders, (participants - holders) | targets, "abandoned-after-commit")

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
        except WriteToOutdatedReplicas as exc:
            # The replicas applied the write but it cannot be recorded (a concurrent
            # write or failover outdated them meanwhile): its outcome is unknown to
            # the client, never a refusal (FAILED_PRECONDITION would claim nothing
            # was applied; seen in the chaos tests: a read then returned it).
            raise Unavailable(f"write could not be recorded: {exc}") from exc
        except Exception as exc:
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


# Background recordings of abandoned writes, referenced until they finish.
_BACKGROUND: set[asyncio.Task[None]] = set()


def _holds(tx: Transaction, node: str, decided: int) -> bool:
    """``node`` provably applied exactly the decided update: it committed every
    decided subtransaction, voted in every one, and its last vote was cast in the
    committed phase, i.e. after its update was applied."""
    state = tx.voters[node]
    return (
        decided > 0
        and state.committed == decided
        and state.votes_cast == len(tx.subtransactions)
        and state.last_phase == COMMITTED
    )


def _decided(tx: Transaction | None) -> int:
    """How many subtransactions were decided (committed); they form a prefix."""
    if tx is None:
        return 0
    return sum(1 for sub in tx.subtransactions if sub.winner is not None)


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator
