"""Streaming one mutator's write to its primary and secondaries, as raw bytes.

The same stream goes to the primary and every participating secondary under a
transaction: the client sees only the primary's responses; responses that
follow the first vote are held back until the finalizer has recorded the
outcome in etcd, so nothing is acknowledged that the cluster state does not
know about. The outcome itself is decided by ``cluster.decisions``, and what
the client is told by ``cluster.answers``: a write some replica may have
applied is never answered with a definite failure, only with ``OutcomeUnknown``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import grpc

from gitquorum import log
from gitquorum.cluster.answers import Answer, client_answer
from gitquorum.cluster.decisions import (
    LegState,
    VoterTally,
    VoteTally,
    WriteResult,
    WriteState,
    abandoned_outcome,
    may_hold_decided_update,
    write_outcome,
)
from gitquorum.errors import GitquorumError
from gitquorum.proxy.channels import NodeChannels
from gitquorum.proxy.metrics import ProxyMetrics
from gitquorum.proxy.passthrough import Metadata, backend_error
from gitquorum.proxy.routing import MutatorRoute
from gitquorum.proxy.vote_counting import CommitGate, Transaction, TransactionManager
from gitquorum.wire.callstatus import StatusWatch
from gitquorum.wire.finishing import OutcomeUnknown, is_outcome_unknown
from gitquorum.wire.registry import MethodInfo
from gitquorum.wire.transaction_metadata import COMMITTED, encode_metadata
from gitquorum.wire.transaction_metadata import Transaction as NodeTransaction

logger = log.get("gitquorum.proxy.fanout")
_END = object()
Finalize = Callable[[WriteResult], Awaitable[None]]


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

    def state(self) -> LegState:
        return LegState(self.code.name if self.code is not None else None, self.dropped)


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
    """A mutator's write: one per call, built by the handler from its route."""

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

    def metadata(
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
                    tx.voter_token(node),
                )
            )
        return self.channels.forward_metadata(incoming, extra)

    async def run(
        self,
        payloads: Mapping[str, bytes],
        rest: AsyncIterator[bytes],
        metadata: Metadata,
        timeout: float | None,
        finalize: Finalize,
        before_commit: CommitGate | None = None,
    ) -> AsyncIterator[bytes]:
        tx = (
            self.transactions.register(
                self.route.primary, list(self.route.secondaries), before_commit
            )
            if self.route.transactional
            else None
        )
        write = _Write(self, tx, finalize)
        write.open(payloads, rest, metadata, timeout)
        async for response in write.responses():
            yield response

    def count(self, result: WriteResult) -> None:
        self.metrics.transactions.labels(result.reason).inc()


