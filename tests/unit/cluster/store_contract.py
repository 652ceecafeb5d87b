"""Checks of the store contract shared by the in-memory store and real etcd.

Each check works under its own key prefix, so one store can run them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gitquorum.cluster.errors import Compacted, LeaseExpired
from gitquorum.cluster.store import Compare, EventType, Op, Store, WatchBatch


async def check_revisions(store: Store, p: str) -> None:
    rev1 = await store.put(f"{p}a", b"1")
    rev2 = await store.put(f"{p}a", b"2")
    assert rev2 == rev1 + 1
    kv = await store.get(f"{p}a")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"2", rev1, rev2, 2)
    assert await store.get(f"{p}missing") is None
    assert await store.delete(f"{p}missing") == 0
    assert await store.delete(f"{p}a") == 1
    assert await store.get(f"{p}a") is None


async def check_txn(store: Store, p: str) -> None:
    key = f"{p}k"
    created = await store.txn([Compare.absent(key)], [Op.put(key, b"v1")], [Op.get(key)])
    assert created.succeeded
    again = await store.txn([Compare.absent(key)], [Op.put(key, b"v2")], [Op.get(key)])
    assert not again.succeeded
    assert again.range(0).kvs[0].value == b"v1"
    assert again.revision == created.revision  # a failed txn writes nothing
    # Value, version, create and mod revision compares.
    assert (await store.txn([Compare.value(key, b"v1")], [])).succeeded
    assert not (await store.txn([Compare.value(key, b"zz")], [])).succeeded
    assert not (await store.txn([Compare.value(f"{p}none", b"")], [])).succeeded
    assert (await store.txn([Compare.version(key, 1)], [])).succeeded
    assert (await store.txn([Compare.create_revision(key, created.revision)], [])).succeeded
    cas = await store.txn([Compare.mod_revision(key, created.revision)], [Op.put(key, b"v3")])
    assert cas.succeeded
    stale = await store.txn([Compare.mod_revision(key, created.revision)], [Op.put(key, b"v4")])
    assert not stale.succeeded
    assert (await store.get(key)).value == b"v3"  # type: ignore[union-attr]
    # Range compare: nothing under the prefix changed since a revision.
    sub = f"{p}range/"
    read = await store.range(sub, prefix=True)
    assert (
        await store.txn([Compare.unchanged_since(sub, read.revision)], [Op.put(f"{sub}1", b"")])
    ).succeeded
    assert not (
        await store.txn([Compare.unchanged_since(sub, read.revision)], [Op.put(f"{sub}2", b"")])
    ).succeeded
    # Several writes in one txn share one revision; deletes report counts.
    multi = await store.txn([], [Op.put(f"{p}m1", b"1"), Op.put(f"{p}m2", b"2"), Op.delete(key)])
    assert multi.responses[2] == 1
    m1, m2 = await store.get(f"{p}m1"), await store.get(f"{p}m2")
    assert m1 is not None and m2 is not None
    assert m1.mod_revision == m2.mod_revision == multi.revision


async def check_paged_snapshot(store: Store, p: str) -> None:
    for i in range(25):
        await store.put(f"{p}{i:03d}", str(i).encode())
    first = await store.range(p, prefix=True, limit=10)
    assert first.more and len(first.kvs) == 10
    everything = await store.get_prefix(p, page_size=7)
    assert [kv.key for kv in everything.kvs] == [f"{p}{i:03d}" for i in range(25)]
    # A later write is not part of an earlier snapshot read at its revision.
    await store.put(f"{p}000", b"changed")
    old = await store.range(p, prefix=True, revision=everything.revision)
    assert old.kvs[0].value == b"0"


async def check_leases(store: Store, p: str) -> None:
    lease = await store.grant(5)
    assert lease.ttl >= 5
    await store.put(f"{p}owned", b"x", lease=lease.id)
    assert (await store.get(f"{p}owned")).lease == lease.id  # type: ignore[union-attr]
    assert await store.keep_alive(lease.id) >= 5
    assert await store.time_to_live(lease.id) > 0
    await store.revoke(lease.id)
    assert await store.get(f"{p}owned") is None
    assert await store.time_to_live(lease.id) == -1
    with pytest.raises(LeaseExpired):
        await store.put(f"{p}x", b"", lease=lease.id)
    with pytest.raises(LeaseExpired):
        await store.txn([], [Op.put(f"{p}y", b"", lease=lease.id)])
    assert await store.get(f"{p}y") is None
    with pytest.raises(LeaseExpired):
        await store.keep_alive(lease.id)
    await store.revoke(lease.id)  # revoking twice is fine


async def collect(
    store: Store, key: str, start: int, count: int, *, prefix: bool = True
) -> list[WatchBatch]:
    batches: list[WatchBatch] = []
    async with asyncio.timeout(10):
        async for batch in store.watch(key, prefix=prefix, start_revision=start):
            if batch.events or batch.compacted:
                batches.append(batch)
            if batch.compacted or sum(len(b.events) for b in batches) >= count:
                break
    return batches


async def check_watch(store: Store, p: str) -> None:
    rev = await store.put(f"{p}w1", b"1")
    await store.put(f"{p}w2", b"2")
    await store.put(f"{p}other-prefix-is-fine", b"x")
    await store.delete(f"{p}w1")
    await store.put(f"{p[:-1]}-outside", b"not watched")
    batches = await collect(store, p, rev, 4)
    events = [e for b in batches for e in b.events]
    assert [(e.type, e.kv.key) for e in events] == [
        (EventType.PUT, f"{p}w1"),
        (EventType.PUT, f"{p}w2"),
        (EventType.PUT, f"{p}other-prefix-is-fine"),
        (EventType.DELETE, f"{p}w1"),
    ]
    revisions = [e.kv.mod_revision for e in events]
    assert revisions == sorted(revisions)
    # Live events after the watch started.
    task = asyncio.ensure_future(collect(store, f"{p}live", 0, 2, prefix=False))
    await asyncio.sleep(0.2)
    await store.put(f"{p}live", b"a")
    await store.put(f"{p}live", b"b")
    live = await task
    assert [e.kv.value for b in live for e in b.events] == [b"a", b"b"]


async def check_compaction(store: Store, p: str) -> None:
    old = await store.put(f"{p}c", b"1")
    latest = await store.put(f"{p}c", b"2")
    await store.compact(latest)
    batches = await collect(store, p, old, 1)
    assert batches[-1].compacted
    with pytest.raises(Compacted):
        await store.range(p, prefix=True, revision=old)


CHECKS: list[Callable[[Store, str], Awaitable[None]]] = [
    check_revisions,
    check_txn,
    check_paged_snapshot,
    check_leases,
    check_watch,
    check_compaction,
]
