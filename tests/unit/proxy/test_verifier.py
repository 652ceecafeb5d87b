"""The verifier over the in-memory store, with checksums the test decides.

The majority decides which replica lost data, not the primary; without a
majority nothing is demoted; a deposed leader's verifier changes nothing; and a
write whose outcome lands while the verifier reads checksums voids the verdict.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.election import FencingToken
from gitquorum.cluster.errors import NotLeader
from gitquorum.cluster.history import VERDICT, Event, History
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import ReplicationJob, ReplicationQueue
from gitquorum.cluster.reports import dataloss
from gitquorum.cluster.repositories import (
    RepositoryCache,
    RepositoryRecord,
    RepositoryStore,
    decode_record,
)
from gitquorum.cluster.store import OpKind
from gitquorum.proxy.verifier import (
    DIFFERING_REFS_SHOWN,
    VerificationStore,
    Verifier,
    differing_references,
)

KEYS = Keyspace("unit")
NODES = ("n1", "n2", "n3")
VS = "vs"


class FakeChecksums:
    """Replica checksums as the test sets them; an exception value is raised."""

    def __init__(self, values: dict[str, str | BaseException | None]) -> None:
        self.values = values
        self.calls: list[str] = []

    async def __call__(self, node: str, _replica_path: str) -> str | None:
        self.calls.append(node)
        await asyncio.sleep(0)
        value = self.values[node]
        if isinstance(value, BaseException):
            raise value
        return value


class Unreachable(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"
        )


class Leadership:
    """A leader key with a fencing token, and a way to lose it to another proxy."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.token: FencingToken | None = None

    async def acquire(self, holder: str) -> FencingToken:
        lease = await self.store.grant(60)
        key = KEYS.leader()
        await self.store.put(key, holder.encode(), lease=lease.id)
        kv = await self.store.get(key)
        assert kv is not None
        self.token = FencingToken(key, kv.create_revision, lease.id, holder)
        return self.token

    async def depose(self) -> None:
        """Another proxy wins: the key is re-created with a new create_revision."""
        await self.store.delete(KEYS.leader())
        await self.acquire("other")

    def current(self, holder: str) -> Callable[[], FencingToken]:
        def fence() -> FencingToken:
            if self.token is None or self.token.holder != holder:
                raise NotLeader(f"{holder} is not the leader")
            return self.token

        return fence


@dataclass
class Parts:
    store: MemoryStore
    repos: RepositoryStore
    cache: RepositoryCache
    queue: ReplicationQueue
    checksums: FakeChecksums
    leadership: Leadership
    verifier: Verifier
    record: RepositoryRecord

    async def get(self) -> RepositoryRecord:
        return await self.repos.get(VS, self.record.repository_id)

    async def jobs(self) -> list[ReplicationJob]:
        return await self.queue.jobs()

    async def settle_cache(self) -> None:
        current = await self.get()
        await asyncio.wait_for(self.cache.wait_for_revision(current.revision), 5)


async def build(
    store: MemoryStore | None = None,
    *,
    nodes: tuple[str, ...] = NODES,
    primary: str = "n1",
    healthy: frozenset[str] = frozenset(NODES),
    then: tuple[str, ...] = (),
    **verifier_options: Any,
) -> Parts:
    """``then``: the replicas that take a second write (the others fall behind);
    ``verifier_options`` go to the Verifier."""
    store = store or MemoryStore(ManualClock())
    repos = RepositoryStore(store, KEYS, rng=random.Random(1))
    record = await repos.create(VS, "a.git", nodes=nodes, healthy=set(nodes))
    record = await repos.set_primary(VS, record.repository_id, primary)
    # Generation 1: a demoted replica drops to 0 and stays in the record.
    record = await repos.increment_generation(VS, record.repository_id, nodes)
    if then:
        record = await repos.increment_generation(VS, record.repository_id, then)
    cache = RepositoryCache(store, KEYS)
    await cache.start()
    await asyncio.wait_for(cache.wait_for_revision(record.revision), 5)
    queue = ReplicationQueue(store, KEYS)
    checksums = FakeChecksums(dict.fromkeys(nodes, "a"))
    leadership = Leadership(store)
    await leadership.acquire("p1")
    verifier = Verifier(
        repos,
        cache,
        queue,
        checksums,
        VerificationStore(store, KEYS),
        lambda _vs: healthy,
        fence=leadership.current("p1"),
        recheck_delay=0.0,
        **verifier_options,
    )
    return Parts(store, repos, cache, queue, checksums, leadership, verifier, record)


