"""What the admin CLI tests do to a real cluster: run commands, call the proxy, read metrics."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sys
import urllib.request
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from gitquorum.cli.main import main
from gitquorum.gitaly import (
    praefect_pb2,
    praefect_pb2_grpc,
    ref_pb2,
    ref_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
)
from tests.harness import gitrepo
from tests.harness.cluster import VIRTUAL_STORAGE, Cluster, ProxyProcess

# CalculateChecksum of a repository without refs (and of a missing one on some paths).
ZERO_CHECKSUM = "0" * 40


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}"


def cli(cluster: Cluster, *args: str, proxy: int = 0) -> Result:
    """Run ``gitquorum ARGS --config <proxy's config>`` in this process."""
    out, err = io.StringIO(), io.StringIO()
    argv = [*args, "--config", str(cluster.proxies[proxy].config_path)]
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    result = Result(code, out.getvalue(), err.getvalue())
    sys.stderr.write(f"$ gitquorum {' '.join(args)}\n{result}\n")
    return result


def repo(path: str) -> shared_pb2.Repository:
    return shared_pb2.Repository(storage_name=VIRTUAL_STORAGE, relative_path=path)


def seed(cluster: Cluster, path: str, source: Path, scratch: Path) -> None:
    """Create a repository through the first proxy from a local one."""
    scratch.mkdir(parents=True, exist_ok=True)

    async def create() -> None:
        async with grpc.aio.insecure_channel(cluster.proxies[0].address) as channel:
            await gitrepo.seed(channel, repo(path), source, scratch)

    asyncio.run(create())


def metadata(
    cluster: Cluster, path: str, proxy: int = 0
) -> praefect_pb2.GetRepositoryMetadataResponse:
    with grpc.insecure_channel(cluster.proxies[proxy].address) as channel:
        return praefect_pb2_grpc.PraefectInfoServiceStub(channel).GetRepositoryMetadata(
            praefect_pb2.GetRepositoryMetadataRequest(
                path=praefect_pb2.GetRepositoryMetadataRequest.Path(
                    virtual_storage=VIRTUAL_STORAGE, relative_path=path
                )
            ),
            timeout=10,
        )


def generations(cluster: Cluster, path: str) -> dict[str, int]:
    return {r.storage: r.generation for r in metadata(cluster, path).replicas}


def healthy(cluster: Cluster, path: str, proxy: int = 0) -> set[str]:
    return {r.storage for r in metadata(cluster, path, proxy).replicas if r.healthy}


def write_ref(channel: grpc.Channel, path: str, ref: str, revision: str) -> None:
    repository_pb2_grpc.RepositoryServiceStub(channel).WriteRef(
        repository_pb2.WriteRefRequest(
            repository=repo(path), ref=ref.encode(), revision=revision.encode()
        ),
        timeout=15,
    )


def default_branch(channel: grpc.Channel, path: str) -> bytes:
    """One accessor (read) through the proxy."""
    response = ref_pb2_grpc.RefServiceStub(channel).FindDefaultBranchName(
        ref_pb2.FindDefaultBranchNameRequest(repository=repo(path)), timeout=10
    )
    return bytes(response.name)


def node_checksum(cluster: Cluster, node: str, replica_path: str) -> str:
    with grpc.insecure_channel(cluster.node(node).address) as channel:
        return str(
            repository_pb2_grpc.RepositoryServiceStub(channel)
            .CalculateChecksum(
                repository_pb2.CalculateChecksumRequest(
                    repository=shared_pb2.Repository(storage_name=node, relative_path=replica_path)
                ),
                timeout=30,
            )
            .checksum
        )


def metrics(proxy: ProxyProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.metrics_port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value (0 when absent): labels must match exactly those given."""
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if found == labels:
            return float(match.group(2))
    return 0.0
