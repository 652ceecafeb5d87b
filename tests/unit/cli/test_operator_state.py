"""Operator state (drained nodes, pause) over the in-memory store."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, generate_latest

from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.operator_state import (
    Mark,
    OperatorKeys,
    OperatorSnapshot,
    OperatorState,
    OperatorStateView,
)

KEYS = Keyspace("unit")


async def settled(view: OperatorStateView, store: MemoryStore) -> None:
    async with asyncio.timeout(5):
        await view.wait_for_revision(store.revision)


async def test_drain_and_pause_are_idempotent_and_keep_the_first_mark() -> None:
    clock = iter([100.0, 200.0, 300.0, 400.0])
    state = OperatorState(MemoryStore(), KEYS, clock=lambda: next(clock))
    assert await state.drain("vs", "n1", reason="disk swap", by="ops@host")
    assert not await state.drain("vs", "n1", reason="again")
    assert await state.pause(reason="upgrade")
    assert not await state.pause()
    snapshot = await state.snapshot()
    assert snapshot.draining("vs") == {"n1"}
    assert snapshot.draining("other") == frozenset()
    assert snapshot.drained["vs"]["n1"] == Mark(100.0, "disk swap", "ops@host")
    assert snapshot.pause == Mark(300.0, "upgrade")
    assert await state.undrain("vs", "n1")
    assert not await state.undrain("vs", "n1")
    assert await state.resume()
    assert not await state.resume()
    assert await state.snapshot() == OperatorSnapshot({}, None)


async def test_view_follows_changes_and_exports_gauges() -> None:
    store = MemoryStore()
    state = OperatorState(store, KEYS)
    await state.drain("vs", "n2")
    registry = CollectorRegistry()
    view = OperatorStateView(store, KEYS, registry=registry)
    changes: list[tuple[OperatorSnapshot, OperatorSnapshot]] = []
    view.add_listener(lambda old, new: changes.append((old, new)))
    await view.start()
    try:
        assert view.draining("vs") == {"n2"} and not view.paused()
        await state.pause()
        await state.drain("vs", "n3")
        await state.drain("other", "n1")
        await settled(view, store)
        assert view.paused()
        assert view.draining("vs") == {"n2", "n3"}
        assert view.draining("other") == {"n1"}
        text = generate_latest(registry).decode()
        assert "gitquorum_operator_paused 1.0" in text
        assert 'gitquorum_node_draining{node="n3",virtual_storage="vs"} 1.0' in text
        await state.resume()
        await state.undrain("vs", "n2")
        await settled(view, store)
        assert not view.paused()
        assert view.draining("vs") == {"n3"}
        text = generate_latest(registry).decode()
        assert "gitquorum_operator_paused 0.0" in text
        assert 'node="n2"' not in text
        assert changes and changes[-1][1] == view.snapshot
    finally:
        await view.close()


async def test_foreign_and_malformed_keys_do_not_break_the_view() -> None:
    store = MemoryStore()
    okeys = OperatorKeys(KEYS)
    await store.put(okeys.paused, b"not json")
    await store.put(f"{okeys.prefix}drained/vs", b"{}")  # no node segment
    await store.put(f"{okeys.prefix}something-else", b"{}")
    view = OperatorStateView(store, KEYS)
    await view.start()
    try:
        # Presence is what pauses; an unreadable value only loses the details.
        assert view.paused() and view.snapshot.pause == Mark(0.0)
        assert view.snapshot.drained == {}
    finally:
        await view.close()


def test_keys_live_under_the_cluster_prefix() -> None:
    okeys = OperatorKeys(KEYS)
    assert okeys.paused == "/gitquorum/unit/operator/paused"
    assert okeys.drained("vs", "n1") == "/gitquorum/unit/operator/drained/vs/n1"
    assert okeys.parse(okeys.drained("vs", "n1")) == ("vs", "n1")
    assert okeys.parse(okeys.paused) is None
