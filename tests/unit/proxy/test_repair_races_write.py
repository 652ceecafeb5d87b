"""A repair racing a write on its target, replayed through the finalizer.

A write W is routed to the primary P, S1 and the target T while all three are
up to date. Another write X, which T missed, is recorded first, so T is behind
and a repair starts: it reads generation g+1, its fetch reads P's references,
W lands on P, S1 and T, and the fetch then force-updates T's references to
what it read, undoing W there; the repair records T at g+1. When W's outcome
arrives, T is at the repository's generation and "took" W: counting it moves
it to g+2, recorded up to date without W.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.decisions import WriteResult, outdated_replicas, up_to_date_replicas
from gitquorum.cluster.errors import Conflict, DowngradeAttempted
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.repositories import (
    RepositoryCache,
    RepositoryRecord,
    RepositoryStore,
    decode_record,
    encode_record,
)
from gitquorum.proxy.etcd_cluster_port import EtcdClusterPort
from gitquorum.proxy.routing import route_mutator
from tests.unit.proxy.finalizer_parts import KEYS, NODES, memory_port

ALL = frozenset(NODES)


async def _port() -> tuple[EtcdClusterPort, RepositoryRecord]:
    store = MemoryStore(ManualClock())
    repos = RepositoryStore(store, KEYS, rng=random.Random(1))
    record = await repos.create("vs", "a.git", nodes=NODES, healthy=set(NODES))
    cache = RepositoryCache(store, KEYS)
    await cache.start()
    return memory_port(store, repos, cache), record


async def _demoted_and_repaired(
    port: EtcdClusterPort, record: RepositoryRecord
) -> tuple[str, str, str, RepositoryRecord]:
    """X (missed by T) is recorded, then T's repair; returns P, S1, T and the record."""
    assert record.primary is not None
    p = record.primary
    s1, t = (n for n in NODES if n != p)
    route_x = route_mutator(record, ALL, NODES)
    await port.record_write(
        "vs", route_x, WriteResult(frozenset({p, s1}), frozenset({t}), "secondaries-outdated")
    )
    behind = await port.repositories.get("vs", record.repository_id)
    assert outdated_replicas(behind) == (t,)
    # The repair read generation g+1 from its source and copied; W landed on T
    # meanwhile and the copy undid it there.
    repaired = await port.repositories.set_replica_generation(
        "vs", record.repository_id, t, behind.generation
    )
    assert up_to_date_replicas(repaired) == ALL
    return p, s1, t, repaired


async def test_a_write_routed_before_a_repair_does_not_count_the_repaired_target() -> None:
    port, record = await _port()
    async with asyncio.timeout(5):
        route_w = route_mutator(record, ALL, NODES)  # P, S1 and T, all up to date
        p, s1, t, repaired = await _demoted_and_repaired(port, record)
        await port.record_write(
            "vs", route_w, WriteResult(frozenset({p, s1, t}), frozenset(), "committed")
        )
        after = await port.repositories.get("vs", record.repository_id)
        jobs = await port.queue.jobs()
    assert after.generation == repaired.generation + 1
    # P and S1 hold W; T may not: it is behind and gets a repair.
    assert up_to_date_replicas(after) == {p, s1}
    assert after.replica_generation(t) == repaired.generation
    assert [(j.target_node, j.repository_id) for j in jobs if j.target_node == t] == [
        (t, record.repository_id)
    ]
    await port.cache.close()


async def test_a_write_routed_after_the_repair_was_recorded_counts_the_target() -> None:
    port, record = await _port()
    async with asyncio.timeout(5):
        p, s1, t, repaired = await _demoted_and_repaired(port, record)
        # Routed from the record the repair wrote: the copy was complete.
        route_w = route_mutator(repaired, ALL, NODES)
        assert t in route_w.secondaries
        await port.record_write(
            "vs", route_w, WriteResult(frozenset({p, s1, t}), frozenset(), "committed")
        )
        after = await port.repositories.get("vs", record.repository_id)
    assert up_to_date_replicas(after) == ALL
    assert after.generation == repaired.generation + 1
    await port.cache.close()


async def test_a_repair_marks_its_target_at_the_revision_it_compared_against() -> None:
    port, record = await _port()
    async with asyncio.timeout(5):
        _p, _s1, t, repaired = await _demoted_and_repaired(port, record)
    assert repaired.repaired_at(t) > record.revision
    assert repaired.repaired_at(t) < repaired.revision
    assert all(repaired.repaired_at(n) == -1 for n in NODES if n != t)
    # The mark survives the store and goes with the replica.
    value = encode_record(repaired)
    again = decode_record("vs", repaired.repository_id, value, repaired.revision)
    assert again == repaired
    assert again.with_replicas({n: g for n, g in again.replicas if n != t}).repaired == ()
    await port.cache.close()


async def test_a_conditional_repair_update_is_refused_after_any_change() -> None:
    port, record = await _port()
    repos = port.repositories
    assert record.primary is not None
    t = next(n for n in NODES if n != record.primary)
    async with asyncio.timeout(5):
        demoted = await repos.mark_outdated("vs", record.repository_id, [t])
        bumped = await repos.increment_generation(
            "vs", record.repository_id, [n for n in NODES if n != t]
        )
        with pytest.raises(Conflict):
            await repos.set_replica_generation(
                "vs", record.repository_id, t, demoted.generation, read_revision=demoted.revision
            )
        done = await repos.set_replica_generation(
            "vs", record.repository_id, t, bumped.generation, read_revision=bumped.revision
        )
    assert up_to_date_replicas(done) == ALL
    await port.cache.close()


async def test_write_holds_are_exclusive_bounded_and_released_by_the_repair() -> None:
    port, record = await _port()
    repos = port.repositories
    assert record.primary is not None
    t, other = (n for n in NODES if n != record.primary)
    async with asyncio.timeout(5):
        with pytest.raises(DowngradeAttempted):
            await repos.hold_writes("vs", record.repository_id, t, now=100.0, duration=1.0)
        await repos.mark_outdated("vs", record.repository_id, [t, other])
        held = await repos.hold_writes("vs", record.repository_id, t, now=100.0, duration=60.0)
        assert (held.hold_for, held.hold_until) == (t, 102.0)  # capped
        with pytest.raises(Conflict):
            await repos.hold_writes("vs", record.repository_id, other, now=101.0, duration=1.0)
        # An expired hold does not block another replica's catch-up.
        taken = await repos.hold_writes("vs", record.repository_id, other, now=103.0, duration=1)
        assert taken.hold_for == other
        # The replica's own repair update releases its hold; others' stay.
        kept = await repos.set_replica_generation("vs", record.repository_id, t, taken.generation)
        assert kept.hold_for == other
        released = await repos.set_replica_generation(
            "vs", record.repository_id, other, taken.generation
        )
        assert (released.hold_for, released.hold_until) == (None, 0.0)
        assert await repos.release_writes("vs", record.repository_id, t) == released
    await port.cache.close()
