"""The checker on its own: each named violation found in a history built to
have it, and not found where the documented guarantee allows the behaviour."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC
from pathlib import Path

from gitquorum.cluster.repositories import RepositoryRecord
from tests.chaos.workload import SHARED, History, Op
from tests.faults import checker
from tests.faults.base import Fault
from tests.faults.histories import CHAIN, OIDS, REPO, SEED, op


def history(*ops: Op) -> History:
    return History(list(ops))


def record(generation: int, **replicas: int) -> RepositoryRecord:
    return RepositoryRecord(
        1,
        "default",
        REPO,
        "n1",
        tuple(sorted(replicas)),
        generation,
        tuple(sorted(replicas.items())),
    )


def test_an_up_to_date_replica_without_an_acknowledged_write_is_named() -> None:
    h = history(op("create", "refs/heads/a", OIDS[3], 1.0, 2.0))
    acks = checker.index(h.ops, CHAIN)
    refs = {
        (REPO, "n1"): {**SEED, "refs/heads/a": OIDS[3]},
        (REPO, "n2"): dict(SEED),  # recorded up to date, lacks the write
        (REPO, "n3"): dict(SEED),  # outdated: allowed to lack it
    }
    found = checker.check_up_to_date(
        {REPO: record(5, n1=5, n2=5, n3=4)}, 3.0, refs, acks, CHAIN, SEED, (), 3.5
    )
    assert [(v.name, "n2" in v.detail) for v in found] == [(checker.UP_TO_DATE_MISSING, True)]


def test_a_write_acknowledged_after_the_record_was_read_is_not_required() -> None:
    h = history(op("create", "refs/heads/a", OIDS[3], 1.0, 4.0))
    acks = checker.index(h.ops, CHAIN)
    found = checker.check_up_to_date(
        {REPO: record(5, n1=5)}, 3.0, {(REPO, "n1"): dict(SEED)}, acks, CHAIN, SEED, (), 5.0
    )
    assert found == []


def test_a_disk_fault_exempts_its_node_and_an_unreadable_replica_waits() -> None:
    h = history(op("create", "refs/heads/a", OIDS[3], 1.0, 2.0))
    acks = checker.index(h.ops, CHAIN)
    refs = {(REPO, "n1"): dict(SEED), (REPO, "n2"): None}
    found = checker.check_up_to_date(
        {REPO: record(5, n1=5, n2=5)}, 3.0, refs, acks, CHAIN, SEED, ((REPO, "n1"),), 3.5
    )
    assert found == []


def test_the_shared_branch_below_an_acknowledged_position_is_a_lost_write() -> None:
    h = history(
        op("cas", SHARED, OIDS[4], 1.0, 2.0),
        op("cas", SHARED, OIDS[2], 0.5, 1.5),
        op("cas", SHARED, OIDS[3], 0.7, 1.8, outcome="unknown"),
    )
    lost, phantoms = checker.check_refs(
        {**SEED, SHARED: OIDS[3]}, checker.index(h.ops, CHAIN)[REPO], CHAIN, SEED, None, "x"
    )
    assert len(lost) == 1 and "below acknowledged 4" in lost[0] and phantoms == []


def test_a_value_from_a_definitely_failed_write_is_a_phantom_an_unknown_one_is_not() -> None:
    h = history(
        op("create", "refs/heads/f", OIDS[5], 1.0, 2.0, outcome="failed"),
        op("create", "refs/heads/u", OIDS[6], 1.0, 2.0, outcome="unknown"),
        op("create", "refs/heads/inflight", OIDS[7], 1.0, 0.0, outcome=""),
    )
    refs = {
        **SEED,
        "refs/heads/f": OIDS[5],
        "refs/heads/u": OIDS[6],
        "refs/heads/inflight": OIDS[7],
        "refs/heads/nobody": OIDS[1],
    }
    lost, phantoms = checker.check_refs(
        refs, checker.index(h.ops, CHAIN)[REPO], CHAIN, SEED, None, "x"
    )
    assert lost == []
    assert sorted(p.split(": ")[1].split("=")[0] for p in phantoms) == [
        "refs/heads/f",
        "refs/heads/nobody",
    ]


def test_stale_reads_within_the_documented_bound_are_counted_not_violations() -> None:
    h = history(
        op("cas", SHARED, OIDS[2], 8.0, 9.0, proxy="p1"),
        op("cas", SHARED, OIDS[3], 10.0, 11.0, proxy="p1"),
        # Same proxy, after the ack: must see position 3.
        op("read", SHARED, OIDS[2], 12.0, 12.1, proxy="p1"),
        # Other proxy, 1 s after the ack: within the bound, allowed.
        op("read", SHARED, OIDS[2], 12.0, 12.1, proxy="p2"),
        # Other proxy, past the bound: stale.
        op("read", SHARED, OIDS[2], 11.0 + checker.STALE_BOUND + 0.5, 17.0, proxy="p2"),
    )
    found = checker.check_reads(h, checker.index(h.ops, CHAIN), CHAIN, SEED)
    assert [v.name for v in found.violations] == [checker.STALE, checker.STALE]
    assert found.cross_proxy_lag == 1


def test_a_read_of_an_acknowledged_create_must_find_it_through_its_proxy() -> None:
    h = history(
        op("create", "refs/heads/a", OIDS[3], 1.0, 2.0, proxy="p1"),
        op("read", "refs/heads/a", "", 3.0, 3.1, proxy="p1", expects=OIDS[3]),
        op("read", "refs/heads/a", OIDS[3], 3.0, 3.1, proxy="p2", expects=OIDS[3]),
    )
    found = checker.check_reads(h, checker.index(h.ops, CHAIN), CHAIN, SEED)
    assert [v.name for v in found.violations] == [checker.STALE]


def _fault(name: str, start: float, end: float, **kw: object) -> Fault:
    return Fault(name, "process", "t", start, end, **kw)  # type: ignore[arg-type]


def test_failed_reads_are_excused_only_by_what_the_fault_takes_away() -> None:
    reads = [
        # A node killed: the other replicas serve, a failed read is a violation.
        op("read", SHARED, "", 5.0, 5.5, outcome="failed", proxy="addr1"),
        # The client's own proxy was down: its path, not the cluster.
        op("read", SHARED, "", 5.0, 5.5, outcome="failed", proxy="addr2"),
        op("read", SHARED, "", 12.5, 12.6, outcome="failed", proxy="addr2"),  # within recovery
        op("read", SHARED, "", 14.0, 14.1, outcome="failed", proxy="addr2"),  # past it
        # etcd without quorum: refused by design, and for its recovery after the heal.
        op("read", SHARED, "", 21.0, 21.5, outcome="failed", proxy="addr1"),
        op("read", SHARED, "", 27.0, 27.5, outcome="failed", proxy="addr1"),
        # Nothing going on.
        op("read", SHARED, "", 40.0, 40.5, outcome="failed", proxy="addr1"),
    ]
    faults = [
        _fault("kill-primary", 4.0, 10.0),
        _fault("kill-proxy", 4.0, 10.0, proxies_down=("proxy2",)),
        _fault("etcd-quorum-loss", 20.0, 25.0, reads_available=False, recovery=5.0),
    ]
    found = checker.check_failed_reads(
        history(*reads), faults, {"addr1": "proxy1", "addr2": "proxy2"}
    )
    assert [v.at for v in found] == [5.5, 14.1, 40.5]


def test_a_proxy_down_only_while_it_restarts_excuses_only_those_windows() -> None:
    """clock-skew restarts its proxy twice; in between the proxy runs skewed and
    its reads must succeed (the excuse covered the whole fault before)."""
    skew = _fault(
        "clock-skew",
        10.0,
        30.0,
        proxies_down=("proxy2",),
        proxies_down_during=[(10.0, 15.0), (25.0, 29.0)],
    )
    reads = [
        op("read", SHARED, "", 12.0, 12.1, outcome="failed", proxy="addr2"),  # restarting
        op("read", SHARED, "", 14.9, 15.2, outcome="failed", proxy="addr2"),  # overlaps the end
        op("read", SHARED, "", 20.0, 20.1, outcome="failed", proxy="addr2"),  # running skewed
        op("read", SHARED, "", 26.0, 26.1, outcome="failed", proxy="addr2"),  # restarting again
        op("read", SHARED, "", 20.0, 20.1, outcome="failed", proxy="addr1"),  # another proxy
    ]
    found = checker.check_failed_reads(
        history(*reads), [skew], {"addr1": "proxy1", "addr2": "proxy2"}
    )
    # The read through the skewed proxy while it ran, and the one through the other.
    assert [v.at for v in found] == [20.1, 20.1]


def test_verifier_repairs_are_violations_unless_a_disk_fault_hit_the_node(tmp_path: Path) -> None:
    log = tmp_path / "proxy1.log"
    log.write_text(
        '{"time": "2026-01-01T00:00:10.000Z", "msg": "' + checker.DEMOTED + '", '
        '"relative_path": "r.git", "demoted": ["n2"]}\n'
        '{"time": "2026-01-01T00:00:20.000Z", "msg": "' + checker.DEMOTED + '", '
        '"relative_path": "r.git", "demoted": ["n3"]}\n'
        '{"time": "2026-01-01T00:00:30.000Z", "msg": "' + checker.NO_MAJORITY + '", '
        '"relative_path": "r.git", "replicas": ["n1", "n2"]}\n'
        '{"time": "2026-01-01T00:00:40.000Z", "msg": "' + checker.SETTLED + '", '
        '"relative_path": "r.git", "demoted": ["n2"], "reference": "n1", '
        '"unfinished_correlation_ids": ["cid-s"]}\n'
        '{"time": "2026-01-01T00:00:50.000Z", "msg": "' + checker.DEMOTED + '", '
        '"relative_path": "r.git", "demoted": ["n1"], "unfinished_writes": 1, '
        '"unfinished_correlation_ids": ["cid-m"]}\n'
    )
    from datetime import datetime

    offset = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    repairs = checker.verifier_repairs([log], offset)
    assert [(r.nodes, r.at, r.conflict, r.proxy) for r in repairs] == [
        (("n2",), 10.0, False, "proxy1"),
        (("n3",), 20.0, False, "proxy1"),
        (("n1", "n2"), 30.0, True, "proxy1"),
        (("n2",), 40.0, False, "proxy1"),
        (("n1",), 50.0, False, "proxy1"),
    ]
    # Settled on an unfinished write: counted with the repairs, not a violation.
    assert [r.unfinished for r in repairs] == [False, False, False, True, False]
    # A majority verdict on replicas unfinished writes went to.
    assert [r.majority_unfinished for r in repairs] == [False, False, False, False, True]
    disk = Fault("rollback", "disk", "n3", 15.0, 18.0, disk_nodes=("n3",), disk_repos=(REPO,))
    assert [r.correlation_ids for r in repairs][3:] == [("cid-s",), ("cid-m",)]
    found = checker.check_repairs(repairs, [disk])
    assert sorted((v.at, v.detail.split()[2]) for v in found) == [
        (10.0, "n2"),
        (30.0, "n1"),
        (30.0, "n2"),
        (40.0, "n2"),  # no write of unknown outcome matches its intents
        (50.0, "n1"),
    ]
    # Excused by the write its intent names (by correlation id) when that
    # write's client was never told an outcome; not by an acknowledged or
    # definitely failed write with that id, one of another repository, or
    # another write of unknown outcome to the repository.
    settled = op("writeref", "refs/heads/s", OIDS[1], 35.0, 36.0, outcome="unknown")
    unknown = op("writeref", "refs/heads/x", OIDS[1], 45.0, 46.0, outcome="unknown")
    settled, unknown = replace(settled, correlation="cid-s"), replace(unknown, correlation="cid-m")
    # A write its paused proxy resumed and finished after the verdict (seed
    # 463895817): acknowledged after it, so not before: it explains it too.
    late = [replace(settled, outcome="ok", end=41.5), replace(unknown, outcome="ok", end=51.0)]
    early = [replace(unknown, outcome="ok", end=48.0), replace(settled, outcome="ok", end=38.0)]
    cases = (
        ([settled, unknown], True),
        (late, True),
        (early, False),
        ([replace(unknown, outcome="failed"), replace(settled, outcome="failed")], False),
        ([replace(unknown, repo="other.git"), replace(settled, repo="other.git")], False),
        ([replace(unknown, correlation="other"), replace(settled, correlation="x")], False),
    )
    for ops, excused in cases:
        found = checker.check_repairs(repairs, [disk], ops)
        named = [(v.at, v.detail.split()[2]) for v in found]
        assert ((50.0, "n1") not in named) is excused, ops
        assert ((40.0, "n2") not in named) is excused, ops


def test_a_verdict_is_excused_only_by_writes_of_every_reference_it_repairs() -> None:
    # Open item 13: one unacknowledged write to the repository excused a
    # verdict whatever references differed, so an unrelated client that hung
    # up could excuse a replica that lost an acknowledged write. With the
    # references the repair changes known, with each side's object, each
    # difference must be one of those writes' and the demoted replica must
    # lack no write acknowledged before the verdict.
    unknown = op(
        "writeref", "refs/heads/x", OIDS[1], 45.0, 46.0, outcome="unknown", correlation="c1"
    )
    verdict = checker.Repair(
        REPO, ("n1",), 50.0, False, "proxy1", majority_unfinished=True, correlation_ids=("c1",),
        refs=("refs/heads/x",), refs_count=1, sources={"n1": "n2"},
        values={"refs/heads/x": {"n1": OIDS[1], "n2": ""}},
    )  # fmt: skip

    def excused(repair: checker.Repair, *ops: Op) -> bool:
        return checker.explained_by_unknown_write(repair, [unknown, *ops], CHAIN)

    # The demoted replica holds the unknown write the majority lacks.
    assert excused(verdict)
    # Or lacks it (the majority holds it).
    assert excused(replace(verdict, values={"refs/heads/x": {"n1": "", "n2": OIDS[1]}}))
    # Another reference differs too, one an acknowledged write made: a loss.
    acked = op("writeref", "refs/heads/acked", OIDS[2], 30.0, 31.0)
    lost = replace(
        verdict,
        refs=("refs/heads/acked", "refs/heads/x"),
        refs_count=2,
        values={**verdict.values, "refs/heads/acked": {"n1": "", "n2": OIDS[2]}},  # type: ignore[dict-item]
    )
    assert not excused(lost, acked)
    assert checker.check_repairs([lost], [], [unknown, acked], CHAIN)
    # More references than were named, or checksums that differ with none
    # named: nothing shows the writes explain it.
    assert not excused(replace(verdict, refs_count=21))
    assert not excused(replace(verdict, refs=(), refs_count=0, values={}))
    # Not listed in time: one such write is all there is (the old rule).
    assert excused(replace(verdict, refs=None, refs_count=None, values=None))

    # The shared branch (every compare-and-swap writes it): n1 holds an
    # unknown write's position but lost a later acknowledged one.
    cas_unknown = op("cas", SHARED, OIDS[3], 40.0, 41.0, outcome="unknown", correlation="c2")
    cas_acked = op("cas", SHARED, OIDS[4], 42.0, 43.0)
    shared = replace(
        verdict, correlation_ids=("c2",), refs=(SHARED,),
        values={SHARED: {"n1": OIDS[3], "n2": OIDS[4]}},
    )  # fmt: skip
    assert not checker.explained_by_unknown_write(shared, [cas_unknown, cas_acked], CHAIN)
    # Ahead of the majority by the unknown write (built on the acknowledged
    # position): it lacks nothing acknowledged.
    ahead = replace(
        shared, values={SHARED: {"n1": OIDS[5], "n2": OIDS[4]}}, correlation_ids=("c3",)
    )
    cas_ahead = op("cas", SHARED, OIDS[5], 44.0, 45.0, outcome="unknown", correlation="c3")
    assert checker.explained_by_unknown_write(ahead, [cas_ahead, cas_acked], CHAIN)


def test_verdicts_are_read_from_etcds_history_and_merged_with_the_log() -> None:
    entries = [
        {"kind": "failover", "at": 5.0, "path": "r.git", "from": "n1", "to": "n2"},
        {
            "kind": "verdict", "at": 110.0, "path": "r.git", "by": "proxy2",
            "reason": "majority",
            "details": {
                "demoted": ["n3"], "unfinished_correlation_ids": ["c1"],
                "differing_refs": ["refs/heads/x"], "differing_refs_count": 1,
                "missing_on_disk": [],
            },
        },
        {"kind": "verdict", "at": 120.0, "path": "r.git", "reason": "conflict",
         "details": {"conflict": ["n1", "n2"], "demoted": []}},
        {"kind": "verdict", "at": 130.0, "path": "r.git", "reason": "conflict-cleared",
         "details": {"demoted": []}},
    ]  # fmt: skip
    recorded = checker.history_repairs(entries, 100.0)
    assert [(r.nodes, r.at, r.conflict, r.proxy, r.source) for r in recorded] == [
        (("n3",), 10.0, False, "proxy2", "history"),
        (("n1", "n2"), 20.0, True, "", "history"),
    ]
    (first, _) = recorded
    assert first.majority_unfinished and first.correlation_ids == ("c1",)
    assert first.refs == ("refs/heads/x",) and first.refs_count == 1
    # The same verdict's log line is not counted twice; a line whose entry
    # was trimmed from the bounded history is kept.
    same = checker.Repair("r.git", ("n3",), 10.4, False, "proxy2")
    trimmed = checker.Repair("r.git", ("n2",), 2.0, False, "proxy1")
    assert checker.merge_repairs(recorded, [same, trimmed]) == [*recorded, trimmed]
    # A line that names its entry is matched by it, however late it came
    # (the txn's retries), and never taken for another verdict.
    named = [replace(recorded[0], entry="e1"), recorded[1]]
    late = replace(same, at=25.0, entry="e1")
    other = replace(same, entry="e2")
    assert checker.merge_repairs(named, [late, other]) == [*named, other]


def test_the_longest_write_gap_spans_the_window_edges() -> None:
    h = history(
        op("create", "refs/heads/a", OIDS[1], 0.0, 3.0),
        op("create", "refs/heads/b", OIDS[1], 0.0, 9.0),
    )
    assert checker.longest_write_gap(h, 2.0, 10.0) == 6.0


def test_stale_reads_of_a_replica_a_disk_fault_rolled_back_are_counted_apart() -> None:
    h = history(
        op("create", "refs/heads/a", OIDS[3], 1.0, 2.0, proxy="p1"),
        op("read", "refs/heads/a", "", 10.0, 10.1, proxy="p1", expects=OIDS[3]),
        op("read", "refs/heads/a", "", 200.0, 200.1, proxy="p1", expects=OIDS[3]),
    )
    rollback = Fault(
        "replica-rollback", "disk", "n2", 5.0, 8.0, disk_nodes=("n2",), disk_repos=(REPO,)
    )
    found = checker.check_reads(h, checker.index(h.ops, CHAIN), CHAIN, SEED, [rollback])
    assert [v.at for v in found.violations] == [200.1]
    assert found.from_restored_replica == 1


def test_a_failed_read_is_excused_when_every_up_to_date_replica_was_down_or_cut_off() -> None:
    reads = [
        op("read", SHARED, "", 5.0, 5.2, outcome="failed", proxy="addr1"),
        op("read", SHARED, "", 7.0, 7.2, outcome="failed", proxy="addr1"),
        op("read", SHARED, "", 7.0, 7.2, outcome="failed", proxy="addr2"),
    ]
    faults = [
        _fault("pause-secondary", 4.0, 10.0, nodes_down=("n2",)),
        _fault("one-proxy-to-node-cut", 4.0, 10.0, unreachable=(("proxy1", "n3"),)),
    ]
    timeline = [
        (4.5, {REPO: frozenset({"n2"})}),  # only the paused node was up to date
        (6.5, {REPO: frozenset({"n2", "n3"})}),  # n3 caught up: cut off from proxy1 only
        (8.0, {REPO: frozenset({"n2", "n3"})}),
    ]
    names = {"addr1": "proxy1", "addr2": "proxy2"}
    found = checker.check_failed_reads(history(*reads), faults, names, timeline)
    assert [(v.at, "addr2" in v.detail) for v in found] == [(7.2, True)]


def test_a_failed_read_is_judged_by_the_record_versions_between_two_samples() -> None:
    # Seed 569553780's false red: a client hung up mid-write, its outcome
    # demoted the secondary n1, and the primary n3 was the only up-to-date
    # replica until n2's repair, all between two samples. proxy1, cut off
    # from n3, had nothing to read from; the samples ({n1, n3} and {n2, n3})
    # never showed n3 alone, the versions read back from etcd's history do.
    read = op("read", SHARED, "", 7.0, 7.2, outcome="failed", proxy="addr1")
    faults = [_fault("one-proxy-to-node-cut", 4.0, 20.0, unreachable=(("proxy1", "n3"),))]
    timeline = [
        (4.5, {REPO: frozenset({"n1", "n3"})}),
        (6.5, {REPO: frozenset({"n1", "n3"})}),
        (8.5, {REPO: frozenset({"n2", "n3"})}),
        (10.5, {REPO: frozenset({"n2", "n3"})}),
    ]
    names = {"addr1": "proxy1"}
    revisions = [100, 110, 130, 140]
    versions = [
        (120, record(6, n1=5, n2=5, n3=6)),  # the demotion's write: n3 alone
        (125, record(6, n1=5, n2=6, n3=6)),  # n2 repaired
        (105, record(5, n1=5, n2=4, n3=5)),  # before the read's window
        (99, record(5, n1=5, n2=5, n3=5)),  # before the first sample: left out
    ]
    between = {REPO: checker.transients(REPO, [t for t, _ in timeline], revisions, versions)}
    assert between[REPO] == [
        (6.5, 8.5, frozenset({"n3"})),
        (6.5, 8.5, frozenset({"n2", "n3"})),
        (4.5, 6.5, frozenset({"n1", "n3"})),
    ]
    assert len(checker.check_failed_reads(history(read), faults, names, timeline)) == 1
    assert checker.check_failed_reads(history(read), faults, names, timeline, between) == []
    # A version that lived only outside the read's samples excuses nothing.
    early = {REPO: [(4.5, 6.5, frozenset({"n3"}))]}
    assert len(checker.check_failed_reads(history(read), faults, names, timeline, early)) == 1
    # Nor one where some up-to-date replica stayed reachable.
    served = {REPO: [(6.5, 8.5, frozenset({"n2", "n3"}))]}
    assert len(checker.check_failed_reads(history(read), faults, names, timeline, served)) == 1


def test_a_disk_fault_of_another_repository_exempts_nothing() -> None:
    h = history(op("create", "refs/heads/a", OIDS[3], 1.0, 2.0))
    acks = checker.index(h.ops, CHAIN)
    found = checker.check_up_to_date(
        {REPO: record(5, n1=5)},
        3.0,
        {(REPO, "n1"): dict(SEED)},
        acks,
        CHAIN,
        SEED,
        (("other.git", "n1"),),
        3.5,
    )
    assert [v.name for v in found] == [checker.UP_TO_DATE_MISSING]


def test_reads_refused_before_the_stale_read_limit_are_not_excused_by_losing_etcd() -> None:
    reads = [
        op("read", SHARED, "", 21.0, 21.5, outcome="failed", proxy="addr1"),  # 1.5 s in
        op("read", SHARED, "", 24.0, 24.5, outcome="failed", proxy="addr1"),  # 4.5 s in
    ]
    faults = [_fault("etcd-quorum-loss", 20.0, 25.0, reads_available=False, excuse_after=3.0)]
    found = checker.check_failed_reads(history(*reads), faults, {"addr1": "proxy1"})
    assert [v.at for v in found] == [21.5]


def test_repairs_logged_by_a_proxy_with_a_skewed_clock_go_back_on_the_run_clock() -> None:
    repairs = [checker.Repair(REPO, ("n2",), 640.0, False, "proxy2")]
    skew = Fault("clock-skew", "clock", "proxy2", 30.0, 60.0, detail="wall clock +600s")
    assert [r.at for r in checker.unskew(repairs, [skew])] == [40.0]
    assert [r.at for r in checker.unskew(repairs, [])] == [640.0]


def test_a_write_whose_only_holder_a_disk_fault_rolled_back_is_lost_to_the_disk() -> None:
    sole = op("create", "refs/heads/a", OIDS[3], 1.0, 2.0)  # held by n1 alone
    kept = op("create", "refs/heads/b", OIDS[4], 1.0, 4.5)  # held by n1 and n2
    timeline = [(2.5, {REPO: frozenset({"n1"})}), (5.0, {REPO: frozenset({"n1", "n2"})})]
    rollback = Fault(
        "replica-rollback", "disk", "n1", 6.0, 8.0, disk_nodes=("n1",), disk_repos=(REPO,)
    )
    lost = checker.lost_to_disk([sole, kept], [rollback], timeline)
    assert lost == {id(sole)}
    other = Fault(
        "replica-rollback", "disk", "n1", 6.0, 8.0, disk_nodes=("n1",), disk_repos=("other.git",)
    )
    assert checker.lost_to_disk([sole, kept], [other], timeline) == set()


def test_a_write_acknowledged_between_the_faults_start_and_the_power_loss_is_the_disks() -> None:
    # The fault opens just before the kill (seed 1441900215: an acknowledgement
    # 10 ms after the fault opened, on the primary rolled back right after).
    late = op("writeref", "refs/heads/a", OIDS[3], 5.9, 6.01)
    timeline = [(6.02, {REPO: frozenset({"n1"})})]
    rollback = Fault(
        "primary-rollback", "disk", "n1", 6.0, 8.0, disk_nodes=("n1",), disk_repos=(REPO,)
    )
    assert checker.lost_to_disk([late], [rollback], timeline) == set()
    rollback.power_loss = 6.05
    assert checker.lost_to_disk([late], [rollback], timeline) == {id(late)}


def test_a_conflict_is_known_only_when_the_replicas_differ_by_unknown_writes_alone() -> None:
    h = history(
        op("create", "refs/heads/a", OIDS[3], 1.0, 2.0),
        op("create", "refs/heads/u", OIDS[4], 1.0, 2.0, outcome="unknown"),
    )
    acks = checker.index(h.ops, CHAIN)[REPO]
    both = {**SEED, "refs/heads/a": OIDS[3]}
    abandoned = {"n1": {**both, "refs/heads/u": OIDS[4]}, "n2": dict(both)}
    assert checker.abandoned_only(abandoned, acks, CHAIN, SEED)
    # One side lacks an acknowledged write: a loss, not a known conflict.
    rolled_back = {"n1": dict(both), "n2": dict(SEED)}
    assert not checker.abandoned_only(rolled_back, acks, CHAIN, SEED)


def test_a_write_lost_to_a_disk_is_not_required_but_still_no_phantom() -> None:
    sole = op("create", "refs/heads/a", OIDS[3], 1.0, 2.0)
    acks = checker.index([sole], CHAIN, {id(sole)})[REPO]
    for refs in (dict(SEED), {**SEED, "refs/heads/a": OIDS[3]}):
        assert checker.check_refs(refs, acks, CHAIN, SEED, None, "x") == ([], [])


def test_the_table_splits_failed_reads_by_excuse_and_reports_latency_around_each_fault() -> None:
    from types import SimpleNamespace

    from tests.faults.run import LATENCY_WINDOW, FaultRun

    fault = _fault("kill-proxy", 100.0, 110.0, proxies_down=("proxy2",))
    ops = [
        op("read", SHARED, "", 95.0, 95.010),  # before: 10 ms
        op("read", SHARED, "", 105.0, 105.050),  # during: 50 ms
        op("read", SHARED, "", 105.0, 105.1, outcome="failed", proxy="addr2"),  # own proxy down
        op("read", SHARED, "", 106.0, 106.1, outcome="failed", proxy="addr1"),  # nothing excuses
        op("read", SHARED, "", 110.0 + checker.HEAL_GRACE + 1.0, 114.5 + 0.020),  # after
        op("read", SHARED, "", 100.0 - LATENCY_WINDOW - 1.0, 89.5),  # outside every window
    ]
    run = SimpleNamespace(history=history(*ops), timeline=[], between={})
    [row] = FaultRun._table(run, [fault], [], {"addr1": "proxy1", "addr2": "proxy2"})  # type: ignore[arg-type]
    assert row["failed_reads"] == 2
    assert (row["failed_reads_own_proxy"], row["failed_reads_unexcused"]) == (1, 1)
    assert row["failed_reads_by_design"] == row["failed_reads_no_replica"] == 0
    assert (row["read_p50_before_ms"], row["read_p50_during_ms"]) == (10.0, 50.0)
    assert row["read_p99_during_ms"] == row["read_p99_ms"] == 50.0
    assert row["read_p50_after_ms"] is not None


def test_a_replica_recorded_up_to_date_found_missing_on_disk_is_named(tmp_path: Path) -> None:
    log = tmp_path / "proxy2.log"
    log.write_text(
        '{"time": "2026-01-01T00:00:11.000Z", "msg": "rpc", "relative_path": "r.git", '
        '"replica_missing": ["n2"]}\n'
        "not json\n"
        '{"time": "2026-01-01T00:00:21.000Z", "msg": "rpc", "relative_path": "r.git", '
        '"replica_missing": ["n3"]}\n'
        '{"time": "2026-01-01T00:00:31.000Z", "msg": "rpc", "relative_path": "r.git", '
        '"replica_missing": ["n2"]}\n'
    )
    from datetime import datetime

    offset = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    found = checker.missing_replicas([log], offset)
    assert [(m.repo, m.node, m.at, m.proxy) for m in found] == [
        (REPO, "n2", 11.0, "proxy2"),
        (REPO, "n3", 21.0, "proxy2"),
        (REPO, "n2", 31.0, "proxy2"),
    ]
    every = frozenset({"n1", "n2", "n3"})
    timeline = [
        (10.0, {REPO: every}),
        (12.0, {REPO: every}),
        # n3 outdated before the read at 21: not vouched for then.
        (20.0, {REPO: frozenset({"n1", "n2"})}),
        # Demoted by the time of the next record: it was vouched for.
        (30.0, {REPO: every}),
        (32.0, {REPO: frozenset({"n1", "n3"})}),
    ]
    named = checker.check_missing_replicas(found, [], timeline)
    assert [(v.name, v.at) for v in named] == [
        (checker.MISSING_REPLICA, 11.0),
        (checker.MISSING_REPLICA, 31.0),
    ]
    # A disk fault on n2's replica of the repository excuses it (until the
    # verifier's repair is due); one on another node or repository does not.
    wipe = Fault("wipe", "disk", "n2", 5.0, 25.0, disk_nodes=("n2",), disk_repos=(REPO,))
    assert [v.at for v in checker.check_missing_replicas(found, [wipe], timeline)] == []
    other = replace(wipe, disk_nodes=("n1",))
    elsewhere = replace(wipe, disk_repos=("other.git",))
    assert len(checker.check_missing_replicas(found, [other, elsewhere], timeline)) == 2
    # Before the first record read during the run: nothing to hold it to.
    assert checker.check_missing_replicas(found, [], timeline[4:]) == []
    # A record asked for before the miss at 31 and answered after it (n2
    # repaired and promoted meanwhile) is not what was recorded at the miss:
    # the one answered before it is, and it does not list n2.
    late = [(10.0, {REPO: frozenset({"n1", "n3"})}), (30.5, {REPO: every})]
    assert [v.at for v in checker.check_missing_replicas(found[2:], [], late)] == [31.0]
    assert checker.check_missing_replicas(found[2:], [], late, [10.2, 31.5]) == []
    assert len(checker.check_missing_replicas(found[2:], [], late, [10.2, 30.9])) == 1


def test_a_replica_missing_on_disk_is_never_excused_by_an_unfinished_write(tmp_path: Path) -> None:
    log = tmp_path / "proxy1.log"
    log.write_text(
        '{"time": "2026-01-01T00:00:50.000Z", "msg": "' + checker.DEMOTED + '", '
        '"relative_path": "r.git", "demoted": ["n1", "n2"], "unfinished_writes": 1, '
        '"unfinished_correlation_ids": ["cid-m"], "missing_on_disk": ["n2"]}\n'
    )
    from datetime import datetime

    repairs = checker.verifier_repairs([log], datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    assert [r.missing for r in repairs] == [("n2",)]
    unknown = op("create", "refs/heads/x", OIDS[1], 45.0, 46.0, outcome="unknown")
    found = checker.check_repairs(repairs, [], [replace(unknown, correlation="cid-m")])
    # n1 differs by the unknown write; n2's replica is gone: named.
    assert [v.detail for v in found] == [
        "replica on n2 recorded up to date: demoted by the verifier (missing on disk)"
    ]


def test_the_during_run_check_is_blind_with_too_few_samples_or_one_long_spell() -> None:
    every_3s = [3.0 * i for i in range(1, 30)]  # 29 samples in a 90 s run
    assert checker.check_blind(0.0, 90.0, every_3s, 3.0, "d") == []
    # Half as many as due (one per 7 s): blind.
    sparse = checker.check_blind(0.0, 90.0, [7.0 * i for i in range(1, 13)], 3.0, "d")
    assert [v.name for v in sparse] == [checker.BLIND]
    assert "12 rounds in 90s (expected about 30)" in sparse[0].detail
    # Enough samples in all, but none for 36 s in the middle (or at the end).
    hole = [t for t in every_3s if not 30.0 < t < 66.0] + [1.0 + t for t in range(0, 30, 3)]
    middle = checker.check_blind(0.0, 90.0, hole, 3.0, "d")
    assert [v.name for v in middle] == [checker.BLIND]
    assert "no round for 36s from 30s into the run" in middle[0].detail
    assert "rounds in" not in middle[0].detail
    stopped = checker.check_blind(0.0, 90.0, [1.5 * i for i in range(1, 36)], 3.0, "d")
    assert "no round for 38s from 52s into the run" in stopped[0].detail
    # The longest spell allowed passes.
    edge = [t for t in every_3s if not 30.0 < t < 60.0]
    edge += [1.0 + t for t in range(0, 30, 3)]
    assert checker.check_blind(0.0, 90.0, edge, 3.0, "d") == []
