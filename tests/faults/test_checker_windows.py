"""The checker's windows on their own: a node brought back mid-fault excuses
failed reads only while it was stopped (``Fault.nodes_down_during``), and a
disk fault writes off, and counts apart, only what its backup could not hold
(``Fault.backup_at``). Histories and faults are built by hand."""

from __future__ import annotations

import math

from tests.chaos.workload import SHARED, History, Op
from tests.faults import checker
from tests.faults.base import Fault
from tests.faults.histories import CHAIN, OIDS, REPO, SEED, op

NAMES = {"addr1": "proxy1", "addr2": "proxy2"}


def failed_read(start: float, proxy: str = "addr1") -> Op:
    return op("read", SHARED, "", start, start + 0.1, outcome="failed", proxy=proxy)


def unexcused(reads: list[Op], faults: list[Fault], timeline: checker.Timeline) -> list[float]:
    found = checker.check_failed_reads(History(reads), faults, NAMES, timeline)
    return [v.at for v in found]


# -- nodes brought back mid-fault ------------------------------------------------------------


def test_a_node_resumed_mid_fault_excuses_failed_reads_only_until_its_recovery() -> None:
    """pause-proxy-mid-repair pauses a node for its first seconds, then runs on:
    a read failing long after the node was back is not the fault's."""
    fault = Fault(
        "pause-proxy-mid-repair",
        "process",
        "proxy2",
        10.0,
        30.0,
        nodes_down=("n2",),
        nodes_down_during={"n2": [(10.0, 15.0)]},
        recovery=3.0,
    )
    # Only n2 recorded up to date throughout: its reads fail when it is down.
    timeline = [(t, {REPO: frozenset({"n2"})}) for t in (9.0, 12.0, 16.0, 20.0, 25.0, 29.0)]
    reads = [
        failed_read(12.0),  # paused
        failed_read(14.9),  # overlaps the resume
        failed_read(17.5),  # within the recovery after it (15 + 3)
        failed_read(18.5),  # past it: n2 ran
        failed_read(26.0),  # long after, still within the fault
    ]
    assert unexcused(reads, [fault], timeline) == [18.6, 26.1]
    # The same fault without windows: n2 down for the whole fault, as before.
    whole = Fault("pause-proxy-mid-repair", "process", "proxy2", 10.0, 30.0, nodes_down=("n2",))
    assert unexcused(reads, [whole], timeline) == []
    # A node listed with no window is down for the whole fault too.
    whole.nodes_down_during = {"n2": []}
    assert unexcused(reads, [whole], timeline) == []


def test_each_node_of_a_fault_counts_down_only_in_its_own_windows() -> None:
    """kill-primary-secondary-outdated: the secondary paused (10-14) then
    resumed, the primary killed later (20) and started at the heal (30)."""
    fault = Fault(
        "kill-primary-secondary-outdated",
        "process",
        "n1 (outdated: n2)",
        10.0,
        30.0,
        nodes_down=("n1", "n2"),
        nodes_down_during={"n2": [(10.0, 14.0)], "n1": [(20.0, 30.0)]},
        recovery=3.0,
    )
    timeline = [
        (11.0, {REPO: frozenset({"n1"}), "b.git": frozenset({"n2"})}),
        (16.0, {REPO: frozenset({"n1"}), "b.git": frozenset({"n2"})}),
        (18.5, {REPO: frozenset({"n1"}), "b.git": frozenset({"n1", "n2"})}),
        (22.0, {REPO: frozenset({"n1"}), "b.git": frozenset({"n1", "n2"})}),
        (31.0, {REPO: frozenset({"n1"}), "b.git": frozenset({"n1", "n2"})}),
    ]

    def read(start: float, repo: str) -> Op:
        failed = failed_read(start)
        failed.repo = repo
        return failed

    reads = [
        read(12.0, "b.git"),  # n2 paused: excused
        read(18.0, "b.git"),  # n2 back (and recovered), n1 not killed yet
        read(18.0, REPO),  # n1 runs
        read(22.0, REPO),  # n1 killed: its only up-to-date replica
        read(23.0, "b.git"),  # n1 killed, n2 up to date and running
        read(32.0, REPO),  # within the recovery after the heal
    ]
    assert unexcused(reads, [fault], timeline) == [18.1, 18.1, 23.1]
    # Before the windows: both nodes down from the fault's start to its recovery.
    fault.nodes_down_during = {}
    assert unexcused(reads, [fault], timeline) == []


