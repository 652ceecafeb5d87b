"""Reads that outlive a failing or stalled replica.

An accessor goes to the route's first replica. If that node fails before
any response message went to the client (``read_rules.retryable_read_failure``:
a refused or reset connection, the node going away), the same read goes to
the route's next replica, within the client's deadline; a unary read not
answered within its hedge delay also goes to the next replica, and the first
answer wins (the other call is cancelled). A node that answers that its
replica is missing on disk (``read_rules.replica_missing``) sends the read to
the next replica too. Never tried again: anything after a response message
was forwarded, and every other answer a node gave itself (NOT_FOUND,
INVALID_ARGUMENT, ...). Mutators never come here.

Payloads still pass as bytes. A request-streaming read keeps the requests it
forwarded in a ``RequestLog`` until its first response went out, so that
another replica can be sent the same stream; after that the log keeps nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gitquorum.cluster.read_rules import (
    late_hedge_delay,
    read_timed_out,
    replica_missing,
    retryable_read_failure,
)
from gitquorum.errors import Unavailable
from gitquorum.proxy.channels import NodeChannels
from gitquorum.proxy.passthrough import Metadata, PassThrough, backend_error
from gitquorum.proxy.read_health import ReadHealth
from gitquorum.wire.finishing import BackendError
from gitquorum.wire.registry import MethodInfo, Shape

# Requests kept for a replay before the first response at most; a read whose
# requests (a fetch's "have" lines) pass this before any answer is not tried
# again, rather than held in memory.
REPLAY_LIMIT = 4 * 1024 * 1024

PayloadFor = Callable[[str], bytes]


class Reader:
    """One accessor call over the replicas of its route, in order."""

    def __init__(
        self,
        channels: NodeChannels,
        info: MethodInfo,
        health: ReadHealth,
        fields: dict[str, object],
    ) -> None:
        self.channels = channels
        self.info = info
        self.health = health
        self.fields = fields  # the call's log line
        # A last-resort read (replicas the health consensus calls unhealthy):
        # what the client is told when none of them answers; no hedging.
        self.refusal = ""
        self.hedging = True
        # What the client is told when the last replica tried was missing on
        # disk (given the nodes whose replicas were); None: the node's answer.
        self.on_missing: Callable[[Sequence[str]], Exception] | None = None
        self.missing: list[str] = []

    async def answering(
        self,
        candidates: Sequence[str],
        within: float,
        refusal: str,
        deadline: float | None = None,
    ) -> list[str]:
        """A last-resort read's candidates from the first that answers a health
        check within ``within`` seconds (tried in order, so that every proxy
        reads the same replica), the ones not checked yet after it as
        fallbacks; those that failed their check are left out.

        The check, not a bound on the read, is what tells a live node from a
        paused or unreachable one: the read itself then runs under the client's
        deadline (``deadline``, loop time, also bounds the checks), however
        long its work takes. It is not hedged: the replicas no check vouches
        for are not verified either, and a hedge could read the other of two
        that differ. ``refusal`` is the UNAVAILABLE status when no candidate
        answers, or when the read's node goes away before answering."""
        self.refusal = refusal
        self.hedging = False
        loop = asyncio.get_running_loop()
        metadata = self.channels.forward_metadata(())
        request = health_pb2.HealthCheckRequest()
        for index, node in enumerate(candidates):
            timeout = within if deadline is None else min(within, deadline - loop.time())
            if timeout <= 0:
                break
            stub = health_pb2_grpc.HealthStub(self.channels.channel(node))
            try:
                answer = await stub.Check(request, metadata=metadata, timeout=timeout)
            except grpc.aio.AioRpcError:
                continue
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return list(candidates[index:])
        raise Unavailable(refusal)

    def _failure(self, code: grpc.StatusCode, details: str) -> Exception:
        """What the client is told when the read ends with a node's failure: a
        last-resort read whose node went away before answering gets the
        refusal, a replica missing on disk what ``on_missing`` says, anything
        else the node's own status."""
        if self.refusal and retryable_read_failure(code.name, details):
            return Unavailable(self.refusal)
        if self.on_missing is not None and replica_missing(code.name, details):
            return self.on_missing(self.missing)
        return backend_error(code, details)

    def _movable(self, node: str, code: grpc.StatusCode, details: str) -> bool:
        """Whether a read that failed on ``node`` may go to the next replica:
        the node failed (``retryable_read_failure``, a strike against it), or
        it answered that its replica is missing on disk."""
        if retryable_read_failure(code.name, details):
            self.health.failed(node, code.name)
            return True
        if self.on_missing is None or not replica_missing(code.name, details):
            return False
        # Counted neither way for the node's outlier strikes: it answered, but
        # a node whose disk is gone (not mounted) answers this for everything.
        self.health.metrics.read_replicas_missing.labels(node).inc()
        self.missing.append(node)
        self.fields["replica_missing"] = list(self.missing)
        return True

    def run(
        self,
        candidates: Sequence[str],
        payload_for: PayloadFor,
        rest: AsyncIterator[bytes],
        metadata: Metadata,
        timeout: float | None,
    ) -> AsyncIterator[bytes]:
        if self.info.shape is Shape.UNARY_UNARY:
            return self._unary(candidates, payload_for, metadata, timeout)
        return self._stream(candidates, payload_for, rest, metadata, timeout)

    def _retried(self, failed: str) -> None:
        self.health.metrics.read_retries.inc()
        retried = self.fields.setdefault("retried_from", [])
        assert isinstance(retried, list)
        retried.append(failed)

    # -- unary reads: retried and hedged -------------------------------------------------

    async def _unary(
        self,
        candidates: Sequence[str],
        payload_for: PayloadFor,
        metadata: Metadata,
        timeout: float | None,
    ) -> AsyncIterator[bytes]:
        yield await self.unary(candidates, payload_for, metadata, timeout)

    async def unary(
        self,
        candidates: Sequence[str],
        payload_for: PayloadFor,
        metadata: Metadata,
        timeout: float | None,
    ) -> bytes:
        """A unary read, awaited: the answer of the first replica that gives one."""
        if len(candidates) == 1:
            return await self._alone(candidates[0], payload_for, metadata, timeout)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        outgoing = self.channels.forward_metadata(metadata)
        untried = list(candidates)
        running: list[_Attempt] = []
        wake: asyncio.Future[None] = loop.create_future()
        hedge_at: float | None = None  # when the hedge goes out; None: not planned
        hedged = False  # one hedge per read
        delay: float | None = None  # the planned hedge's delay
        over_budget = False  # the hedge was refused by the budget once: the late one is not
        timer: asyncio.TimerHandle | None = None

        def signal(_: object = None) -> None:
            if not wake.done():
                wake.set_result(None)

        def start(node: str) -> None:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            call = self.channels.unary_unary(node, self.info.full_name)(
                payload_for(node), metadata=outgoing, timeout=left
            )
            running.append(_Attempt(node, call, loop.time()))

        def plan_hedge(attempt: _Attempt) -> float | None:
            """When to hedge the attempt that is now alone (None: never)."""
            nonlocal delay, over_budget
            over_budget = False
            if hedged or not untried or not self.hedging:
                return None
            delay = self.health.hedge_delay(self.info.full_name, attempt.node)
            if delay is None or (deadline is not None and attempt.started + delay >= deadline):
                return None
            return attempt.started + delay

        start(untried.pop(0))
        hedge_at = plan_hedge(running[0])
        try:
            while True:
                for attempt in [a for a in running if a.call.done()]:
                    running.remove(attempt)
                    try:
                        response: bytes = await attempt.call
                    except grpc.aio.AioRpcError as exc:
                        code, details = exc.code(), exc.details() or ""
                        if not self._movable(attempt.node, code, details):
                            self._node_answered(attempt.node, code.name)
                            raise self._failure(code, details) from None
                        if running:
                            continue  # the hedge (or the first call) may still answer
                        if not untried or (deadline is not None and loop.time() >= deadline):
                            raise self._failure(code, details) from None
                        self._retried(attempt.node)
                        start(untried.pop(0))
                        hedge_at = plan_hedge(running[0])
                        continue
                    self._answered(attempt, running, loop.time())
                    return response
                if hedge_at is None and len(running) == 1:
                    # No hedge planned and one call out: wait for it alone, without
                    # a wake-up future and the loop turns its done-callback costs.
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await running[0].call
                    continue
                wake = loop.create_future()
                for attempt in running:
                    if not attempt.watched:  # told of its end from now on
                        attempt.call.add_done_callback(signal)
                        attempt.watched = True
                if any(a.call.done() for a in running):
                    continue  # finished before the new future: no signal for it
                if hedge_at is not None and untried:
                    timer = loop.call_at(hedge_at, signal)
                await wake
                if timer is not None:
                    timer.cancel()
                    timer = None
                if hedge_at is not None and untried and loop.time() >= hedge_at:
                    if not over_budget and not self.health.spend_hedge():
                        # Over the hedge budget: wait longer, then hedge anyway
                        # (a stalled node must not hold reads to their deadline).
                        over_budget = True
                        assert delay is not None
                        hedge_at = running[0].started + late_hedge_delay(delay)
                        if deadline is not None and hedge_at >= deadline:
                            hedge_at = None
                        continue
                    if over_budget and not self.health.late_hedge(
                        self.info.full_name, running[0].node
                    ):
                        hedge_at = None  # slow in general and both budgets spent
                        continue
                    hedge_at, hedged = None, True
                    self.health.metrics.read_hedges.labels("sent").inc()
                    self.fields["hedged_to"] = untried[0]
                    start(untried.pop(0))
        finally:
            if timer is not None:
                timer.cancel()
            timed_out = _at_deadline(loop, deadline)
            for attempt in running:
                attempt.call.cancel()
                if timed_out:
                    # Ended by the client's deadline with no word from the node
                    # (the proxy's call is cancelled before the node's own
                    # DEADLINE_EXCEEDED arrives): a timeout strike.
                    self.health.failed(attempt.node, "DEADLINE_EXCEEDED")

    async def _alone(
        self, node: str, payload_for: PayloadFor, metadata: Metadata, timeout: float | None
    ) -> bytes:
        """``unary`` with one replica to go to (a ``primary-only`` read, a
        repository with one up-to-date replica): nothing to retry on or hedge
        to, so the same outcome as the general loop without its machinery."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        call = self.channels.unary_unary(node, self.info.full_name)(
            payload_for(node), metadata=self.channels.forward_metadata(metadata), timeout=timeout
        )
        try:
            response: bytes = await call
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if not self._movable(node, code, details):
                self._node_answered(node, code.name)
            raise self._failure(code, details) from None
        except BaseException:
            call.cancel()
            if _at_deadline(loop, None if timeout is None else started + timeout):
                self.health.failed(node, "DEADLINE_EXCEEDED")  # as in ``unary``
            raise
        self._answered(_Attempt(node, call, started), [], loop.time())
        return response

    def _node_answered(self, node: str, code: str) -> None:
        """A node's own status: an answer, except a timeout (the node said nothing)."""
        if read_timed_out(code):
            self.health.failed(node, code)
        else:
            self.health.succeeded(node)

    def _answered(self, winner: _Attempt, running: list[_Attempt], now: float) -> None:
        self.health.succeeded(winner.node)
        self.health.answered_in(self.info.full_name, winner.node, now - winner.started)
        if winner.node != self.fields.get("node"):
            self.fields["served_by"] = winner.node
        if "hedged_to" in self.fields and winner.node == self.fields["hedged_to"]:
            self.health.metrics.read_hedges.labels("won").inc()
            # Calls started before the winner had not answered within their hedge
            # delay and still have not: a stall strike each. Their time so far is
            # kept as a sample (a lower bound): leaving the slow reads out of the
            # history would lower the p95 and hedge ever more reads.
            for attempt in running:
                if attempt.started < winner.started:
                    self.health.answered_in(
                        self.info.full_name, attempt.node, now - attempt.started
                    )
                    self.health.failed(attempt.node, "hedge lost")

    # -- streaming reads: retried until the first response went out ----------------------

    async def _stream(
        self,
        candidates: Sequence[str],
        payload_for: PayloadFor,
        rest: AsyncIterator[bytes],
        metadata: Metadata,
        timeout: float | None,
    ) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        requests = RequestLog(rest) if self.info.shape.value.startswith("stream") else None
        passthrough = PassThrough(self.channels, self.info)
        last = len(candidates) - 1
        for index, node in enumerate(candidates):
            replay = requests.replay() if requests is not None else _NO_REQUESTS
            left = None if deadline is None else max(0.0, deadline - loop.time())
            responded = False
            try:
                async for response in passthrough.call(
                    node, payload_for(node), replay, metadata, left
                ):
                    if not responded:
                        responded = True
                        if requests is not None:
                            requests.forwarded_response()
                    yield response
            except BackendError as exc:
                if responded:
                    # The client got part of an answer: no other replica can
                    # finish it (said on the log line: the one failure of a
                    # read that a retry cannot hide).
                    self.fields["cut_mid_stream"] = True
                    raise
                if not self._movable(node, exc.code, exc.details):
                    self._node_answered(node, exc.code.name)
                    raise self._failure(exc.code, exc.details) from None
                if (
                    index == last
                    or (deadline is not None and loop.time() >= deadline)
                    or (requests is not None and not requests.replayable)
                ):
                    raise self._failure(exc.code, exc.details) from None
                self._retried(node)
                continue
            except (asyncio.CancelledError, GeneratorExit):
                if not responded and _at_deadline(loop, deadline):
                    self.health.failed(node, "DEADLINE_EXCEEDED")  # as for unary reads
                raise
            finally:
                replay.stop()
            self.health.succeeded(node)
            if node != self.fields.get("node"):
                self.fields["served_by"] = node
            return


