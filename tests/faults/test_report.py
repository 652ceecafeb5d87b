"""The failure output of a fault run on its own: each violation explained by
the operations, faults and log lines around its cause, not around the time it
was found; a run that raised says what it had done."""

from __future__ import annotations

import functools
import json
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.chaos.workload import SHARED, History, Op
from tests.faults import checker, explain, histories, run
from tests.faults.base import Fault
from tests.faults.checker import Violation
from tests.faults.context import RunContext
from tests.faults.histories import CHAIN, OIDS

SEED = {SHARED: OIDS[0]}
REPO = "faults/abcd1234-03.git"
OTHER = "faults/abcd1234-04.git"
END = 600.0  # the run's end: when the end-of-run checks stamp their violations


# The workload's operations as the runs record them (a writer, a proxy address).
op = functools.partial(histories.op, proxy="127.0.0.1:1", process="w1", repo=REPO)


def fault(nemesis: str, start: float, end: float | None, **details: object) -> Fault:
    return Fault(nemesis, "process", "node2", start, end, recovery=3.0, **details)  # type: ignore[arg-type]


def busy_end(repo: str = REPO) -> list[Op]:
    """Writes and reads of other refs of the repository in the run's last
    seconds: what the output showed before (ops within 5 s of ``at``)."""
    ops = []
    for i in range(40):
        at = END - 4.0 + i * 0.1
        ops.append(op("create", f"refs/heads/w2/{i}", OIDS[5], at, at + 0.05, repo=repo))
        ops.append(op("read", SHARED, OIDS[4], at, at + 0.01, repo=repo))
    return ops


def lost_write_detail(acknowledged: Op) -> str:
    """The detail the end-of-run check gives a replica that lacks it."""
    acks = checker.index([acknowledged], CHAIN)
    lost, _ = checker.check_refs(dict(SEED), acks[REPO], CHAIN, SEED, None, "replica on node1")
    assert len(lost) == 1
    return lost[0]


def test_a_lost_write_found_at_the_end_is_explained_by_the_write_acknowledged_long_before() -> None:
    ref = "refs/heads/w1/3"
    acknowledged = op("create", ref, OIDS[3], 99.9, 100.0)
    before = [op("read", ref, "", 50.0 + i, 50.5 + i) for i in range(20)]
    after = [op("read", ref, OIDS[3], 101.0 + i, 101.2 + i) for i in range(20)]
    ops = sorted([*before, acknowledged, *after, *busy_end()], key=lambda o: o.start)
    violation = Violation(checker.LOST, REPO, lost_write_detail(acknowledged), END)

    found = explain.cause(violation, ops, [])
    assert found.ref == ref
    assert found.anchor is acknowledged
    assert acknowledged in found.ops
    assert len(found.ops) == explain.OPS_SHOWN
    assert all(o.key == ref for o in found.ops)
    # The acknowledging one and the ones around it, not the run's last ones.
    assert all(o.start < 200.0 for o in found.ops)
    assert any(o.start > acknowledged.end for o in found.ops)

    lines = explain.around(violation, ops, [])
    assert lines[0].startswith(f"  operations on {ref} (15 of 41)")
    marked = [line for line in lines if line.startswith("  > ")]
    assert len(marked) == 1 and "[99.90-100.00]" in marked[0], lines
    assert not any("refs/heads/w2/" in line or f"{SHARED} " in line for line in lines)


def test_a_lost_shared_position_shows_the_last_acknowledged_writes_of_the_shared_branch() -> None:
    writes = [op("cas", SHARED, OIDS[i], 10.0 * i, 10.0 * i + 1.0) for i in range(1, 8)]
    failed = op("cas", SHARED, OIDS[8], 75.0, 76.0, outcome="failed")
    ops = [*writes, failed, *busy_end(OTHER)]
    detail = f"replica on node1: {SHARED} at position 3, below acknowledged 7"
    found = explain.cause(Violation(checker.LOST, REPO, detail, END), ops, [])
    assert found.ref == SHARED
    assert found.anchor is writes[-1]
    assert found.ops == [*writes, failed]