@pytest.fixture
async def parts() -> AsyncIterator[Parts]:
    built = await build()
    yield built
    await built.cache.close()


def generations(record: RepositoryRecord) -> dict[str, int]:
    return dict(record.replicas)


async def test_replicas_that_agree_are_left_alone(parts: Parts) -> None:
    assert await parts.verifier.verify_once(force=True) == 3
    after = await parts.get()
    assert after == parts.record and not await parts.jobs()
    verified = await parts.verifier.verification.verified_at(VS, parts.record.repository_id)
    assert set(verified) == set(NODES)


async def test_a_primary_in_the_minority_is_demoted_repaired_from_the_majority_and_replaced(
    parts: Parts,
) -> None:
    # The primary came back from a power loss without its last writes.
    parts.checksums.values["n1"] = "rolled back"
    await parts.verifier.verify_once(force=True)
    after = await parts.get()
    assert generations(after) == {"n1": 0, "n2": 1, "n3": 1}
    assert after.primary in {"n2", "n3"}
    (job,) = await parts.jobs()
    assert job.target_node == "n1" and job.source_node in {"n2", "n3"}


async def test_a_secondary_in_the_minority_is_demoted_and_repaired_from_the_primary(
    parts: Parts,
) -> None:
    parts.checksums.values["n3"] = "rolled back"
    await parts.verifier.verify_once(force=True)
    after = await parts.get()
    assert generations(after) == {"n1": 1, "n2": 1, "n3": 0}
    assert after.primary == "n1"
    (job,) = await parts.jobs()
    assert (job.target_node, job.source_node) == ("n3", "n1")


async def test_a_replica_that_does_not_answer_decides_nothing(parts: Parts) -> None:
    parts.checksums.values["n1"] = Unreachable()
    parts.checksums.values["n3"] = "b"
    await parts.verifier.verify_once(force=True)
    after = await parts.get()
    # n2 and n3 differ and n1 is silent: no majority, a conflict over the two answers.
    assert generations(after) == generations(parts.record)
    assert after.conflict == ("n2", "n3")
    assert not await parts.jobs()


async def test_without_a_majority_nothing_is_overwritten_and_dataloss_reports_it() -> None:
    parts = await build(nodes=("n1", "n2"), healthy=frozenset({"n1", "n2"}))
    try:
        parts.checksums.values["n2"] = "b"
        await parts.verifier.verify_once(force=True)
        after = await parts.get()
        assert generations(after) == {"n1": 1, "n2": 1} and after.primary == "n1"
        assert after.conflict == ("n1", "n2")
        assert not await parts.jobs()
        (entry,) = dataloss([after], {VS: frozenset({"n1", "n2"})})
        assert entry.conflict == ("n1", "n2") and not entry.unavailable
        # The same disagreement again writes nothing more.
        await parts.settle_cache()
        await parts.verifier.verify_once(force=True)
        assert (await parts.get()).revision == after.revision
        # A later check that finds them equal clears it.
        parts.checksums.values["n2"] = "a"
        await parts.verifier.verify_once(force=True)
        cleared = await parts.get()
        assert cleared.conflict == () and generations(cleared) == {"n1": 1, "n2": 1}
        assert dataloss([cleared], {VS: frozenset({"n1", "n2"})}) == []
    finally:
        await parts.cache.close()


