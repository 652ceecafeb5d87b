"""What the proxy tests need besides RPCs: cluster state, replicas on disk, git, metrics.

Cluster state is read from the proxy itself (PraefectInfoService), synchronously,
so the same helpers serve plain and async tests and polling loops.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc

from gitquorum.gitaly import (
    praefect_pb2,
    praefect_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
)
from tests.harness import gitrepo
from tests.harness.cluster import VIRTUAL_STORAGE, Cluster
from tests.harness.node import wait_for

HELPER = f"{shlex.quote(sys.executable)} -m gitquorum.cli.main git-ssh"
Metadata = praefect_pb2.GetRepositoryMetadataResponse


def repository(relative_path: str) -> shared_pb2.Repository:
    return shared_pb2.Repository(storage_name=VIRTUAL_STORAGE, relative_path=relative_path)


# -- cluster state, from the proxy --------------------------------------------------------------


def metadata(address: str, relative_path: str) -> Metadata:
    with grpc.insecure_channel(address) as channel:
        return praefect_pb2_grpc.PraefectInfoServiceStub(channel).GetRepositoryMetadata(
            praefect_pb2.GetRepositoryMetadataRequest(
                path=praefect_pb2.GetRepositoryMetadataRequest.Path(
                    virtual_storage=VIRTUAL_STORAGE, relative_path=relative_path
                )
            ),
            timeout=10,
        )


def generations(meta: Metadata) -> dict[str, int]:
    return {r.storage: r.generation for r in meta.replicas}


def checksums(address: str, relative_path: str) -> dict[str, str]:
    """node -> checksum of its replica ("" when it has none), by RepositoryReplicas."""
    with grpc.insecure_channel(address) as channel:
        answer = praefect_pb2_grpc.PraefectInfoServiceStub(channel).RepositoryReplicas(
            praefect_pb2.RepositoryReplicasRequest(repository=repository(relative_path)),
            timeout=30,
        )
    details = [answer.primary, *answer.replicas]
    return {d.repository.storage_name: d.checksum for d in details}


@dataclass(frozen=True)
class Converged:
    meta: Metadata
    checksums: dict[str, str]


def converged(address: str, relative_path: str, nodes: int = 3) -> Converged | None:
    """The repository when every assigned replica is up to date with one checksum."""
    meta = metadata(address, relative_path)
    assigned = [r for r in meta.replicas if r.assigned]
    if len(assigned) != nodes or any(r.generation != meta.generation for r in assigned):
        return None
    sums = checksums(address, relative_path)
    values = {sums.get(r.storage, "") for r in assigned}
    if len(values) != 1 or "" in values:
        return None
    return Converged(meta, sums)


def wait_converged(
    address: str, relative_path: str, nodes: int = 3, timeout: float = 30.0
) -> Converged:
    result: Converged = wait_for(
        lambda: converged(address, relative_path, nodes),
        timeout,
        interval=0.1,
        what=f"every replica of {relative_path} to be up to date with equal checksums",
    )
    return result


# -- health and metrics ---------------------------------------------------------------------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of one metric: frozenset of (label, value) -> value."""
    found: dict[frozenset[tuple[str, str]], float] = {}
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
            found[labels] = float(match.group(2))
    return found


def sample(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for k, v in samples(text, name).items() if wanted <= k)


def healthy_nodes(cluster: Cluster) -> set[str]:
    """Nodes healthy by consensus on every proxy (what routing uses)."""
    views = []
    for proxy in cluster.proxies:
        text = scrape(proxy.metrics_port)
        views.append(
            {
                dict(k)["storage"]
                for k, v in samples(text, "gitquorum_node_healthy").items()
                if dict(k).get("view") == "consensus" and v == 1.0
            }
        )
    return set.intersection(*views) if views else set()


def wait_all_healthy(cluster: Cluster, timeout: float = 30.0) -> None:
    names = {n.name for n in cluster.nodes}
    wait_for(lambda: healthy_nodes(cluster) == names, timeout, 0.1, "every node to be healthy")


def wait_healthy(cluster: Cluster, node: str, timeout: float = 30.0) -> None:
    wait_for(lambda: node in healthy_nodes(cluster), timeout, 0.1, f"{node} to be seen healthy")


def wait_unhealthy(cluster: Cluster, node: str, timeout: float = 30.0) -> None:
    wait_for(
        lambda: node not in healthy_nodes(cluster), timeout, 0.1, f"{node} to be seen unhealthy"
    )


# -- repositories and git -------------------------------------------------------------------------


def create(address: str, relative_path: str) -> None:
    with grpc.insecure_channel(address) as channel:
        repository_pb2_grpc.RepositoryServiceStub(channel).CreateRepository(
            repository_pb2.CreateRepositoryRequest(repository=repository(relative_path)),
            timeout=30,
        )


def git_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_SSH", "GIT_SSH_VARIANT")}
    env.update(gitrepo.GIT_ENV)
    env.update(GIT_SSH_COMMAND=HELPER, GITQUORUM_STORAGE=VIRTUAL_STORAGE, **extra)
    return env


def url(address: str, relative_path: str) -> str:
    return f"ssh://{address}/{relative_path}"


def run_git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=git_env(), capture_output=True, text=True, timeout=120
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"{proc.args}: {proc.stderr}"
    return proc


def push(address: str, relative_path: str, cwd: Path, *refspecs: str) -> None:
    ok(run_git("push", url(address, relative_path), *refspecs, cwd=cwd))


def commit(work: Path, name: str, content: str = "") -> str:
    """A new commit in a working copy touching ``name``; returns its id."""
    (work / name).write_text(content or f"{name}\n")
    gitrepo.git("add", name, cwd=work)
    gitrepo.git("commit", "-q", "-m", f"change {name}", cwd=work)
    return gitrepo.git("rev-parse", "HEAD", cwd=work).strip()


def replica_dirs(cluster: Cluster, address: str, relative_path: str) -> dict[str, Path]:
    meta = metadata(address, relative_path)
    return {r.storage: cluster.replica_dir(r.storage, meta.replica_path) for r in meta.replicas}


def replica_refs(cluster: Cluster, address: str, relative_path: str) -> dict[str, dict[str, str]]:
    """node -> its replica's refs, read from disk."""
    return {
        node: gitrepo.refs(path)
        for node, path in replica_dirs(cluster, address, relative_path).items()
    }
