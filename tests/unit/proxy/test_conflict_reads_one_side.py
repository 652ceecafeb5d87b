"""Reads of replicas in a verifier conflict while the primary cannot serve.

``route_accessor`` promises "always the same replica" (``choose = min``) so
that a write does not seem to come and go between reads. But ``min`` is taken
over the *preferred* replicas, which leave out this proxy's ejected nodes (a
per-proxy, 10 s, guess made from reads of any repository on that node) and
drained ones: while the lowest replica is ejected here, this proxy serves the
other side of the conflict, and every other proxy (or this one 10 s later)
the first side again.
"""

from __future__ import annotations

import random

from gitquorum.cluster.repositories import RepositoryRecord
from gitquorum.proxy.routing import route_accessor

NODES = ("n1", "n2", "n3")
# n2 and n3 hold different histories with no majority; the primary n1 is down.
RECORD = RepositoryRecord(
    repository_id=7,
    virtual_storage="default",
    relative_path="group/project.git",
    primary="n1",
    assigned=NODES,
    generation=4,
    replicas=(("n1", 4), ("n2", 4), ("n3", 4)),
    conflict=("n2", "n3"),
)
HEALTHY = frozenset({"n2", "n3"})


def test_an_ejection_here_does_not_switch_the_side_of_a_conflict_that_is_read() -> None:
    everywhere = route_accessor(RECORD, HEALTHY, NODES, choose=random.choice)
    # The same read on a proxy whose reads of other repositories on n2 failed
    # five times in a row (or timed out at their clients' deadlines).
    here = route_accessor(RECORD, HEALTHY, NODES, choose=random.choice, ejected=frozenset({"n2"}))
    assert everywhere.node == "n2"
    assert here.node == everywhere.node


def test_a_drain_does_not_switch_the_side_of_a_conflict_that_is_read() -> None:
    before = route_accessor(RECORD, HEALTHY, NODES, choose=random.choice)
    during = route_accessor(
        RECORD, HEALTHY, NODES, choose=random.choice, draining=frozenset({"n2"})
    )
    assert during.node == before.node