def test_the_fault_that_excuses_is_the_one_whose_node_was_down() -> None:
    resumed = Fault(
        "pause-proxy-mid-repair",
        "process",
        "proxy2",
        10.0,
        30.0,
        nodes_down=("n3",),
        nodes_down_during={"n3": [(10.0, 12.0)]},
    )
    killed = Fault("kill-secondary", "process", "n2", 18.0, 25.0, nodes_down=("n2",))
    timeline = [(19.0, {REPO: frozenset({"n2"})}), (21.0, {REPO: frozenset({"n2"})})]
    read = failed_read(20.0)
    assert checker.excused(read, [resumed, killed], timeline, "proxy1") is killed
    assert (
        checker.excuse_reason(read, [resumed, killed], timeline, "proxy1")
        == checker.EXCUSE_NO_REPLICA
    )
    # With only the node that was back by then, nothing excuses it.
    assert checker.excused(read, [resumed], timeline, "proxy1") is None


# -- what a disk fault's backup held ---------------------------------------------------------


def _rollback(**kw: object) -> Fault:
    fault = Fault(
        "replica-rollback",
        "disk",
        "n1",
        8.0,
        12.0,
        disk_nodes=("n1",),
        disk_repos=(REPO,),
        nodes_down=("n1",),
        power_loss=8.0,
    )
    for name, value in kw.items():
        setattr(fault, name, value)
    return fault


def test_only_writes_acknowledged_between_the_backup_and_the_power_loss_are_the_disks() -> None:
    before = op("create", "refs/heads/a", OIDS[3], 3.5, 4.0)  # in the backup
    between = op("create", "refs/heads/b", OIDS[4], 5.5, 6.0)  # after it
    after = op("create", "refs/heads/c", OIDS[5], 8.2, 8.5)  # n1 already dead
    # n1 alone recorded up to date around each (its secondaries outdated).
    timeline = [(t, {REPO: frozenset({"n1"})}) for t in (4.5, 6.5, 7.5, 9.0)]
    writes = [before, between, after]
    assert checker.lost_to_disk(writes, [_rollback(backup_at=5.0)], timeline) == {id(between)}
    # Without the backup's time: from BACKUP_AGE before the fault, as before.
    assert checker.lost_to_disk(writes, [_rollback()], timeline) == {id(before), id(between)}


def test_the_holders_of_a_write_are_those_recorded_right_after_it() -> None:
    """A write whose only holder was the replica sent back is the disk's even if
    another replica caught up from it before the power loss: the verifier may
    settle on the restored replica's intent and copy it over the other (the
    "Not guaranteed" case of docs/reliability.md)."""
    caught_up = op("create", "refs/heads/b", OIDS[4], 5.5, 6.0)
    timeline = [(6.5, {REPO: frozenset({"n1"})}), (7.5, {REPO: frozenset({"n1", "n2"})})]
    assert checker.lost_to_disk([caught_up], [_rollback(backup_at=5.0)], timeline) == {
        id(caught_up)
    }
    # Held by another replica when acknowledged: required.
    shared = [(6.5, {REPO: frozenset({"n1", "n2"})})]
    assert checker.lost_to_disk([caught_up], [_rollback(backup_at=5.0)], shared) == set()