def test_a_violation_naming_no_ref_shows_the_repositorys_last_writes() -> None:
    writes = [op("create", f"refs/heads/w1/{i}", OIDS[1], 200.0 + i, 200.5 + i) for i in range(30)]
    reads = [op("read", SHARED, OIDS[0], 200.2 + i, 200.3 + i) for i in range(30)]
    elsewhere = busy_end(OTHER)
    ops = sorted([*writes, *reads, *elsewhere], key=lambda o: o.start)
    violation = Violation(checker.NOT_CONVERGED, REPO, "assigned replicas differ or lag", END)

    found = explain.cause(violation, ops, [])
    assert found.ref == ""
    assert found.ops == writes[-explain.OPS_SHOWN :]
    lines = explain.around(violation, ops, [])
    assert lines[0].startswith("  operations of the repository, no ref named (15 of 30)")
    assert all(REPO not in line for line in lines)  # ops show their refs, not other repos
    assert not any(" read " in line for line in lines)


def test_the_faults_listed_are_those_overlapping_the_operations_or_hitting_the_repository() -> None:
    ref = "refs/heads/w1/3"
    acknowledged = op("create", ref, OIDS[3], 99.9, 100.0)
    ops = [acknowledged, *busy_end()]
    violation = Violation(checker.LOST, REPO, lost_write_detail(acknowledged), END)
    during = fault("kill-primary", 99.0, 104.0)
    healed_just_before = fault("pause-node", 80.0, 87.5)  # + 3 s recovery, within 10 s
    long_before = fault("kill-secondary", 40.0, 45.0)
    just_after = fault("etcd-leader-kill", 109.5, 115.0)  # starts within 10 s of the ack
    later_elsewhere = fault("proxy-kill", 300.0, 305.0)
    rollback_of_it = fault(
        "replica-rollback", 400.0, 420.0, disk_nodes=("node1",), disk_repos=(REPO,)
    )
    rollback_before = fault(
        "replica-rollback", 10.0, 20.0, disk_nodes=("node1",), disk_repos=(REPO,)
    )
    rollback_of_another = fault(
        "replica-rollback", 400.0, 420.0, disk_nodes=("node1",), disk_repos=(OTHER,)
    )
    at_the_end = fault("clock-skew", END - 3.0, END - 1.0)
    faults = [
        rollback_before,
        long_before,
        healed_just_before,
        during,
        just_after,
        later_elsewhere,
        rollback_of_it,
        rollback_of_another,
        at_the_end,
    ]
    found = explain.cause(violation, ops, faults)
    assert found.faults == [healed_just_before, during, just_after, rollback_of_it]
    lines = explain.around(violation, ops, faults)
    listed = lines[lines.index("  faults around them (4):") + 1 :]
    assert [line.split()[0] for line in listed] == [
        "pause-node",
        "kill-primary",
        "etcd-leader-kill",
        "replica-rollback",
    ]
    assert f"repos {REPO}" in listed[-1]


def test_without_a_ref_the_faults_are_those_near_its_last_writes_and_those_that_hit_it() -> None:
    writes = [op("create", f"refs/heads/w1/{i}", OIDS[1], 200.0 + i, 200.5 + i) for i in range(5)]
    near_last_write = fault("pause-node", 210.0, 212.0)  # 5.5 s after the last write ended
    far = fault("kill-primary", 260.0, 265.0)
    wiped = fault("replica-wipe", 30.0, 40.0, disk_nodes=("node3",), disk_repos=(REPO,))
    no_replica = fault("kill-primary-secondary-outdated", 500.0, 505.0, repos_down=(REPO,))
    violation = Violation(checker.STUCK, REPO, "no write acknowledged within 30.0s", END)
    found = explain.cause(violation, writes, [far, near_last_write, wiped, no_replica])
    assert found.ops == writes
    assert found.faults == [wiped, near_last_write, no_replica]


