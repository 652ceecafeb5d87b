"""Pure rules for time that one proxy writes and another reads.

Proxies' wall clocks differ (NTP keeps them close, not equal; a host can be
minutes off). A deadline written on one proxy's wall clock and compared with
another's is off by their difference, so every such rule here also accepts
the reader's own monotonic measurement of the delay the writer meant: the
skew may make something happen early, never later than it would have on
equal clocks by more than the writer's intended delay.
"""

from __future__ import annotations


def job_due(not_before: float, delay: float | None, now: float, seen_for: float) -> bool:
    """Whether a replication job may be claimed now.

    ``not_before``: the writer's wall-clock deadline; ``delay``: the seconds it
    meant to wait from its write (None: a job written without one, judged by
    the wall clock alone); ``now``: the reader's wall clock; ``seen_for``: how
    long (monotonic) the reader has seen this version of the job. Due on either
    clock: a deadline that a faster writer's clock put in the future is over
    once the reader has itself waited the delay."""
    if not_before <= now:
        return True
    return delay is not None and seen_for >= delay


def verification_due(verified_at: float, now: float, interval: float) -> bool:
    """Whether a replica stamped as verified at ``verified_at`` (a leader's wall
    clock) is due again at ``now`` (this leader's).

    A stamp in the future was written by a leader whose clock ran ahead: how
    long ago it was taken is unknown, so the replica is verified again now
    (one extra check, then stamped on this clock) rather than left for the
    interval plus the skew."""
    return verified_at > now or now - verified_at >= interval


def hold_wait(first_seen: float, now: float, cap: float) -> float:
    """Seconds a write still waits for a catch-up hold this proxy first saw at
    ``first_seen`` (its monotonic clock): at most ``cap`` in all.

    The hold's wall-clock deadline is not consulted: it was written by the
    catch-up's proxy, whose clock may run minutes behind (a live hold would
    look long past) or ahead. A hold left by a worker that died costs each
    proxy one wait of at most ``cap``."""
    return max(0.0, first_seen + cap - now)


def due_everywhere(not_before: float, delay: float | None, now: float) -> bool:
    """Whether every proxy sees a job due at once, whatever its clock: one
    written with no delay (new, or made due again). A job with a delay may be
    due on this clock and not yet on a slower one; one written without a
    delay is judged by this clock alone."""
    if delay is not None:
        return delay <= 0.0
    return not_before <= now
