"""What the client of a write is told, through the real handler and fan-out.

Each node is a real grpc.aio server that follows a script: the votes it casts
on the proxy's transaction (in-process, as ``tests/unit/test_handler.py``
does), then the status its call ends with. The scripts replay the ways a
write can end; the rule under test: a write that any replica may have applied
is never answered with a definite failure, and every such answer is the one
unknown-outcome status (``gitquorum.errors.OutcomeUnknown``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import grpc
import pytest

from gitquorum.cluster.decisions import WriteResult
from gitquorum.cluster.errors import WriteToOutdatedReplicas
from gitquorum.cluster.intents import WriteIntent
from gitquorum.errors import FailedPrecondition
from gitquorum.gitaly import repository_pb2, transaction_pb2
from gitquorum.proxy.routing import MutatorRoute
from gitquorum.proxy.vote_counting import ZERO_HASH, TransactionManager
from gitquorum.wire.finishing import OUTCOME_UNKNOWN_CODE, OUTCOME_UNKNOWN_PREFIX
from tests.unit.proxy.handler_parts import running_proxy, unary_method
from tests.unit.test_handler import NODES, PATH, FakeCluster, record, repository

WRITE_REF = "/gitaly.RepositoryService/WriteRef"
TRANSACTION_KEY = "gitaly-reference-transaction"
PREPARED = transaction_pb2.VoteTransactionRequest.PREPARED_PHASE
COMMITTED = transaction_pb2.VoteTransactionRequest.COMMITTED_PHASE
UPDATE = hashlib.sha1(b"the same update everywhere").digest()
OTHER = hashlib.sha1(b"another update").digest()
OK = grpc.StatusCode.OK
CORRELATION = "honest-answers-correlation"


@dataclass(frozen=True)
class Script:
    """One node's part: its votes (phase, hash) in order, then its final status.

    A node stops voting at the first vote that is not answered COMMIT, as a
    real node does (it aborts before committing, or, in the committed phase,
    has nothing left to do).
    """

    votes: tuple[tuple[int, bytes], ...] = ()
    status: grpc.StatusCode = OK
    details: str = ""
    # After its votes the node stops answering and the cluster finds it
    # unhealthy (what the health consensus reports for a paused node).
    hangs: bool = False
    # Before ending its call, the node waits until every other voter cast this
    # many votes (secondaries that commit while the primary fails).
    waits_for_others: int = 0


# A replica that applies the update: prepare, commit, then the committed-phase vote.
APPLIES = Script(((PREPARED, UPDATE), (COMMITTED, UPDATE)))


@dataclass
class ScriptedNodes:
    transactions: TransactionManager
    scripts: dict[str, Script] = field(default_factory=dict)
    # Votes each node started to cast, and a condition signalled at each one.
    cast: dict[str, int] = field(default_factory=dict)
    voted: asyncio.Condition = field(default_factory=asyncio.Condition)

    def handler(self, node: str) -> grpc.GenericRpcHandler:
        nodes = self

        async def write_ref(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            script = nodes.scripts[node]
            metadata = dict(context.invocation_metadata() or ())
            tx = json.loads(base64.b64decode(metadata[TRANSACTION_KEY]))
            for phase, digest in script.votes:
                if await nodes.vote(tx["id"], tx["node"], digest, phase) != "commit":
                    break
            if script.waits_for_others:
                await nodes.others_voted(node, script.waits_for_others)
            if script.hangs:
                nodes.transactions.node_unhealthy(node)
                await asyncio.Event().wait()
            if script.status is not OK:
                await context.abort(script.status, script.details)
            return repository_pb2.WriteRefResponse().SerializeToString()

        return unary_method(WRITE_REF, write_ref)

    async def others_voted(self, node: str, votes: int) -> None:
        async with asyncio.timeout(5), self.voted:
            await self.voted.wait_for(
                lambda: all(self.cast.get(other, 0) >= votes for other in NODES if other != node)
            )

    async def vote(self, tx_id: int, node: str, digest: bytes, phase: int) -> str:
        async with self.voted:
            self.cast[node] = self.cast.get(node, 0) + 1
            self.voted.notify_all()
        outcome = await self.transactions.vote(tx_id, node, digest, phase)
        return outcome.value


class RecordingCluster(FakeCluster):
    """The fake cluster port, whose finalizer can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.record_error: Exception | None = None

    async def record_write(
        self,
        virtual_storage: str,
        route: MutatorRoute,
        result: WriteResult,
        intent: WriteIntent | None = None,
    ) -> None:
        await super().record_write(virtual_storage, route, result)
        if self.record_error is not None:
            raise self.record_error