async def test_every_stored_verdict_is_reported_by_kind() -> None:
    verdicts: list[tuple[str, str]] = []
    parts = await build(on_verdict=lambda vs, verdict: verdicts.append((vs, verdict)))
    try:
        await parts.verifier.verify_once(force=True)
        assert verdicts == []  # agreement stores nothing
        parts.checksums.values["n3"] = "rolled back"
        await parts.verifier.verify_once(force=True)
        assert verdicts == [(VS, "majority")]
    finally:
        await parts.cache.close()
    verdicts.clear()
    parts = await build(
        nodes=("n1", "n2"),
        healthy=frozenset({"n1", "n2"}),
        on_verdict=lambda vs, verdict: verdicts.append((vs, verdict)),
    )
    try:
        parts.checksums.values["n2"] = "b"
        await parts.verifier.verify_once(force=True)
        await parts.settle_cache()
        parts.checksums.values["n2"] = "a"
        await parts.verifier.verify_once(force=True)
        assert verdicts == [(VS, "conflict"), (VS, "conflict-cleared")]
    finally:
        await parts.cache.close()


async def test_an_operator_choosing_the_replica_to_keep_clears_the_conflict() -> None:
    parts = await build(nodes=("n1", "n2"), healthy=frozenset({"n1", "n2"}))
    try:
        parts.checksums.values["n2"] = "b"
        await parts.verifier.verify_once(force=True)
        assert (await parts.get()).conflict == ("n1", "n2")
        kept = await parts.repos.set_authoritative(VS, parts.record.repository_id, "n2")
        assert kept.conflict == () and kept.primary == "n2"
        assert generations(kept) == {"n1": 1, "n2": 2}
    finally:
        await parts.cache.close()


async def test_a_deposed_leaders_verifier_changes_nothing(parts: Parts) -> None:
    parts.checksums.values["n1"] = "rolled back"
    reads = 0
    original = parts.checksums.__call__

    async def lose_leadership_while_reading(node: str, path: str) -> str | None:
        nonlocal reads
        reads += 1
        if reads == 1:
            # The proxy stalls while reading checksums; another one is elected.
            await parts.leadership.depose()
        return await original(node, path)

    parts.verifier.checksum = lose_leadership_while_reading
    await parts.verifier.verify_once(force=True)  # no exception: the pass just stops
    after = await parts.get()
    assert after == parts.record
    assert not await parts.jobs()
    # It did read the checksums: the fence, not a lucky skip, stopped it.
    assert reads >= 3


async def test_a_verifier_that_no_longer_leads_does_not_start(parts: Parts) -> None:
    parts.checksums.values["n1"] = "rolled back"
    await parts.leadership.depose()
    await parts.verifier.verify_once(force=True)
    assert await parts.get() == parts.record
    assert parts.checksums.calls == []


class OutcomeLandsFirst(MemoryStore):
    """Replays a write that is in its commit phase while the verifier reads
    checksums: the primary n1 applied it, n2 and n3 not yet. Its outcome (every
    replica took it) is recorded just before the verifier's first read of the
    repository record after its checksums, i.e. the one its record change
    starts from; from then on every replica returns the new checksum."""

    def __init__(self) -> None:
        super().__init__(ManualClock())
        self.land: Callable[[], Any] | None = None

    async def range(self, key: str, *args: Any, **kwargs: Any) -> Any:
        land, self.land = self.land, None
        if land is not None and "/repositories/" in key:
            await land()
        elif land is not None:
            self.land = land
        return await super().range(key, *args, **kwargs)


async def test_a_write_recorded_during_verification_demotes_nobody() -> None:
    store = OutcomeLandsFirst()
    parts = await build(store)
    try:
        parts.checksums.values.update({"n1": "with W", "n2": "before W", "n3": "before W"})

        async def land() -> None:
            parts.checksums.values.update(dict.fromkeys(NODES, "with W"))
            await parts.repos.increment_generation(VS, parts.record.repository_id, NODES)

        store.land = land
        await parts.verifier.verify_once(force=True)
        after = await parts.get()
        assert store.land is None, "the interleaving was not replayed"
        # Every replica holds W and is recorded so; nobody was demoted or repaired.
        assert generations(after) == {"n1": 2, "n2": 2, "n3": 2}
        assert after.primary == "n1"
        assert not await parts.jobs()
        # The verdict was void: the replicas stay due and are checked again.
        await parts.settle_cache()
        await parts.verifier.verify_once()
        assert set(parts.checksums.calls[-3:]) == set(NODES)
        assert await parts.get() == after
    finally:
        await parts.cache.close()


