"""Hedges beyond the budget: the late hedge is never paid for.

``Reader._unary``: a read whose hedge the budget refused is hedged anyway after
``LATE_HEDGE_FACTOR`` hedge delays, and that late hedge skips the budget. The
delay is capped (``HEDGE_DELAY_CEILING``, 1 s): when every replica is slow
(an overloaded machine, reads taking longer than four ceilings), every read is
hedged, so hedging doubles the load exactly when the nodes are overloaded.
docs/failover.md: "hedging adds about 5 % of reads at most whatever the
latency does".

The test scales time down: the ceiling is 10 ms instead of 1 s and both
replicas answer in 60 ms (six ceilings) instead of six seconds.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gitquorum.cluster import read_rules
from gitquorum.config import ReadsConfig
from gitquorum.proxy.metrics import ProxyMetrics
from gitquorum.proxy.read_health import ReadHealth
from gitquorum.proxy.reads import Reader
from gitquorum.wire.registry import MethodRegistry

FIND_COMMIT = "/gitaly.CommitService/FindCommit"
INFO = MethodRegistry.from_descriptors().get(FIND_COMMIT)
SLOW = 0.06  # every replica's answer time: six (scaled) ceilings
CEILING = 0.01


class _Call:
    def __init__(self, answer: Awaitable[bytes]) -> None:
        self._task = asyncio.ensure_future(answer)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._task.add_done_callback(lambda _task: callback(self))

    def done(self) -> bool:
        return self._task.done()

    def cancel(self) -> bool:
        return self._task.cancel()

    def __await__(self) -> Generator[Any, None, bytes]:
        return self._task.__await__()


class _Channels:
    """Every node answers every read after ``SLOW`` seconds."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def forward_metadata(self, metadata: object, extra: object = ()) -> list[Any]:
        return []

    def unary_unary(self, node: str, method: str) -> Callable[..., _Call]:
        def invoke(payload: bytes, metadata: object = None, timeout: object = None) -> _Call:
            self.calls[node] = self.calls.get(node, 0) + 1

            async def answer() -> bytes:
                await asyncio.sleep(SLOW)
                return node.encode()

            return _Call(answer())

        return invoke


async def _no_requests() -> AsyncIterator[bytes]:
    return
    yield b""


async def test_hedges_stay_within_the_budget_when_every_replica_is_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        read_rules, "hedge_delay", functools.partial(read_rules.hedge_delay, ceiling=CEILING)
    )
    health = ReadHealth(
        ReadsConfig(hedge_delay_floor=0.001, outlier_failures=1000),
        ProxyMetrics(CollectorRegistry()),
    )
    channels = _Channels()
    reads = 200

    async def one_read() -> None:
        reader = Reader(channels, INFO, health, {})  # type: ignore[arg-type]
        async for _ in reader.run(("n1", "n2"), lambda node: b"", _no_requests(), (), 30.0):
            pass

    for _ in range(reads // 20):
        await asyncio.gather(*(one_read() for _ in range(20)))

    hedges = channels.calls.get("n2", 0)
    # What the two budgets pay for (hedges, and late hedges once the first is
    # spent): each its burst and one hedge per twenty reads.
    affordable = 2 * (read_rules.HEDGE_BURST + reads * read_rules.HEDGE_BUDGET)
    assert hedges <= affordable, f"{hedges} hedges for {reads} reads (budget {affordable:g})"