def test_a_wipe_or_an_unvouched_copy_looks_back_only_the_backup_age() -> None:
    later = {"start": 20.0, "end": 24.0, "power_loss": 20.0}
    wipe = _rollback(nemesis="replica-wipe", backup_at=-math.inf, **later)
    old = op("create", "refs/heads/a", OIDS[3], 0.5, 1.0)  # long before the fault
    recent = op("create", "refs/heads/b", OIDS[4], 14.5, 15.0)
    alone = [(1.5, {REPO: frozenset({"n1"})}), (15.5, {REPO: frozenset({"n1"})})]
    # A write held by the wiped replica alone long before is still required:
    # it had every chance to be copied (the during-run check holds it to that).
    assert checker.lost_to_disk([old, recent], [wipe], alone) == {id(recent)}
    assert checker.lost_to_disk([old, recent], [_rollback(**later)], alone) == {id(recent)}


def test_a_stale_read_from_the_restored_replica_missed_only_writes_after_the_backup() -> None:
    before = op("create", "refs/heads/a", OIDS[3], 3.5, 4.0)
    between = op("create", "refs/heads/b", OIDS[4], 5.5, 6.0)
    reads = [
        # After the power loss, through the proxy that acknowledged them.
        op("read", "refs/heads/a", "", 13.0, 13.1, expects=OIDS[3]),  # older than the backup
        op("read", "refs/heads/b", "", 13.0, 13.2, expects=OIDS[4]),  # the backup missed it
        # Began before the power loss: the restored replica was not serving.
        op("read", "refs/heads/b", "", 7.0, 7.3, expects=OIDS[4]),
        # Past the heal and the verifier's exemption.
        op("read", "refs/heads/b", "", 80.0, 80.4, expects=OIDS[4]),
    ]
    h = History([before, between, *reads])
    acks = checker.index(h.ops, CHAIN)
    found = checker.check_reads(h, acks, CHAIN, SEED, [_rollback(backup_at=5.0)])
    assert sorted(v.at for v in found.violations) == [7.3, 13.1, 80.4]
    assert found.from_restored_replica == 1
    # Without the backup's time every stale read in the fault's window is apart.
    found = checker.check_reads(h, acks, CHAIN, SEED, [_rollback()])
    assert sorted(v.at for v in found.violations) == [7.3, 80.4]
    assert found.from_restored_replica == 2
    # A wipe held nothing: any write may be missing from it.
    wipe = _rollback(nemesis="replica-wipe", backup_at=-math.inf)
    found = checker.check_reads(h, acks, CHAIN, SEED, [wipe])
    assert sorted(v.at for v in found.violations) == [7.3, 80.4]
    assert found.from_restored_replica == 2


def test_a_stale_shared_branch_read_is_the_disks_only_above_the_backups_position() -> None:
    h = History(
        [
            op("cas", SHARED, OIDS[1], 3.5, 4.0),  # position 1, in the backup
            op("cas", SHARED, OIDS[2], 5.5, 6.0),  # position 2, after it
            op("read", SHARED, OIDS[1], 13.0, 13.1),  # missed only position 2
            op("read", SHARED, OIDS[0], 13.0, 13.2),  # missed position 1 too
        ]
    )
    acks = checker.index(h.ops, CHAIN)
    found = checker.check_reads(h, acks, CHAIN, SEED, [_rollback(backup_at=5.0)])
    assert [v.at for v in found.violations] == [13.2]
    assert found.from_restored_replica == 1


def test_a_read_that_missed_only_a_write_lost_to_the_disk_is_the_disks() -> None:
    """The write the disk took is no longer required: a read through its proxy
    that missed it is held to the other writes only."""
    lost = op("cas", SHARED, OIDS[2], 5.5, 6.0)
    h = History(
        [op("cas", SHARED, OIDS[1], 3.5, 4.0), lost, op("read", SHARED, OIDS[1], 13.0, 13.1)]
    )
    acks = checker.index(h.ops, CHAIN, {id(lost)})
    found = checker.check_reads(h, acks, CHAIN, SEED, [_rollback(backup_at=5.0)])
    assert found.violations == []
    assert found.from_restored_replica == 1
