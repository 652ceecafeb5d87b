"""Reads that outlive a failing or stalled replica: the real handler, scripted nodes.

Each node is a real grpc.aio server on 127.0.0.1 whose answer the test
scripts (answer, refuse connections, fail, answer NOT_FOUND, hang, fail after
a first response message); the handler is served by a real grpc.aio server
that the tests call as a client would. The repository has two up-to-date
replicas, n1 and n2 (n3 is outdated), and n2 is drained, so every read goes
to n1 first and to n2 only if n1 fails, is hedged or is ejected.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import grpc
import pytest
from prometheus_client import CollectorRegistry

from gitquorum.cluster.repositories import CreationPlan, RepositoryRecord
from gitquorum.config import ReadsConfig
from gitquorum.gitaly import blob_pb2, commit_pb2, shared_pb2, ssh_pb2
from gitquorum.proxy.metrics import ProxyMetrics
from gitquorum.proxy.read_health import ReadHealth
from gitquorum.wire.registry import MethodInfo, MethodRegistry, Shape
from tests.unit.proxy.handler_parts import running_proxy

VS = "default"
NODES = ("n1", "n2", "n3")
PATH = "group/project.git"
REGISTRY = MethodRegistry.from_descriptors()
FIND_COMMIT = "/gitaly.CommitService/FindCommit"
GET_BLOBS = "/gitaly.BlobService/GetBlobs"
UPLOAD_PACK = "/gitaly.SSHService/SSHUploadPack"
WAIT = 10.0  # every poll's deadline


class FakeCluster:
    """Just enough ``ClusterPort`` for reads: one repository, n2 drained."""

    def __init__(self) -> None:
        self.record = RepositoryRecord(
            repository_id=7,
            virtual_storage=VS,
            relative_path=PATH,
            primary="n1",
            assigned=NODES,
            generation=1,
            replicas=(("n1", 1), ("n2", 1), ("n3", 0)),
        )

    def virtual_storages(self) -> Sequence[str]:
        return [VS]

    def nodes(self, virtual_storage: str) -> Sequence[str]:
        return list(NODES)

    def healthy(self, virtual_storage: str) -> frozenset[str]:
        return frozenset(NODES)

    def draining(self, virtual_storage: str) -> frozenset[str]:
        return frozenset({"n2"})

    def lookup(self, virtual_storage: str, relative_path: str) -> RepositoryRecord | None:
        return self.record if relative_path == PATH else None

    async def ensure_writable(self, repo: RepositoryRecord) -> RepositoryRecord:
        return repo

    async def place(self, virtual_storage: str, relative_path: str) -> CreationPlan:
        raise AssertionError("reads only")

    async def record_creation(self, *args: object) -> None:
        raise AssertionError("reads only")

    async def record_write(self, *args: object) -> None:
        raise AssertionError("reads only")

    def intent_for(self, *args: object) -> None:
        raise AssertionError("reads only")

    async def record_intent(self, *args: object) -> None:
        raise AssertionError("reads only")

    async def forget_intent(self, *args: object) -> None:
        raise AssertionError("reads only")

    async def remove(self, *args: object) -> None:
        raise AssertionError("reads only")


# What a scripted node does with a call: answer, fail, or hang.
ANSWER, UNAVAILABLE, NOT_FOUND, HANG, ONE_THEN_FAIL = (
    "answer",
    "unavailable",
    "not-found",
    "hang",
    "one-then-fail",
)
MISSING = "missing"  # the replica is missing on the node's disk


@dataclass
class Nodes:
    """Scripted storage nodes that record every request message they read."""

    script: dict[str, str] = field(default_factory=lambda: dict.fromkeys(NODES, ANSWER))
    received: dict[str, list[list[bytes]]] = field(default_factory=lambda: {n: [] for n in NODES})
    cancelled: list[str] = field(default_factory=list)
    cancel_seen: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when a node failed a call: lets a client send its next request only then.
    failed: asyncio.Event = field(default_factory=asyncio.Event)
    # Run by a node just before it answers that its replica is missing.
    before_missing: Callable[[], None] = lambda: None

    def handler(self, node: str) -> grpc.GenericRpcHandler:
        nodes = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                info = REGISTRY.get(details.method)
                return None if info is None else nodes.method_handler(node, info)

        return Handler()

    async def _behave(
        self, node: str, messages: list[bytes], context: grpc.aio.ServicerContext
    ) -> None:
        self.received[node].append(messages)
        behaviour = self.script[node]
        if behaviour == UNAVAILABLE:
            self.failed.set()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "node going away")
        if behaviour == NOT_FOUND:
            await context.abort(grpc.StatusCode.NOT_FOUND, "commit not found")
        if behaviour == MISSING:  # what storage/locator.py answers
            self.before_missing()
            await context.abort(grpc.StatusCode.NOT_FOUND, "repository not found")
        if behaviour == HANG:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(node)
                self.cancel_seen.set()
                raise

    def method_handler(self, node: str, info: MethodInfo) -> grpc.RpcMethodHandler:
        answer = f"from {node}".encode()

        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await self._behave(node, [request], context)
            return answer

        async def server_stream(
            request: bytes, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            if self.script[node] == ONE_THEN_FAIL:
                self.received[node].append([request])
                yield answer
                await context.abort(grpc.StatusCode.UNAVAILABLE, "node going away")
            await self._behave(node, [request], context)
            yield answer
            yield answer

        async def bidi(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            iterator = requests.__aiter__()
            messages = [await iterator.__anext__()]
            if self.script[node] != UNAVAILABLE:
                # A failing node goes away after the first message; the others
                # read the whole stream before answering.
                messages += [message async for message in iterator]
            await self._behave(node, messages, context)
            yield answer

        if info.shape is Shape.UNARY_UNARY:
            return grpc.unary_unary_rpc_method_handler(unary)
        if info.shape is Shape.UNARY_STREAM:
            return grpc.unary_stream_rpc_method_handler(server_stream)
        return grpc.stream_stream_rpc_method_handler(bidi)

    def calls(self, node: str) -> int:
        return len(self.received[node])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Proxy:
    nodes: Nodes
    servers: dict[str, grpc.aio.Server]
    channel: grpc.aio.Channel
    registry: CollectorRegistry
    clock: Clock
    health: ReadHealth
    cluster: FakeCluster

    async def find_commit(self) -> bytes:
        request = commit_pb2.FindCommitRequest(repository=repository(), revision=b"main")
        call = self.channel.unary_unary(FIND_COMMIT)
        answer: bytes = await call(request.SerializeToString(), timeout=WAIT)
        return answer

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def repository() -> shared_pb2.Repository:
    return shared_pb2.Repository(storage_name=VS, relative_path=PATH)


SETTINGS = ReadsConfig(outlier_failures=3, outlier_ejection_time=30.0)


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    nodes = Nodes()
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry)
    clock = Clock()
    health = ReadHealth(SETTINGS, metrics, clock=clock)
    cluster = FakeCluster()
    async with running_proxy(
        nodes.handler, NODES, cluster, metrics=metrics, read_health=health
    ) as running:
        yield Proxy(nodes, running.servers, running.channel, registry, clock, health, cluster)


# -- a node that fails before answering: the read goes to another replica -----------------


async def test_a_node_refusing_connections_has_its_unary_read_served_by_another(
    proxy: Proxy,
) -> None:
    await proxy.servers["n1"].stop(None)
    assert await proxy.find_commit() == b"from n2"
    assert proxy.metric("gitquorum_read_retries_total") == 1


async def test_a_node_refusing_connections_has_its_streaming_read_served_by_another(
    proxy: Proxy,
) -> None:
    await proxy.servers["n1"].stop(None)
    request = blob_pb2.GetBlobsRequest(repository=repository())
    call = proxy.channel.unary_stream(GET_BLOBS)(request.SerializeToString(), timeout=WAIT)
    assert [message async for message in call] == [b"from n2", b"from n2"]
    [[sent]] = proxy.nodes.received["n2"]
    assert blob_pb2.GetBlobsRequest.FromString(sent).repository.storage_name == "n2"


async def test_a_request_stream_is_replayed_whole_to_the_next_replica(proxy: Proxy) -> None:
    # n1 reads the first message and goes away; the client sends the rest only
    # after that, so the next replica must get the first message again and the
    # rest from the client.
    proxy.nodes.script["n1"] = UNAVAILABLE
    first = ssh_pb2.SSHUploadPackRequest(repository=repository()).SerializeToString()
    rest = [
        ssh_pb2.SSHUploadPackRequest(stdin=b"want %d\n" % i).SerializeToString() for i in (1, 2)
    ]

    async def requests() -> AsyncIterator[bytes]:
        yield first
        await proxy.nodes.failed.wait()
        for message in rest:
            yield message

    call = proxy.channel.stream_stream(UPLOAD_PACK)(requests(), timeout=WAIT)
    assert [message async for message in call] == [b"from n2"]
    [[n1_first]] = proxy.nodes.received["n1"]
    [[n2_first, *n2_rest]] = proxy.nodes.received["n2"]
    assert ssh_pb2.SSHUploadPackRequest.FromString(n1_first).repository.storage_name == "n1"
    assert ssh_pb2.SSHUploadPackRequest.FromString(n2_first).repository.storage_name == "n2"
    assert n2_rest == rest
    assert proxy.metric("gitquorum_read_retries_total") == 1


# -- never retried -----------------------------------------------------------------------


async def test_an_answer_of_the_node_itself_is_not_retried(proxy: Proxy) -> None:
    proxy.nodes.script["n1"] = NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await proxy.find_commit()
    assert failed.value.code() is grpc.StatusCode.NOT_FOUND
    assert proxy.nodes.calls("n2") == 0
    assert proxy.metric("gitquorum_read_retries_total") == 0


async def test_a_stream_that_sent_a_response_then_fails_is_not_retried(
    proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy.nodes.script["n1"] = ONE_THEN_FAIL
    request = blob_pb2.GetBlobsRequest(repository=repository())
    call = proxy.channel.unary_stream(GET_BLOBS)(request.SerializeToString(), timeout=WAIT)
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for message in call:
            got.append(message)
    assert got == [b"from n1"]
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert proxy.nodes.calls("n2") == 0
    assert proxy.metric("gitquorum_read_retries_total") == 0
    # The log line says the client got part of an answer.
    [line] = [r for r in caplog.records if r.getMessage() == "rpc failed"]
    assert line.fields["cut_mid_stream"] is True  # type: ignore[attr-defined]


async def test_a_stream_retried_before_its_first_response_is_not_cut(
    proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy.nodes.script["n1"] = proxy.nodes.script["n2"] = UNAVAILABLE
    request = blob_pb2.GetBlobsRequest(repository=repository())
    call = proxy.channel.unary_stream(GET_BLOBS)(request.SerializeToString(), timeout=WAIT)
    with pytest.raises(grpc.aio.AioRpcError):
        [message async for message in call]
    [line] = [r for r in caplog.records if r.getMessage() == "rpc failed"]
    assert "cut_mid_stream" not in line.fields  # type: ignore[attr-defined]


async def test_when_every_replica_fails_the_last_failure_is_answered(proxy: Proxy) -> None:
    proxy.nodes.script["n1"] = proxy.nodes.script["n2"] = UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await proxy.find_commit()
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert (proxy.nodes.calls("n1"), proxy.nodes.calls("n2"), proxy.nodes.calls("n3")) == (1, 1, 0)


# -- a replica missing on disk: a fault of that replica, not the answer -------------------
# (a wiped replica answered reads NOT_FOUND "repository not found" for a repository
# the cluster records: finding 7 of docs/reliability.md)


async def test_a_unary_read_whose_replica_is_missing_on_disk_is_served_by_another(
    proxy: Proxy,
) -> None:
    proxy.nodes.script["n1"] = MISSING
    assert await proxy.find_commit() == b"from n2"
    assert proxy.metric("gitquorum_read_replicas_missing_total", storage="n1") == 1
    assert proxy.metric("gitquorum_read_retries_total") == 1
    # The node answered: no strike against it (its other replicas are fine).
    assert "n1" not in proxy.health.ejected()


async def test_a_streaming_read_whose_replica_is_missing_on_disk_is_served_by_another(
    proxy: Proxy,
) -> None:
    proxy.nodes.script["n1"] = MISSING
    request = blob_pb2.GetBlobsRequest(repository=repository())
    call = proxy.channel.unary_stream(GET_BLOBS)(request.SerializeToString(), timeout=WAIT)
    assert [message async for message in call] == [b"from n2", b"from n2"]
    assert proxy.metric("gitquorum_read_replicas_missing_total", storage="n1") == 1


async def test_a_repository_whose_up_to_date_replicas_are_all_missing_is_unavailable(
    proxy: Proxy,
) -> None:
    """Recorded, so not absent: UNAVAILABLE naming the replicas, not NOT_FOUND."""
    proxy.nodes.script["n1"] = proxy.nodes.script["n2"] = MISSING
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await proxy.find_commit()
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    details = failed.value.details() or ""
    assert details.startswith(
        f"repository unavailable: its up-to-date replica of {PATH!r} is missing on disk on n1, n2"
    )
    request = blob_pb2.GetBlobsRequest(repository=repository())
    call = proxy.channel.unary_stream(GET_BLOBS)(request.SerializeToString(), timeout=WAIT)
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        [message async for message in call]
    assert streamed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "missing on disk on n1, n2" in (streamed.value.details() or "")
    assert proxy.nodes.calls("n3") == 0  # never the outdated replica


@pytest.mark.parametrize("now", ["removed", "created again"])
async def test_a_repository_removed_meanwhile_is_not_found(proxy: Proxy, now: str) -> None:
    """Routed from the record, removed (and maybe created again under its path,
    as another repository) before the nodes answered: absent after all."""
    proxy.nodes.script["n1"] = proxy.nodes.script["n2"] = MISSING
    cluster = proxy.cluster
    again = dataclasses.replace(cluster.record, repository_id=cluster.record.repository_id + 1)

    def removed() -> None:
        cluster.record = None if now == "removed" else again  # type: ignore[assignment]

    proxy.nodes.before_missing = removed
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await proxy.find_commit()
    assert failed.value.code() is grpc.StatusCode.NOT_FOUND
    assert failed.value.details() == "repository not found"


# -- a stalled node: hedging and outlier ejection ----------------------------------------


async def test_a_hung_node_is_hedged_and_the_loser_cancelled(proxy: Proxy) -> None:
    proxy.nodes.script["n1"] = HANG
    assert await proxy.find_commit() == b"from n2"
    await asyncio.wait_for(proxy.nodes.cancel_seen.wait(), WAIT)
    assert proxy.nodes.cancelled == ["n1"]
    assert proxy.metric("gitquorum_read_hedges_total", result="sent") == 1
    assert proxy.metric("gitquorum_read_hedges_total", result="won") == 1
    assert proxy.metric("gitquorum_read_retries_total") == 0


async def test_a_hung_node_is_hedged_late_when_the_hedge_budget_is_spent(proxy: Proxy) -> None:
    while proxy.health.spend_hedge():
        pass
    proxy.nodes.script["n1"] = HANG
    assert await proxy.find_commit() == b"from n2"
    assert proxy.metric("gitquorum_read_hedges_total", result="won") == 1


async def test_a_node_that_times_out_is_not_retried_but_struck(proxy: Proxy) -> None:
    proxy.nodes.script["n1"] = HANG
    request = blob_pb2.GetBlobsRequest(repository=repository()).SerializeToString()
    for _ in range(SETTINGS.outlier_failures):
        call = proxy.channel.unary_stream(GET_BLOBS)(request, timeout=0.2)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            async for _message in call:
                pass
        assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert proxy.nodes.calls("n2") == 0
    # The proxy counts the strike when its own call ends, which can come just
    # after the client already saw its deadline pass.
    deadline = asyncio.get_running_loop().time() + WAIT
    for _ in range(int(WAIT / 0.01)):
        if proxy.metric("gitquorum_node_ejections_total", node="n1") == 1:
            break
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.01)
    assert proxy.metric("gitquorum_node_ejections_total", node="n1") == 1


async def test_a_fast_answer_is_not_hedged(proxy: Proxy) -> None:
    for _ in range(5):
        assert await proxy.find_commit() == b"from n1"
    assert proxy.nodes.calls("n2") == 0
    assert proxy.metric("gitquorum_read_hedges_total", result="sent") == 0


async def test_a_failing_node_is_ejected_from_reads_then_readmitted(proxy: Proxy) -> None:
    proxy.nodes.script["n1"] = UNAVAILABLE
    for _ in range(SETTINGS.outlier_failures):
        assert await proxy.find_commit() == b"from n2"
    assert proxy.nodes.calls("n1") == SETTINGS.outlier_failures
    assert proxy.metric("gitquorum_node_ejections_total", node="n1") == 1
    # Ejected: reads go straight to n2 although n1 is still healthy by consensus.
    for _ in range(5):
        assert await proxy.find_commit() == b"from n2"
    assert proxy.nodes.calls("n1") == SETTINGS.outlier_failures
    # Once the ejection time is over, n1 is in the read set again.
    proxy.nodes.script["n1"] = ANSWER
    proxy.clock.now += SETTINGS.outlier_ejection_time
    assert await proxy.find_commit() == b"from n1"
    assert proxy.metric("gitquorum_node_ejections_total", node="n1") == 1


async def test_an_ejected_node_still_serves_when_no_other_replica_can(proxy: Proxy) -> None:
    proxy.nodes.script["n1"] = UNAVAILABLE
    for _ in range(SETTINGS.outlier_failures):
        await proxy.find_commit()
    proxy.nodes.script["n1"] = ANSWER
    proxy.nodes.script["n2"] = UNAVAILABLE
    assert await proxy.find_commit() == b"from n1"