class _Write:
    """One write in flight: its legs, its transaction, and what the client is owed."""

    def __init__(self, fanout: Fanout, tx: Transaction | None, finalize: Finalize) -> None:
        self.fanout = fanout
        self.route = fanout.route
        self.write_timeout = fanout.write_timeout
        self.tx = tx
        self.finalize = finalize
        self.legs = {node: _Leg(node) for node in self.route.participants}
        self.primary = self.legs[self.route.primary]
        self.ended = False  # set once the call is over: nothing left for pump() to cancel
        self.outcome_known = False
        self.background: list[asyncio.Future[None]] = []  # the pump and the give-up

    # -- streaming -----------------------------------------------------------------------

    def open(
        self,
        payloads: Mapping[str, bytes],
        rest: AsyncIterator[bytes],
        metadata: Metadata,
        timeout: float | None,
    ) -> None:
        """Start every node's call and the pump that feeds them the client's stream."""
        info = self.fanout.info
        for leg in self.legs.values():
            channel = self.fanout.channels.channel(leg.node)
            leg.call = channel.stream_stream(info.full_name)(
                leg.requests(payloads[leg.node]),
                metadata=self.fanout.metadata(leg.node, self.tx, metadata),
                timeout=timeout,
            )
            leg.watch = StatusWatch(leg.call)
            if leg is not self.primary:
                leg.task = asyncio.ensure_future(self.drive_secondary(leg))
        self.background.append(asyncio.ensure_future(self.pump(rest)))
        # A primary that stopped answering (it did not vote within the vote timeout,
        # or the cluster found it unhealthy: a paused or partitioned node) can no
        # longer commit anything: its call is given up instead of holding the
        # client until the client's deadline.
        if self.tx is not None:
            self.background.append(asyncio.ensure_future(self.give_up_when_lost(self.tx)))

    async def responses(self) -> AsyncIterator[bytes]:
        """The primary's responses; those after the first vote once the outcome is recorded."""
        tx, primary = self.tx, self.primary
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
                await primary.fail(exc)
                self.report_unreachable(primary)
                if tx is not None:
                    tx.cancel_voter(primary.node)
            except asyncio.CancelledError:
                if not self.given_up():
                    raise
            await self.settle()
            if tx is not None:
                # Every secondary has finished or been dropped: freeze who got a
                # COMMIT before the outcome is read from it (as an abandoned
                # write does). A vote still waiting, at the intent gate say,
                # now gets STOP instead of a COMMIT the outcome would not know.
                tx.stop()
            state = self.state()
            result = write_outcome(state)
            self.outcome_known = True
            self.fanout.count(result)
            # Also for a write that changed nothing: its finalizer removes the
            # intent it may have put.
            await _record(self.finalize, result)
            for response in held:
                yield response
            if primary.code is not grpc.StatusCode.OK:
                raise self.primary_error(client_answer(state), result)
        finally:
            self.close()

    def primary_error(self, answer: Answer, result: WriteResult) -> Exception:
        """What the client gets for a primary that failed: its own error only when
        nothing was applied anywhere (``cluster.answers``), else an unknown outcome."""
        code, details = self.primary.code or grpc.StatusCode.UNKNOWN, self.primary.details
        if answer is Answer.PRIMARY or is_outcome_unknown(code, details):
            # A definite failure, or the node's own "outcome unknown": relayed as is.
            return backend_error(code, details)
        logger.warning(
            "write outcome unknown to the client",
            extra=log.fields(
                node=self.primary.node,
                code=code.name,
                details=details,
                outcome=result.reason,
                updated=sorted(result.updated),
            ),
        )
        # The node's own words (its address, grpc's text) are on the log line above.
        return OutcomeUnknown(
            f"the primary failed after the replicas agreed on the update ({code.name})"
        )

    def report_unreachable(self, leg: _Leg) -> None:
        """A node that could not be reached (refused, reset, gone) is checked now."""
        if leg.code is grpc.StatusCode.UNAVAILABLE and not is_outcome_unknown(
            leg.code, leg.details
        ):
            self.fanout.channels.unreachable(leg.node)

    def given_up(self) -> bool:
        """Whether the primary's call ended because it was given up (then recorded so)."""
        # grpc.aio raises CancelledError from a call cancelled locally: only a
        # give-up is handled, never a cancellation of this task.
        task = asyncio.current_task()
        if not self.primary.abandoned or (task is not None and task.cancelling()):
            return False
        self.primary.code = grpc.StatusCode.UNAVAILABLE
        # Unknown outcome or definite failure: ``primary_error`` tells them apart.
        self.primary.details = f"primary node {self.primary.node} did not vote in time"
        return True

    def drop(self, leg: _Leg, reason: str) -> None:
        """Take a replica out of the write: its votes no longer count, its call ends."""
        if leg.dropped:
            return
        leg.dropped = True
        if self.tx is not None:
            self.tx.cancel_voter(leg.node)
        if leg.call is not None:
            leg.call.cancel()
        logger.warning("replica left the write", extra=log.fields(node=leg.node, reason=reason))

    async def pump(self, rest: AsyncIterator[bytes]) -> None:
        """Copy the client's requests to every leg still in the write."""
        try:
            async for message in rest:
                for leg in self.legs.values():
                    if not leg.dropped and leg.code is None:
                        await self.feed(leg, message)
        except Exception as exc:
            # The client's stream broke (or the call already ended): the nodes
            # must not mistake that for the end of the requests and act on a
            # truncated stream, so their calls are cancelled instead.
            for leg in self.legs.values():
                if leg.code is None and leg.call is not None and not self.ended:
                    self.drop(leg, f"client stream failed: {type(exc).__name__}")
            return
        # Only a complete client stream ends the nodes' streams.
        for leg in self.legs.values():
            if not leg.dropped and leg.code is None:
                await self.feed(leg, _END)

    async def feed(self, leg: _Leg, item: object) -> None:
        try:
            await asyncio.wait_for(leg.queue.put(item), self.write_timeout)
        except TimeoutError:
            # A call that ended meanwhile (it stopped reading because it was
            # done) holds what it did: dropping it would count it out of a
            # write it may have committed.
            if leg.code is None:
                self.drop(leg, "not reading its requests")

    async def drive_secondary(self, leg: _Leg) -> None:
        """Read a secondary's responses (the client never sees them) until its call ends."""
        assert leg.call is not None
        try:
            async for _ in leg.call:
                pass
            leg.code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            await leg.fail(exc)
            self.report_unreachable(leg)
            if self.tx is not None:
                self.tx.cancel_voter(leg.node)
        except asyncio.CancelledError:
            leg.code = grpc.StatusCode.CANCELLED
            raise

    async def give_up_when_lost(self, tx: Transaction) -> None:
        await tx.primary_unresponsive.wait()
        primary = self.primary
        if primary.code is None and primary.call is not None:
            primary.abandoned = True
            logger.warning(
                "giving up on the primary",
                extra=log.fields(node=primary.node, reason="not answering"),
            )
            primary.call.cancel()

    async def settle(self) -> None:
        """Give secondaries a bounded time to finish after the primary did.

        A failed primary decides the write: every secondary that cannot hold
        what the quorum decided (it did not commit every decided subtransaction,
        and none can be decided any more without the primary) is cancelled at
        once rather than holding the client for ``write_timeout``. Only the
        secondaries that committed every decided subtransaction get the bounded
        time: they are just finishing, and ``write_outcome`` keeps the write they hold.
        """
        if self.primary.code is not grpc.StatusCode.OK:
            votes = _tally(self.tx) if self.tx is not None else None
            for leg in self.legs.values():
                if leg.task is None or leg.code is not None:
                    continue
                if not may_hold_decided_update(votes, leg.node):
                    self.drop(leg, "the primary failed")
        tasks = [leg.task for leg in self.legs.values() if leg.task is not None]
        if not tasks:
            return
        # Secondaries the cluster finds unhealthy meanwhile are dropped at once.
        watcher = asyncio.ensure_future(self.drop_lost(self.tx)) if self.tx is not None else None
        try:
            _done, pending = await asyncio.wait(tasks, timeout=self.write_timeout)
        finally:
            if watcher is not None:
                watcher.cancel()
        for leg in self.legs.values():
            if leg.task in pending:
                self.drop(leg, "did not finish in time")
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    async def drop_lost(self, tx: Transaction) -> None:
        while True:
            tx.secondary_lost.clear()
            for node in tx.lost_secondaries:
                leg = self.legs.get(node)
                if leg is not None and leg.code is None:
                    self.drop(leg, "unhealthy")
            await tx.secondary_lost.wait()

    def close(self) -> None:
        """End everything the write started, whatever way the call ended."""
        self.ended = True
        for task in self.background:
            task.cancel()
        for leg in self.legs.values():
            if leg.code is None and leg.call is not None:
                leg.call.cancel()
            # End every leg's request stream: grpc.aio's consumer of a call the
            # node already ended would otherwise wait on the queue forever and be
            # garbage-collected pending ("Task was destroyed but it is pending").
            with contextlib.suppress(asyncio.QueueFull):
                leg.queue.put_nowait(_END)
            if leg.task is not None and not leg.task.done():
                leg.task.cancel()
        if self.tx is not None:
            if not self.outcome_known and self.tx.had_votes:
                self.record_abandoned(self.tx)
            self.fanout.transactions.unregister(self.tx.id)

    # -- outcome -------------------------------------------------------------------------

    def state(self) -> WriteState:
        """What the outcome depends on, frozen now."""
        return WriteState(
            primary=self.route.primary,
            secondaries=self.route.secondaries,
            replication_targets=self.route.replication_targets,
            legs={node: leg.state() for node, leg in self.legs.items()},
            votes=_tally(self.tx) if self.tx is not None else None,
        )

    def record_abandoned(self, tx: Transaction) -> None:
        """Record a write whose call ended before its outcome was known.

        The client hung up, or its deadline passed, while the replicas were
        voting or committing: some of them may hold the update. Left unrecorded,
        replicas would differ at equal generations for good. Stopping the
        transaction freezes who received a COMMIT (every waiting or later vote
        now gets STOP and aborts), so the outcome can be decided now and
        recorded in the background.
        """
        tx.stop()
        result = abandoned_outcome(self.state())
        self.fanout.count(result)
        logger.warning(
            "write abandoned mid-transaction",
            extra=log.fields(
                reason=result.reason,
                updated=sorted(result.updated),
                outdated=sorted(result.outdated),
            ),
        )
        task = asyncio.ensure_future(_record_in_background(self.finalize, result))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)


