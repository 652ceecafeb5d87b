"""Writes abandoned by clients that hang up must not keep a repository from
converging once the writes stop (tests/chaos/test_client_hangups.py failed
that way in CI: a repository left unsettled for more than 45 s).

Each test replays one interleaving through the real finalizer
(EtcdClusterPort.record_write), the real verifier and the real record rules
over the in-memory store, or through the real handler on grpc.aio; only what
each replica holds on disk (its checksum) is set by the test. Each fails on
20b9166.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.decisions import WriteResult, up_to_date_replicas
from gitquorum.cluster.intents import IntentStore, WriteIntent
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.repositories import CopySource, RepositoryRecord
from gitquorum.proxy.etcd_cluster_port import EtcdClusterPort
from gitquorum.proxy.routing import MutatorRoute, route_mutator
from gitquorum.proxy.vote_counting import Outcome, Transaction, TransactionManager
from gitquorum.wire.transaction_metadata import COMMITTED, PREPARED, transaction_from_metadata
from gitquorum.wire.transaction_metadata import Transaction as NodeTransaction
from tests.unit.proxy.finalizer_parts import memory_port
from tests.unit.proxy.handler_parts import running_proxy, unary_method
from tests.unit.proxy.test_verifier import KEYS, VS, Parts, build
from tests.unit.test_handler import NODES, PATH, FakeCluster, record, repository

ALL = frozenset(NODES)
WITH_W1 = "holds the abandoned write W1"
WITHOUT_W1 = "lacks W1"


async def _parts(intents: IntentStore, store: MemoryStore) -> tuple[Parts, EtcdClusterPort]:
    # Generation 2 on n1 (primary) and n2; n3 missed it (outdated, being repaired).
    parts = await build(store, then=("n1", "n2"), intents=intents, members=lambda: {"p1": 0.0})
    port = memory_port(store, parts.repos, parts.cache, queue=parts.queue, intents=intents)
    return parts, port


async def _route(parts: Parts) -> MutatorRoute:
    await parts.settle_cache()
    return route_mutator(await parts.get(), ALL, NODES)


def _up_to_date(record: RepositoryRecord) -> set[str]:
    return set(up_to_date_replicas(record))


# -- 1. a replica repaired while an abandoned write was in flight ---------------------------


async def test_a_replica_repaired_during_an_abandoned_write_does_not_make_a_conflict() -> None:
    store = MemoryStore(ManualClock())
    intents = IntentStore(store, KEYS)
    parts, port = await _parts(intents, store)
    try:
        rid = parts.record.repository_id
        # W1 (an impatient create) is routed: n1 + n2, n3 only a replication target.
        w1 = await _route(parts)
        assert w1.participants == ("n1", "n2") and w1.replication_targets == ("n3",)
        intent = port.intent_for(VS, w1)
        assert intent is not None
        await port.record_intent(intent)  # the gate, before W1's first COMMIT
        # n3's catch-up copy (taken from n1 before W1's COMMIT reached it) is recorded.
        current = await parts.get()
        await parts.repos.set_replica_generation(
            VS, rid, "n3", current.generation, source=CopySource.of(current, "n1")
        )
        # W2, routed after that repair (n3 takes part), is acknowledged: generation 3.
        w2 = await _route(parts)
        assert set(w2.participants) == ALL
        await port.record_write(VS, w2, WriteResult(ALL, frozenset(), "committed"))
        # W1's client hangs up after n1 received its prepared-phase COMMIT and
        # applied it, before any committed-phase vote: abandoned_outcome ->
        # primary-not-committed. n2 and n3 moved past W1's generation: spared,
        # the intent is kept, marked finished.
        await port.record_write(
            VS, w1, WriteResult(frozenset(), frozenset({"n2", "n3"}), "primary-not-committed"),
            intent,
        )  # fmt: skip
        (kept,) = await intents.of_repository(VS, rid)
        assert kept.finished and kept.participants == frozenset({"n1", "n2"})
        # W3 (another impatient write) is abandoned after n1 and n3 voted in the
        # committed phase, n2 not: n2 falls behind.
        w3 = await _route(parts)
        await port.record_write(
            VS,
            w3,
            WriteResult(frozenset({"n1", "n3"}), frozenset({"n2"}), "abandoned-after-commit"),
        )
        assert _up_to_date(await parts.get()) == {"n1", "n3"}
        # On disk: n1 holds W1 (unacknowledged), n3 was copied before it.
        parts.checksums.values.update(n1=WITH_W1, n2=WITHOUT_W1, n3=WITHOUT_W1)
        await parts.settle_cache()
        await parts.verifier.verify_once(force=True)
        after = await parts.get()
        # W1's intent explains the difference (n3's state is a copy of a
        # participant's): the verifier takes a side and n2 can be repaired. On
        # 20b9166 it marked a conflict ("n1", "n3"): no replica was a source any
        # more, nothing was repaired until an operator accepted data loss.
        assert after.conflict == (), f"conflict marked: {after.conflict}"
        # The side taken is the write's primary's; the other replicas are repaired from it.
        assert _up_to_date(after) == {"n1"}
        queued = {job.target_node: job.source_node for job in await parts.queue.jobs()}
        assert queued == {"n2": "n1", "n3": "n1"}
    finally:
        await parts.cache.close()


# -- 2. an intent put after the verifier read the intents --------------------------------------


async def test_an_intent_put_after_the_verifier_read_the_intents_does_not_make_a_conflict() -> None:
    store = MemoryStore(ManualClock())
    intents = IntentStore(store, KEYS)
    parts, port = await _parts(intents, store)
    try:
        rid = parts.record.repository_id
        w1 = await _route(parts)  # n1 + n2 at generation 2
        intent = port.intent_for(VS, w1)
        assert intent is not None
        # W2 (routed at the same generation) is acknowledged first: generation 3.
        w2 = await _route(parts)
        await port.record_write(
            VS, w2, WriteResult(frozenset({"n1", "n2"}), frozenset({"n3"}), "committed")
        )
        await parts.settle_cache()
        real = parts.checksums
        parts.checksums.values.update(n1=WITH_W1, n2=WITHOUT_W1, n3=WITHOUT_W1)
        done = False

        async def checksum_after_w1(node: str, path: str) -> str | None:
            # Between the verifier's read of the intents and its first checksum,
            # W1 passes its gate, commits on n1 only, its client hangs up and
            # its outcome spares n2 (moved past W1's generation): the record
            # does not change, only the intent is re-put, finished.
            nonlocal done
            if not done:
                done = True
                await port.record_intent(intent)
                await port.record_write(
                    VS, w1, WriteResult(frozenset(), frozenset({"n2"}), "primary-not-committed"),
                    intent,
                )  # fmt: skip
            return await real(node, path)

        parts.verifier.checksum = checksum_after_w1
        await parts.verifier.verify_once(force=True)
        after = await parts.get()
        (stood,) = await intents.of_repository(VS, rid)
        assert stood.finished  # the evidence exists, but was read before it was put
        # The verdict is void (the intents changed since they were read). On
        # 20b9166 it marked a conflict ("n1", "n2"): n3's repair found no source
        # while it stood and died, then waited out its dead backoff.
        assert after.conflict == (), f"conflict marked: {after.conflict}"
    finally:
        await parts.cache.close()


# -- 3. a client hanging up while the gate's intent put is in flight ----------------------

WRITE_REF = "/gitaly.RepositoryService/WriteRef"
UPDATE = b"\x01" * 20


class IntentCluster(FakeCluster):
    """The fake port with intents kept in a dict; the gate's put is slow (an etcd
    put retried after a transient error, or merely overtaken by the delete)."""

    def __init__(self) -> None:
        super().__init__()
        self.standing: dict[str, WriteIntent] = {}
        self.put_started = asyncio.Event()
        self.put_may_land = asyncio.Event()
        self.events: list[str] = []

    def intent_for(self, virtual_storage: str, route: MutatorRoute) -> WriteIntent | None:
        return WriteIntent(
            virtual_storage, route.repository_id, "i1", "p1", 0.0, route.generation,
            route.primary, tuple(route.participants),
        )  # fmt: skip

    async def record_intent(self, intent: WriteIntent) -> None:
        self.put_started.set()
        await self.put_may_land.wait()
        self.standing[intent.intent_id] = intent
        self.events.append("put")

    async def forget_intent(self, intent: WriteIntent) -> None:
        self.standing.pop(intent.intent_id, None)
        self.events.append("forget")


def _transaction(context: grpc.aio.ServicerContext) -> NodeTransaction:
    """The transaction the proxy attached to a node's call."""
    tx = transaction_from_metadata(context.invocation_metadata())
    assert tx is not None
    return tx


