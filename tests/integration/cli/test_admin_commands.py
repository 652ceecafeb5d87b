"""The admin commands against a real cluster: etcd, three nodes, two proxies."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import threading
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import grpc
import pytest
import yaml

from gitquorum.cli.main import main
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.etcd import free_ports
from tests.harness.node import wait_for
from tests.integration.cli.ops import (
    cli,
    default_branch,
    metadata,
    metrics,
    node_checksum,
    sample,
    seed,
    write_ref,
)

pytestmark = pytest.mark.usefixtures("show_logs")
NODES = ("node1", "node2", "node3")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gitrepo.make_repo(tmp_path_factory.mktemp("source") / "project")


def commits(source: Path) -> tuple[str, str]:
    head, parent = gitrepo.git("rev-parse", "main", "main~1", cwd=source).split()
    return head, parent


def all_up_to_date(cluster: Cluster, path: str) -> bool:
    meta = metadata(cluster, path)
    return len(meta.replicas) == 3 and all(r.generation == meta.generation for r in meta.replicas)


def verified(cluster: Cluster, path: str) -> bool:
    return all(r.HasField("verified_at") for r in metadata(cluster, path).replicas)


def test_status_shows_proxies_leader_nodes_and_queue(cluster: Cluster, source: Path) -> None:
    seed(cluster, "status/a.git", source, cluster.base / "scratch-status")
    status = cli(cluster, "status", "--json")
    assert status.code == 0, status
    data = status.json()
    assert {p["name"] for p in data["proxies"]} == {"proxy1", "proxy2"}
    assert data["leader"] in {"proxy1", "proxy2"}
    assert data["paused"] is None
    vs = data["virtual_storages"][0]
    assert vs["name"] == "default" and vs["repositories"] >= 1 and vs["unavailable"] == 0
    nodes = {n["name"]: n for n in vs["nodes"]}
    assert set(nodes) == set(NODES)
    for node in nodes.values():
        assert node["healthy"] and node["votes"] == {"proxy1": True, "proxy2": True}
        assert set(node["queue"]) == {"ready", "in_progress", "failed", "dead"}
    assert sum(n["primaries"] for n in nodes.values()) == vs["repositories"]
    # The real entry point, as an operator runs it.
    proc = subprocess.run(
        [sys.executable, "-m", "gitquorum.cli.main", "status"],
        env={"GITQUORUM_CONFIG": str(cluster.proxies[1].config_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"leader {data['leader']}" in proc.stdout
    assert "virtual storage default:" in proc.stdout


def test_check_passes_then_fails_on_an_unreachable_clock_source(cluster: Cluster) -> None:
    endpoints = [f"127.0.0.1:{p.metrics_port}" for p in cluster.proxies]
    endpoints += [f"127.0.0.1:{n.metrics_port}" for n in cluster.nodes]
    args = [arg for e in endpoints for arg in ("--metrics", e)]
    result = cli(cluster, "check", *args, "--json")
    assert result.code == 0, result
    checks = {c["name"]: c for c in result.json()["checks"]}
    for name in ("etcd", "proxies", "leader", *(f"node {n}" for n in NODES)):
        assert checks[name]["status"] == "ok", checks[name]
    for node in NODES:
        assert checks[f"disk {node}"]["status"] == "ok"
        assert "writeable" in checks[f"disk {node}"]["detail"]
    assert sum(1 for name in checks if name.startswith("clock ")) == len(endpoints) + 1
    assert all(c["status"] == "ok" for n, c in checks.items() if n.startswith("clock "))
    (closed,) = free_ports(1)
    failing = cli(cluster, "check", "--metrics", f"127.0.0.1:{closed}", "-q")
    assert failing.code == 1, failing
    assert f"FAIL  clock 127.0.0.1:{closed}" in failing.out
    assert "OK " not in failing.out  # -q prints problems only


def test_metadata_and_replication_factor(cluster: Cluster, source: Path) -> None:
    seed(cluster, "meta/a.git", source, cluster.base / "scratch-meta")
    by_path = cli(cluster, "metadata", "--repository", "meta/a.git", "--json")
    assert by_path.code == 0, by_path
    data = by_path.json()
    assert data["relative_path"] == "meta/a.git" and data["primary"] in NODES
    assert data["replica_path"].startswith("@cluster/repositories/")
    assert {r["storage"] for r in data["replicas"]} == set(NODES)
    by_id = cli(cluster, "metadata", "--repository-id", str(data["repository_id"]), "--json")
    assert by_id.code == 0 and by_id.json()["replica_path"] == data["replica_path"]
    text = cli(cluster, "metadata", "--repository", "meta/a.git")
    assert f"primary:         {data['primary']}" in text.out and "VALID PRIMARY" in text.out

    lowered = cli(
        cluster,
        "set-replication-factor",
        "--repository",
        "meta/a.git",
        "--replication-factor",
        "2",
        "--json",
    )
    assert lowered.code == 0, lowered
    assigned = lowered.json()["assigned"]
    assert len(assigned) == 2 and data["primary"] in assigned
    replicas = {r.storage: r for r in metadata(cluster, "meta/a.git").replicas}
    assert sorted(n for n, r in replicas.items() if r.assigned) == sorted(assigned)
    raised = cli(
        cluster, "set-replication-factor", "--repository", "meta/a.git", "--replication-factor", "3"
    )
    assert raised.code == 0 and "assigned to" in raised.out
    assert all(r.assigned for r in metadata(cluster, "meta/a.git").replicas)

    too_many = cli(
        cluster, "set-replication-factor", "--repository", "meta/a.git", "--replication-factor", "4"
    )
    assert too_many.code == 2 and "between 1 and 3" in too_many.err
    missing = cli(cluster, "metadata", "--repository", "meta/nope.git")
    assert missing.code == 1 and "NOT_FOUND" in missing.err


def test_verify_finds_a_deleted_replica_and_replication_repairs_it(
    cluster: Cluster, source: Path
) -> None:
    seed(cluster, "verify/a.git", source, cluster.base / "scratch-verify")
    # The verifier checks new replicas on its own; let it, so that the deletion
    # below is found by the re-check this command asks for.
    wait_for(lambda: verified(cluster, "verify/a.git"), 60, what="first verification")
    meta = metadata(cluster, "verify/a.git")
    victim = next(r.storage for r in meta.replicas if r.storage != meta.primary)
    replica_dir = cluster.replica_dir(victim, meta.replica_path)
    shutil.rmtree(replica_dir)
    result = cli(cluster, "verify", "--repository", "verify/a.git", "--wait", "45s", "--json")
    assert result.code == 1, result  # a problem was found
    data = result.json()
    assert data["verified"] == data["selected"] == 3
    assert [d["node"] for d in data["outdated"]] == [victim]
    # The verifier queued the repair: the replica comes back and matches the primary.
    wait_for(lambda: all_up_to_date(cluster, "verify/a.git"), 30, what="repair")
    assert node_checksum(cluster, victim, meta.replica_path) == node_checksum(
        cluster, meta.primary, meta.replica_path
    )
    again = cli(cluster, "verify", "--repository", "verify/a.git", "--wait", "45s")
    assert again.code == 0, again
    assert "re-verified 3 of 3" in again.out
    by_node = cli(cluster, "verify", "--storage", victim, "--json")
    assert by_node.code == 0 and by_node.json()["replicas_marked"] >= 1
    both = cli(cluster, "verify", "--repository", "x.git", "--repository-id", "1")
    assert both.code == 2


def test_list_untracked_then_track_repository(cluster: Cluster, source: Path) -> None:
    node = cluster.node("node2")
    legacy = node.storage_path / "imported" / "legacy.git"
    gitrepo.git("clone", "-q", "--bare", str(source), str(legacy))
    gitrepo.git(
        "init", "-q", "--bare", "-b", "trunk", str(node.storage_path / "imported/empty.git")
    )
    roots = [f"--storage-path={n.name}={n.storage_path}" for n in cluster.nodes]

    listed = cli(cluster, "list-untracked-repositories", "--older-than", "0s", *roots, "--json")
    assert listed.code == 0, listed
    found = {(r["node"], r["relative_path"], r["kind"]) for r in listed.json()["repositories"]}
    assert found == {
        ("node2", "imported/legacy.git", "untracked"),
        ("node2", "imported/empty.git", "untracked"),
    }
    recent = cli(cluster, "list-untracked-repositories", *roots)  # default: older than 6h
    assert recent.code == 0 and "no untracked repositories" in recent.out

    tracked = cli(
        cluster,
        "track-repository",
        "--repository",
        "imported/legacy.git",
        "--authoritative-storage",
        "node2",
        "--remove-original",
        "--json",
    )
    assert tracked.code == 0, tracked
    data = tracked.json()
    assert data["copied_as"] == "bundle" and data["original_removed"]
    assert data["primary"] == "node2" and sorted(data["replicas"]) == list(NODES)
    assert not legacy.exists()
    expected = gitrepo.refs(source)
    for name in NODES:
        replica = cluster.replica_dir(name, data["replica_path"])
        wanted = {k: v for k, v in expected.items() if not k.startswith("refs/remotes/")}
        assert gitrepo.refs(replica) == wanted
        assert node_checksum(cluster, name, data["replica_path"]) == data["checksum"]

    empty = cli(
        cluster,
        "track-repository",
        "--repository",
        "imported/empty.git",
        "--authoritative-storage",
        "node2",
    )
    assert empty.code == 0, empty
    meta = metadata(cluster, "imported/empty.git")
    head = gitrepo.git("symbolic-ref", "HEAD", cwd=cluster.replica_dir("node1", meta.replica_path))
    assert head.strip() == "refs/heads/trunk"

    left = cli(cluster, "list-untracked-repositories", "--older-than", "0s", *roots, "--json")
    assert [r["relative_path"] for r in left.json()["repositories"]] == ["imported/empty.git"]
    twice = cli(
        cluster,
        "track-repository",
        "--repository",
        "imported/legacy.git",
        "--authoritative-storage",
        "node2",
    )
    assert twice.code == 1 and "already tracked" in twice.err
    nothing = cli(
        cluster,
        "track-repository",
        "--repository",
        "imported/none.git",
        "--authoritative-storage",
        "node1",
    )
    assert nothing.code == 1 and "no repository" in nothing.err


def test_remove_repository_is_a_dry_run_until_applied(cluster: Cluster, source: Path) -> None:
    seed(cluster, "remove/a.git", source, cluster.base / "scratch-remove")
    meta = metadata(cluster, "remove/a.git")
    dirs = [cluster.replica_dir(n, meta.replica_path) for n in NODES]
    dry = cli(cluster, "remove-repository", "--repository", "remove/a.git")
    assert dry.code == 0, dry
    assert "would remove default/remove/a.git" in dry.out and "--apply" in dry.out
    assert metadata(cluster, "remove/a.git").repository_id == meta.repository_id
    assert all(d.exists() for d in dirs)
    applied = cli(cluster, "remove-repository", "--repository", "remove/a.git", "--apply", "--json")
    assert applied.code == 0, applied
    data = applied.json()
    assert data["left_on_disk"] == [] and data["unreachable"] == []
    assert not any(d.exists() for d in dirs)
    with pytest.raises(grpc.RpcError) as info:
        metadata(cluster, "remove/a.git")
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    gone = cli(cluster, "remove-repository", "--repository", "remove/a.git")
    assert gone.code == 1 and "not found" in gone.err


def test_switchover_under_a_write_loop_fails_no_write(cluster: Cluster, source: Path) -> None:
    path = "switch/a.git"
    seed(cluster, path, source, cluster.base / "scratch-switch")
    # Let the verifier check the new replicas first: it compares checksums of
    # replicas taken at different moments, which a write loop can tell apart.
    wait_for(lambda: verified(cluster, path), 60, what="first verification")
    values = commits(source)
    acknowledged: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with grpc.insecure_channel(cluster.proxies[1].address) as channel:
            i = 0
            while not stop.is_set():
                value = values[i % 2]
                try:
                    write_ref(channel, path, "refs/heads/loop", value)
                    acknowledged.append(value)
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: len(acknowledged) >= 5, 30, what="writes to start")
        primary = metadata(cluster, path).primary
        targets = [n for n in NODES if n != primary] + [primary]
        for target in targets:
            moved = cli(cluster, "switchover", "--repository", path, "--to", target, "--json")
            assert moved.code == 0, moved
            (move,) = moved.json()["moves"]
            assert move["ok"] and move["to"] == target
            # The proxies follow etcd through a watch: a moment later they agree.
            wait_for(lambda t=target: metadata(cluster, path).primary == t, 10, what="new primary")
            before = len(acknowledged)
            wait_for(lambda b=before: len(acknowledged) >= b + 3, 30, what="writes after a move")
        away = cli(cluster, "switchover", "--from", targets[-1], "--json")
        assert away.code == 0, away
        (move,) = [m for m in away.json()["moves"] if m["relative_path"] == path]
        assert move["ok"] and move["to"] != targets[-1]
        wait_for(lambda: metadata(cluster, path).primary == move["to"], 10, what="new primary")
        before = len(acknowledged)
        wait_for(lambda: len(acknowledged) >= before + 3, 30, what="writes after --from")
    finally:
        stop.set()
        thread.join(30)
    assert failures == []
    assert len(acknowledged) >= 5 + 4 * 3  # before, and after each of the four moves
    # No acknowledged write lost: every replica holds the last one, and they all agree.
    meta = metadata(cluster, path)
    wait_for(lambda: all_up_to_date(cluster, path), 30, what="replicas to converge")
    for node in NODES:
        replica = cluster.replica_dir(node, meta.replica_path)
        assert gitrepo.git("rev-parse", "refs/heads/loop", cwd=replica).strip() == acknowledged[-1]
    assert len({node_checksum(cluster, n, meta.replica_path) for n in NODES}) == 1
    usage = cli(cluster, "switchover", "--repository", path)
    assert usage.code == 2 and "--to" in usage.err


def test_drain_moves_primaries_and_stops_reads(cluster: Cluster, source: Path) -> None:
    for i in range(3):
        seed(cluster, f"drain/{i}.git", source, cluster.base / f"scratch-drain{i}")
    proxy = cluster.proxies[0]
    drained = cli(cluster, "drain", "node1", "--reason", "disk swap", "--json")
    assert drained.code == 0, drained
    (result,) = drained.json()["results"]
    assert result["changed"] and all(m["ok"] for m in result["moves"])
    wait_for(
        lambda: all(metadata(cluster, f"drain/{i}.git").primary != "node1" for i in range(3)),
        10,
        what="the proxy to see the moved primaries",
    )
    wait_for(
        lambda: (
            sample(
                metrics(proxy), "gitquorum_node_draining", node="node1", virtual_storage="default"
            )
            == 1.0
        ),
        15,
        what="proxy1 to apply the drain",
    )
    status = cli(cluster, "status", "--json").json()
    nodes = {n["name"]: n for n in status["virtual_storages"][0]["nodes"]}
    assert nodes["node1"]["draining"] and nodes["node1"]["primaries"] == 0

    def reads() -> dict[str, float]:
        text = metrics(proxy)
        return {
            n: sample(text, "gitquorum_read_distribution_total", node=n, virtual_storage="default")
            for n in NODES
        }

    before = reads()
    with grpc.insecure_channel(proxy.address) as channel:
        for i in range(30):
            assert default_branch(channel, f"drain/{i % 3}.git") == b"refs/heads/main"
    after = reads()
    assert after["node1"] == before["node1"]
    assert after["node2"] + after["node3"] - before["node2"] - before["node3"] == 30
    # New repositories get their primary elsewhere too.
    for i in range(3):
        seed(cluster, f"drain/new{i}.git", source, cluster.base / f"scratch-new{i}")
        assert metadata(cluster, f"drain/new{i}.git").primary != "node1"
    again = cli(cluster, "drain", "node1")
    assert again.code == 0 and "already was" in again.out

    undrained = cli(cluster, "undrain", "node1")
    assert undrained.code == 0 and "undrained" in undrained.out
    wait_for(
        lambda: (
            sample(
                metrics(proxy), "gitquorum_node_draining", node="node1", virtual_storage="default"
            )
            == 0.0
        ),
        15,
        what="proxy1 to apply the undrain",
    )
    before = reads()
    with grpc.insecure_channel(proxy.address) as channel:
        for i in range(60):
            default_branch(channel, f"drain/{i % 3}.git")
    assert reads()["node1"] > before["node1"]
    unknown = cli(cluster, "drain", "node9")
    assert unknown.code == 2 and "node9" in unknown.err


def test_usage_and_unreachable_exit_codes(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITQUORUM_CONFIG", raising=False)
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(["status"])
    assert exit_.value.code == 2 and "--config" in err.getvalue()

    (dead,) = free_ports(1)
    config = yaml.safe_load(cluster.proxies[0].config_path.read_text())
    config["etcd"]["endpoints"] = [f"127.0.0.1:{dead}"]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(config))
    err = io.StringIO()
    started = time.monotonic()
    with redirect_stdout(io.StringIO()), redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(["status", "--config", str(broken), "--timeout", "1"])
    assert exit_.value.code == 3 and "cannot reach etcd" in err.getvalue()
    assert time.monotonic() - started < 15

    no_proxy = cli(cluster, "metadata", "--repository", "a.git", "--proxy", f"127.0.0.1:{dead}")
    assert no_proxy.code == 3 and "no proxy answers" in no_proxy.err
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("listen: nowhere\n")
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(["pause", "--config", str(bad_config)])
    assert exit_.value.code == 2 and "config: " in err.getvalue()
