"""The pure rules of reads that outlive a failing or stalled replica.

Beside ``decisions``: which failures of a read may be tried again on another
replica, how long a unary read waits before it is hedged, and when a node
leaves (and re-enters) one proxy's read set. The proxy's read path
(``proxy/reads.py``, ``proxy/read_health.py``) applies them; they decide
nothing about health consensus or failover.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# A hedge never waits longer than this, whatever the node's recent latency:
# a read slower than a second at p95 is rare, and hedging it costs little.
HEDGE_DELAY_CEILING = 1.0
# Latency samples a node needs (per method) before its p95 says anything.
MIN_LATENCY_SAMPLES = 20

# Status codes that say the node went away, not what it thinks of the request:
# UNAVAILABLE is what grpc reports for a refused, reset or closed connection
# (and what a node says while it drains); a CANCELLED without a reason of the
# node's own is what grpc gives calls in flight when the node stops.
_GONE = "UNAVAILABLE"
_STOPPED = "CANCELLED"
_STOPPED_DETAILS = frozenset({"", "CANCELLED"})


def retryable_read_failure(code: str, details: str) -> bool:
    """Whether a read that failed with (code name, details) may go to another replica.

    Only failures of the node itself, never an answer it gave: NOT_FOUND,
    INVALID_ARGUMENT, RESOURCE_EXHAUSTED and the like would be given by every
    replica, and DEADLINE_EXCEEDED is the client's own deadline.
    """
    if code == _GONE:
        return True
    return code == _STOPPED and details in _STOPPED_DETAILS


# A node's answer for a repository it does not hold (storage/locator.py).
REPLICA_MISSING_DETAILS = "repository not found"


def replica_missing(code: str, details: str) -> bool:
    """Whether a node's answer says that its replica is missing on disk.

    The proxy sends reads only for repositories the cluster records, to
    replicas recorded up to date: this answer is then a fault of that replica
    (wiped, lost with a disk, removed by hand), not the answer to the client.
    Another up-to-date replica may hold the repository; with none, the
    repository is unavailable, not absent.
    """
    return code == "NOT_FOUND" and details == REPLICA_MISSING_DETAILS


def read_timed_out(code: str) -> bool:
    """A read that ended at its deadline: not retried (the client's time is up),
    but a strike against the node, which said nothing in all that time."""
    return code == "DEADLINE_EXCEEDED"


def p95(samples: Sequence[float]) -> float | None:
    """Nearest-rank 95th percentile, or None with too few samples to say."""
    if len(samples) < MIN_LATENCY_SAMPLES:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(0.95 * len(ordered)))
    return ordered[rank - 1]


def hedge_delay(
    recent_p95: float | None, floor: float, ceiling: float = HEDGE_DELAY_CEILING
) -> float:
    """How long a unary read waits for its replica before the same read goes to another.

    The node's recent p95 (about one read in twenty is hedged while nothing is
    wrong), never below ``floor`` (a fast node's p95 of a millisecond or two
    would hedge on every scheduling hiccup) and never above ``ceiling``; a node
    without enough history waits the ceiling.
    """
    if recent_p95 is None:
        return max(floor, ceiling)
    return max(floor, min(recent_p95, ceiling))


# Hedges are paid from a budget: every unary read that could be hedged earns
# HEDGE_BUDGET of a hedge, a hedge costs one, and at most HEDGE_BURST are saved
# up. Hedging stays below about 5% of reads whatever the latency does (a loaded
# machine's p95 moves faster than the history follows), while a stalled node,
# which needs a few hedges before it is ejected, finds the burst.
HEDGE_BUDGET = 0.05
HEDGE_BURST = 10.0


# A read the budget refused to hedge is hedged anyway once it has waited this
# many hedge delays: rare while nothing is wrong (the delay is the p95), and
# what keeps a stalled node from holding reads to their deadline while a loaded
# machine has spent the budget.
LATE_HEDGE_FACTOR = 4.0


def late_hedge_delay(delay: float) -> float:
    return delay * LATE_HEDGE_FACTOR


def hedge_tokens_after_read(tokens: float) -> float:
    return min(HEDGE_BURST, tokens + HEDGE_BUDGET)


def hedge_affordable(tokens: float) -> bool:
    return tokens >= 1.0


@dataclass(frozen=True)
class Outlier:
    """One proxy's record of one node's reads: strikes in a row, and ejection."""

    strikes: int = 0
    ejected_until: float = 0.0

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until


def after_success(state: Outlier) -> Outlier:
    """The node answered: the strikes start over (an ejection runs its course)."""
    if state.strikes == 0:
        return state
    return Outlier(0, state.ejected_until)


def after_strike(
    state: Outlier, now: float, threshold: int, ejection: float
) -> tuple[Outlier, bool]:
    """The node failed a read or lost a hedge without answering.

    ``threshold`` strikes in a row eject it for ``ejection`` seconds (the
    second value says it was ejected by this strike); it is re-admitted when
    that time is over, with its strikes started over. A node already ejected
    is not ejected again: the ejection stays bounded.
    """
    if state.ejected(now):
        return state, False
    strikes = state.strikes + 1
    if strikes >= threshold:
        return Outlier(0, now + ejection), True
    return Outlier(strikes, state.ejected_until), False
