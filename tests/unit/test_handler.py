"""The proxy's handler against an in-memory cluster port and recording nodes.

No etcd: ``FakeCluster`` implements the ``ClusterPort`` protocol over
``RepositoryRecord``s built here. Each node is a real grpc.aio server on
127.0.0.1 that records what it receives (and, for writes, votes in-process on
the proxy's transaction), and the handler is served by a real grpc.aio server
the tests call as a client would, with raw bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import pytest
from google.protobuf import message as _message

from gitquorum.cluster.decisions import WriteResult
from gitquorum.cluster.intents import WriteIntent
from gitquorum.cluster.repositories import CreationPlan, RepositoryRecord
from gitquorum.gitaly import (
    operations_pb2,
    ref_pb2,
    repository_pb2,
    shared_pb2,
    transaction_pb2,
)
from gitquorum.proxy import routing
from gitquorum.proxy.routing import MutatorRoute
from gitquorum.proxy.vote_counting import TransactionManager
from gitquorum.wire.registry import MethodInfo, MethodRegistry, Shape
from tests.unit.proxy.handler_parts import running_proxy

VS = "default"
NODES = ("n1", "n2", "n3")
PATH = "group/project.git"
TRANSACTION_KEY = "gitaly-reference-transaction"
COMMITTED_PHASE = transaction_pb2.VoteTransactionRequest.COMMITTED_PHASE
REGISTRY = MethodRegistry.from_descriptors()

EXISTS = "/gitaly.RepositoryService/RepositoryExists"
CREATE = "/gitaly.RepositoryService/CreateRepository"
REMOVE = "/gitaly.RepositoryService/RemoveRepository"
WRITE_REF = "/gitaly.RepositoryService/WriteRef"
OPTIMIZE = "/gitaly.RepositoryService/OptimizeRepository"
READ = "/gitaly.RefService/FindDefaultBranchName"
COMMIT_FILES = "/gitaly.OperationService/UserCommitFiles"


def record(
    replicas: Mapping[str, int],
    generation: int = 1,
    primary: str = "n1",
    repository_id: int = 7,
    relative_path: str = PATH,
) -> RepositoryRecord:
    return RepositoryRecord(
        repository_id=repository_id,
        virtual_storage=VS,
        relative_path=relative_path,
        primary=primary,
        assigned=NODES,
        generation=generation,
        replicas=tuple(sorted(replicas.items())),
    )


class FakeCluster:
    """``ClusterPort`` in memory: records in a dict, health set by the test."""

    def __init__(self) -> None:
        self.records: dict[str, RepositoryRecord] = {}
        self.unhealthy: set[str] = set()
        self.writes: list[tuple[MutatorRoute, WriteResult]] = []
        self.creations: list[tuple[str, CreationPlan, WriteResult]] = []
        self.removed: list[int] = []
        self.next_id = 100

    def virtual_storages(self) -> Sequence[str]:
        return [VS]

    def nodes(self, virtual_storage: str) -> Sequence[str]:
        return list(NODES) if virtual_storage == VS else []

    def healthy(self, virtual_storage: str) -> frozenset[str]:
        return frozenset(self.nodes(virtual_storage)) - self.unhealthy

    def draining(self, virtual_storage: str) -> frozenset[str]:
        return frozenset()

    def lookup(self, virtual_storage: str, relative_path: str) -> RepositoryRecord | None:
        return self.records.get(relative_path) if virtual_storage == VS else None

    async def ensure_writable(self, repo: RepositoryRecord) -> RepositoryRecord:
        return repo

    async def place(self, virtual_storage: str, relative_path: str) -> CreationPlan:
        self.next_id += 1
        return CreationPlan(virtual_storage, relative_path, self.next_id, "n2", NODES)

    async def record_creation(
        self, virtual_storage: str, relative_path: str, plan: CreationPlan, result: WriteResult
    ) -> None:
        self.creations.append((relative_path, plan, result))

    async def record_write(
        self,
        virtual_storage: str,
        route: MutatorRoute,
        result: WriteResult,
        intent: WriteIntent | None = None,
    ) -> None:
        self.writes.append((route, result))

    def intent_for(self, virtual_storage: str, route: MutatorRoute) -> WriteIntent | None:
        return None

    async def record_intent(self, intent: WriteIntent) -> None:
        raise AssertionError("no intents without intent_for")

    async def forget_intent(self, intent: WriteIntent) -> None:
        raise AssertionError("no intents without intent_for")

    async def remove(self, virtual_storage: str, repo: RepositoryRecord) -> None:
        self.removed.append(repo.repository_id)
        self.records = {
            p: r for p, r in self.records.items() if r.repository_id != repo.repository_id
        }


@dataclass
class Received:
    node: str
    method: str
    first: bytes
    metadata: dict[str, str | bytes]

    def decoded(self) -> _message.Message:
        info = REGISTRY.get(self.method)
        assert info is not None
        return info.decode(self.first)

    def transaction(self) -> dict[str, object]:
        raw = self.metadata[TRANSACTION_KEY]
        decoded = json.loads(base64.b64decode(raw))
        assert isinstance(decoded, dict)
        return decoded


@dataclass
class Nodes:
    """Storage nodes as test doubles: record every call, vote on every write."""

    transactions: TransactionManager
    received: list[Received] = field(default_factory=list)

    def handler(self, node: str) -> grpc.GenericRpcHandler:
        nodes = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                info = REGISTRY.get(details.method)
                return None if info is None else nodes.method_handler(node, info)

        return Handler()

    def method_handler(self, node: str, info: MethodInfo) -> grpc.RpcMethodHandler:
        async def answer(first: bytes, context: grpc.aio.ServicerContext) -> None:
            metadata = dict(context.invocation_metadata() or ())
            self.received.append(Received(node, info.full_name, first, metadata))
            if TRANSACTION_KEY in metadata:
                tx = json.loads(base64.b64decode(metadata[TRANSACTION_KEY]))
                digest = hashlib.sha1(b"the same update everywhere").digest()
                await self.transactions.vote(tx["id"], tx["node"], digest, COMMITTED_PHASE)

        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await answer(request, context)
            return b""

        async def server_stream(
            request: bytes, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            await answer(request, context)
            yield b""

        async def first_of(requests: AsyncIterator[bytes]) -> bytes:
            messages = [message async for message in requests]
            return messages[0]

        async def client_stream(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> bytes:
            await answer(await first_of(requests), context)
            return b""

        async def bidi(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            await answer(await first_of(requests), context)
            yield b""

        if info.shape is Shape.UNARY_UNARY:
            return grpc.unary_unary_rpc_method_handler(unary)
        if info.shape is Shape.UNARY_STREAM:
            return grpc.unary_stream_rpc_method_handler(server_stream)
        if info.shape is Shape.STREAM_UNARY:
            return grpc.stream_unary_rpc_method_handler(client_stream)
        return grpc.stream_stream_rpc_method_handler(bidi)

    def of(self, method: str) -> list[Received]:
        return [r for r in self.received if r.method == method]


@dataclass
class Proxy:
    cluster: FakeCluster
    nodes: Nodes
    channel: grpc.aio.Channel

    async def unary(
        self,
        method: str,
        request: _message.Message,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> bytes:
        call = self.channel.unary_unary(method)
        response: bytes = await call(request.SerializeToString(), metadata=metadata, timeout=10)
        return response

    async def stream_unary(self, method: str, requests: Sequence[_message.Message]) -> bytes:
        call = self.channel.stream_unary(method)
        response: bytes = await call(iter([r.SerializeToString() for r in requests]), timeout=10)
        return response


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    transactions = TransactionManager(vote_timeout=5.0)
    nodes = Nodes(transactions)
    cluster = FakeCluster()
    async with running_proxy(nodes.handler, NODES, cluster, transactions=transactions) as running:
        yield Proxy(cluster, nodes, running.channel)


def repository(relative_path: str = PATH, storage: str = VS) -> shared_pb2.Repository:
    return shared_pb2.Repository(storage_name=storage, relative_path=relative_path)


def _names(received: Iterator[Received] | list[Received]) -> list[str]:
    return sorted(r.node for r in received)


# -- routing ---------------------------------------------------------------------------


async def test_a_read_goes_to_a_healthy_up_to_date_replica(proxy: Proxy) -> None:
    repo = record({"n1": 1, "n2": 1, "n3": 0})  # n3 is outdated
    proxy.cluster.records[PATH] = repo
    proxy.cluster.unhealthy = {"n2"}
    for _ in range(6):
        await proxy.unary(READ, ref_pb2.FindDefaultBranchNameRequest(repository=repository()))
    reads = proxy.nodes.of(READ)
    assert _names(reads) == ["n1"] * 6
    request = reads[0].decoded()
    assert request.repository.storage_name == "n1"  # type: ignore[attr-defined]
    assert request.repository.relative_path == repo.replica_path  # type: ignore[attr-defined]


async def test_reads_spread_over_the_up_to_date_replicas(proxy: Proxy) -> None:
    proxy.cluster.records[PATH] = record({"n1": 1, "n2": 1, "n3": 0})
    for _ in range(40):
        await proxy.unary(READ, ref_pb2.FindDefaultBranchNameRequest(repository=repository()))
    assert set(_names(proxy.nodes.of(READ))) == {"n1", "n2"}


async def test_the_primary_only_header_reads_from_the_primary(proxy: Proxy) -> None:
    proxy.cluster.records[PATH] = record({"n1": 1, "n2": 1, "n3": 1}, primary="n3")
    header = [(routing.PRIMARY_ONLY_HEADER, "primary-only")]
    for _ in range(6):
        await proxy.unary(
            READ, ref_pb2.FindDefaultBranchNameRequest(repository=repository()), header
        )
    assert _names(proxy.nodes.of(READ)) == ["n3"] * 6


async def test_maintenance_goes_to_every_healthy_replica(proxy: Proxy) -> None:
    # n2 is outdated but holds a replica; n3 is unhealthy.
    repo = record({"n1": 2, "n2": 1, "n3": 2}, generation=2)
    proxy.cluster.records[PATH] = repo
    proxy.cluster.unhealthy = {"n3"}
    await proxy.unary(OPTIMIZE, repository_pb2.OptimizeRepositoryRequest(repository=repository()))
    calls = proxy.nodes.of(OPTIMIZE)
    assert _names(calls) == ["n1", "n2"]
    for call in calls:
        sent = call.decoded().repository  # type: ignore[attr-defined]
        assert (sent.storage_name, sent.relative_path) == (call.node, repo.replica_path)
    assert proxy.cluster.writes == []  # generations unchanged


async def test_a_write_goes_to_the_primary_and_up_to_date_healthy_secondaries(
    proxy: Proxy,
) -> None:
    repo = record({"n1": 1, "n2": 1, "n3": 0}, primary="n2")  # n3 is outdated
    proxy.cluster.records[PATH] = repo
    await proxy.unary(
        WRITE_REF,
        repository_pb2.WriteRefRequest(repository=repository(), ref=b"HEAD", revision=b"main"),
    )
    calls = proxy.nodes.of(WRITE_REF)
    assert _names(calls) == ["n1", "n2"]
    primaries = {call.node: call.transaction()["primary"] for call in calls}
    assert primaries == {"n1": False, "n2": True}
    assert len({call.transaction()["id"] for call in calls}) == 1  # one transaction
    for call in calls:
        sent = call.decoded().repository  # type: ignore[attr-defined]
        assert (sent.storage_name, sent.relative_path) == (call.node, repo.replica_path)
    # The finalizer recorded who took the write, and who must catch up.
    [(route, result)] = proxy.cluster.writes
    assert (route.primary, route.secondaries, route.replication_targets) == ("n2", ("n1",), ("n3",))
    assert (result.updated, result.outdated, result.reason) == (
        frozenset({"n1", "n2"}),
        frozenset({"n3"}),
        "committed",
    )


async def test_a_creator_writes_to_the_placed_nodes_and_records_the_repository(
    proxy: Proxy,
) -> None:
    proxy.cluster.unhealthy = {"n3"}
    await proxy.unary(CREATE, repository_pb2.CreateRepositoryRequest(repository=repository()))
    calls = proxy.nodes.of(CREATE)
    assert _names(calls) == ["n1", "n2"]
    assert {c.node: c.transaction()["primary"] for c in calls} == {"n1": False, "n2": True}
    [(path, plan, result)] = proxy.cluster.creations
    assert path == PATH
    assert {c.decoded().repository.relative_path for c in calls} == {plan.replica_path}  # type: ignore[attr-defined]
    assert (result.updated, result.outdated) == (frozenset({"n1", "n2"}), frozenset({"n3"}))


async def test_remove_repository_drops_the_record_then_every_replica(proxy: Proxy) -> None:
    repo = record({"n1": 1, "n2": 1, "n3": 0})
    proxy.cluster.records[PATH] = repo
    await proxy.unary(REMOVE, repository_pb2.RemoveRepositoryRequest(repository=repository()))
    assert proxy.cluster.removed == [repo.repository_id]
    assert _names(proxy.nodes.of(REMOVE)) == list(NODES)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await proxy.unary(REMOVE, repository_pb2.RemoveRepositoryRequest(repository=repository()))
    assert failed.value.code() is grpc.StatusCode.NOT_FOUND


# -- rewriting the first message -------------------------------------------------------


async def test_another_repository_field_naming_the_target_is_rewritten_too(proxy: Proxy) -> None:
    repo = record({"n1": 1, "n2": 1, "n3": 1})
    proxy.cluster.records[PATH] = repo
    header = operations_pb2.UserCommitFilesRequestHeader(
        repository=repository(),
        start_repository=repository(),
        branch_name=b"main",
        commit_message=b"message",
    )
    await proxy.stream_unary(COMMIT_FILES, [operations_pb2.UserCommitFilesRequest(header=header)])
    calls = proxy.nodes.of(COMMIT_FILES)
    assert _names(calls) == list(NODES)
    for call in calls:
        sent = call.decoded().header  # type: ignore[attr-defined]
        for repo_field in (sent.repository, sent.start_repository):
            assert (repo_field.storage_name, repo_field.relative_path) == (
                call.node,
                repo.replica_path,
            )


async def test_a_repository_of_another_storage_is_left_alone(proxy: Proxy) -> None:
    proxy.cluster.records[PATH] = record({"n1": 1, "n2": 1, "n3": 1})
    elsewhere = repository("other/place.git", storage="another-gitaly")
    header = operations_pb2.UserCommitFilesRequestHeader(
        repository=repository(),
        start_repository=elsewhere,
        branch_name=b"main",
        commit_message=b"message",
    )
    await proxy.stream_unary(COMMIT_FILES, [operations_pb2.UserCommitFilesRequest(header=header)])
    for call in proxy.nodes.of(COMMIT_FILES):
        assert call.decoded().header.start_repository == elsewhere  # type: ignore[attr-defined]


# -- errors and what the proxy answers itself ------------------------------------------


async def test_repository_exists_is_answered_from_cluster_state(proxy: Proxy) -> None:
    proxy.cluster.records[PATH] = record({"n1": 1, "n2": 1, "n3": 1})
    for path, exists in ((PATH, True), ("group/missing.git", False)):
        raw = await proxy.unary(
            EXISTS, repository_pb2.RepositoryExistsRequest(repository=repository(path))
        )
        assert repository_pb2.RepositoryExistsResponse.FromString(raw).exists is exists
    assert proxy.nodes.received == []  # no node was asked


@pytest.mark.parametrize(
    ("method", "request_message", "existing", "code"),
    [
        pytest.param(
            READ,
            ref_pb2.FindDefaultBranchNameRequest(repository=repository(storage="nowhere")),
            True,
            grpc.StatusCode.INVALID_ARGUMENT,
            id="unknown virtual storage",
        ),
        pytest.param(
            READ,
            ref_pb2.FindDefaultBranchNameRequest(repository=repository()),
            False,
            grpc.StatusCode.NOT_FOUND,
            id="read of a missing repository",
        ),
        pytest.param(
            OPTIMIZE,
            repository_pb2.OptimizeRepositoryRequest(repository=repository()),
            False,
            grpc.StatusCode.NOT_FOUND,
            id="maintenance of a missing repository",
        ),
        pytest.param(
            WRITE_REF,
            repository_pb2.WriteRefRequest(repository=repository(), ref=b"HEAD", revision=b"x"),
            False,
            grpc.StatusCode.NOT_FOUND,
            id="write to a missing repository",
        ),
        pytest.param(
            CREATE,
            repository_pb2.CreateRepositoryRequest(repository=repository()),
            True,
            grpc.StatusCode.ALREADY_EXISTS,
            id="creator on an existing repository",
        ),
    ],
)
async def test_errors_are_mapped_to_a_status_without_reaching_a_node(
    proxy: Proxy,
    method: str,
    request_message: _message.Message,
    existing: bool,
    code: grpc.StatusCode,
) -> None:
    if existing:
        proxy.cluster.records[PATH] = record({"n1": 1, "n2": 1, "n3": 1})
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await proxy.unary(method, request_message)
    assert failed.value.code() is code
    assert proxy.nodes.received == []
