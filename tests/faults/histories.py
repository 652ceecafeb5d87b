"""What the checker's unit tests build histories from: a chain of commits
that exists only by name, and operations made by hand."""

from __future__ import annotations

from pathlib import Path

from tests.chaos.workload import SHARED, Chain, Op

OIDS = tuple(f"{i:040x}" for i in range(1, 11))
CHAIN = Chain(Path("/nonexistent"), OIDS, {oid: i for i, oid in enumerate(OIDS)})
SEED = {SHARED: OIDS[0], "refs/heads/main": OIDS[9]}
REPO = "r.git"


def op(
    kind: str,
    key: str,
    value: str,
    start: float,
    end: float,
    outcome: str = "ok",
    proxy: str = "p1",
    expects: str = "",
    *,
    repo: str = REPO,
    process: str = "c",
    correlation: str = "",
) -> Op:
    made = Op(process, kind, key, value, start, end, outcome, proxy, "", expects, repo)
    if correlation:
        made.correlation = correlation
    return made