def _tally(tx: Transaction) -> VoteTally:
    return VoteTally(
        subtransactions=len(tx.subtransactions),
        decided=tx.decided,
        changed_nothing=tx.changed_nothing,
        refused_commit=tx.gate_failed,
        voters={
            node: VoterTally(
                committed=state.committed,
                votes_cast=state.votes_cast,
                last_vote_committed=state.last_phase == COMMITTED,
                failed=state.failed,
            )
            for node, state in tx.voters.items()
        },
    )


async def _record(finalize: Finalize, result: WriteResult) -> None:
    """Record the outcome before anything more reaches the client.

    Shielded so a client hanging up cannot leave a committed write unrecorded.
    Whatever stops the recording (etcd unreachable, the replicas that took the
    write outdated meanwhile by a concurrent write or failover, anything else),
    the replicas may hold the write: its outcome is unknown to the client, never
    a refusal (FAILED_PRECONDITION would claim nothing was applied; seen in the
    chaos tests: a read then returned it).
    """
    task = asyncio.ensure_future(finalize(result))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(task), 30)
        raise
    except Exception as exc:
        logger.warning("recording the write failed", extra=log.fields(error=repr(exc)))
        # The cluster's own refusals say why; etcd's and crashes' text stays in the log.
        reason = (
            exc.message
            if isinstance(exc, GitquorumError) and exc.for_clients
            else "the cluster state is unavailable"
        )
        raise OutcomeUnknown(f"the write could not be recorded: {reason}") from exc


async def _record_in_background(finalize: Finalize, result: WriteResult) -> None:
    try:
        async with asyncio.timeout(30):
            await finalize(result)
    except Exception:
        logger.exception("recording an abandoned write failed")


# Background recordings of abandoned writes, referenced until they finish.
_BACKGROUND: set[asyncio.Task[None]] = set()
