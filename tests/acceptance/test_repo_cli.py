"""``gitquorum repo`` against a real cluster (etcd, three nodes, one proxy).

Every command runs as a subprocess, the way an operator types it, and the
tests check its output, its exit status (0 done, 1 failed, 2 usage or
configuration) and the replicas on disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitquorum.cli.main import main
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.etcd import free_ports

CLI = [sys.executable, "-m", "gitquorum.cli.main", "repo"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = Cluster(tmp_path_factory.mktemp("repo-cli"), nodes_count=3).start()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def config(cluster: Cluster) -> str:
    return str(cluster.proxies[0].config_path)


def repo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITQUORUM_")}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args} -> {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def failed(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    assert proc.returncode == code, f"{proc.args} -> {proc.returncode}:\n{proc.stderr}"
    for word in words:
        assert word in proc.stderr, f"{word!r} not in {proc.stderr!r}"
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_create_inspect_list_and_remove(cluster: Cluster, config: str) -> None:
    path = "team/cli-roundtrip.git"
    created = ok(repo("create", "--config", config, "--default-branch", "trunk", path))
    assert path in created and "primary" in created

    doc = json.loads(ok(repo("info", "--config", config, "--json", path)))
    assert doc["relative_path"] == path and doc["virtual_storage"] == "default"
    assert doc["generation"] == 0 and doc["primary"]
    assert sorted(r["storage"] for r in doc["replicas"]) == ["node1", "node2", "node3"]
    assert doc["replicas"][0]["primary"] and doc["replicas"][0]["storage"] == doc["primary"]
    assert all(r["healthy"] and r["assigned"] and r["up_to_date"] for r in doc["replicas"])
    checksums = {r["checksum"] for r in doc["replicas"]}
    assert len(checksums) == 1 and None not in checksums
    for node in ("node1", "node2", "node3"):
        replica = cluster.replica_dir(node, doc["replica_path"])
        head = gitrepo.git("symbolic-ref", "HEAD", cwd=replica).strip()
        assert head == "refs/heads/trunk"

    # The human table names every replica and its role.
    table = ok(repo("info", "--proxy", cluster.proxies[0].address, path))
    lines = table.splitlines()
    assert any(line.startswith(doc["primary"]) and " primary " in line for line in lines)
    assert sum(" secondary " in line for line in lines) == 2

    listed = json.loads(ok(repo("list", "--config", config, "--json")))
    [entry] = [r for r in listed["repositories"] if r["relative_path"] == path]
    assert entry["primary"] == doc["primary"] and entry["generation"] == 0
    assert entry["repository_id"] == doc["repository_id"] and entry["status"] == "ok"
    assert sorted(entry["up_to_date"]) == ["node1", "node2", "node3"]
    plain = ok(repo("list", "--config", config))
    assert plain.splitlines()[0].split()[:3] == ["PATH", "PRIMARY", "GENERATION"]
    assert any(line.split()[0] == path for line in plain.splitlines()[1:])
    # The same listing straight from the etcd endpoints.
    endpoints = ",".join(cluster.etcd.endpoints) if cluster.etcd else ""
    direct = json.loads(ok(repo("list", "--etcd", endpoints, "--json")))
    assert direct == listed

    # Without --apply, a dry run: it names what would go and removes nothing.
    plan = ok(repo("remove", "--config", config, path))
    assert "would remove" in plan and doc["replica_path"] in plan and "--apply" in plan
    assert json.loads(ok(repo("info", "--config", config, "--json", path)))["primary"]
    dry = json.loads(ok(repo("remove", "--config", config, "--json", path)))
    assert dry["applied"] is False and dry["replicas"] == ["node1", "node2", "node3"]

    assert "removed" in ok(repo("remove", "--config", config, "--apply", path))
    failed(repo("info", "--config", config, path), 1, "not found", path)
    listed = json.loads(ok(repo("list", "--config", config, "--json")))
    assert path not in [r["relative_path"] for r in listed["repositories"]]
    for node in ("node1", "node2", "node3"):
        assert not cluster.replica_dir(node, doc["replica_path"]).exists()


def test_failures_exit_1_with_a_message(cluster: Cluster, config: str) -> None:
    path = "team/twice.git"
    ok(repo("create", "--config", config, path))
    failed(repo("create", "--config", config, path), 1, "already exists", path)
    failed(repo("info", "--config", config, "team/missing.git"), 1, "not found")
    failed(repo("remove", "--config", config, "team/missing.git"), 1, "not found")
    failed(repo("remove", "--config", config, "--yes", "team/missing.git"), 1, "not found")
    ok(repo("remove", "--config", config, "--yes", path))


def test_unreachable_proxy_and_etcd_fail_fast(cluster: Cluster) -> None:
    [port] = free_ports(1)
    for action in ("create", "info", "remove"):
        began = time.monotonic()
        failed(
            repo(action, "--proxy", f"127.0.0.1:{port}", "x.git"),
            1,
            f"cannot reach the proxy at 127.0.0.1:{port}",
        )
        assert time.monotonic() - began < 15
    began = time.monotonic()
    failed(repo("list", "--etcd", f"127.0.0.1:{port}"), 1, "cannot read the cluster state")
    assert time.monotonic() - began < 15


def test_usage_and_configuration_errors_exit_2(
    cluster: Cluster,
    config: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # In-process (the same main() as the command): these need no second interpreter.
    for name in list(os.environ):
        if name.startswith("GITQUORUM_"):
            monkeypatch.delenv(name)

    def usage(*args: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main(["repo", *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, f"{args} -> {exit_info.value.code}: {err}"
        assert "Traceback" not in err
        return err

    assert "pass --proxy" in usage("info", "x.git")
    assert "--config" in usage("list")
    assert "--proxy" in usage("info", "--proxy", "no-port", "x.git")
    assert "'other'" in usage("info", "--config", config, "--virtual-storage", "other", "x.git")
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: 127.0.0.1:1\nvirtual_storages: []\n")
    err = usage("info", "--config", str(bad), "x.git")
    assert "virtual_storages" in err and "etcd.endpoints" in err
    assert "cannot read" in usage("info", "--config", str(tmp_path / "absent.yaml"), "x.git")
    # The proxy's verdict on a bad request is a usage error too.
    assert "escapes" in usage("create", "--config", config, "../escape.git")
    assert "nope" in usage(
        "info", "--proxy", cluster.proxies[0].address, "--virtual-storage", "nope", "x.git"
    )
    usage("frobnicate")
    usage("create")