def _at_deadline(loop: asyncio.AbstractEventLoop, deadline: float | None) -> bool:
    # The server cancels the call a little before or after the deadline this
    # proxy computed from the client's: within a few milliseconds counts.
    return deadline is not None and loop.time() >= deadline - 0.05


@dataclass
class _Attempt:
    node: str
    call: grpc.aio.UnaryUnaryCall
    started: float
    watched: bool = False  # its done-callback wakes the read up


# -- request streams kept for a replay -----------------------------------------------------


class RequestLog:
    """The requests of one streaming read, shared by the attempts that send them.

    One pull from the client at a time, shielded: grpc cancels a failed call's
    request feeder, which must not lose the message it was waiting for (the
    next attempt gets it). Until the first response went out every request is
    kept (up to ``REPLAY_LIMIT`` bytes) so that another attempt can replay
    them; afterwards the one live attempt consumes them and nothing is kept.
    """

    def __init__(self, requests: AsyncIterator[bytes], limit: int = REPLAY_LIMIT) -> None:
        self._requests = requests.__aiter__()
        self._kept: deque[bytes] = deque()
        self._first = 0  # the index of _kept[0] in the stream
        self._size = 0
        self._limit = limit
        self._ended = False
        self._pull: asyncio.Future[None] | None = None
        self._keeping = True
        self.replayable = True

    def forwarded_response(self) -> None:
        """A response went to the client: no attempt will replay these requests."""
        self._keeping = False

    def replay(self) -> _Replay:
        return _Replay(self)

    async def _fetch(self) -> None:
        try:
            message = await self._requests.__anext__()
        except StopAsyncIteration:
            self._ended = True
            return
        self._kept.append(message)
        if self._keeping:
            self._size += len(message)
            if self._size > self._limit:
                self.replayable = False

    async def get(self, index: int, reader: _Replay) -> bytes | None:
        """Request number ``index`` (None after the last), for a live reader."""
        while reader.live:
            offset = index - self._first
            if 0 <= offset < len(self._kept):
                message = self._kept[offset]
                if not (self._keeping and self.replayable):
                    # One reader is left: drop what it has read.
                    for _ in range(offset + 1):
                        self._kept.popleft()
                    self._first = index + 1
                return message
            if self._ended or offset < 0:
                return None
            pull = self._pull
            if pull is not None and pull.done():
                pull.result()  # the client's stream failed: so does this reader
                pull = None
            if pull is None:
                pull = self._pull = asyncio.ensure_future(self._fetch())
            await asyncio.shield(pull)
        return None


class _Replay:
    """The request stream of one attempt: a log's requests from the first on."""

    def __init__(self, log: RequestLog | None) -> None:
        self._log = log
        self._next = 0
        self.live = True

    def stop(self) -> None:
        """The attempt is over: a feeder still reading gets the end of the stream."""
        self.live = False

    def __aiter__(self) -> _Replay:
        return self

    async def __anext__(self) -> bytes:
        if self._log is None or not self.live:
            raise StopAsyncIteration
        message = await self._log.get(self._next, self)
        if message is None or not self.live:
            raise StopAsyncIteration
        self._next += 1
        return message


_NO_REQUESTS = _Replay(None)