@dataclass
class Proxy:
    cluster: RecordingCluster
    nodes: ScriptedNodes
    channel: grpc.aio.Channel

    async def write(self) -> grpc.aio.AioRpcError | None:
        """One WriteRef through the proxy: its error, or None when it succeeded."""
        request = repository_pb2.WriteRefRequest(
            repository=repository(), ref=b"refs/heads/main", revision=b"1" * 40
        )
        try:
            await self.channel.unary_unary(WRITE_REF)(
                request.SerializeToString(),
                metadata=[("x-gitquorum-correlation-id", CORRELATION)],
                timeout=20,
            )
        except grpc.aio.AioRpcError as exc:
            return exc
        return None


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    transactions = TransactionManager(vote_timeout=5.0)
    nodes = ScriptedNodes(transactions)
    cluster = RecordingCluster()
    cluster.records[PATH] = record({"n1": 1, "n2": 1, "n3": 1}, primary="n1")
    async with running_proxy(nodes.handler, NODES, cluster, transactions=transactions) as running:
        yield Proxy(cluster, nodes, running.channel)


def _assert_unknown(error: grpc.aio.AioRpcError | None) -> None:
    assert error is not None, "the write was acknowledged"
    assert error.code() is OUTCOME_UNKNOWN_CODE, (error.code(), error.details())
    details = error.details() or ""
    assert details.startswith(OUTCOME_UNKNOWN_PREFIX), details
    assert CORRELATION in details, details


# -- the headline case: the primary fails at commit time while the secondaries commit --------


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.FAILED_PRECONDITION,  # e.g. git could not write the ref (disk full)
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.INVALID_ARGUMENT,
    ],
)
async def test_a_commit_time_failure_of_the_primary_is_an_unknown_outcome(
    proxy: Proxy, code: grpc.StatusCode
) -> None:
    proxy.nodes.scripts = {
        # Its prepared vote is answered COMMIT, then committing fails.
        "n1": Script(
            ((PREPARED, UPDATE),), code, "cannot update ref 'refs/heads/main'", waits_for_others=2
        ),
        "n2": APPLIES,
        "n3": APPLIES,
    }
    _assert_unknown(await proxy.write())
    # The secondaries hold the write and moved on; the primary is repaired.
    [(_route, result)] = proxy.cluster.writes
    assert result.updated == frozenset({"n2", "n3"})
    assert result.outdated == frozenset({"n1"})
    assert result.reason == "primary-failed-after-commit"


async def test_a_failure_after_the_committed_vote_is_an_unknown_outcome(proxy: Proxy) -> None:
    proxy.nodes.scripts = {
        "n1": Script(APPLIES.votes, grpc.StatusCode.FAILED_PRECONDITION, "post-commit work"),
        "n2": APPLIES,
        "n3": APPLIES,
    }
    _assert_unknown(await proxy.write())


async def test_an_unknown_outcome_nobody_provably_holds_is_still_unknown(proxy: Proxy) -> None:
    # The secondaries got COMMIT but never confirmed applying it: nobody is
    # known to hold the write, but any of the three may.
    proxy.nodes.scripts = {
        "n1": Script(((PREPARED, UPDATE),), grpc.StatusCode.ABORTED, "reference is locked"),
        "n2": Script(((PREPARED, UPDATE),), grpc.StatusCode.UNAVAILABLE, "node stopped"),
        "n3": Script(((PREPARED, UPDATE),), grpc.StatusCode.UNAVAILABLE, "node stopped"),
    }
    _assert_unknown(await proxy.write())
    [(_route, result)] = proxy.cluster.writes
    assert result.updated == frozenset()
    assert result.reason == "primary-not-committed"


