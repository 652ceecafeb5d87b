"""The raw-bytes stream handler: the proxy's mechanics.

Only the first request message of a call is decoded, to find the target
repository and rewrite it to the chosen node's storage and replica path.
Every other message passes through as bytes. The routing decision comes from
``router`` (policy) and is executed here, through one route function per op
type (and per RPC the proxy treats on its own): reads go through ``reads``
(retried on another replica, hedged), maintenance and removal through
``broadcast``, writes through ``fanout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import message as _message

from gitquorum.cluster.decisions import WriteResult
from gitquorum.cluster.repositories import RepositoryRecord
from gitquorum.config import ReadsConfig
from gitquorum.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unimplemented,
)
from gitquorum.gitaly import repository_pb2
from gitquorum.limits import Admission
from gitquorum.proxy import routing
from gitquorum.proxy.broadcast import best_effort, broadcast
from gitquorum.proxy.channels import NodeChannels, Reach
from gitquorum.proxy.cluster_port import ClusterPort
from gitquorum.proxy.fanout import Fanout, Finalize
from gitquorum.proxy.metrics import ProxyMetrics
from gitquorum.proxy.read_health import ReadHealth
from gitquorum.proxy.reads import Reader
from gitquorum.proxy.routing import MutatorRoute, Route
from gitquorum.proxy.vote_counting import CommitGate, TransactionManager
from gitquorum.wire.finishing import RpcCall, op_label
from gitquorum.wire.paths import validate_repository_path
from gitquorum.wire.registry import MethodInfo, MethodRegistry, Op, Shape

# RPCs that bring a repository into existence: they allocate an id and replica path.
CREATORS = frozenset(
    {
        "/gitaly.RepositoryService/CreateRepository",
        "/gitaly.RepositoryService/CreateRepositoryFromBundle",
    }
)
REPOSITORY_EXISTS = "/gitaly.RepositoryService/RepositoryExists"
REMOVE_REPOSITORY = "/gitaly.RepositoryService/RemoveRepository"
# How long a write waits for its primary's connection before sending anything.
# A connected channel answers at once and a refused connection within
# milliseconds; a node that accepts but never answers (paused) is left to the
# write's own timeouts after this.
PRIMARY_CONNECT_WAIT = 1.0
# How often a write whose primary's connection came back looks whether this
# proxy counts it healthy again (a rare path, bounded by the write's budget).
BACK_HEALTH_POLL = 0.1


def rewrite(
    info: MethodInfo,
    request: _message.Message,
    storage: str,
    replica_path: str,
    *,
    in_place: bool = False,
) -> bytes:
    """The first message as one node must see it: physical storage and replica path.

    ``in_place``: the request was decoded for this call only and nothing reads
    its virtual names afterwards (a read's payloads): rewrite it without a copy.
    Rewriting it again for another node gives that node's payload, since only
    the storage name changes between nodes.
    """
    if in_place:
        copy = request
    else:
        copy = type(request)()
        copy.CopyFrom(request)
    target = info.target_repository(copy)
    # Another repository field in the virtual storage (UserCommitFiles' start
    # repository) names the target (``_check_other_repositories``): it must name
    # the same replica, or the node cannot tell it is the target.
    for other in info.additional_repositories(copy):
        if other.storage_name == target.storage_name:
            other.storage_name = storage
            other.relative_path = replica_path
    target.storage_name = storage
    target.relative_path = replica_path
    return copy.SerializeToString()


def _check_other_repositories(
    info: MethodInfo, request: _message.Message, virtual_storage: str, relative_path: str
) -> None:
    """A second repository of this virtual storage can only be the target itself:
    the replica the node works on holds no other repository."""
    for other in info.additional_repositories(request):
        if other.storage_name != virtual_storage:
            continue  # another Gitaly's address (e.g. a replication source): left alone
        if validate_repository_path(other.relative_path) != relative_path:
            raise Unimplemented(
                f"{info.name}: a second repository other than the target is not supported"
            )


class ProxyHandler(grpc.GenericRpcHandler):
    def __init__(
        self,
        registry: MethodRegistry,
        cluster: ClusterPort,
        channels: NodeChannels,
        transactions: TransactionManager,
        vote_address: Callable[[], str],
        metrics: ProxyMetrics,
        write_timeout: float = 10.0,
        admission: Admission | None = None,
        read_health: ReadHealth | None = None,
    ) -> None:
        self.registry = registry
        self.cluster = cluster
        self.channels = channels
        self.transactions = transactions
        self.vote_address = vote_address
        self.metrics = metrics
        self.write_timeout = write_timeout
        # Drain gate and per-repository concurrency limits (gitquorum.limits).
        self.admission = admission or Admission(what="proxy")
        # Latencies and outliers seen by this proxy's reads (hedging, ejection).
        self.read_health = read_health or ReadHealth(ReadsConfig(), metrics)
        # Method handlers by method name, built on first use (``service``).
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    # -- grpc plumbing -------------------------------------------------------------

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is not None:
            return handler
        info = self.registry.get(method)
        if info is None or info.op is Op.INTERCEPTED:
            return None  # UNIMPLEMENTED, or served by a registered servicer
        # Built once per method, on its first call: it depends on nothing else.
        # Only known methods are kept, so unknown names cannot grow the dict.
        handler = self._handlers[method] = self._method_handler(info)
        return handler

    def _method_handler(self, info: MethodInfo) -> grpc.RpcMethodHandler:
        if info.shape is Shape.UNARY_UNARY:

            async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return await self._guarded_unary(info, request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary)
        if info.shape is Shape.UNARY_STREAM:

            async def unary_stream(
                request: bytes, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[bytes]:
                responses = _closed_when_done(
                    context, self._guarded(info, _single(request), context)
                )
                async for response in responses:
                    yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream)
        if info.shape is Shape.STREAM_UNARY:

            async def stream_unary(
                requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
            ) -> bytes:
                result = b""
                async for response in self._guarded(info, requests, context):
                    result = response
                return result

            return grpc.stream_unary_rpc_method_handler(stream_unary)

        async def stream_stream(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            responses = _closed_when_done(context, self._guarded(info, requests, context))
            async for response in responses:
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream)

    async def _guarded_unary(
        self, info: MethodInfo, request: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        """``_guarded`` for a unary call: awaited, no async generator on the way."""
        metadata = context.invocation_metadata()
        call = RpcCall(
            info.full_name,
            op_label(info),
            context,
            metadata,
            self.metrics.rpc,
            public=True,
            log_after=True,
        )
        call.begin()
        try:
            with self.admission.gate.enter():
                return await self._serve_unary(info, request, context, metadata or (), call.fields)
        except BaseException as exc:
            await call.fail(exc)
            raise
        finally:
            call.finish()

    async def _guarded(
        self, info: MethodInfo, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[bytes, None]:
        """Run one call; turn every failure into a status, log it and count it."""
        call = RpcCall(
            info.full_name,
            op_label(info),
            context,
            context.invocation_metadata(),
            self.metrics.rpc,
            public=True,
        )
        async with call:
            # Refused with UNAVAILABLE once a drain began; counted while in flight.
            with self.admission.gate.enter():
                async for response in self._serve(info, requests, context, call.fields):
                    yield response

    # -- routing -----------------------------------------------------------------------

    async def _serve(
        self,
        info: MethodInfo,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
        fields: dict[str, object],
    ) -> AsyncIterator[bytes]:
        iterator = requests.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            raise InvalidArgument("empty request stream") from None
        request, virtual_storage, relative_path = self._target(info, first, fields)
        # Per-repository concurrency limit, held until the call (and for a
        # mutator its finalizer) is over: a bounded queue, then RESOURCE_EXHAUSTED.
        async with self.admission.slot(
            info.full_name,
            info.op is Op.MUTATOR,
            (virtual_storage, relative_path),
            context.time_remaining(),
        ):
            call = self._call(
                info,
                request,
                iterator,
                context.invocation_metadata() or (),
                context.time_remaining(),
                fields,
                virtual_storage,
                relative_path,
            )
            async for response in self._route(call):
                yield response

    async def _serve_unary(
        self,
        info: MethodInfo,
        first: bytes,
        context: grpc.aio.ServicerContext,
        metadata: Sequence[tuple[str, str | bytes]],
        fields: dict[str, object],
    ) -> bytes:
        """``_serve`` for a unary call; a unary read is awaited, not iterated."""
        request, virtual_storage, relative_path = self._target(info, first, fields)
        timeout = context.time_remaining()
        limiter = self.admission.limiter(info.full_name, info.op is Op.MUTATOR)

        def call(remaining: float | None) -> _Call:
            return self._call(
                info,
                request,
                _NO_MORE_REQUESTS,
                metadata,
                remaining,
                fields,
                virtual_storage,
                relative_path,
            )

        if limiter is None:  # no per-repository limit on this method
            if info.op is Op.ACCESSOR and info.full_name not in _SPECIAL_ROUTES:
                return await self._read_unary(call(timeout))  # one frame less
            return await self._unary_route(call(timeout))
        # As in ``_serve``: held until the call (and a mutator's finalizer) is
        # over; the record is looked up once the slot is ours.
        async with limiter.slot((virtual_storage, relative_path), timeout):
            return await self._unary_route(call(context.time_remaining()))

    def _target(
        self, info: MethodInfo, first: bytes, fields: dict[str, object]
    ) -> tuple[_message.Message, str, str]:
        """The decoded first message and the repository it names, checked."""
        request = info.decode(first)
        target = info.target_repository(request)
        virtual_storage = target.storage_name
        if not virtual_storage:
            raise InvalidArgument("storage name not set")
        if virtual_storage not in self.cluster.virtual_storages():
            raise InvalidArgument(f"virtual storage not found: {virtual_storage!r}")
        relative_path = validate_repository_path(target.relative_path)
        fields.update(virtual_storage=virtual_storage, relative_path=relative_path)
        _check_other_repositories(info, request, virtual_storage, relative_path)
        return request, virtual_storage, relative_path

    def _call(
        self,
        info: MethodInfo,
        request: _message.Message,
        rest: AsyncIterator[bytes],
        metadata: Sequence[tuple[str, str | bytes]],
        timeout: float | None,
        fields: dict[str, object],
        virtual_storage: str,
        relative_path: str,
    ) -> _Call:
        return _Call(
            info=info,
            request=request,
            rest=rest,
            metadata=metadata,
            timeout=timeout,
            fields=fields,
            virtual_storage=virtual_storage,
            relative_path=relative_path,
            repo=self.cluster.lookup(virtual_storage, relative_path),
        )

    async def _unary_route(self, call: _Call) -> bytes:
        if call.info.op is Op.ACCESSOR and call.info.full_name not in _SPECIAL_ROUTES:
            return await self._read_unary(call)
        result = b""
        async for response in self._route(call):
            result = response
        return result

    def _route(self, call: _Call) -> AsyncIterator[bytes]:
        """The route function of this RPC: by name for the RPCs the proxy treats
        on its own, else by op type. Returned, not iterated here: one async
        generator less per call."""
        route = _SPECIAL_ROUTES.get(call.info.full_name) or _ROUTES_BY_OP[call.info.op]
        return route(self, call)

    # -- routes: one per op type, and the RPCs the proxy treats on its own ---------------

    async def _repository_exists(self, call: _Call) -> AsyncIterator[bytes]:
        # Answered from cluster state: a repository exists when it is recorded.
        call.fields["route"] = "intercepted"
        yield repository_pb2.RepositoryExistsResponse(
            exists=call.repo is not None
        ).SerializeToString()

    def _read(self, call: _Call) -> AsyncIterator[bytes]:
        """Returned, not iterated: one async generator less per call."""
        reader, route, payload_for = self._plan_read(call)
        if route.last_resort:
            return self._read_last_resort(call, reader, route, payload_for)
        return reader.run(route.candidates, payload_for, call.rest, call.metadata, call.timeout)

    async def _read_last_resort(
        self,
        call: _Call,
        reader: Reader,
        route: routing.AccessorRoute,
        payload_for: Callable[[str], bytes],
    ) -> AsyncIterator[bytes]:
        candidates, left = await self._answering(call, reader, route)
        async for response in reader.run(candidates, payload_for, call.rest, call.metadata, left):
            yield response

    async def _read_unary(self, call: _Call) -> bytes:
        reader, route, payload_for = self._plan_read(call)
        candidates: Sequence[str] = route.candidates
        timeout = call.timeout
        if route.last_resort:
            candidates, timeout = await self._answering(call, reader, route)
        return await reader.unary(candidates, payload_for, call.metadata, timeout)

    async def _answering(
        self, call: _Call, reader: Reader, route: routing.AccessorRoute
    ) -> tuple[Sequence[str], float | None]:
        """A last-resort read's candidates from the first that answers its check,
        and what is left of the client's deadline after the checks (docs/failover.md)."""
        loop = asyncio.get_running_loop()
        deadline = None if call.timeout is None else loop.time() + call.timeout
        candidates = await reader.answering(
            route.candidates,
            self.read_health.settings.last_resort_timeout,
            "repository unavailable: no healthy, up-to-date replica of "
            f"{call.relative_path!r} (its unhealthy up-to-date replicas did not answer)",
            deadline,
        )
        self.read_health.metrics.read_last_resort.inc()
        self.metrics.read_served(call.virtual_storage, candidates[0])
        if candidates[0] != route.node:
            call.fields["served_by"] = candidates[0]
        return candidates, None if deadline is None else max(0.0, deadline - loop.time())

    def _plan_read(
        self, call: _Call
    ) -> tuple[Reader, routing.AccessorRoute, Callable[[str], bytes]]:
        repo = call.existing("repository not found")
        primary_only = call.info.full_name in routing.FORCE_PRIMARY
        for key, value in call.metadata:
            if key == routing.PRIMARY_ONLY_HEADER and value == "primary-only":
                primary_only = True
                break
        route = routing.route_accessor(
            repo,
            self.cluster.healthy(call.virtual_storage),
            self.cluster.nodes(call.virtual_storage),
            primary_only=primary_only,
            draining=self.cluster.draining(call.virtual_storage),
            ejected=self.read_health.ejected(),
            last_resort=self.read_health.settings.last_resort,
        )
        _describe(call.fields, route)
        if not route.last_resort:  # counted once a replica answered its check
            self.metrics.read_served(call.virtual_storage, route.node)
        info, request, replica_path = call.info, call.request, route.replica_path

        def payload_for(node: str) -> bytes:
            # The decoded request is this read's own: rewritten in place per node.
            return rewrite(info, request, node, replica_path, in_place=True)

        reader = Reader(self.channels, info, self.read_health, call.fields)
        vs, relative_path = call.virtual_storage, call.relative_path
        repository_id = repo.repository_id

        def missing(nodes: Sequence[str]) -> Exception:
            now = self.cluster.lookup(vs, relative_path)
            if now is None or now.repository_id != repository_id:
                return NotFound("repository not found")  # removed meanwhile: absent
            return Unavailable(
                f"repository unavailable: its up-to-date replica of {relative_path!r} is "
                f"missing on disk on {', '.join(sorted(set(nodes)))}"
            )

        reader.on_missing = missing
        return reader, route, payload_for

    async def _maintain(self, call: _Call) -> AsyncIterator[bytes]:
        repo = call.existing("repository not found")
        route = routing.route_maintenance(
            repo,
            self.cluster.healthy(call.virtual_storage),
            self.cluster.nodes(call.virtual_storage),
        )
        _describe(call.fields, route)
        async for response in broadcast(
            self.channels,
            call.info,
            call.payloads(route.nodes, route.replica_path),
            call.rest,
            call.metadata,
            call.timeout,
        ):
            yield response

    async def _remove(self, call: _Call) -> AsyncIterator[bytes]:
        repo = call.existing("repository does not exist")
        route = routing.route_removal(repo, self.cluster.nodes(call.virtual_storage))
        _describe(call.fields, route)
        await self.cluster.remove(call.virtual_storage, repo)
        payloads = call.payloads(route.nodes, route.replica_path)
        await best_effort(self.channels, call.info, payloads, call.metadata, timeout=10.0)
        yield repository_pb2.RemoveRepositoryResponse().SerializeToString()

    async def _create(self, call: _Call) -> AsyncIterator[bytes]:
        if call.repo is not None:
            raise AlreadyExists("repository exists already")
        placement = await self.cluster.place(call.virtual_storage, call.relative_path)
        route = routing.route_creation(
            placement.repository_id,
            placement.replica_path,
            placement.primary,
            placement.assigned,
            self.cluster.healthy(call.virtual_storage),
        )

        async def finalize(result: WriteResult) -> None:
            call.fields["outcome"] = result.reason
            if result.updated:
                await self.cluster.record_creation(
                    call.virtual_storage, call.relative_path, placement, result
                )

        async for response in self._write(call, route, finalize):
            yield response

    async def _mutate(self, call: _Call) -> AsyncIterator[bytes]:
        repo = await self.cluster.ensure_writable(call.existing("repository not found"))
        route = await self._route_reachable(call, repo)
        intent = self.cluster.intent_for(call.virtual_storage, route)
        put = False  # whether the write reached a COMMIT decision (and put its intent)
        put_over = asyncio.Event()  # the put landed or failed: the intent may be settled

        async def before_commit() -> None:
            nonlocal put
            assert intent is not None
            put = True
            try:
                await self.cluster.record_intent(intent)
            finally:
                put_over.set()

        async def finalize(result: WriteResult) -> None:
            if put:
                # A client that hung up while the put was in flight: removing
                # the intent before it lands would leave it standing.
                await put_over.wait()
            call.fields["outcome"] = result.reason
            if result.updated or result.outdated:
                await self.cluster.record_write(
                    call.virtual_storage, route, result, intent if put else None
                )
            elif put and intent is not None:
                await self.cluster.forget_intent(intent)

        gate = before_commit if intent is not None else None
        async for response in self._write(call, route, finalize, gate):
            yield response

    def _route_mutator(self, call: _Call, repo: RepositoryRecord) -> MutatorRoute:
        return routing.route_mutator(
            repo,
            self.cluster.healthy(call.virtual_storage),
            self.cluster.nodes(call.virtual_storage),
        )

    async def _route_reachable(self, call: _Call, repo: RepositoryRecord) -> MutatorRoute:
        """The write's route, once its primary's connection is up.

        A primary whose connection attempt fails has received nothing of the
        write, and no other node has either (no call is opened before this):
        the write waits for the failover, bounded by the client's deadline, and
        goes to the new primary, once — or, when the primary's connection
        comes up first (a node back from a restart before any failover: the
        check this refusal asks for replaces a channel still in its reconnect
        backoff, ``NodeChannels.revive``), to the primary of the record as it
        is then. Anything that fails after a call was opened keeps the
        fan-out's honest answer.
        """
        route = self._route_mutator(call, repo)
        started = time.monotonic()
        budget = call.timeout if call.timeout is not None else self.write_timeout
        reach = await self.channels.connect(route.primary, min(budget, PRIMARY_CONNECT_WAIT))
        if reach is not Reach.REFUSED:
            return route
        unreachable = route.primary
        call.fields["primary_unreachable"] = unreachable
        self.channels.unreachable(unreachable)
        vs = call.virtual_storage
        remaining = budget - (time.monotonic() - started)
        moved = await self._failover_or_back(repo, unreachable, remaining)
        if moved is not None:
            if self.cluster.lookup(vs, call.relative_path) is None:
                raise NotFound("repository not found")
            repo = await self.cluster.ensure_writable(moved)
            route = self._route_mutator(call, repo)
            remaining = budget - (time.monotonic() - started)
            reach = await self.channels.connect(
                route.primary, max(0.0, min(remaining, PRIMARY_CONNECT_WAIT))
            )
        if moved is None or reach is Reach.REFUSED:
            self.metrics.write_retries.labels(vs, "gave-up").inc()
            # Definite: no node received anything of this write.
            raise Unavailable(
                "repository unavailable: its primary cannot be reached and no other "
                "primary was available in time"
            )
        self.metrics.write_retries.labels(vs, "retried").inc()
        call.fields["retried_on"] = route.primary
        return route

    async def _failover_or_back(
        self, repo: RepositoryRecord, unreachable: str, timeout: float
    ) -> RepositoryRecord | None:
        """The record once a failover moved the write on or ``unreachable``'s
        connection came up again, whichever first; None when neither did in time."""
        failover = asyncio.ensure_future(self.cluster.wait_for_failover(repo, unreachable, timeout))
        back = asyncio.ensure_future(self.channels.wait_connected(unreachable, timeout))
        vs = repo.virtual_storage
        try:
            await asyncio.wait({failover, back}, return_when=asyncio.FIRST_COMPLETED)
            if back.done() and back.result():
                # Connected, but the write routes only to a primary healthy for
                # this proxy too: a node refusing both checks the refusal asked
                # for left this proxy's view while the others still count it
                # (no failover comes). Its next answered check brings it back.
                while not failover.done() and unreachable not in self.cluster.healthy(vs):
                    await asyncio.wait({failover}, timeout=BACK_HEALTH_POLL)
            if failover.done():
                return failover.result()
            if back.done() and back.result():
                now = self.cluster.lookup(vs, repo.relative_path)
                if now is None or now.repository_id != repo.repository_id:
                    raise NotFound("repository not found")  # removed meanwhile
                return now
            return await failover  # the reconnection gave up first: the failover's turn
        finally:
            for task in (failover, back):
                task.cancel()
            await asyncio.gather(failover, back, return_exceptions=True)

    def _write(
        self,
        call: _Call,
        route: MutatorRoute,
        finalize: Finalize,
        before_commit: CommitGate | None = None,
    ) -> AsyncIterator[bytes]:
        """The fan-out of a write (returned, not iterated: one async generator less)."""
        _describe(call.fields, route)
        _pin_timestamps(call.request)
        fanout = Fanout(
            channels=self.channels,
            info=call.info,
            route=route,
            transactions=self.transactions,
            vote_address=self.vote_address(),
            metrics=self.metrics,
            write_timeout=self.write_timeout,
        )
        payloads = call.payloads(route.participants, route.replica_path)
        return fanout.run(payloads, call.rest, call.metadata, call.timeout, finalize, before_commit)


@dataclass(slots=True)
class _Call:
    """One routed call: its decoded first message and the repository it names."""

    info: MethodInfo
    request: _message.Message
    rest: AsyncIterator[bytes]  # the requests after the first
    metadata: Sequence[tuple[str, str | bytes]]
    timeout: float | None
    fields: dict[str, object]  # the call's log line
    virtual_storage: str
    relative_path: str
    repo: RepositoryRecord | None  # None: not recorded in the cluster

    def existing(self, missing: str) -> RepositoryRecord:
        if self.repo is None:
            raise NotFound(missing)
        return self.repo

    def payloads(self, nodes: Iterable[str], replica_path: str) -> dict[str, bytes]:
        """The first message as each node must see it."""
        return {node: rewrite(self.info, self.request, node, replica_path) for node in nodes}


_Route = Callable[[ProxyHandler, _Call], AsyncIterator[bytes]]

# RPCs routed on their own, before their op type is looked at.
_SPECIAL_ROUTES: dict[str, _Route] = {
    REPOSITORY_EXISTS: ProxyHandler._repository_exists,
    REMOVE_REPOSITORY: ProxyHandler._remove,
    **dict.fromkeys(CREATORS, ProxyHandler._create),
}
_ROUTES_BY_OP: dict[Op, _Route] = {
    Op.ACCESSOR: ProxyHandler._read,
    Op.MAINTENANCE: ProxyHandler._maintain,
    Op.MUTATOR: ProxyHandler._mutate,
}


def _describe(fields: dict[str, object], route: Route) -> None:
    fields.update(route.describe())


def _pin_timestamps(request: _message.Message) -> None:
    """Give an unset commit/tag ``timestamp`` the proxy's clock.

    Each replica would otherwise take its own clock: when the nodes straddle a
    second, they create different commits, vote differently and the secondaries
    are outvoted for nothing. One timestamp for all keeps their objects identical.
    """
    candidates = [request]
    candidates += [
        value
        for field, value in request.ListFields()
        if field.message_type is not None and not field.is_repeated
    ]
    for message in candidates:
        field = message.DESCRIPTOR.fields_by_name.get("timestamp")
        if (
            field is not None
            and field.message_type is not None
            and field.message_type.full_name == "google.protobuf.Timestamp"
            and not message.HasField("timestamp")
        ):
            message.timestamp.seconds = int(time.time())


async def _single(request: bytes) -> AsyncIterator[bytes]:
    yield request


class _NoMoreRequests:
    """The requests after a unary call's only one: none."""

    def __aiter__(self) -> _NoMoreRequests:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


_NO_MORE_REQUESTS = _NoMoreRequests()


# Closing tasks of cancelled calls, referenced until done (the loop keeps weak ones).
_closing: set[asyncio.Task[None]] = set()


def _closed_when_done(
    context: grpc.aio.ServicerContext, responses: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    """Close a server-streaming call's responses as soon as the call ends.

    When a client goes away while a response is being sent, grpc cancels that
    send, not this generator: left suspended at its ``yield`` until garbage
    collection, it would keep the node's call (and its git process), the
    repository's concurrency slot and the drain gate's count. Closing it runs
    every ``finally`` at once.
    """

    async def close() -> None:
        with contextlib.suppress(RuntimeError):  # still running: it ends by itself
            await responses.aclose()

    def done(_context: object) -> None:
        task = asyncio.ensure_future(close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    context.add_done_callback(done)
    return responses


__all__: Sequence[str] = ("ProxyHandler", "rewrite")
