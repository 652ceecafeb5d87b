"""list-storages, history and status --watch against a real cluster (etcd, 3 nodes, 2 proxies)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.node import wait_for
from tests.integration.cli.ops import cli, metadata, seed

pytestmark = pytest.mark.usefixtures("show_logs")
NODES = ("node1", "node2", "node3")


def test_list_storages_names_every_node_with_its_health(cluster: Cluster) -> None:
    listed = cli(cluster, "list-storages", "--json")
    assert listed.code == 0, listed
    (vs,) = listed.json()["virtual_storages"]
    assert [n["name"] for n in vs["nodes"]] == list(NODES)
    assert all(n["healthy"] and not n["draining"] and n["address"] for n in vs["nodes"])
    table = cli(cluster, "list-storages")
    assert table.out.splitlines()[0].split()[:4] == ["VIRTUAL", "STORAGE", "NODE", "ADDRESS"]
    assert sum(line.split()[1] in NODES for line in table.out.splitlines()[1:]) == 3


def test_history_records_switchovers_and_the_leaders_failover(
    cluster: Cluster, tmp_path: Path
) -> None:
    path = "history/a.git"
    seed(cluster, path, gitrepo.make_repo(tmp_path / "source"), tmp_path / "scratch")
    first = metadata(cluster, path).primary
    target = next(n for n in NODES if n != first)
    moved = cli(cluster, "switchover", "--repository", path, "--to", target)
    assert moved.code == 0, moved

    shown = cli(cluster, "history", "--repository", path, "--json")
    assert shown.code == 0, shown
    (event,) = shown.json()["events"]
    assert (event["kind"], event["from"], event["to"]) == ("switchover", first, target)
    assert event["reason"] == "switchover" and "@" in event["by"]

    # The primary's node dies: the leader fails the repository over and says so.
    cluster.node(target).kill()
    try:

        def failed_over() -> list[dict[str, object]]:
            events = cli(cluster, "history", "--repository", path, "--json").json()["events"]
            return [e for e in events if e["kind"] == "failover"]

        wait_for(lambda: failed_over(), 30, what="a failover entry")
        (failover,) = failed_over()
        assert failover["from"] == target and failover["to"] in set(NODES) - {target}
        assert str(failover["by"]).startswith("proxy")
        table = cli(cluster, "history", "--node", target)
        assert "failover" in table.out and "switchover" in table.out
        assert cli(cluster, "history", "--limit", "1", "--json").json()["events"] == [failover]
    finally:
        cluster.node(target).start()
        wait_for(
            lambda: all(n["healthy"] for n in _nodes(cluster)), 30, what="the node back healthy"
        )


def _nodes(cluster: Cluster) -> list[dict[str, object]]:
    return list(cli(cluster, "list-storages", "--json").json()["virtual_storages"][0]["nodes"])


def test_status_watch_prints_a_document_per_refresh_until_interrupted(cluster: Cluster) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gitquorum.cli.main",
            "status",
            "--watch",
            "200ms",
            "--json",
            "--config",
            str(cluster.proxies[0].config_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert proc.stdout is not None
        documents = [json.loads(proc.stdout.readline()) for _ in range(3)]
        assert all(d["leader"] and len(d["proxies"]) == 2 for d in documents)
        assert documents[0]["read_at"] < documents[2]["read_at"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
