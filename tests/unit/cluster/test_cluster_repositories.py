from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.decisions import up_to_date_replicas, valid_primaries
from gitquorum.cluster.errors import (
    Conflict,
    DowngradeAttempted,
    FailedPrecondition,
    InvalidReplicationFactor,
    NoHealthyNode,
    RepositoryExists,
    RepositoryNotFound,
    WriteToOutdatedReplicas,
)
from gitquorum.cluster.keys import Keyspace, replica_path
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.reports import dataloss, outdated_by_node, unavailable_by_virtual_storage
from gitquorum.cluster.repositories import (
    RepositoryRecord,
    RepositoryStore,
    decode_record,
    encode_record,
    place_replicas,
)

KEYS = Keyspace("unit")
NODES = ("n1", "n2", "n3")


def record(
    gen: int, replicas: dict[str, int], primary: str = "n1", assigned=NODES, rid: int = 1
) -> RepositoryRecord:  # type: ignore[no-untyped-def]
    return RepositoryRecord(
        rid, "vs", f"repo{rid}.git", primary, tuple(assigned), gen, ()
    ).with_replicas(replicas)


def test_replica_path_matches_the_praefect_layout() -> None:
    assert replica_path(54771) == "@cluster/repositories/6f/96/54771"


def test_record_round_trip_is_small() -> None:
    rec = record(7, {"n1": 7, "n2": 7, "n3": 6})
    value = encode_record(rec)
    assert len(value) < 200
    assert decode_record("vs", 1, value, 5) == RepositoryRecord(
        1, "vs", "repo1.git", "n1", NODES, 7, (("n1", 7), ("n2", 7), ("n3", 6)), 5
    )


def test_placement() -> None:
    rng = random.Random(1)
    for _ in range(50):
        primary, assigned = place_replicas(["a", "b", "c", "d"], {"b", "c"}, 3, rng)
        assert primary in {"b", "c"} and assigned[0] == primary
        assert len(set(assigned)) == 3
    assert len(place_replicas(["a", "b"], {"a"}, 0, rng)[1]) == 2
    with pytest.raises(NoHealthyNode):
        place_replicas(["a"], set(), 1, rng)
    with pytest.raises(InvalidReplicationFactor):
        place_replicas(["a"], {"a"}, 2, rng)


def test_pure_queries() -> None:
    healthy = {"n1", "n2"}
    fine = record(3, {"n1": 3, "n2": 3, "n3": 3}, rid=1)
    partial = record(3, {"n1": 3, "n2": 2}, rid=2)
    lost = record(3, {"n1": 2, "n3": 3}, rid=3)  # only n3 is current, and it is down
    unassigned_current = record(3, {"n1": 2, "n2": 3}, assigned=("n1", "n3"), rid=4)
    assert up_to_date_replicas(partial) == {"n1"}
    assert valid_primaries(fine, healthy) == {"n1", "n2"}
    assert valid_primaries(lost, healthy) == frozenset()
    assert valid_primaries(unassigned_current, healthy) == frozenset()
    records = [fine, partial, lost, unassigned_current]
    entries = dataloss(records, {"vs": healthy})
    assert [e.record.repository_id for e in entries] == [3, 4]
    assert all(e.unavailable for e in entries)
    n3 = next(s for s in entries[0].replicas if s.node == "n3")
    assert (n3.behind_by, n3.healthy, n3.assigned, n3.valid_primary) == (0, False, True, False)
    with_partial = dataloss(records, {"vs": healthy}, include_partially_replicated=True)
    assert sorted(e.record.repository_id for e in with_partial) == [1, 2, 3, 4]  # 1: n3 unhealthy
    assert not next(e for e in with_partial if e.record.repository_id == 2).unavailable
    assert outdated_by_node(records) == {
        ("vs", "n2"): [2, 3],
        ("vs", "n3"): [2, 4],
        ("vs", "n1"): [3, 4],
    }
    assert unavailable_by_virtual_storage(records, {"vs": healthy}) == {"vs": 2}


def test_outdated_by_node_exact() -> None:
    records = [record(2, {"n1": 2, "n2": 1}, rid=1), record(1, {"n1": 1}, rid=2)]
    assert outdated_by_node(records) == {("vs", "n2"): [1, 2], ("vs", "n3"): [1, 2]}