# -- definite failures stay definite: nothing was applied anywhere ---------------------------


@pytest.mark.parametrize(
    ("scripts", "code"),
    [
        pytest.param(
            {"n1": Script((), grpc.StatusCode.INVALID_ARGUMENT, "bad revision")},
            grpc.StatusCode.INVALID_ARGUMENT,
            id="the primary refuses before voting",
        ),
        pytest.param(
            {
                # The secondaries agree on another update: the primary loses
                # its vote (nothing decided) and aborts.
                "n1": Script(((PREPARED, UPDATE),), grpc.StatusCode.ABORTED, "vote lost"),
                "n2": Script(((PREPARED, OTHER),), grpc.StatusCode.ABORTED, "vote lost"),
                "n3": Script(((PREPARED, OTHER),), grpc.StatusCode.ABORTED, "vote lost"),
            },
            grpc.StatusCode.ABORTED,
            id="no subtransaction decided",
        ),
        pytest.param(
            {
                "n1": Script(((COMMITTED, ZERO_HASH),), grpc.StatusCode.FAILED_PRECONDITION, "x"),
                "n2": Script(((COMMITTED, ZERO_HASH),)),
                "n3": Script(((COMMITTED, ZERO_HASH),)),
            },
            grpc.StatusCode.FAILED_PRECONDITION,
            id="only the zero vote was decided",
        ),
    ],
)
async def test_a_failure_before_anything_was_applied_is_relayed(
    proxy: Proxy, scripts: Mapping[str, Script], code: grpc.StatusCode
) -> None:
    proxy.nodes.scripts = {node: scripts.get(node, Script()) for node in NODES}
    error = await proxy.write()
    assert error is not None
    assert error.code() is code
    assert not (error.details() or "").startswith(OUTCOME_UNKNOWN_PREFIX)
    assert all(not result.updated for _route, result in proxy.cluster.writes)


async def test_a_write_every_replica_took_succeeds(proxy: Proxy) -> None:
    proxy.nodes.scripts = dict.fromkeys(NODES, APPLIES)
    assert await proxy.write() is None
    [(_route, result)] = proxy.cluster.writes
    assert result.updated == frozenset(NODES)


# -- the finalizer cannot record a write the replicas applied --------------------------------


@pytest.mark.parametrize(
    "error",
    [
        WriteToOutdatedReplicas("a failover outdated them"),
        FailedPrecondition("repository is in read-only mode"),
        RuntimeError("etcd went away"),
    ],
    ids=["outdated meanwhile", "a refusal", "anything else"],
)
async def test_a_write_that_could_not_be_recorded_is_an_unknown_outcome(
    proxy: Proxy, error: Exception
) -> None:
    proxy.nodes.scripts = dict.fromkeys(NODES, APPLIES)
    proxy.cluster.record_error = error
    _assert_unknown(await proxy.write())


async def test_a_primary_given_up_after_the_decision_is_an_unknown_outcome(
    proxy: Proxy,
) -> None:
    # The primary's vote is answered COMMIT, then it stops answering and the
    # health consensus finds it unhealthy: its call is given up.
    proxy.nodes.scripts = {
        "n1": Script(((PREPARED, UPDATE),), hangs=True, waits_for_others=2),
        "n2": APPLIES,
        "n3": APPLIES,
    }
    _assert_unknown(await proxy.write())
    [(_route, result)] = proxy.cluster.writes
    assert result.updated == frozenset({"n2", "n3"})


async def test_a_primary_given_up_before_any_decision_is_not_an_unknown_outcome(
    proxy: Proxy,
) -> None:
    proxy.nodes.scripts = {"n1": Script(hangs=True), "n2": APPLIES, "n3": APPLIES}
    error = await proxy.write()
    assert error is not None
    # UNAVAILABLE claims nothing either way; nothing was applied, so it is not
    # labelled unknown.
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert not (error.details() or "").startswith(OUTCOME_UNKNOWN_PREFIX)
    assert proxy.cluster.writes == []
