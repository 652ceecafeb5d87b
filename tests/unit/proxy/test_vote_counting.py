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


# -- the gate before the first COMMIT (a write's intent, cluster.intents) -------------


class Gate:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls = 0
        self.error = error
        self.release = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error


async def test_no_commit_goes_out_before_the_gate_passes_and_it_runs_once() -> None:
    gate = Gate()
    tx = TransactionManager(vote_timeout=5).register("p", ["s1", "s2"], gate)
    votes = asyncio.gather(tx.vote("p", A), tx.vote("s1", A), tx.vote("s2", A))
    await asyncio.sleep(0.05)
    assert not votes.done() and gate.calls == 1
    gate.release.set()
    assert await asyncio.wait_for(votes, 2) == [Outcome.COMMIT] * 3
    # A later subtransaction does not wait again.
    second = await asyncio.gather(tx.vote("p", B), tx.vote("s1", B), tx.vote("s2", B))
    assert second == [Outcome.COMMIT] * 3 and gate.calls == 1


async def test_a_failed_gate_aborts_every_voter_and_decides_nothing() -> None:
    gate = Gate(RuntimeError("etcd unavailable"))
    gate.release.set()
    tx = TransactionManager(vote_timeout=5).register("p", ["s1"], gate)
    results = await asyncio.gather(tx.vote("p", A), tx.vote("s1", A))
    assert results == [Outcome.ABORT] * 2
    assert tx.committed_nodes() == set()
    assert all(sub.winner is None for sub in tx.subtransactions)


async def test_the_zero_vote_and_aborts_pass_no_gate() -> None:
    gate = Gate()  # never released: a vote that waited on it would time out
    tx = TransactionManager(vote_timeout=5).register("p", ["s1", "s2"], gate)
    zero = b"\x00" * 20
    assert (
        await asyncio.wait_for(
            asyncio.gather(tx.vote("p", zero), tx.vote("s1", zero), tx.vote("s2", zero)), 2
        )
        == [Outcome.COMMIT] * 3
    )
    other = TransactionManager(vote_timeout=5).register("p", ["s1", "s2"], gate)
    assert (
        await asyncio.wait_for(
            asyncio.gather(other.vote("p", A), other.vote("s1", B), other.vote("s2", B)), 2
        )
        == [Outcome.ABORT] * 3
    )
    assert gate.calls == 0


async def test_a_voter_hanging_up_does_not_cancel_the_gate_for_the_others() -> None:
    gate = Gate()
    tx = TransactionManager(vote_timeout=5).register("p", ["s1"], gate)
    primary = asyncio.ensure_future(tx.vote("p", A))
    secondary = asyncio.ensure_future(tx.vote("s1", A))
    await asyncio.sleep(0.05)
    primary.cancel()
    gate.release.set()
    assert await asyncio.wait_for(secondary, 2) is Outcome.COMMIT
    assert gate.calls == 1


async def test_a_subtransaction_waiting_on_the_gate_is_not_decided_for_the_nodes() -> None:
    gate = Gate()
    tx = TransactionManager(vote_timeout=5).register("p", ["s1"], gate)
    vote = asyncio.ensure_future(tx.vote("p", A))
    await asyncio.sleep(0.05)
    assert tx.subtransactions[0].winner == A and tx.decided == 0
    gate.error = RuntimeError("etcd unavailable")
    gate.release.set()
    assert await asyncio.wait_for(vote, 2) is Outcome.ABORT
    assert tx.gate_failed and tx.decided == 0


async def test_a_voter_dropped_while_it_waits_at_the_gate_gets_no_commit() -> None:
    """Its call failed (or it was dropped) while the intent's put was in flight:
    the fan-out, which read the tally then, counts it as holding nothing, so the
    COMMIT must not reach it once the put lands (fails on 34faa11: COMMIT)."""
    gate = Gate()
    tx = TransactionManager(vote_timeout=5).register("p", ["s1", "s2"], gate)
    votes = [asyncio.ensure_future(tx.vote(node, A)) for node in ("p", "s1", "s2")]
    for _ in range(100):
        if gate.calls:
            break
        await asyncio.sleep(0.01)
    assert gate.calls == 1 and tx.decided == 0
    tx.cancel_voter("s2")
    gate.release.set()
    assert await asyncio.wait_for(asyncio.gather(*votes), 2) == [
        Outcome.COMMIT,
        Outcome.COMMIT,
        Outcome.ABORT,
    ]
    assert tx.committed_nodes() == {"p", "s1"}
