"""Polling with a deadline: the only way these tests wait for a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(
    predicate: Callable[[], object], within: float, what: str, step: float = 0.01
) -> None:
    """Return once ``predicate()`` is truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    for _ in iter(int, 1):  # until the deadline
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(step)
