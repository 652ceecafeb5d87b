"""pause / resume: no failover and no repair while paused; both resume afterwards."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.node import wait_for
from tests.integration.cli.ops import (
    cli,
    default_branch,
    generations,
    healthy,
    metadata,
    metrics,
    node_checksum,
    sample,
    seed,
    write_ref,
)

PATH = "paused/project.git"
# Failover runs about every second and on every health change: a window of
# several passes shows that none of them acted.
WINDOW = 3.0


@pytest.fixture
def paused_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path / "cluster", proxies_count=1).start()
    try:
        yield cluster
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(cluster.log_tail())
        cluster.close()


def holds_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Assert ``condition`` at every poll during ``seconds`` (an observation window)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert condition(), f"{what} stopped holding"
        time.sleep(0.2)


def test_pause_stops_failover_and_repair_until_resumed(
    paused_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = paused_cluster
    source = gitrepo.make_repo(tmp_path / "source")
    head, parent = gitrepo.git("rev-parse", "main", "main~1", cwd=source).split()
    seed(cluster, PATH, source, tmp_path / "scratch")
    meta = metadata(cluster, PATH)
    primary = meta.primary
    stale, spare = sorted(r.storage for r in meta.replicas if r.storage != primary)
    channel = grpc.insecure_channel(cluster.proxies[0].address)

    paused = cli(cluster, "pause", "--reason", "kernel upgrade")
    assert paused.code == 0 and paused.out.startswith("paused")
    wait_for(
        lambda: sample(metrics(cluster.proxies[0]), "gitquorum_operator_paused") == 1.0,
        15,
        what="the proxy to apply the pause",
    )
    assert "already paused" in cli(cluster, "pause").out

    # A secondary misses a write and comes back: while paused, nobody repairs it.
    cluster.node(stale).kill()
    wait_for(lambda: stale not in healthy(cluster, PATH), 20, what=f"{stale} unhealthy")
    write_ref(channel, PATH, "refs/heads/while-paused", parent)
    cluster.node(stale).start()
    wait_for(lambda: stale in healthy(cluster, PATH), 30, what=f"{stale} healthy again")
    generation = metadata(cluster, PATH).generation
    holds_for(lambda: generations(cluster, PATH)[stale] < generation, WINDOW, "no repair")
    status = cli(cluster, "status", "--json").json()
    assert status["paused"]["reason"] == "kernel upgrade"
    nodes = {n["name"]: n for n in status["virtual_storages"][0]["nodes"]}
    assert nodes[stale]["outdated"] == 1 and nodes[stale]["queue"]["in_progress"] == 0
    assert nodes[stale]["queue"]["ready"] + nodes[stale]["queue"]["failed"] >= 1
    refused = cli(cluster, "switchover", "--repository", PATH, "--to", stale)
    assert refused.code == 1 and "not a valid primary" in refused.out

    # The primary dies: no failover, not by the leader and not lazily by a write.
    cluster.node(primary).kill()
    wait_for(lambda: primary not in healthy(cluster, PATH), 20, what=f"{primary} unhealthy")
    holds_for(lambda: metadata(cluster, PATH).primary == primary, WINDOW, "no failover")
    with pytest.raises(grpc.RpcError) as failed:
        write_ref(channel, PATH, "refs/heads/refused", head)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "paused" in (failed.value.details() or "")
    assert metadata(cluster, PATH).primary == primary
    # Reads are still served by the up-to-date replica left.
    assert default_branch(channel, PATH) == b"refs/heads/main"
    check = cli(cluster, "check", "--json")
    assert check.code == 1
    checks = {c["name"]: c["status"] for c in check.json()["checks"]}
    assert checks[f"node {primary}"] == "fail" and checks["operator"] == "warn"
    assert checks[f"node {spare}"] == "ok"

    resumed = cli(cluster, "resume")
    assert resumed.code == 0 and resumed.out.startswith("resumed")
    # Repair and failover both act at once: the stale replica may be repaired
    # before the failover pass, and is then as valid a primary as the spare.
    wait_for(lambda: metadata(cluster, PATH).primary != primary, 15, what="failover")
    promoted = metadata(cluster, PATH)
    assert promoted.primary in (spare, stale)
    assert generations(cluster, PATH)[promoted.primary] == promoted.generation
    write_ref(channel, PATH, "refs/heads/after-resume", head)
    wait_for(
        lambda: generations(cluster, PATH)[stale] == metadata(cluster, PATH).generation,
        30,
        what="the stale replica's repair",
    )
    cluster.node(primary).start()
    wait_for(
        lambda: set(generations(cluster, PATH).values()) == {metadata(cluster, PATH).generation},
        30,
        what="every replica up to date",
    )
    final = metadata(cluster, PATH)
    assert len({node_checksum(cluster, r.storage, final.replica_path) for r in final.replicas}) == 1
    refs = gitrepo.refs(cluster.replica_dir(stale, final.replica_path))
    assert refs["refs/heads/while-paused"] == parent and refs["refs/heads/after-resume"] == head
    assert "refs/heads/refused" not in refs
    assert cli(cluster, "resume").out.strip() == "not paused"
    channel.close()
