"""One copy at a time into a replica, and never one from a superseded claim.

A replication worker that was paused past its lease (or cut off) can still
have a ``ReplicateRepository`` running, or arriving late, at the target node
after its job was taken over. Its fetch read the source earlier; if it
force-updated the replica after the new holder's copy was recorded up to
date, writes acknowledged in between would be undone on the replica. The
node therefore runs the copies into one replica one at a time, and refuses a
copy whose claim revision is below the highest it has seen for that replica
(also once it waited its turn). A copy without a claim (a direct call)
only waits its turn.

The highest revision is kept in memory: a node restart ends every copy that
was running, and the record's own update is conditional on the claim.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from gitquorum.errors import Aborted


@dataclass
class _Replica:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    highest: int = -1


class ReplicationFence:
    def __init__(self) -> None:
        self._replicas: dict[str, _Replica] = {}

    @contextlib.asynccontextmanager
    async def copy(self, replica: str, claim: int | None) -> AsyncIterator[None]:
        """Hold ``replica`` for one copy under ``claim`` (None: no claim)."""
        # Kept for the node's life: the highest claim must keep refusing
        # stragglers (a lock and an int per replica ever replicated here).
        state = self._replicas.setdefault(replica, _Replica())
        self._admit(replica, state, claim)
        async with state.lock:
            # A later claim may have arrived while this one waited.
            self._admit(replica, state, claim)
            yield

    @staticmethod
    def _admit(replica: str, state: _Replica, claim: int | None) -> None:
        if claim is None:
            return
        if claim < state.highest:
            raise Aborted(
                f"replication of {replica} superseded: claim {claim} was taken over "
                f"(claim {state.highest} is later)"
            )
        state.highest = claim