def _voting_node(transactions: TransactionManager):  # type: ignore[no-untyped-def]
    def handler(node: str) -> grpc.GenericRpcHandler:
        async def write_ref(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            tx = _transaction(context)
            for phase in (PREPARED, COMMITTED):
                outcome = await transactions.vote(tx.id, tx.node, UPDATE, phase)
                if outcome.value != "commit":
                    await context.abort(grpc.StatusCode.ABORTED, outcome.value)
            return b""

        return unary_method(WRITE_REF, write_ref)

    return handler


async def test_an_intent_put_still_in_flight_when_the_client_hangs_up_does_not_stand() -> None:
    from gitquorum.gitaly import repository_pb2

    transactions = TransactionManager(vote_timeout=5.0)
    cluster = IntentCluster()
    cluster.records[PATH] = record({"n1": 1, "n2": 1, "n3": 1}, primary="n1")
    async with running_proxy(
        _voting_node(transactions), NODES, cluster, transactions=transactions
    ) as running:
        request = repository_pb2.WriteRefRequest(
            repository=repository(), ref=b"refs/heads/w0/1", revision=b"1" * 40
        )
        call = running.channel.unary_unary(WRITE_REF)(request.SerializeToString(), timeout=20)
        await asyncio.wait_for(cluster.put_started.wait(), 5)  # the gate runs
        call.cancel()  # the client hangs up (as its deadline would)
        with pytest.raises(asyncio.CancelledError):
            await call
        # The abandoned write's finalizer runs in the background: nothing was
        # committed, so it removes the intent. It must not before the put has
        # landed: given the time to, the removal would come first (20b9166).
        await _poll(lambda: "forget" in cluster.events, within=0.5)
        cluster.put_may_land.set()
        assert await _poll(lambda: "forget" in cluster.events, within=5.0), cluster.events
    # A removal before the put left the intent standing, unfinished, for a live
    # proxy: the verifier took no verdict on the repository (a write in
    # flight) until it had seen the intent for its grace, 120 s.
    assert cluster.events == ["put", "forget"]
    assert cluster.standing == {}


async def _poll(predicate: Callable[[], bool], *, within: float) -> bool:
    """Whether ``predicate`` held within ``within`` seconds (polled)."""
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# -- 4. a primary whose call fails while the intent's put is in flight ---------------------


def _primary_call_dies_at_the_gate(
    transactions: TransactionManager,
    cluster: IntentCluster,
    outcomes: dict[str, str],
    seen: list[Transaction],
):  # type: ignore[no-untyped-def]
    """n1 (primary) and n2, n3 vote for the update; n1's call then fails (its
    deadline, say) while the gate's put is in flight. Each node's hook keeps
    waiting for its answer as a real node's would: what it gets is recorded."""
    # The votes' tasks, kept referenced while they wait (the loop holds weak ones).
    waiting: list[asyncio.Future[Outcome]] = []

    def handler(node: str) -> grpc.GenericRpcHandler:
        async def write_ref(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            tx = _transaction(context)
            seen.append(transactions.get(tx.id))
            vote = asyncio.ensure_future(transactions.vote(tx.id, tx.node, UPDATE, PREPARED))
            vote.add_done_callback(lambda done: outcomes.__setitem__(node, done.result().value))
            waiting.append(vote)
            if node == "n1":
                await cluster.put_started.wait()
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the node's deadline")
            outcome = await asyncio.shield(vote)
            if outcome.value != "commit":
                await context.abort(grpc.StatusCode.ABORTED, outcome.value)
            return b""

        return unary_method(WRITE_REF, write_ref)

    return handler


async def test_a_write_whose_primary_failed_at_the_gate_commits_nowhere() -> None:
    """The outcome (primary-failed-before-commit: nothing applied) is read while
    the put is in flight; once it lands, no waiting vote may get a COMMIT. On
    34faa11 every node got one: the client was told the write failed, and the
    replicas recorded up to date held it."""
    from gitquorum.gitaly import repository_pb2

    transactions = TransactionManager(vote_timeout=5.0)
    cluster = IntentCluster()
    cluster.records[PATH] = record({"n1": 1, "n2": 1, "n3": 1}, primary="n1")
    outcomes: dict[str, str] = {}
    seen: list[Transaction] = []
    async with running_proxy(
        _primary_call_dies_at_the_gate(transactions, cluster, outcomes, seen),
        NODES,
        cluster,
        transactions=transactions,
    ) as running:
        request = repository_pb2.WriteRefRequest(
            repository=repository(), ref=b"refs/heads/w0/1", revision=b"1" * 40
        )
        call = running.channel.unary_unary(WRITE_REF)(request.SerializeToString(), timeout=20)
        answer = asyncio.ensure_future(call)
        await asyncio.wait_for(cluster.put_started.wait(), 5)
        # The fan-out reads the outcome (it stops the transaction first; on
        # 34faa11 it did not, and its finalizer removed the intent at once).
        read = await _poll(
            lambda: "forget" in cluster.events or any(t.stopped for t in seen), within=5.0
        )
        assert read, cluster.events
        cluster.put_may_land.set()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await answer
        # The primary's own error: nothing was applied anywhere.
        assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "the node's deadline" in (failed.value.details() or "")
        assert await _poll(lambda: len(outcomes) == 3, within=5.0), outcomes
        assert await _poll(lambda: "forget" in cluster.events, within=5.0), cluster.events
    assert "commit" not in outcomes.values(), outcomes
    assert cluster.standing == {}
