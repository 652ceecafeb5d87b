"""``gitquorum up`` as a newcomer runs it: a whole cluster, then plain git through it.

Each test starts ``gitquorum up --json`` as a subprocess and reads its one JSON
line. The first one pushes and clones over the SSH helper and over HTTP,
kills the primary node with SIGKILL and keeps pushing (failover), inspects
the replicas, then stops the cluster with SIGTERM and checks that no child
survives and the temporary directory is gone. The second one keeps its data
in ``--dir``, kills the launcher itself with SIGKILL (children must not be
orphaned) and restarts it on the same ports with the repository intact.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from gitquorum.gitaly import praefect_pb2, praefect_pb2_grpc
from tests.harness import gitrepo
from tests.harness.node import wait_for

CLI = [sys.executable, "-m", "gitquorum.cli.main"]
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


def clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GITQUORUM_") and k not in ("GIT_SSH", "GIT_SSH_VARIANT")
    }
    env.update(gitrepo.GIT_ENV)
    return env


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def running(pid: int, expected: bytes) -> bool:
    """The process still exists (not a zombie) and is the one we saw (no pid reuse)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and cmdline(pid) == expected


class Up:
    """One ``gitquorum up --json`` process and the cluster it printed."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.stderr_path = tmp / f"up-{time.monotonic_ns()}.err"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*CLI, "up", "--json", *args],
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=clean_env(),
            )
        self._lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.info: dict[str, Any] = {}
        self.children: dict[int, bytes] = {}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(b"")

    def wait_serving(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            message = f"gitquorum up printed nothing in {timeout}s:\n{self.stderr()}"
            raise TimeoutError(message) from None
        assert line, f"gitquorum up exited ({self.proc.poll()}):\n{self.stderr()}"
        self.info = json.loads(line)
        for part in self.parts():
            self.children[part["pid"]] = cmdline(part["pid"])
            assert self.children[part["pid"]], f"{part['name']} is not running"
        return self.info

    def parts(self) -> list[dict[str, Any]]:
        info = self.info
        found = [info["etcd"], *info["nodes"], *info["proxies"]]
        return found + ([info["http"]] if info["http"] else [])

    def survivors(self) -> list[int]:
        return [pid for pid, line in self.children.items() if running(pid, line)]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.survivors():
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def launcher(tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[Up] = []

    def start(*args: str) -> Up:
        up = Up(tmp_path, *args)
        started.append(up)
        return up

    yield start
    for up in started:
        up.cleanup()


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=clean_env(), timeout=timeout
    )


def git(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args} -> {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def ssh_env(info: dict[str, Any]) -> dict[str, str]:
    return {**clean_env(), "GIT_SSH_COMMAND": info["ssh"]["git_ssh_command"]}


def ssh_url(info: dict[str, Any], path: str) -> str:
    return info["ssh"]["url_template"].replace("<repository>.git", path)


def local_refs(path: Path) -> set[str]:
    return set(gitrepo.git("show-ref", cwd=path).splitlines())


def remote_refs(url: str, env: dict[str, str]) -> set[str]:
    lines = ok(git("ls-remote", "--heads", "--tags", url, env=env)).splitlines()
    # ls-remote lists "sha<TAB>ref" and the peeled "^{}" lines of annotated tags.
    return {" ".join(line.split("\t")) for line in lines if not line.endswith("^{}")}


def push_all(url: str, source: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return git(
        "push", url, "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*", env=env, cwd=source
    )


def repo_info(info: dict[str, Any], path: str) -> dict[str, Any]:
    return json.loads(ok(cli("repo", "info", "--config", info["config"], "--json", path)))


def current_primary(info: dict[str, Any], path: str) -> str:
    """The primary as the proxy reports it (in-process: cheap enough to poll)."""
    request = praefect_pb2.GetRepositoryMetadataRequest(
        path=praefect_pb2.GetRepositoryMetadataRequest.Path(
            virtual_storage=info["virtual_storage"], relative_path=path
        )
    )
    with grpc.insecure_channel(info["proxies"][0]["address"]) as channel:
        stub = praefect_pb2_grpc.PraefectInfoServiceStub(channel)
        return str(stub.GetRepositoryMetadata(request, timeout=5).primary)


def commit(source: Path, message: str) -> str:
    (source / "change.txt").write_text(f"{message}\n")
    gitrepo.git("add", "-A", cwd=source)
    gitrepo.git("commit", "-q", "-m", message, cwd=source)
    return gitrepo.git("rev-parse", "HEAD", cwd=source).strip()


def test_up_serves_git_over_ssh_and_http_survives_a_node_kill_and_stops_clean(
    launcher: Any, tmp_path: Path
) -> None:
    up = launcher()
    started = time.monotonic()
    info = up.wait_serving()
    print(f"gitquorum up serving after {time.monotonic() - started:.1f}s")
    data_dir = Path(info["data_dir"])
    assert info["temporary"] and data_dir.is_dir()
    assert len(info["nodes"]) == 3 and len(info["proxies"]) == 1
    assert info["replication_factor"] == 3
    assert Path(info["config"]).is_file()
    assert set(info["metrics_urls"]) >= {"etcd", "node1", "node2", "node3", "proxy1"}
    assert all(url.startswith("http://") for url in info["metrics_urls"].values())
    for part in up.parts():
        assert Path(part["log"]).parent == Path(info["logs_dir"])

    source = gitrepo.make_repo(tmp_path / "source", commits=4, binary_size=64 * 1024)
    env = ssh_env(info)
    path = "group/project.git"
    created = ok(cli("repo", "create", "--proxy", info["proxies"][0]["address"], path))
    assert path in created
    ok(push_all(ssh_url(info, path), source, env))
    assert remote_refs(ssh_url(info, path), env) == local_refs(source)
    ok(git("clone", "-q", ssh_url(info, path), str(tmp_path / "ssh-clone"), env=env))
    assert local_refs(tmp_path / "ssh-clone") >= {
        r for r in local_refs(source) if " refs/heads/main" in r
    }
    gitrepo.git("fsck", "--full", cwd=tmp_path / "ssh-clone")

    http = info["http"]
    if http is not None:
        # A new project straight from a push: the gateway creates it.
        http_url = info["http_url_template"].replace("<repository>.git", "group/over-http.git")
        ok(push_all(http_url, source, clean_env()))
        assert remote_refs(http_url, clean_env()) == local_refs(source)
        ok(git("clone", "-q", http_url, str(tmp_path / "http-clone"), env=clean_env()))
        gitrepo.git("fsck", "--full", cwd=tmp_path / "http-clone")
    else:
        print("HTTP gateway not available: SSH transport only")

    before = repo_info(info, path)
    assert len(before["replicas"]) == 3
    assert {r["generation"] for r in before["replicas"]} == {before["generation"]}
    checksums = {r["checksum"] for r in before["replicas"]}
    assert len(checksums) == 1 and None not in checksums

    # Kill the primary node: writes go on once another replica is primary.
    victim = next(n for n in info["nodes"] if n["name"] == before["primary"])
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(
        lambda: current_primary(info, path) not in ("", victim["name"]),
        15,
        interval=0.1,
        what="failover to another primary",
    )
    print(f"failover {time.monotonic() - killed_at:.1f}s after killing {victim['name']}")
    head = commit(source, "after the node kill")

    def pushed() -> bool:
        began = time.monotonic()
        attempt = push_all(ssh_url(info, path), source, env)
        took = time.monotonic() - began
        print(
            f"push after kill: exit {attempt.returncode} in {took:.1f}s {attempt.stderr[-200:]!r}"
        )
        return attempt.returncode == 0

    wait_for(pushed, 30, interval=0.2, what="a push after killing the primary")
    print(f"push accepted {time.monotonic() - killed_at:.1f}s after killing {victim['name']}")
    ok(git("clone", "-q", ssh_url(info, path), str(tmp_path / "after-kill"), env=env))
    assert gitrepo.git("rev-parse", "main", cwd=tmp_path / "after-kill").strip() == head
    if http is not None:
        http_path = info["http_url_template"].replace("<repository>.git", path)
        ok(git("clone", "-q", http_path, str(tmp_path / "after-kill-http"), env=clean_env()))
        got = gitrepo.git("rev-parse", "main", cwd=tmp_path / "after-kill-http").strip()
        assert got == head

    after = repo_info(info, path)
    assert after["primary"] != victim["name"]
    assert after["generation"] > before["generation"]
    by_node = {r["storage"]: r for r in after["replicas"]}
    assert not by_node[victim["name"]]["healthy"]
    assert by_node[victim["name"]]["checksum"] is None
    live = [r for r in after["replicas"] if r["storage"] != victim["name"]]
    assert all(r["generation"] == after["generation"] for r in live)
    assert len({r["checksum"] for r in live}) == 1
    table = ok(cli("repo", "info", "--config", info["config"], path))
    assert victim["name"] in table and "primary" in table

    stopping = time.monotonic()
    assert up.stop(signal.SIGTERM) == 0, up.stderr()
    print(f"gitquorum up stopped in {time.monotonic() - stopping:.1f}s")
    assert up.survivors() == []
    assert not data_dir.exists(), "the temporary directory outlived gitquorum up"
    assert f"{victim['name']} killed by SIGKILL" in up.stderr()


def test_up_dir_survives_kill_of_the_launcher_and_restarts_on_the_same_ports(
    launcher: Any, tmp_path: Path
) -> None:
    data = tmp_path / "cluster"
    first = launcher("--dir", str(data), "--nodes", "2", "--no-http")
    info = first.wait_serving()
    assert info["data_dir"] == str(data.resolve()) and not info["temporary"]
    assert len(info["nodes"]) == 2 and info["replication_factor"] == 2 and info["http"] is None

    # A second launcher on the same directory refuses to start.
    second = cli("up", "--dir", str(data), "--json", timeout=60)
    assert second.returncode == 1 and "another cluster is running" in second.stderr

    source = gitrepo.make_repo(tmp_path / "source", commits=2)
    path = "kept/project.git"
    ok(cli("repo", "create", "--config", info["config"], path))
    ok(push_all(ssh_url(info, path), source, ssh_env(info)))

    # SIGKILL the launcher: the kernel takes its children down too.
    first.proc.kill()
    first.proc.wait(10)
    wait_for(lambda: not first.survivors(), 20, interval=0.1, what="children to die")

    again = launcher("--dir", str(data))
    restarted = again.wait_serving()
    # Same topology and ports: clone URLs and metrics targets stay valid.
    assert len(restarted["nodes"]) == 2
    assert restarted["proxies"][0]["address"] == info["proxies"][0]["address"]
    assert [n["address"] for n in restarted["nodes"]] == [n["address"] for n in info["nodes"]]
    assert restarted["etcd"]["endpoints"] == info["etcd"]["endpoints"]

    listed = json.loads(ok(cli("repo", "list", "--config", restarted["config"], "--json")))
    [entry] = [r for r in listed["repositories"] if r["relative_path"] == path]
    assert entry["generation"] == 1 and entry["status"] == "ok"
    ok(
        git(
            "clone", "-q", ssh_url(restarted, path), str(tmp_path / "clone"), env=ssh_env(restarted)
        )
    )
    assert local_refs(tmp_path / "clone") >= {
        r for r in local_refs(source) if r.endswith(" refs/heads/main")
    }

    assert again.stop(signal.SIGINT) == 0, again.stderr()
    assert again.survivors() == []
    assert (data / "cluster.json").is_file() and (data / "node1" / "storage").is_dir()
