"""The rules of reads that outlive a failing or stalled replica (``cluster/read_rules.py``)."""

from __future__ import annotations

import pytest

from gitquorum.cluster import read_rules
from gitquorum.cluster.read_rules import HEDGE_DELAY_CEILING, Outlier


@pytest.mark.parametrize(
    ("code", "details", "retryable"),
    [
        pytest.param("UNAVAILABLE", "failed to connect to all addresses", True, id="refused"),
        pytest.param("UNAVAILABLE", "Socket closed", True, id="reset"),
        pytest.param("UNAVAILABLE", "node is draining", True, id="node draining"),
        pytest.param("CANCELLED", "", True, id="node stopped mid-call"),
        pytest.param("CANCELLED", "CANCELLED", True, id="node stopped, grpc's wording"),
        pytest.param("CANCELLED", "cancelled by the node: shutting down", False, id="own cancel"),
        pytest.param("NOT_FOUND", "commit not found", False, id="not found"),
        pytest.param("INVALID_ARGUMENT", "bad revision", False, id="invalid argument"),
        pytest.param("FAILED_PRECONDITION", "", False, id="failed precondition"),
        pytest.param("RESOURCE_EXHAUSTED", "too many reads", False, id="node's limit"),
        pytest.param("DEADLINE_EXCEEDED", "Deadline Exceeded", False, id="client deadline"),
        pytest.param("INTERNAL", "git failed", False, id="internal"),
        pytest.param("OK", "", False, id="ok"),
    ],
)
def test_which_read_failures_go_to_another_replica(
    code: str, details: str, retryable: bool
) -> None:
    assert read_rules.retryable_read_failure(code, details) is retryable


@pytest.mark.parametrize(
    ("code", "details", "missing"),
    [
        pytest.param("NOT_FOUND", "repository not found", True, id="the node's own words"),
        pytest.param("NOT_FOUND", "commit not found", False, id="an answer about the content"),
        pytest.param("NOT_FOUND", "repository not found: x", False, id="other words"),
        pytest.param("FAILED_PRECONDITION", "repository not found", False, id="another code"),
        pytest.param("UNAVAILABLE", "repository not found", False, id="a node failure"),
    ],
)
def test_which_answers_say_the_replica_is_missing_on_disk(
    code: str, details: str, missing: bool
) -> None:
    assert read_rules.replica_missing(code, details) is missing
    assert not (missing and read_rules.retryable_read_failure(code, details))


@pytest.mark.parametrize(
    ("recent_p95", "floor", "delay"),
    [
        pytest.param(None, 0.02, HEDGE_DELAY_CEILING, id="no history: the ceiling"),
        pytest.param(0.002, 0.02, 0.02, id="fast node: the floor"),
        pytest.param(0.05, 0.02, 0.05, id="the node's p95"),
        pytest.param(30.0, 0.02, HEDGE_DELAY_CEILING, id="slow node: the ceiling"),
        pytest.param(None, 5.0, 5.0, id="a floor above the ceiling wins"),
    ],
)
def test_hedge_delay(recent_p95: float | None, floor: float, delay: float) -> None:
    assert read_rules.hedge_delay(recent_p95, floor) == delay


def test_p95_needs_enough_samples() -> None:
    assert read_rules.p95([0.01] * (read_rules.MIN_LATENCY_SAMPLES - 1)) is None
    samples = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert read_rules.p95(samples) == 0.095


THRESHOLD, EJECTION = 3, 10.0


@pytest.mark.parametrize(
    ("events", "ejected_at_end", "ejections"),
    [
        pytest.param(["strike"] * 2, False, 0, id="two strikes: still in"),
        pytest.param(["strike"] * 3, True, 1, id="three in a row: ejected"),
        pytest.param(["strike", "strike", "ok", "strike"], False, 0, id="a success resets"),
        pytest.param(["strike"] * 6, True, 1, id="ejected once, not extended"),
        pytest.param(["strike"] * 3 + ["ok"], True, 1, id="a success does not re-admit"),
        pytest.param(["strike"] * 3 + ["wait"], False, 1, id="re-admitted when time is over"),
        pytest.param(
            ["strike"] * 3 + ["wait", "strike", "strike"], False, 1, id="strikes start over"
        ),
        pytest.param(["strike"] * 3 + ["wait"] + ["strike"] * 3, True, 2, id="ejected again"),
    ],
)
def test_outlier_ejection(events: list[str], ejected_at_end: bool, ejections: int) -> None:
    state, now, count = Outlier(), 100.0, 0
    for event in events:
        if event == "strike":
            state, ejected = read_rules.after_strike(state, now, THRESHOLD, EJECTION)
            count += ejected
        elif event == "ok":
            state = read_rules.after_success(state)
        else:
            now += EJECTION
        now += 0.001
    assert state.ejected(now) is ejected_at_end
    assert count == ejections


def test_the_hedge_budget_allows_a_burst_then_one_hedge_in_twenty_reads() -> None:
    tokens, hedges = read_rules.HEDGE_BURST, 0
    for _ in range(1000):  # every read is slow enough to be hedged
        tokens = read_rules.hedge_tokens_after_read(tokens)
        if read_rules.hedge_affordable(tokens):
            tokens -= 1.0
            hedges += 1
    assert read_rules.HEDGE_BURST <= hedges <= read_rules.HEDGE_BURST + 1000 * 0.05 + 1
