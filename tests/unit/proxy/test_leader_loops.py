"""The leader's loops: when their passes run, and what is left behind on step-down."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.cluster.queue import QueueStats
from gitquorum.proxy import leader_tasks as leader_tasks_module
from gitquorum.proxy.leader_tasks import LeaderTasks


class FakeHealth:
    def __init__(self) -> None:
        self.listeners: list[Callable[[object, object], None]] = []

    def add_listener(self, callback: Callable[[object, object], None]) -> None:
        self.listeners.append(callback)

    def changed(self) -> None:
        for callback in self.listeners:
            callback(None, None)

    def healthy(self, _virtual_storage: str) -> frozenset[str]:
        return frozenset({"n1"})


class FakeCache:
    def records(self, _virtual_storage: str | None = None) -> tuple[()]:
        return ()


class FakeQueue:
    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)

    async def jobs(self) -> list[Any]:
        if self.failures:
            raise self.failures.pop(0)
        return []


class RecordingMetrics:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.exported = asyncio.Event()

    def update_queue(self, stats: QueueStats) -> None:
        self.calls.append(("queue", stats.depth))

    def update_repositories(self, records: Any, healthy: Any, **kwargs: Any) -> None:
        self.calls.append(("repositories", dict(healthy)))
        self.exported.set()


def leader_tasks(queue: FakeQueue, metrics: RecordingMetrics | None = None) -> LeaderTasks:
    fake: Any = object()
    return LeaderTasks(
        fake,
        fake,
        FakeCache(),  # type: ignore[arg-type]
        FakeHealth(),  # type: ignore[arg-type]
        queue,  # type: ignore[arg-type]
        fake,
        metrics,  # type: ignore[arg-type]
        virtual_storages=["vs"],
        failover_interval=60.0,
    )


async def test_metrics_loop_exports_survives_an_outage_and_clears_on_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(leader_tasks_module, "METRICS_INTERVAL", 0.01)
    metrics = RecordingMetrics()
    tasks = leader_tasks(FakeQueue(StoreUnavailable("etcd down")), metrics)
    loop = asyncio.ensure_future(tasks.metrics_loop())
    # The first pass meets the outage; the loop goes on and the next one exports.
    async with asyncio.timeout(10):
        await metrics.exported.wait()
    assert metrics.calls == [("queue", {}), ("repositories", {"vs": frozenset({"n1"})})]
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop
    # A former leader stops exporting cluster-wide gauges.
    assert metrics.calls[-2:] == [("queue", {}), ("repositories", {})]


async def test_metrics_loop_without_cluster_metrics_ends_at_once() -> None:
    tasks = leader_tasks(FakeQueue())
    async with asyncio.timeout(5):
        await tasks.metrics_loop()


async def test_failover_loop_runs_a_pass_when_health_changes() -> None:
    health_passes = asyncio.Queue[int]()
    tasks = leader_tasks(FakeQueue())
    count = 0

    async def failover_once() -> int:
        nonlocal count
        count += 1
        health_passes.put_nowait(count)
        if count == 1:
            raise StoreUnavailable("etcd down")
        return 0

    tasks.failover_once = failover_once  # type: ignore[method-assign]
    loop = asyncio.ensure_future(tasks.failover_loop())
    try:
        async with asyncio.timeout(5):
            assert await health_passes.get() == 1
            # The interval is a minute: only the health change can start this pass.
            tasks.health.changed()  # type: ignore[attr-defined]
            assert await health_passes.get() == 2
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