@pytest.fixture
def repos() -> RepositoryStore:
    return RepositoryStore(MemoryStore(ManualClock()), KEYS, rng=random.Random(7))


async def test_create_assigns_and_indexes(repos: RepositoryStore) -> None:
    rec = await repos.create("vs", "a.git", nodes=NODES, healthy={"n2"}, replication_factor=2)
    assert rec.primary == "n2" and len(rec.assigned) == 2 and rec.generation == 0
    assert up_to_date_replicas(rec) == set(rec.assigned)
    assert (await repos.get_by_path("vs", "a.git")) == rec
    assert (await repos.get("vs", rec.repository_id)).replica_path == replica_path(
        rec.repository_id
    )
    with pytest.raises(RepositoryExists):
        await repos.create("vs", "a.git", nodes=NODES, healthy={"n2"})
    second = await repos.create("vs", "b.git", nodes=NODES, healthy={"n1"}, created_on=["n1"])
    assert second.repository_id == rec.repository_id + 1
    assert second.replica_generation("n2") == -1
    with pytest.raises(RepositoryNotFound):
        await repos.get_by_path("vs", "nope.git")


async def test_generation_rules(repos: RepositoryStore) -> None:
    rec = await repos.create("vs", "g.git", nodes=NODES, healthy=set(NODES))
    rid = rec.repository_id
    rec = await repos.increment_generation("vs", rid, ["n1", "n2"])
    assert rec.generation == 1 and dict(rec.replicas) == {"n1": 1, "n2": 1, "n3": 0}
    # n3 missed that write: it is not bumped although it took part in the next.
    rec = await repos.increment_generation("vs", rid, ["n1", "n3"])
    assert dict(rec.replicas) == {"n1": 2, "n2": 1, "n3": 0}
    with pytest.raises(WriteToOutdatedReplicas):
        await repos.increment_generation("vs", rid, ["n2", "n3"])
    rec = await repos.set_replica_generation("vs", rid, "n3", 2)
    assert up_to_date_replicas(rec) == {"n1", "n3"}
    with pytest.raises(DowngradeAttempted):
        await repos.set_replica_generation("vs", rid, "n3", 1)
    rec = await repos.mark_outdated("vs", rid, ["n3"])
    assert rec.replica_generation("n3") == 1


async def test_primary_factor_authoritative_rename_delete(repos: RepositoryStore) -> None:
    rec = await repos.create("vs", "p.git", nodes=NODES, healthy={"n1"})
    rid = rec.repository_id
    rec = await repos.increment_generation("vs", rid, ["n1", "n2"])
    with pytest.raises(FailedPrecondition):
        await repos.set_primary("vs", rid, "n3")  # outdated
    with pytest.raises(Conflict):
        await repos.set_primary("vs", rid, "n2", expected="n3")
    rec = await repos.set_primary("vs", rid, "n2", expected="n1")
    assert rec.primary == "n2"
    rec = await repos.set_replication_factor("vs", rid, 1, nodes=NODES)
    assert rec.assigned == ("n2",)
    rec = await repos.set_replication_factor("vs", rid, 3, nodes=NODES)
    assert rec.assigned[0] == "n2" and set(rec.assigned) == set(NODES)
    with pytest.raises(InvalidReplicationFactor):
        await repos.set_replication_factor("vs", rid, 4, nodes=NODES)
    rec = await repos.set_authoritative("vs", rid, "n3")
    assert rec.primary == "n3" and up_to_date_replicas(rec) == {"n3"} and rec.generation == 2
    with pytest.raises(FailedPrecondition):
        await repos.remove_replica("vs", rid, "n3")
    rec = await repos.remove_replica("vs", rid, "n1")
    assert rec.replica_generation("n1") == -1
    other = await repos.create("vs", "other.git", nodes=NODES, healthy={"n1"})
    with pytest.raises(RepositoryExists):
        await repos.rename("vs", rid, "other.git")
    rec = await repos.rename("vs", rid, "moved.git")
    assert (await repos.find("vs", "p.git")) is None
    assert (await repos.get_by_path("vs", "moved.git")).repository_id == rid
    await repos.delete("vs", rid)
    assert (await repos.find("vs", "moved.git")) is None
    assert [r.repository_id for r in await repos.list("vs")] == [other.repository_id]


