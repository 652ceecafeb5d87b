from __future__ import annotations

import asyncio
import uuid

import pytest

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.store import Compare, EventType, Op, prefix_end
from tests.unit.cluster.store_contract import CHECKS, collect


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
async def test_memory_store_contract(check) -> None:  # type: ignore[no-untyped-def]
    store = MemoryStore(ManualClock())
    await check(store, f"/t/{uuid.uuid4().hex}/")
    await store.close()


def test_prefix_end() -> None:
    assert prefix_end("/a/") == "/a0"
    assert prefix_end("a\udcff") == "b"  # the byte 0xff carried as a surrogate escape


async def test_lease_expires_on_clock_and_deletes_keys_in_one_revision() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    lease = await store.grant(2)
    await store.put("/l/a", b"", lease=lease.id)
    await store.put("/l/b", b"", lease=lease.id)
    start = store.revision + 1
    clock.advance(1.9)
    assert len((await store.range("/l/", prefix=True)).kvs) == 2
    clock.advance(0.2)
    assert (await store.range("/l/", prefix=True)).kvs == ()
    batches = await collect(store, "/l/", start, 2)
    assert [e.type for e in batches[0].events] == [EventType.DELETE, EventType.DELETE]
    assert len(batches) == 1  # one revision
    assert await store.time_to_live(lease.id) == -1


async def test_real_clock_leases_expire_without_calls() -> None:
    store = MemoryStore()
    lease = await store.grant(0.05)
    await store.put("/r/a", b"", lease=lease.id)
    async with asyncio.timeout(2):
        async for batch in store.watch("/r/", prefix=True, start_revision=store.revision + 1):
            assert batch.events[0].type is EventType.DELETE
            break
    await store.close()


async def test_unavailable_and_ambiguous_writes() -> None:
    store = MemoryStore(ManualClock())
    store.set_available(False)
    with pytest.raises(StoreUnavailable):
        await store.get("/x")
    store.set_available(True)
    store.fail_after_apply(1)
    with pytest.raises(StoreUnavailable):
        await store.txn([], [Op.put("/x", b"1")])
    assert (await store.get("/x")) is not None  # applied although it failed


async def test_paused_watch_then_compaction_reports_resync() -> None:
    store = MemoryStore(ManualClock())
    start = await store.put("/p/a", b"1")
    store.pause_watches(True)
    task = asyncio.ensure_future(collect(store, "/p/", start, 1))
    await asyncio.sleep(0)
    latest = await store.put("/p/a", b"2")
    await store.compact(latest)
    store.pause_watches(False)
    batches = await task
    assert batches[-1].compacted


@pytest.mark.parametrize(
    ("compares", "success", "failure", "refused"),
    [
        pytest.param(128, 128, 128, False, id="128 in each list: the limit, counted apart"),
        pytest.param(0, 129, 0, True, id="129 ops on success"),
        pytest.param(0, 0, 129, True, id="129 ops on failure"),
        pytest.param(129, 1, 0, True, id="129 compares"),
    ],
)
async def test_memory_store_refuses_txns_over_etcds_max_txn_ops(
    compares: int, success: int, failure: int, refused: bool
) -> None:
    """etcd's --max-txn-ops (128) applies to compares, success and failure
    ops each on its own; the in-memory store refuses what etcd refuses."""
    store = MemoryStore(ManualClock())
    call = store.txn(
        [Compare.absent(f"k{i}") for i in range(compares)],
        [Op.put(f"s{i}", b"v") for i in range(success)],
        [Op.put(f"f{i}", b"v") for i in range(failure)],
    )
    if refused:
        with pytest.raises(StoreUnavailable, match="too many operations"):
            await call
        assert store.dump() == {}
    else:
        assert (await call).succeeded
