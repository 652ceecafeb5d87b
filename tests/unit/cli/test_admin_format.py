"""Admin CLI output: tables, durations, JSON and the renderings of each report."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import grpc
import pytest

from gitquorum.cli import admin_common as common
from gitquorum.cli.admin_check import Check
from gitquorum.cli.admin_check import render as render_checks
from gitquorum.cli.admin_dataloss import describe_replica, entry_data
from gitquorum.cli.admin_dataloss import render as render_dataloss
from gitquorum.cli.admin_list_untracked import classify, storage_roots, tracked_paths, walk
from gitquorum.cli.admin_metadata import metadata_data
from gitquorum.cli.admin_metadata import render as render_metadata
from gitquorum.cli.admin_status import build_status, render_status
from gitquorum.cli.admin_switchover import Move
from gitquorum.cli.admin_switchover import render as render_moves
from gitquorum.cli.admin_view import ClusterView, ProxyMember, consensus_of
from gitquorum.cluster.decisions import choose_primary
from gitquorum.cluster.keys import replica_path
from gitquorum.cluster.operator_state import Mark, OperatorSnapshot
from gitquorum.cluster.queue import JobState, JobType, ReplicationJob
from gitquorum.cluster.reports import dataloss
from gitquorum.cluster.repositories import RepositoryRecord
from gitquorum.config import (
    EtcdSettings,
    NodeEntry,
    ProxyConfig,
    VirtualStorageConfig,
)
from gitquorum.gitaly import praefect_pb2


def record(
    rid: int, path: str, primary: str | None, generation: int, **replicas: int
) -> RepositoryRecord:
    return RepositoryRecord(
        rid,
        "default",
        path,
        primary,
        ("n1", "n2", "n3"),
        generation,
        tuple(sorted(replicas.items())),
    )


def member(name: str, **health: bool) -> ProxyMember:
    return ProxyMember(name, f"{name}:2305", 1000.0, {"default": health})


def view(
    records: tuple[RepositoryRecord, ...],
    proxies: tuple[ProxyMember, ...],
    jobs: tuple[ReplicationJob, ...] = (),
    operator: OperatorSnapshot | None = None,
) -> ClusterView:
    return ClusterView(
        proxies=proxies,
        leader=proxies[0].name if proxies else None,
        consensus=consensus_of(proxies),
        records=records,
        jobs=jobs,
        operator=operator or OperatorSnapshot(),
        read_at=2000.0,
    )


def job(target: str, state: JobState, created_at: float, rid: int = 1) -> ReplicationJob:
    return ReplicationJob(
        job_id=f"{target}{created_at}",
        type=JobType.UPDATE,
        virtual_storage="default",
        repository_id=rid,
        relative_path="a.git",
        target_node=target,
        state=state,
        created_at=created_at,
    )


# -- primitives ---------------------------------------------------------------------------


def test_table_aligns_columns_and_renders_cells() -> None:
    text = common.table(
        ["NAME", "OK", "ITEMS", "NOTE"],
        [["node1", True, ["a", "b"], None], ["n2", False, frozenset({"z", "y"}), "long note"]],
    )
    assert text.splitlines() == [
        "NAME   OK   ITEMS  NOTE",
        "node1  yes  a,b    -",
        "n2     no   y,z    long note",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.25, "250ms"),
        (-3, "0ms"),
        (12.9, "12s"),
        (184, "3m04s"),
        (7500, "2h05m"),
        (3 * 86400 + 4 * 3600 + 5, "3d04h"),
    ],
)
def test_format_age(seconds: float | None, text: str) -> None:
    assert common.format_age(seconds) == text


def test_format_time_is_utc_iso() -> None:
    assert common.format_time(0) == "-"
    assert common.format_time(86400 * 365) == "1971-01-01T00:00:00Z"


def test_json_output_is_sorted_and_handles_sets() -> None:
    out = io.StringIO()
    common.dump_json({"b": frozenset({"y", "x"}), "a": (1, 2)}, out)
    assert (
        out.getvalue() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": [\n    "x",\n    "y"\n  ]\n}\n'
    )


def test_emit_chooses_json_or_text(capsys: pytest.CaptureFixture[str]) -> None:
    common.emit(argparse.Namespace(json=True), {"k": 1}, lambda: "human")
    assert json.loads(capsys.readouterr().out) == {"k": 1}
    common.emit(argparse.Namespace(json=False), {"k": 1}, lambda: "human")
    assert capsys.readouterr().out == "human\n"


def test_exit_codes_of_rpc_failures() -> None:
    assert common.rpc_exit_code(grpc.StatusCode.UNAVAILABLE) == common.EXIT_UNREACHABLE
    assert common.rpc_exit_code(grpc.StatusCode.DEADLINE_EXCEEDED) == common.EXIT_UNREACHABLE
    assert common.rpc_exit_code(grpc.StatusCode.INVALID_ARGUMENT) == common.EXIT_USAGE
    assert common.rpc_exit_code(grpc.StatusCode.NOT_FOUND) == common.EXIT_PROBLEM


def test_virtual_storage_choice() -> None:
    def vs(name: str) -> VirtualStorageConfig:
        return VirtualStorageConfig(name, (NodeEntry("n1", "127.0.0.1:1"),), 1)

    one = ProxyConfig("127.0.0.1:0", "p", EtcdSettings(("127.0.0.1:2379",)), (vs("default"),))
    assert common.pick_virtual_storage(one, None).name == "default"
    with pytest.raises(common.UsageError, match="not configured"):
        common.pick_virtual_storage(one, "other")
    two = ProxyConfig("127.0.0.1:0", "p", EtcdSettings(("127.0.0.1:2379",)), (vs("a"), vs("b")))
    with pytest.raises(common.UsageError, match="--virtual-storage"):
        common.pick_virtual_storage(two, None)
    assert common.pick_virtual_storage(two, "b").name == "b"


def test_missing_config_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    async def never(_admin: common.Admin) -> int:
        raise AssertionError("must not run")

    assert common.run(argparse.Namespace(config=None), never) == common.EXIT_USAGE
    assert "--config" in capsys.readouterr().err


# -- status -------------------------------------------------------------------------------


def test_status_counts_health_votes_queue_and_lag() -> None:
    records = (
        record(1, "a.git", "n1", 3, n1=3, n2=3, n3=1),
        record(2, "b.git", "n3", 2, n3=2, n2=2),  # missing on n1, primary unhealthy
        record(3, "c.git", "n3", 1, n3=1),  # only replica on the unhealthy node
    )
    proxies = (
        member("p1", n1=True, n2=True, n3=False),
        member("p2", n1=True, n2=True, n3=True),
        member("p3", n1=True, n2=True, n3=False),
    )
    jobs = (
        job("n3", JobState.READY, 1900.0),
        job("n1", JobState.FAILED, 1500.0, rid=2),
        job("n1", JobState.DEAD, 1000.0, rid=3),
    )
    operator = OperatorSnapshot({"default": {"n2": Mark(1.0, "disk")}}, Mark(1990.0, "upgrade"))
    status = build_status(
        view(records, proxies, jobs, operator), {"default": ["n1", "n2", "n3"]}, "c1"
    )
    assert status["leader"] == "p1"
    assert status["paused"] == {"since": 1990.0, "reason": "upgrade", "by": ""}
    vs = status["virtual_storages"][0]
    # n3 is seen healthy by one of three proxies: fewer than half.
    assert vs["repositories"] == 3 and vs["unavailable"] == 1
    nodes = {n["name"]: n for n in vs["nodes"]}
    assert nodes["n3"]["healthy"] is False
    assert nodes["n3"]["votes"] == {"p1": False, "p2": True, "p3": False}
    assert nodes["n2"]["draining"] is True and nodes["n1"]["draining"] is False
    assert nodes["n1"]["primaries"] == 1 and nodes["n3"]["primaries"] == 2
    assert nodes["n1"]["outdated"] == 2  # b.git missing, c.git missing
    assert nodes["n3"]["outdated"] == 1  # a.git behind
    assert nodes["n1"]["queue"] == {"ready": 0, "in_progress": 0, "failed": 1, "dead": 1}
    assert nodes["n1"]["oldest_pending_age"] == 500.0  # the dead job does not count
    assert nodes["n2"]["oldest_pending_age"] is None
    text = render_status(status)
    assert "leader p1" in text and "paused since" in text and "pause reason: upgrade" in text
    assert "virtual storage default: 3 repositories, 1 unavailable" in text
    n3 = next(line for line in text.splitlines() if line.startswith("n3 "))
    assert "UNHEALTHY" in n3 and "p1:down p2:ok p3:down" in n3
    assert "DRAINING" in next(line for line in text.splitlines() if line.startswith("n2 "))
    assert "8m20s" in next(line for line in text.splitlines() if line.startswith("n1 "))
    json.dumps(status)  # the --json output is plain data


def test_status_without_proxies_says_health_is_unknown() -> None:
    status = build_status(view((), ()), {"default": ["n1"]}, "c1")
    text = render_status(status)
    assert "leader NONE" in text and "no live proxy" in text


def test_status_lists_job_targets_that_are_not_configured() -> None:
    status = build_status(
        view((), (), (job("gone", JobState.READY, 1999.0),)), {"default": ["n1"]}, "c"
    )
    nodes = {n["name"]: n for n in status["virtual_storages"][0]["nodes"]}
    assert nodes["gone"]["configured"] is False
    assert "gone (not configured)" in render_status(status)


# -- dataloss, metadata, switchover, check ---------------------------------------------------


def test_dataloss_entries_and_rendering() -> None:
    records = (
        record(1, "lost.git", "n1", 5, n1=5, n2=3),
        record(2, "partial.git", "n2", 2, n1=2, n2=2, n3=1),
        # Assigned to the healthy nodes only, both up to date.
        RepositoryRecord(3, "default", "fine.git", "n2", ("n2", "n3"), 1, (("n2", 1), ("n3", 1))),
    )
    healthy = {"default": frozenset({"n2", "n3"})}
    entries = dataloss(records, healthy, include_partially_replicated=True)
    data = [entry_data(e) for e in entries]
    assert [d["relative_path"] for d in data] == ["lost.git", "partial.git"]
    lost = data[0]
    assert lost["unavailable"] is True
    replicas = {r["node"]: r for r in lost["replicas"]}
    assert replicas["n2"]["behind_by"] == 2 and replicas["n3"]["generation"] == -1
    assert describe_replica(replicas["n1"]) == "n1: up to date, assigned, UNHEALTHY"
    assert describe_replica(replicas["n2"]) == "n2: behind by 2 generation(s), assigned, healthy"
    assert describe_replica(replicas["n3"]) == "n3: missing, assigned, healthy"
    report = {
        "proxies": 2,
        "partially_unavailable": True,
        "virtual_storages": [{"name": "default", "repositories": data}],
    }
    text = render_dataloss(report)
    assert "  lost.git (unavailable)" in text
    assert "  partial.git (partially replicated)" in text
    assert "n2: up to date, assigned, healthy, valid primary" in text
    empty = {
        "proxies": 0,
        "partially_unavailable": False,
        "virtual_storages": [{"name": "default", "repositories": []}],
    }
    assert render_dataloss(empty).splitlines() == [
        "warning: no live proxy, so no node counts as healthy",
        "virtual storage default:",
        "  no unavailable repositories",
    ]


def test_metadata_rendering() -> None:
    response = praefect_pb2.GetRepositoryMetadataResponse(
        repository_id=7,
        virtual_storage="default",
        relative_path="a.git",
        replica_path=replica_path(7),
        primary="n1",
        generation=4,
        replicas=[
            praefect_pb2.GetRepositoryMetadataResponse.Replica(
                storage="n1", assigned=True, generation=4, healthy=True, valid_primary=True
            ),
            praefect_pb2.GetRepositoryMetadataResponse.Replica(
                storage="n2", assigned=False, generation=-1, healthy=False
            ),
        ],
    )
    response.replicas[0].verified_at.FromSeconds(86400)
    data = metadata_data(response)
    assert data["replicas"][0]["verified_at"] == 86400.0
    assert data["replicas"][1]["verified_at"] is None
    text = render_metadata(data)
    assert f"replica path:    {replica_path(7)}" in text
    lines = text.splitlines()
    assert lines[-2].split() == ["n1", "yes", "4", "yes", "yes", "1970-01-02T00:00:00Z"]
    assert lines[-1].split() == ["n2", "no", "missing", "no", "no", "-"]


def test_switchover_target_choice_and_rendering() -> None:
    rec = record(1, "a.git", "n1", 2, n1=2, n2=2, n3=2)
    healthy = frozenset({"n1", "n2", "n3"})
    # The switchover of n1's primaries (n1 excluded; n3 drained in the second case).
    moved = frozenset({"n1"})
    assert choose_primary(rec, healthy, load={"n2": 5, "n3": 1}, exclude=moved) == "n3"
    assert choose_primary(rec, healthy, load={}, exclude=moved, draining=frozenset({"n3"})) == "n2"
    behind = record(2, "b.git", "n1", 2, n1=2, n2=1, n3=2)
    assert choose_primary(behind, frozenset({"n1", "n2"}), load={}, exclude=moved) is None
    text = render_moves(
        [Move(1, "a.git", "n1", "n3", True), Move(2, "b.git", "n1", None, False, "no candidate")]
    )
    assert "a.git       n1    n3  ok      -" in text
    assert "FAILED" in text and text.endswith("1 moved, 1 failed")
    assert render_moves([]) == "no primary to move"


def test_check_rendering_hides_passing_checks_when_quiet() -> None:
    checks = [Check("etcd", "ok", "127.0.0.1:2379"), Check("node n1", "fail", "down")]
    assert render_checks(checks, quiet=False).splitlines() == [
        "OK    etcd     127.0.0.1:2379",
        "FAIL  node n1  down",
    ]
    assert render_checks(checks, quiet=True) == "FAIL  node n1  down"
    assert render_checks(checks[:1], quiet=True) == ""


# -- list-untracked-repositories --------------------------------------------------------------


def fake_repository(path: Path) -> None:
    (path / "objects").mkdir(parents=True)
    (path / "refs").mkdir()
    (path / "HEAD").write_text("ref: refs/heads/main\n")


def test_walk_finds_repositories_without_descending_into_them(tmp_path: Path) -> None:
    fake_repository(tmp_path / "group" / "a.git")
    fake_repository(tmp_path / "group" / "a.git" / "nested.git")  # inside a repository
    fake_repository(tmp_path / "+gitquorum" / "tmp" / "staged.git")  # node's private area
    fake_repository(tmp_path / replica_path(5))
    (tmp_path / "plain-dir" / "objects").mkdir(parents=True)  # not a repository
    (tmp_path / "link.git").symlink_to(tmp_path / "group" / "a.git")
    found = [path for path, _ in walk(tmp_path)]
    assert found == [replica_path(5), "group/a.git"]


def test_classification_of_what_is_on_disk() -> None:
    live = RepositoryRecord(5, "default", "a.git", "n1", ("n1", "n2"), 1, (("n1", 1), ("n2", 1)))
    tracked = tracked_paths((live,), {"default": ["n1", "n2", "n3"]})
    by_id = {5: live}
    assert classify("n1", replica_path(5), by_id, tracked["n1"]) is None
    assert (
        classify("n3", replica_path(5), by_id, tracked.get("n3", set()))
        == "not recorded on this node"
    )
    assert classify("n1", replica_path(6), by_id, tracked["n1"]) == "no record"
    assert classify("n1", "group/a.git", by_id, tracked["n1"]) == "untracked"
    # A path shaped like a replica path but with the wrong hash directories is not one.
    assert classify("n1", "@cluster/repositories/00/00/5", by_id, tracked["n1"]) == "untracked"


def test_storage_roots_from_arguments_and_node_config(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        "listen: 127.0.0.1:0\n"
        "storages:\n  - {name: n2, path: /srv/n2}\n  - {name: n3, path: /srv/n3}\n"
    )
    args = argparse.Namespace(storage_path=["n1=/srv/n1"], node_config=[str(config)])
    assert storage_roots(args) == {
        "n1": Path("/srv/n1"),
        "n2": Path("/srv/n2"),
        "n3": Path("/srv/n3"),
    }
    with pytest.raises(common.UsageError, match="NODE=PATH"):
        storage_roots(argparse.Namespace(storage_path=["n1"], node_config=[]))
    with pytest.raises(common.UsageError, match="name the storages"):
        storage_roots(argparse.Namespace(storage_path=[], node_config=[]))