def test_a_failed_read_is_explained_by_the_operations_around_it() -> None:
    read = op("read", SHARED, "", 300.0, 301.0, outcome="failed")
    near = [op("create", f"refs/heads/w1/{i}", OIDS[1], 297.0 + i, 297.5 + i) for i in range(6)]
    early = [op("create", f"refs/heads/w0/{i}", OIDS[1], 100.0 + i, 100.5 + i) for i in range(6)]
    detail = "read via 127.0.0.1:1 [300.00-301.00] failed (UNAVAILABLE: x) during no fault"
    found = explain.cause(
        Violation(checker.UNAVAILABLE_READ, REPO, detail, 300.0), [*early, *near, read], []
    )
    assert found.ref == ""
    assert set(map(id, found.ops)) == set(map(id, [*near, read]))


# -- log lines ------------------------------------------------------------------------------

OFFSET = 1_700_000_000.0  # wall clock - monotonic clock


def line(at: float, correlation: str, msg: str = "rpc finished", **fields: object) -> str:
    wall = datetime.fromtimestamp(OFFSET + at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    entry = {"time": wall, "level": "info", "msg": msg, "correlation_id": correlation, **fields}
    return json.dumps(entry)


def test_the_log_lines_are_the_repositorys_around_the_cause_its_own_calls_first() -> None:
    ref = "refs/heads/w1/3"
    acknowledged = op("create", ref, OIDS[3], 99.9, 100.0, correlation="c0ffee00c0ffee00")
    ops = [acknowledged, *busy_end()]
    violation = Violation(checker.LOST, REPO, lost_write_detail(acknowledged), END)
    proxy = [
        line(100.0, "c0ffee00c0ffee00", relative_path=REPO, outcome="committed"),
        *[line(98.0 + i * 0.1, f"other{i}", relative_path=REPO) for i in range(30)],
        line(100.1, "elsewhere", relative_path=OTHER),
        line(300.0, "late", relative_path=REPO),  # far from the cause
        "not json at all",
    ]
    node = [
        line(99.95, "c0ffee00c0ffee00", method="/gitaly.RefService/UpdateReferences"),
        line(99.96, "elsewhere", method="/gitaly.RefService/UpdateReferences"),
        line(99.97, "unrelated", method="/gitaly.RefService/UpdateReferences"),
    ]
    logs = explain.Logs({"proxy1": proxy, "node2": node}, {REPO}, OFFSET)
    found = explain.cause(violation, ops, [])
    entries = logs.around(REPO, found)
    assert len(entries) == explain.LOG_LINES
    own = [e for e in entries if e.correlation == "c0ffee00c0ffee00"]
    assert {e.process for e in own} == {"proxy1", "node2"}
    assert all(95.0 <= e.at <= 105.0 for e in entries)
    assert not any(e.correlation in ("elsewhere", "unrelated", "late") for e in entries)
    assert entries == sorted(entries, key=lambda e: e.at)
    assert abs(own[0].at - 99.95) < 0.01
    printed = explain.log_lines(entries)
    assert printed[0].startswith("    ")


def test_the_log_lines_are_read_from_the_process_logs(tmp_path: Path) -> None:
    (tmp_path / "proxy1.log").write_text(line(5.0, "abc", relative_path=REPO) + "\n")
    (tmp_path / "node1.log").write_text(line(5.1, "abc") + "\n" + line(5.2, "def") + "\n")
    paths = {
        "proxy1": tmp_path / "proxy1.log",
        "node1": tmp_path / "node1.log",
        "gone": tmp_path / "gone.log",
    }
    logs = explain.Logs.read(paths, {REPO}, OFFSET)
    assert [(e.process, e.correlation) for e in logs.by_repo[REPO]] == [
        ("proxy1", "abc"),
        ("node1", "abc"),
    ]


# -- a run that raised ------------------------------------------------------------------------


def test_a_run_that_raised_names_its_seed_faults_and_last_operations() -> None:
    ops = [op("create", f"refs/heads/w1/{i}", OIDS[1], float(i), i + 0.5) for i in range(50)]
    faults = [fault("kill-primary", 3.0, 9.0), fault("pause-node", 40.0, None)]
    lines = explain.interrupted(7, TimeoutError("every process to run again"), faults, ops)
    text = "\n".join(lines)
    assert lines[0] == "seed 7: the run stopped on TimeoutError: every process to run again"
    assert "faults injected so far (2):" in text
    assert "pause-node (process) on node2 [40.00-not healed]" in text
    assert f"last operations ({explain.LAST_OPS} of 50):" in text
    assert "refs/heads/w1/49 " in text and "refs/heads/w1/19 " not in text


async def test_run_and_check_prints_the_report_of_a_run_that_raised_then_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def execute(self: run.FaultRun) -> run.Report:
        self.ctx = RunContext(None, random.Random(0), self.repos, self.history)  # type: ignore[arg-type]
        now = time.monotonic()
        self.ctx.faults.open(fault("pause-proxy-mid-repair", now, None))
        self.history.add(op("create", "refs/heads/w1/1", OIDS[1], now, now + 0.1))
        raise TimeoutError("every process to run again")

    monkeypatch.setattr(run.FaultRun, "execute", execute)
    settings = run.RunSettings(1234, 60.0, [])
    with pytest.raises(TimeoutError):
        await run.run_and_check(tmp_path, CHAIN, settings)
    out = capsys.readouterr().out
    assert "seed 1234: the run stopped on TimeoutError: every process to run again" in out
    assert "pause-proxy-mid-repair" in out and "not healed" in out
    assert "refs/heads/w1/1 " in out


def test_explain_prints_each_violation_with_what_is_around_its_cause() -> None:
    fault_run = run.FaultRun(Path("/nonexistent"), CHAIN, run.RunSettings(5, 60.0, []))
    ref = "refs/heads/w1/3"
    acknowledged = op("create", ref, OIDS[3], 99.9, 100.0)
    fault_run.history = History([acknowledged, *busy_end()])
    fault_run.ctx = RunContext(None, random.Random(0), [REPO], fault_run.history)  # type: ignore[arg-type]
    fault_run.ctx.faults.open(fault("kill-primary", 99.0, 104.0))
    violation = Violation(checker.LOST, REPO, lost_write_detail(acknowledged), END)
    report = run.Report(5, 1, 1, {}, [violation], [], [], {})
    text = fault_run.explain(report)
    assert str(violation) in text
    assert f"  > w1 create {ref} " in text
    assert "kill-primary (process) on node2 [99.00-104.00]" in text


def test_a_task_dump_shows_the_tasks_of_repairs_and_what_they_wait_on() -> None:
    line = json.dumps(
        {
            "time": "2026-01-01T00:00:00.000Z",
            "msg": "task dump",
            "tasks": [
                {"task": "replication-0", "waits": ["proxy/replication.py:420 _process", "Future"]},
                {"task": "Task-7", "waits": ["proxy/verifier.py:88 run", "FutureIter"]},
                {"task": "health", "waits": ["proxy/health.py:10 loop"]},
            ],
        }
    )
    shown = explain.dumped_tasks(line)
    assert shown == [
        "    replication-0: proxy/replication.py:420 _process > Future",
        "    Task-7: proxy/verifier.py:88 run > FutureIter",
    ]
    assert explain.dumped_tasks("not json") == []


def test_round_times_are_summarized_by_median_and_longest() -> None:
    assert run._seconds_summary([]) == "no round completed"
    assert run._seconds_summary([3.14, 0.5, 7.42, 1.0]) == "median 2.1 s, longest 7.4 s"
    assert run._seconds_summary([0.8, 3.04, 1.1]) == "median 1.1 s, longest 3.0 s"
