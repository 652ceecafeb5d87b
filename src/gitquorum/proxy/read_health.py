"""What one proxy learns about its nodes from the reads it sends them.

Two things, both local to this proxy and never published: each node's recent
latency per method (what a unary read waits before it is hedged), and outlier
detection (a node that fails reads or loses hedges several times in a row
leaves this proxy's read set for a bounded time, before health checks and
consensus say anything). The rules are ``cluster/read_rules.py``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable

from gitquorum import log
from gitquorum.cluster import read_rules
from gitquorum.cluster.read_rules import Outlier
from gitquorum.config import ReadsConfig
from gitquorum.proxy.metrics import ProxyMetrics

logger = log.get("gitquorum.proxy.reads")

# Latency samples kept per (method, node), and how often their p95 is computed
# again: a sort of a few hundred floats every few dozen reads, not per read.
_WINDOW = 200
_RECOMPUTE_EVERY = 20


class _Latency:
    __slots__ = ("p95", "samples", "until_recompute")

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=_WINDOW)
        self.until_recompute = 0
        self.p95: float | None = None

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        self.until_recompute -= 1
        if self.until_recompute <= 0:
            self.p95 = read_rules.p95(self.samples)
            self.until_recompute = _RECOMPUTE_EVERY


class ReadHealth:
    def __init__(
        self,
        settings: ReadsConfig,
        metrics: ProxyMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._clock = clock
        self._latency: dict[tuple[str, str], _Latency] = {}
        self._outliers: dict[str, Outlier] = {}
        # node -> end of its ejection; empty almost always, so reads pay one test.
        self._ejected: dict[str, float] = {}
        self._hedge_tokens = read_rules.HEDGE_BURST
        self._late_tokens = read_rules.HEDGE_BURST

    def known(self, nodes: Iterable[str]) -> None:
        """Nodes this proxy routes to: their ejection counters exist from the start."""
        for node in nodes:
            self.metrics.node_ejections.labels(node)

    # -- the read set ------------------------------------------------------------------

    def ejected(self) -> frozenset[str]:
        """Nodes out of this proxy's read set now (tried only when no other replica is)."""
        if not self._ejected:
            return frozenset()
        now = self._clock()
        over = [node for node, until in self._ejected.items() if until <= now]
        for node in over:
            del self._ejected[node]
            logger.info("node re-admitted to reads", extra=log.fields(node=node))
        return frozenset(self._ejected)

    def succeeded(self, node: str) -> None:
        """The node answered a read (with a response or an answer of its own)."""
        state = self._outliers.get(node)
        if state is not None and state.strikes:
            self._outliers[node] = read_rules.after_success(state)

    def failed(self, node: str, reason: str) -> None:
        """The node failed a read, or lost a hedge without answering: one strike."""
        state, ejected = read_rules.after_strike(
            self._outliers.get(node, Outlier()),
            self._clock(),
            self.settings.outlier_failures,
            self.settings.outlier_ejection_time,
        )
        self._outliers[node] = state
        if ejected:
            self._ejected[node] = state.ejected_until
            self.metrics.node_ejections.labels(node).inc()
            logger.warning(
                "node ejected from reads",
                extra=log.fields(
                    node=node,
                    reason=reason,
                    strikes=self.settings.outlier_failures,
                    seconds=self.settings.outlier_ejection_time,
                ),
            )

    # -- hedging -------------------------------------------------------------------------

    def hedge_delay(self, method: str, node: str) -> float | None:
        """How long a unary read of ``method`` waits for ``node`` before it is hedged
        (None: hedging is off)."""
        if not self.settings.hedging:
            return None
        self._hedge_tokens = read_rules.hedge_tokens_after_read(self._hedge_tokens)
        self._late_tokens = read_rules.hedge_tokens_after_read(self._late_tokens)
        latency = self._latency.get((method, node))
        return read_rules.hedge_delay(
            latency.p95 if latency is not None else None, self.settings.hedge_delay_floor
        )

    def spend_hedge(self) -> bool:
        """Whether the hedge budget pays for one more hedge now (and pay it)."""
        if not read_rules.hedge_affordable(self._hedge_tokens):
            return False
        self._hedge_tokens -= 1.0
        return True

    def late_hedge(self, method: str, node: str) -> bool:
        """Whether a read the budget refused is hedged late (after four hedge
        delays) away from ``node``. Always when the node's recent p95 is below
        the hedge delay's ceiling: it answered normally before, so it looks
        stalled. Otherwise (slow in general, or no history yet) only while the
        late hedges' own budget, as large as the first, pays: with every
        replica slow, hedging stays bounded instead of doubling the load of an
        overloaded cluster."""
        latency = self._latency.get((method, node))
        ceiling = read_rules.hedge_delay(math.inf, self.settings.hedge_delay_floor)
        if latency is not None and latency.p95 is not None and latency.p95 < ceiling:
            return True
        if not read_rules.hedge_affordable(self._late_tokens):
            return False
        self._late_tokens -= 1.0
        return True

    def answered_in(self, method: str, node: str, seconds: float) -> None:
        latency = self._latency.get((method, node))
        if latency is None:
            latency = self._latency[(method, node)] = _Latency()
        latency.add(seconds)