async def test_checksums_that_change_between_rounds_decide_nothing(parts: Parts) -> None:
    # n1 applied a write the others had not yet in the first round; by the
    # second round they all have it (its outcome is not recorded yet).
    parts.checksums.values.update({"n1": "with W", "n2": "before W", "n3": "before W"})

    async def write_lands(_delay: float) -> None:
        parts.checksums.values.update(dict.fromkeys(NODES, "with W"))

    parts.verifier.sleep = write_lands
    await parts.verifier.verify_once(force=True)
    assert await parts.get() == parts.record
    assert not await parts.jobs()


async def test_a_paused_cluster_is_not_verified(parts: Parts) -> None:
    parts.checksums.values["n1"] = "rolled back"
    parts.verifier.paused = lambda: True
    assert await parts.verifier.verify_once(force=True) == 0
    assert await parts.get() == parts.record and parts.checksums.calls == []


async def test_demotion_new_primary_and_repair_job_are_one_fenced_txn(parts: Parts) -> None:
    parts.checksums.values["n1"] = "rolled back"
    seen: list[tuple[Any, ...]] = []
    txn = parts.store.txn

    async def spy(compares: Any, success: Any, failure: Any = ()) -> Any:
        seen.append((tuple(compares), tuple(success)))
        return await txn(compares, success, failure)

    parts.store.txn = spy  # type: ignore[method-assign]
    await parts.verifier.verify_once(force=True)
    writes = [
        (compares, success)
        for compares, success in seen
        if any(op.kind is OpKind.PUT and "/repositories/" in op.key for op in success)
    ]
    (compares, success) = writes[0]
    assert len(writes) == 1
    assert any(c.key == KEYS.leader() for c in compares), "not fenced"
    assert any("/jobs/" in op.key for op in success), "the repair job is not in the same txn"
    (put,) = [op for op in success if "/repositories/" in op.key]
    stored = decode_record(VS, parts.record.repository_id, put.value)
    assert stored.primary != "n1" and stored.replica_generation("n1") == 0


class FakeRefs:
    """Replica references as the test sets them; an exception value is raised."""

    def __init__(self, values: dict[str, dict[str, str] | BaseException | None]) -> None:
        self.values = values

    async def __call__(self, node: str, _replica_path: str) -> dict[str, str] | None:
        value = self.values[node]
        if isinstance(value, BaseException):
            raise value
        return value


SAME = {"refs/heads/main": "1" * 40, "refs/heads/a": "2" * 40}


async def _verdicts(parts: Parts) -> list[Event]:
    return [e for e in await History(parts.store, KEYS).events() if e.kind == VERDICT]


async def test_a_verdict_is_recorded_in_its_own_txn_with_the_references_it_repairs() -> None:
    # The verdict's account cannot be lost with a leader that dies before its
    # log line: it is stored with the demotion, in the same fenced txn, and
    # names what the repair will change (what an unfinished write would have
    # to explain).
    lost = {"refs/heads/main": "1" * 40}  # n3 lost refs/heads/a and has one nobody wrote
    lost["refs/heads/phantom"] = "3" * 40
    refs = FakeRefs({"n1": dict(SAME), "n2": dict(SAME), "n3": lost})
    store = MemoryStore(ManualClock())
    parts = await build(store, refs=refs, history=History(store, KEYS, writer="p1"))
    try:
        seen: list[tuple[Any, ...]] = []
        txn = parts.store.txn

        async def spy(compares: Any, success: Any, failure: Any = ()) -> Any:
            seen.append(tuple(success))
            return await txn(compares, success, failure)

        parts.store.txn = spy  # type: ignore[method-assign]
        parts.checksums.values["n3"] = "rolled back"
        await parts.verifier.verify_once(force=True)
        (verdict,) = await _verdicts(parts)
        assert verdict.reason == "majority" and verdict.by == "p1"
        assert verdict.details["demoted"] == ["n3"]
        assert verdict.details["majority"] == ["n1", "n2"]
        assert verdict.details["sources"] == {"n3": "n1"}
        assert verdict.details["differing_refs"] == ["refs/heads/a", "refs/heads/phantom"]
        assert verdict.details["differing_refs_count"] == 2
        # Each side's object: what the fault suite matches to the writes.
        assert verdict.details["differing_values"] == {
            "refs/heads/a": {"n1": "2" * 40, "n3": ""},
            "refs/heads/phantom": {"n1": "", "n3": "3" * 40},
        }
        (with_record,) = [s for s in seen if any("/repositories/" in op.key for op in s)]
        assert any("/history/" in op.key for op in with_record), "not in the verdict's txn"
    finally:
        await parts.cache.close()


