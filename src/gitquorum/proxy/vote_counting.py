"""Reference transactions: collect the votes of one mutator's replicas and decide.

Each node's N-th vote belongs to subtransaction N. A subtransaction commits
the hash whose voters' weight reaches the threshold; voters of another hash
(or late voters of another hash) are told to abort. The weights make the
primary mandatory: it weighs S+1 (S = secondaries), each secondary 1, and
the threshold is S+1 plus, with two or more secondaries, half of S+1 (so the
primary plus a majority of the secondaries must agree).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import itertools
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gitquorum.errors import InvalidArgument, NotFound

ZERO_HASH = b"\x00" * 20


# Run before a transaction's first COMMIT that changes a reference.
CommitGate = Callable[[], Awaitable[None]]


class Outcome(enum.Enum):
    COMMIT = "commit"
    ABORT = "abort"
    STOP = "stop"


@dataclass(frozen=True)
class Voter:
    node: str
    weight: int
    primary: bool


def quorum(primary: str, secondaries: list[str]) -> tuple[list[Voter], int]:
    """Voters and threshold: primary mandatory plus a majority of the secondaries."""
    s = len(secondaries)
    voters = [Voter(primary, s + 1, True)] + [Voter(n, 1, False) for n in secondaries]
    threshold = s + 1 + ((s + 1) // 2 if s > 1 else 0)
    return voters, threshold


@dataclass
class _Subtransaction:
    votes: dict[str, bytes] = field(default_factory=dict)
    winner: bytes | None = None
    failed: bool = False
    decided: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class VoterState:
    voter: Voter
    votes_cast: int = 0
    committed: int = 0  # subtransactions this voter committed
    failed: bool = False  # lost a vote, was cancelled, or its stream failed
    # Phase of the last vote counted (VoteTransactionRequest.Phase; 0: unknown). A
    # node votes in the committed phase only after applying its update, which is
    # how a write whose primary failed is known to be held by a secondary.
    last_phase: int = 0


class Transaction:
    def __init__(
        self,
        tx_id: int,
        voters: list[Voter],
        threshold: int,
        vote_timeout: float,
        before_commit: CommitGate | None = None,
    ) -> None:
        self.id = tx_id
        # Awaited once, before the first COMMIT that changes a reference goes
        # out (the write's intent, ``cluster.intents``); if it fails, every
        # voter is told ABORT and nothing is applied.
        self._before_commit = before_commit
        self._gate: asyncio.Future[None] | None = None
        # Per-transaction secret the nodes use to authenticate their votes.
        self.token = secrets.token_hex(16)
        self.voters = {v.node: VoterState(v) for v in voters}
        self.threshold = threshold
        self.vote_timeout = vote_timeout
        self.subtransactions: list[_Subtransaction] = []
        self.stopped = False
        # The primary stopped answering: it missed the vote timeout, or the cluster
        # found it unhealthy. It can no longer commit anything, so the fan-out gives
        # its call up rather than wait for the client's deadline.
        self.primary_unresponsive = asyncio.Event()
        # Secondaries the cluster found unhealthy during the write: once the primary
        # answered, the fan-out drops them instead of waiting ``write_timeout``.
        self.lost_secondaries: set[str] = set()
        self.secondary_lost = asyncio.Event()

    def voter_token(self, node: str) -> str:
        """The secret only ``node`` is told (in its transaction metadata) and
        signs its votes with: a node can vote as itself only, not as another
        voter of the transaction."""
        return hmac.new(self.token.encode(), node.encode(), hashlib.sha256).hexdigest()[:32]

    def _sub(self, index: int) -> _Subtransaction:
        while len(self.subtransactions) <= index:
            self.subtransactions.append(_Subtransaction())
        return self.subtransactions[index]

    def _decide(self, sub: _Subtransaction) -> None:
        if sub.decided.is_set():
            return
        weights: dict[bytes, int] = {}
        for node, digest in sub.votes.items():
            weights[digest] = weights.get(digest, 0) + self.voters[node].voter.weight
        for digest, weight in weights.items():
            if weight >= self.threshold:
                sub.winner = digest
                sub.decided.set()
                return
        # Weight of voters that may still vote for the leading hash.
        pending = sum(
            st.voter.weight
            for node, st in self.voters.items()
            if node not in sub.votes and not st.failed
        )
        best = max(weights.values(), default=0)
        if best + pending < self.threshold:
            sub.failed = True
            sub.decided.set()

    async def vote(self, node: str, digest: bytes, phase: int = 0) -> Outcome:
        if self.stopped:
            return Outcome.STOP
        state = self.voters.get(node)
        if state is None:
            raise NotFound(f"node {node!r} is not a voter of transaction {self.id}")
        if len(digest) != 20:
            raise InvalidArgument("reference_updates_hash must be 20 bytes")
        if state.failed:
            return Outcome.ABORT
        index = state.votes_cast
        state.votes_cast += 1
        state.last_phase = phase
        sub = self._sub(index)
        sub.votes[node] = digest
        self._decide(sub)
        try:
            await asyncio.wait_for(sub.decided.wait(), self.vote_timeout)
        except TimeoutError:
            # Voters that have not voted by now are treated as failed.
            for other, st in self.voters.items():
                if other not in sub.votes:
                    st.failed = True
                    if st.voter.primary:
                        self.primary_unresponsive.set()
            self._decide(sub)
        if self.stopped:
            return Outcome.STOP
        if sub.winner is not None and sub.winner == digest:
            if sub.winner != ZERO_HASH:
                if not await self._pass_gate(sub):
                    state.failed = True
                    return Outcome.ABORT
                if state.failed:
                    # Left the write while it waited at the gate (its call
                    # failed, it was dropped or turned unhealthy): the fan-out
                    # no longer counts it as holding the update, so it must not
                    # apply it (a write told "failed" would stand on it).
                    return Outcome.ABORT
            if self.stopped:
                return Outcome.STOP
            state.committed = index + 1
            return Outcome.COMMIT
        state.failed = True
        return Outcome.ABORT

    async def _pass_gate(self, sub: _Subtransaction) -> bool:
        """Whether the COMMIT of ``sub`` may go out (the gate ran, or there is none)."""
        if self._gate_passed:
            return True
        if self._gate is None:
            assert self._before_commit is not None
            self._gate = asyncio.ensure_future(self._before_commit())
        try:
            # Shielded: a voter that hangs up must not cancel it for the others.
            await asyncio.shield(self._gate)
        except Exception:
            # No COMMIT went out: the decision is taken back, nothing applies.
            sub.winner = None
            sub.failed = True
            return False
        return True

    @property
    def _gate_passed(self) -> bool:
        gate = self._gate
        if self._before_commit is None:
            return True
        return gate is not None and gate.done() and not gate.cancelled() and not gate.exception()

    @property
    def gate_failed(self) -> bool:
        """The gate ran and failed: every voter was told ABORT."""
        gate = self._gate
        return gate is not None and gate.done() and not self._gate_passed

    @property
    def decided(self) -> int:
        """Subtransactions decided for the nodes: a winner whose COMMIT may have
        gone out (not one still waiting on, or refused by, the gate)."""
        gate_open = self._gate_passed
        return sum(
            1
            for sub in self.subtransactions
            if sub.winner is not None and (sub.winner == ZERO_HASH or gate_open)
        )

    def cancel_voter(self, node: str) -> None:
        """A voter whose stream failed: it can no longer help reach quorum."""
        state = self.voters.get(node)
        if state is None or state.failed:
            return
        state.failed = True
        for sub in self.subtransactions:
            self._decide(sub)

    def stop(self) -> None:
        self.stopped = True
        for sub in self.subtransactions:
            sub.decided.set()

    def committed_nodes(self) -> set[str]:
        """Voters that committed every subtransaction (at least one was held)."""
        total = len(self.subtransactions)
        if total == 0:
            return set()
        return {node for node, st in self.voters.items() if not st.failed and st.committed == total}

    @property
    def had_votes(self) -> bool:
        return bool(self.subtransactions)

    @property
    def changed_nothing(self) -> bool:
        """Every decided vote was the zero vote: no reference moved anywhere.

        receive-pack ends every push with a zero vote, even one that updated no
        ref (git's probe before a large HTTP push); that is not a write.
        """
        return all(
            sub.winner == ZERO_HASH for sub in self.subtransactions if sub.winner is not None
        ) and all(sub.winner is not None for sub in self.subtransactions)


class TransactionManager:
    def __init__(self, vote_timeout: float = 10.0) -> None:
        self.vote_timeout = vote_timeout
        # A random start keeps ids of a restarted proxy apart from stale votes.
        self._ids = itertools.count(secrets.randbits(40) + 1)
        self._transactions: dict[int, Transaction] = {}

    def register(
        self, primary: str, secondaries: list[str], before_commit: CommitGate | None = None
    ) -> Transaction:
        voters, threshold = quorum(primary, secondaries)
        tx = Transaction(next(self._ids), voters, threshold, self.vote_timeout, before_commit)
        self._transactions[tx.id] = tx
        return tx

    def get(self, tx_id: int) -> Transaction:
        tx = self._transactions.get(tx_id)
        if tx is None:
            raise NotFound(f"transaction {tx_id} not found")
        return tx

    async def vote(self, tx_id: int, node: str, digest: bytes, phase: int = 0) -> Outcome:
        return await self.get(tx_id).vote(node, digest, phase)

    def stop(self, tx_id: int) -> None:
        self.get(tx_id).stop()

    def node_unhealthy(self, node: str) -> int:
        """``node`` turned unhealthy: in-flight transactions stop waiting for it (a
        paused or cut-off node never answers). Where it is primary, it can no
        longer commit and the fan-out gives its call up; where it is a secondary,
        the fan-out drops it once the primary answered. Returns how many
        transactions were affected."""
        affected = 0
        for tx in list(self._transactions.values()):
            state = tx.voters.get(node)
            if state is None or state.failed:
                continue
            if state.voter.primary:
                tx.cancel_voter(node)
                tx.primary_unresponsive.set()
            else:
                tx.lost_secondaries.add(node)
                tx.secondary_lost.set()
            affected += 1
        return affected

    def unregister(self, tx_id: int) -> None:
        self._transactions.pop(tx_id, None)

    def __len__(self) -> int:
        return len(self._transactions)
