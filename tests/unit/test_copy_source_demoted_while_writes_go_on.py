"""A copy's source demoted by the verifier while writes moved the repository on.

The verifier demotes a minority replica to one below the repository's
generation. When writes landed during the copy, that is still at or above the
generation the copy read from the source, so "the source was demoted" is not
seen by comparing generations: the copy of the minority's content is recorded
as the target's generation (behind, but claiming every write up to it).
"""

from __future__ import annotations

import random

import pytest

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.decisions import settle_mismatch
from gitquorum.cluster.errors import SourceRuledOut
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.repositories import CopySource, RepositoryStore
from tests.unit.proxy.finalizer_parts import KEYS

VS = "vs"
NODES = ("n1", "n2", "n3", "n4")


async def test_a_source_demoted_after_later_writes_is_ruled_out() -> None:
    repos = RepositoryStore(MemoryStore(ManualClock()), KEYS, rng=random.Random(1))
    record = await repos.create(VS, "a.git", nodes=NODES, healthy=set(NODES))
    rid = record.repository_id
    await repos.set_primary(VS, rid, "n1")
    # n4 missed a write: its repair copies from the primary n1 at generation 1.
    record = await repos.increment_generation(VS, rid, ["n1", "n2", "n3"])
    copied_from = CopySource.of(record, "n1")
    assert copied_from.generation == 1
    # While the copy runs, two writes land on n1, n2, n3 ...
    await repos.increment_generation(VS, rid, ["n1", "n2", "n3"])
    await repos.increment_generation(VS, rid, ["n1", "n2", "n3"])
    # ... and the verifier finds n1 in the minority (it lost acknowledged
    # writes): n1 is demoted to one below the repository's generation, 2.
    checksums = {"n1": "rolled back", "n2": "every write", "n3": "every write"}
    settled = await repos.update(
        VS, rid, lambda r: settle_mismatch(r, checksums, set(NODES), load={}).record
    )
    assert settled.replica_generation("n1") == settled.generation - 1 == 2
    assert settled.primary != "n1"
    # The copy (n1's rolled-back content) must not be recorded for n4.
    with pytest.raises(SourceRuledOut):
        await repos.set_replica_generation(VS, rid, "n4", 1, source=copied_from)