async def test_a_verdict_whose_references_cannot_be_read_is_taken_without_them() -> None:
    # The checksums decided it; the references only explain it.
    many = {f"refs/heads/b{i:02d}": "4" * 40 for i in range(DIFFERING_REFS_SHOWN + 5)}
    for unreadable, expected in ((Unreachable(), None), (many, DIFFERING_REFS_SHOWN + 5)):
        store = MemoryStore(ManualClock())
        refs = FakeRefs({"n1": dict(SAME), "n2": dict(SAME), "n3": unreadable})
        parts = await build(store, refs=refs, history=History(store, KEYS))
        try:
            parts.checksums.values["n3"] = "rolled back"
            await parts.verifier.verify_once(force=True)
            assert (await parts.get()).replica_generation("n3") == 0
            (verdict,) = await _verdicts(parts)
            assert verdict.details["differing_refs_count"] == (
                None if expected is None else expected + len(SAME)
            )
            shown = verdict.details["differing_refs"]
            assert shown is None if expected is None else len(shown) == DIFFERING_REFS_SHOWN
        finally:
            await parts.cache.close()


async def test_a_deposed_leaders_verdict_leaves_no_history_entry() -> None:
    store = MemoryStore(ManualClock())
    parts = await build(store, history=History(store, KEYS))
    try:
        parts.checksums.values["n1"] = "rolled back"
        original = parts.checksums.__call__

        async def deposed_meanwhile(node: str, path: str) -> str | None:
            await parts.leadership.depose()
            return await original(node, path)

        parts.verifier.checksum = deposed_meanwhile
        await parts.verifier.verify_once(force=True)
        assert await parts.get() == parts.record
        assert await _verdicts(parts) == []
    finally:
        await parts.cache.close()


def test_differing_references_include_those_on_one_side_only() -> None:
    a = {"refs/heads/x": "1", "refs/heads/y": "2"}
    b = {"refs/heads/x": "1", "refs/heads/y": "3", "refs/heads/z": "4"}
    assert differing_references(a, b) == ["refs/heads/y", "refs/heads/z"]
    assert differing_references(None, b) == sorted(b)
    assert differing_references(a, dict(a)) == []


async def test_references_are_listed_while_the_verifier_waits_between_its_rounds() -> None:
    # Listed after the wait they would stretch the gap between the rounds
    # (a write landing in it voids the verdict); listed while it waits they
    # cost nothing more than the wait.
    events: list[str] = []
    refs = FakeRefs({"n1": dict(SAME), "n2": dict(SAME), "n3": {}})
    listed = refs.__call__

    async def listing(node: str, path: str) -> dict[str, str] | None:
        events.append(f"list {node}")
        return await listed(node, path)

    async def wait(_seconds: float) -> None:
        for _ in range(100):  # the wait is long enough for a concurrent listing
            if "list n3" in events:
                break
            await asyncio.sleep(0)
        events.append("waited")

    store = MemoryStore(ManualClock())
    parts = await build(store, refs=listing, history=History(store, KEYS), sleep=wait)
    try:
        parts.checksums.values["n3"] = "rolled back"
        await parts.verifier.verify_once(force=True)
        assert events.index("waited") > events.index("list n3")
        (verdict,) = await _verdicts(parts)
        assert verdict.details["differing_refs"] == sorted(SAME)
    finally:
        await parts.cache.close()
