from __future__ import annotations

import asyncio
import random

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.repositories import RepositoryCache, RepositoryRecord, RepositoryStore

KEYS = Keyspace("unit")
NODES = ("n1", "n2", "n3")


async def settled(cache: RepositoryCache, revision: int) -> None:
    async with asyncio.timeout(5):
        await cache.wait_for_revision(revision)


async def test_cache_warms_and_follows_every_change() -> None:
    store = MemoryStore(ManualClock())
    repos = RepositoryStore(store, KEYS, rng=random.Random(1))
    existing = await repos.create("vs", "old.git", nodes=NODES, healthy={"n1"})
    cache = RepositoryCache(store, KEYS, page_size=2)
    changes: list[tuple[RepositoryRecord | None, RepositoryRecord | None]] = []
    cache.add_listener(lambda old, new: changes.append((old, new)))
    await cache.start()
    assert cache.get("vs", "old.git") == existing
    created = await repos.create("other", "new.git", nodes=NODES, healthy={"n2"})
    bumped = await repos.increment_generation("vs", existing.repository_id, NODES)
    await settled(cache, bumped.revision)
    assert cache.get("other", "new.git") == created
    assert cache.get_by_id(existing.repository_id) == bumped
    assert len(cache) == 2 and len(cache.records("vs")) == 1
    moved = await repos.rename("vs", existing.repository_id, "moved.git")
    await settled(cache, moved.revision)
    assert cache.get("vs", "old.git") is None
    assert cache.get("vs", "moved.git") == moved
    await repos.delete("other", created.repository_id)
    await settled(cache, store.revision)
    assert cache.get("other", "new.git") is None and cache.get_by_id(created.repository_id) is None
    assert [(o is None, n is None) for o, n in changes[-4:]] == [
        (True, False),
        (False, False),
        (False, False),
        (False, True),
    ]
    await cache.close()


async def test_cache_resyncs_after_compaction() -> None:
    store = MemoryStore(ManualClock())
    repos = RepositoryStore(store, KEYS, rng=random.Random(2))
    first = await repos.create("vs", "a.git", nodes=NODES, healthy={"n1"})
    cache = RepositoryCache(store, KEYS)
    await cache.start()
    store.pause_watches(True)  # the cache falls behind ...
    await repos.delete("vs", first.repository_id)
    second = await repos.create("vs", "b.git", nodes=NODES, healthy={"n1"})
    await store.compact(store.revision)  # ... and the history it needs is gone
    store.pause_watches(False)
    await settled(cache, second.revision)
    assert cache.resyncs == 1
    assert cache.get("vs", "a.git") is None and cache.get("vs", "b.git") == second
    await cache.close()


async def test_cache_keeps_serving_while_the_store_is_down() -> None:
    store = MemoryStore(ManualClock())
    repos = RepositoryStore(store, KEYS, rng=random.Random(3))
    rec = await repos.create("vs", "a.git", nodes=NODES, healthy={"n1"})
    cache = RepositoryCache(store, KEYS)
    await cache.start()
    store.set_available(False)
    await asyncio.sleep(0.05)
    assert cache.get("vs", "a.git") == rec
    store.set_available(True)
    bumped = await repos.increment_generation("vs", rec.repository_id, NODES)
    await settled(cache, bumped.revision)
    assert cache.get("vs", "a.git") == bumped
    await cache.close()


async def test_wait_until_wakes_on_the_change_that_makes_it_true() -> None:
    store = MemoryStore(ManualClock())
    repos = RepositoryStore(store, KEYS, rng=random.Random(3))
    gone = await repos.create("vs", "gone.git", nodes=NODES, healthy={"n1"})
    cache = RepositoryCache(store, KEYS)
    await cache.start()
    # Already true: returns at once.
    async with asyncio.timeout(5):
        await cache.wait_until(lambda: cache.get_by_id(gone.repository_id) is not None)
    forgotten = asyncio.ensure_future(
        cache.wait_until(lambda: cache.get_by_id(gone.repository_id) is None)
    )
    # Another change wakes the waiter, which looks and keeps waiting.
    await repos.create("vs", "other.git", nodes=NODES, healthy={"n1"})
    await settled(cache, store.revision)
    assert not forgotten.done()
    await repos.delete("vs", gone.repository_id)
    async with asyncio.timeout(5):
        await forgotten
    assert cache.get_by_id(gone.repository_id) is None
    await cache.close()


async def test_wait_until_follows_a_resync() -> None:
    store = MemoryStore(ManualClock())
    repos = RepositoryStore(store, KEYS, rng=random.Random(4))
    first = await repos.create("vs", "a.git", nodes=NODES, healthy={"n1"})
    cache = RepositoryCache(store, KEYS)
    await cache.start()
    forgotten = asyncio.ensure_future(
        cache.wait_until(lambda: cache.get_by_id(first.repository_id) is None)
    )
    store.pause_watches(True)
    await repos.delete("vs", first.repository_id)
    await store.compact(store.revision)
    store.pause_watches(False)
    async with asyncio.timeout(5):
        await forgotten
    await cache.close()
