"""The rules for wall-clock times one proxy writes and another reads."""

from __future__ import annotations

import pytest

from gitquorum.cluster.clock_rules import due_everywhere, hold_wait, job_due, verification_due

NOW = 1_000_000.0
SKEW = 600.0


@pytest.mark.parametrize(
    ("not_before", "delay", "seen_for", "due"),
    [
        pytest.param(NOW, 0.0, 0.0, True, id="new job, same clock"),
        pytest.param(NOW + SKEW, 0.0, 0.0, True, id="new job from a clock ten minutes ahead"),
        pytest.param(NOW - SKEW, 0.0, 0.0, True, id="new job from a clock ten minutes behind"),
        pytest.param(NOW + 5, 5.0, 1.0, False, id="backoff, same clock, not over"),
        pytest.param(NOW + 5, 5.0, 5.0, True, id="backoff seen for its length"),
        pytest.param(NOW + SKEW + 5, 5.0, 4.9, False, id="backoff from a fast clock, not over"),
        pytest.param(NOW + SKEW + 5, 5.0, 5.0, True, id="backoff from a fast clock, waited here"),
        pytest.param(NOW - SKEW + 60, 60.0, 0.0, True, id="backoff from a slow clock: early"),
        pytest.param(NOW + 3600, 3600.0, 3599.0, False, id="dead job, an hour, not over"),
        pytest.param(NOW + SKEW, None, 10**6, False, id="no delay recorded: wall clock only"),
        pytest.param(NOW - 1, None, 0.0, True, id="no delay recorded, deadline passed"),
    ],
)
def test_job_due(not_before: float, delay: float | None, seen_for: float, due: bool) -> None:
    assert job_due(not_before, delay, NOW, seen_for) is due


@pytest.mark.parametrize(
    ("verified_at", "due"),
    [
        pytest.param(0.0, True, id="never verified"),
        pytest.param(NOW - 300, True, id="an interval ago"),
        pytest.param(NOW - 299, False, id="within the interval"),
        pytest.param(NOW, False, id="just now"),
        pytest.param(NOW + 1, True, id="in the future: stamped by a faster clock"),
        pytest.param(NOW + SKEW, True, id="ten minutes in the future"),
    ],
)
def test_verification_due(verified_at: float, due: bool) -> None:
    assert verification_due(verified_at, NOW, 300.0) is due


@pytest.mark.parametrize(
    ("first_seen", "wait"),
    [
        pytest.param(100.0, 2.0, id="just seen: the whole cap"),
        pytest.param(99.5, 1.5, id="seen half a second ago"),
        pytest.param(98.0, 0.0, id="waited the cap already"),
        pytest.param(10.0, 0.0, id="seen long ago (a dead hold)"),
    ],
)
def test_hold_wait(first_seen: float, wait: float) -> None:
    assert hold_wait(first_seen, 100.0, 2.0) == pytest.approx(wait)


@pytest.mark.parametrize(
    ("not_before", "delay", "everywhere"),
    [
        pytest.param(NOW + SKEW, 0.0, True, id="no delay: due on every clock"),
        pytest.param(NOW - 1, 60.0, False, id="due here, maybe not on a slower clock"),
        pytest.param(NOW + 60, 60.0, False, id="still backing off"),
        pytest.param(NOW - 1, None, True, id="no delay recorded: this clock says due"),
        pytest.param(NOW + 60, None, False, id="no delay recorded: not due here"),
    ],
)
def test_due_everywhere(not_before: float, delay: float | None, everywhere: bool) -> None:
    assert due_everywhere(not_before, delay, NOW) is everywhere