async def test_fenced_update_is_refused_for_a_stale_leader(repos: RepositoryStore) -> None:
    from gitquorum.cluster.election import FencingToken
    from gitquorum.cluster.errors import LeadershipLost

    rec = await repos.create("vs", "f.git", nodes=NODES, healthy={"n1"})
    await repos.increment_generation("vs", rec.repository_id, NODES)
    await repos.store.put(KEYS.leader(), b"{}")
    current = await repos.store.get(KEYS.leader())
    assert current is not None
    good = FencingToken(KEYS.leader(), current.create_revision, 0, "x")
    stale = FencingToken(KEYS.leader(), current.create_revision - 1, 0, "y")
    with pytest.raises(LeadershipLost):
        await repos.set_primary("vs", rec.repository_id, "n2", fence=stale)
    assert (await repos.set_primary("vs", rec.repository_id, "n2", fence=good)).primary == "n2"


async def test_ambiguous_update_is_resolved_by_reading_back(repos: RepositoryStore) -> None:
    rec = await repos.create("vs", "amb.git", nodes=NODES, healthy={"n1"})
    assert isinstance(repos.store, MemoryStore)
    repos.store.fail_after_apply(1)
    bumped = await repos.increment_generation("vs", rec.repository_id, NODES)
    assert bumped.generation == 1
    assert (await repos.get("vs", rec.repository_id)).generation == 1


# -- properties -------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(writers=st.integers(2, 12), seed=st.integers(0, 2**32 - 1))
def test_concurrent_bumps_lose_no_update(writers: int, seed: int) -> None:
    async def scenario() -> None:
        store = MemoryStore(ManualClock(), interleave=random.Random(seed))
        repos = RepositoryStore(store, KEYS, rng=random.Random(seed))
        rec = await repos.create("vs", "c.git", nodes=NODES, healthy=set(NODES))
        results = await asyncio.gather(
            *(repos.increment_generation("vs", rec.repository_id, NODES) for _ in range(writers))
        )
        final = await repos.get("vs", rec.repository_id)
        assert final.generation == writers
        # Every writer got a distinct generation: no two CAS writes both applied.
        assert sorted(r.generation for r in results) == list(range(1, writers + 1))

    asyncio.run(scenario())


OPS = st.lists(
    st.tuples(
        st.sampled_from(["bump", "replicate", "outdate", "authoritative", "primary"]),
        st.sets(st.sampled_from(NODES), min_size=1, max_size=3),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(OPS, min_size=1, max_size=3), seed=st.integers(0, 2**32 - 1))
def test_generations_never_go_backwards(
    batches: list[list[tuple[str, set[str]]]], seed: int
) -> None:
    async def run_ops(repos: RepositoryStore, rid: int, ops: list[tuple[str, set[str]]]) -> None:
        for op, nodes in ops:
            node = sorted(nodes)[0]
            try:
                if op == "bump":
                    await repos.increment_generation("vs", rid, nodes)
                elif op == "replicate":
                    source = await repos.get("vs", rid)
                    await repos.set_replica_generation("vs", rid, node, source.generation)
                elif op == "outdate":
                    await repos.mark_outdated("vs", rid, nodes)
                elif op == "authoritative":
                    await repos.set_authoritative("vs", rid, node)
                else:
                    await repos.set_primary("vs", rid, node)
            except (WriteToOutdatedReplicas, DowngradeAttempted, FailedPrecondition):
                pass

    async def scenario() -> None:
        store = MemoryStore(ManualClock(), interleave=random.Random(seed))
        repos = RepositoryStore(store, KEYS, rng=random.Random(seed))
        rec = await repos.create("vs", "h.git", nodes=NODES, healthy=set(NODES))
        key = KEYS.repository("vs", rec.repository_id)
        start = store.revision
        await asyncio.gather(*(run_ops(repos, rec.repository_id, ops) for ops in batches))
        # Replay the history of the record from the watch.
        history: list[RepositoryRecord] = []
        if store.revision == start:
            return  # nothing was written
        async with asyncio.timeout(5):
            async for batch in store.watch(key, start_revision=start):
                history.extend(
                    decode_record("vs", rec.repository_id, e.kv.value) for e in batch.events
                )
                if batch.revision >= store.revision:
                    break
        previous = rec
        for current in history:
            assert current.generation >= previous.generation
            for _node, generation in current.replicas:
                assert generation <= current.generation
            previous = current

    asyncio.run(scenario())
