"""The verifier when the leaders' wall clocks differ.

When each replica was verified is stamped on the leader's wall clock and read
on the next leader's. A leader whose clock runs behind the one before it must
not find every replica "verified in the future" and leave them unverified for
the interval plus the skew.
"""

from __future__ import annotations

import time

from tests.unit.proxy.test_verifier import build

SKEW = 600.0


async def due_nodes(stamps: dict[str, float], now: float) -> set[str]:
    """The nodes due for verification at ``now`` given when each was stamped."""
    parts = await build()
    try:
        record = parts.record
        verified = {(record.virtual_storage, record.repository_id, n): t for n, t in stamps.items()}
        return {node for _record, node in parts.verifier._due(verified, now, False)}
    finally:
        await parts.cache.close()


async def test_replicas_stamped_by_a_leader_whose_clock_ran_ahead_are_due() -> None:
    now = time.time()
    # The previous leader's clock ran ten minutes ahead: its stamps are in our future.
    stamps = dict.fromkeys(("n1", "n2", "n3"), now + SKEW)
    assert await due_nodes(stamps, now) == {"n1", "n2", "n3"}, (
        "replicas stamped on a faster clock are left unverified for the interval plus the skew"
    )


async def test_replicas_verified_within_the_interval_are_not_due() -> None:
    now = time.time()
    # Verified a second ago, just now, and longer ago than the interval (300 s).
    stamps = {"n1": now - 1.0, "n2": now, "n3": now - 400.0}
    assert await due_nodes(stamps, now) == {"n3"}
