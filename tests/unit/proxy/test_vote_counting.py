"""Quorum and vote semantics of the transaction manager (pure asyncio, no network)."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from gitquorum.errors import InvalidArgument, NotFound
from gitquorum.proxy.vote_counting import Outcome, TransactionManager, quorum

A = hashlib.sha1(b"a").digest()
B = hashlib.sha1(b"b").digest()


@pytest.mark.parametrize(
    ("secondaries", "threshold"),
    [(0, 1), (1, 2), (2, 4), (4, 7)],
)
def test_threshold_makes_primary_mandatory(secondaries: int, threshold: int) -> None:
    voters, got = quorum("p", [f"s{i}" for i in range(secondaries)])
    assert got == threshold
    primary_weight = voters[0].weight
    secondary_total = sum(v.weight for v in voters[1:])
    # Secondaries alone can never commit.
    assert secondary_total < got
    # The primary plus a strict majority of secondaries can.
    if secondaries:
        assert primary_weight + (secondaries // 2 + 1) >= got


async def test_all_agree_commit() -> None:
    manager = TransactionManager(vote_timeout=5)
    tx = manager.register("p", ["s1", "s2"])
    results = await asyncio.gather(tx.vote("p", A), tx.vote("s1", A), tx.vote("s2", A))
    assert results == [Outcome.COMMIT] * 3
    assert tx.committed_nodes() == {"p", "s1", "s2"}


async def test_disagreeing_secondary_is_outvoted() -> None:
    tx = TransactionManager(vote_timeout=5).register("p", ["s1", "s2"])
    results = await asyncio.gather(tx.vote("p", A), tx.vote("s1", A), tx.vote("s2", B))
    assert results == [Outcome.COMMIT, Outcome.COMMIT, Outcome.ABORT]
    assert tx.committed_nodes() == {"p", "s1"}


async def test_primary_disagreeing_with_both_secondaries_aborts_all() -> None:
    tx = TransactionManager(vote_timeout=5).register("p", ["s1", "s2"])
    results = await asyncio.gather(tx.vote("p", A), tx.vote("s1", B), tx.vote("s2", B))
    assert results == [Outcome.ABORT] * 3
    assert tx.committed_nodes() == set()


async def test_silent_secondary_does_not_block_quorum() -> None:
    tx = TransactionManager(vote_timeout=30).register("p", ["s1", "s2"])
    results = await asyncio.wait_for(asyncio.gather(tx.vote("p", A), tx.vote("s1", A)), 2)
    assert results == [Outcome.COMMIT, Outcome.COMMIT]
    assert tx.committed_nodes() == {"p", "s1"}


async def test_both_secondaries_silent_aborts_after_timeout() -> None:
    tx = TransactionManager(vote_timeout=0.2).register("p", ["s1", "s2"])
    assert await asyncio.wait_for(tx.vote("p", A), 5) == Outcome.ABORT


async def test_cancelled_voters_make_quorum_impossible_without_waiting() -> None:
    tx = TransactionManager(vote_timeout=30).register("p", ["s1", "s2"])
    pending = asyncio.ensure_future(tx.vote("p", A))
    await asyncio.sleep(0)
    tx.cancel_voter("s1")
    tx.cancel_voter("s2")
    assert await asyncio.wait_for(pending, 2) == Outcome.ABORT


async def test_sequential_subtransactions_each_need_agreement() -> None:
    tx = TransactionManager(vote_timeout=5).register("p", ["s1", "s2"])
    first = await asyncio.gather(tx.vote("p", A), tx.vote("s1", A), tx.vote("s2", A))
    assert first == [Outcome.COMMIT] * 3
    # s2 diverges in the second subtransaction: it alone is left out.
    second = await asyncio.gather(tx.vote("p", B), tx.vote("s1", B), tx.vote("s2", A))
    assert second == [Outcome.COMMIT, Outcome.COMMIT, Outcome.ABORT]
    assert tx.committed_nodes() == {"p", "s1"}


async def test_with_one_secondary_the_primary_decides() -> None:
    tx = TransactionManager(vote_timeout=5).register("p", ["s1"])
    assert await asyncio.gather(tx.vote("p", A), tx.vote("s1", B)) == [
        Outcome.COMMIT,
        Outcome.ABORT,
    ]
    assert tx.committed_nodes() == {"p"}


async def test_stop_answers_stop() -> None:
    manager = TransactionManager(vote_timeout=30)
    tx = manager.register("p", ["s1", "s2"])
    pending = asyncio.ensure_future(tx.vote("p", A))
    await asyncio.sleep(0)
    manager.stop(tx.id)
    assert await asyncio.wait_for(pending, 2) == Outcome.STOP
    assert await tx.vote("s1", A) == Outcome.STOP


async def test_bad_votes_are_rejected() -> None:
    manager = TransactionManager()
    tx = manager.register("p", [])
    with pytest.raises(InvalidArgument):
        await tx.vote("p", b"short")
    with pytest.raises(NotFound):
        await tx.vote("stranger", A)
    with pytest.raises(NotFound):
        await manager.vote(tx.id + 1000, "p", A)


async def test_only_the_zero_vote_means_nothing_changed() -> None:
    zero = b"\x00" * 20
    tx = TransactionManager(vote_timeout=5).register("p", ["s1"])
    assert await asyncio.gather(tx.vote("p", zero), tx.vote("s1", zero)) == [Outcome.COMMIT] * 2
    assert tx.had_votes and tx.changed_nothing
    moved = TransactionManager(vote_timeout=5).register("p", ["s1"])
    await asyncio.gather(moved.vote("p", A), moved.vote("s1", A))
    await asyncio.gather(moved.vote("p", zero), moved.vote("s1", zero))
    assert not moved.changed_nothing
