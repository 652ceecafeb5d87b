"""Calls with tokens and over TLS, for the security tests.

Every RPC here goes through a *synchronous* channel (as git-ssh does): the
grpc.aio client sometimes reports INTERNAL instead of the server's status when
a request stream is refused early, which would blur what these tests check.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from gitquorum import tokens
from gitquorum.gitaly import (
    praefect_pb2,
    praefect_pb2_grpc,
    ref_pb2,
    ref_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
    server_pb2,
    server_pb2_grpc,
    shared_pb2,
    ssh_pb2,
    ssh_pb2_grpc,
)
from tests.harness import gitrepo
from tests.harness.cluster import VIRTUAL_STORAGE
from tests.harness.node import wait_for
from tests.integration.proxy.helpers import git_env

Metadata = list[tuple[str, str]]


def bearer(secret: str | bytes, now: float | None = None) -> Metadata:
    value = secret.encode() if isinstance(secret, str) else secret
    return [("authorization", f"Bearer {tokens.v2_token(value, now=now)}")]


@dataclass(frozen=True)
class Endpoint:
    """One server and how to reach it: TLS credentials (None: plaintext) and a token."""

    address: str
    credentials: grpc.ChannelCredentials | None = None
    metadata: Metadata = field(default_factory=list)

    def channel(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.address)
        return grpc.secure_channel(self.address, self.credentials)

    def with_token(self, secret: str | None) -> Endpoint:
        return Endpoint(self.address, self.credentials, bearer(secret) if secret else [])


def credentials(
    ca: Path, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        ca.read_bytes(),
        key.read_bytes() if key else None,
        cert.read_bytes() if cert else None,
    )


def repository(relative_path: str, storage: str = VIRTUAL_STORAGE) -> shared_pb2.Repository:
    return shared_pb2.Repository(storage_name=storage, relative_path=relative_path)


def status(call: object) -> tuple[grpc.StatusCode, str]:
    """(code, details) of a call made by ``call()``; OK when it succeeds."""
    try:
        result = call()  # type: ignore[operator]
        if isinstance(result, Iterator):
            list(result)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def probes(
    endpoint: Endpoint, relative_path: str, storage: str = VIRTUAL_STORAGE
) -> dict[str, tuple[grpc.StatusCode, str]]:
    """One call of every kind against ``endpoint``: accessor, mutator, intercepted
    services, and a streaming SSH call; name -> (code, details)."""
    repo = repository(relative_path, storage)
    md, t = endpoint.metadata, 10
    with endpoint.channel() as channel:
        repos = repository_pb2_grpc.RepositoryServiceStub(channel)
        refs = ref_pb2_grpc.RefServiceStub(channel)
        info = praefect_pb2_grpc.PraefectInfoServiceStub(channel)
        server = server_pb2_grpc.ServerServiceStub(channel)
        ssh = ssh_pb2_grpc.SSHServiceStub(channel)
        calls = {
            "accessor RepositoryExists": lambda: repos.RepositoryExists(
                repository_pb2.RepositoryExistsRequest(repository=repo), metadata=md, timeout=t
            ),
            "accessor FindDefaultBranchName": lambda: refs.FindDefaultBranchName(
                ref_pb2.FindDefaultBranchNameRequest(repository=repo), metadata=md, timeout=t
            ),
            "mutator WriteRef": lambda: repos.WriteRef(
                repository_pb2.WriteRefRequest(
                    repository=repo, ref=b"refs/heads/intruder", revision=b"0" * 40
                ),
                metadata=md,
                timeout=t,
            ),
            "mutator RemoveRepository": lambda: repos.RemoveRepository(
                repository_pb2.RemoveRepositoryRequest(repository=repo), metadata=md, timeout=t
            ),
            "streaming SSHUploadPack": lambda: ssh.SSHUploadPack(
                iter([ssh_pb2.SSHUploadPackRequest(repository=repo)]), metadata=md, timeout=t
            ),
            "server ServerInfo": lambda: server.ServerInfo(
                server_pb2.ServerInfoRequest(), metadata=md, timeout=t
            ),
        }
        if storage == VIRTUAL_STORAGE:
            calls["intercepted RepositoryReplicas"] = lambda: info.RepositoryReplicas(
                praefect_pb2.RepositoryReplicasRequest(repository=repo), metadata=md, timeout=t
            )
            calls["intercepted GetRepositoryMetadata"] = lambda: info.GetRepositoryMetadata(
                praefect_pb2.GetRepositoryMetadataRequest(
                    path=praefect_pb2.GetRepositoryMetadataRequest.Path(
                        virtual_storage=VIRTUAL_STORAGE, relative_path=relative_path
                    )
                ),
                metadata=md,
                timeout=t,
            )
        return {name: status(call) for name, call in calls.items()}


def server_info(endpoint: Endpoint) -> server_pb2.ServerInfoResponse:
    with endpoint.channel() as channel:
        return server_pb2_grpc.ServerServiceStub(channel).ServerInfo(
            server_pb2.ServerInfoRequest(), metadata=endpoint.metadata, timeout=10
        )


def create(endpoint: Endpoint, relative_path: str) -> None:
    with endpoint.channel() as channel:
        repository_pb2_grpc.RepositoryServiceStub(channel).CreateRepository(
            repository_pb2.CreateRepositoryRequest(repository=repository(relative_path)),
            metadata=endpoint.metadata,
            timeout=30,
        )


def replicas(endpoint: Endpoint, relative_path: str) -> praefect_pb2.RepositoryReplicasResponse:
    with endpoint.channel() as channel:
        return praefect_pb2_grpc.PraefectInfoServiceStub(channel).RepositoryReplicas(
            praefect_pb2.RepositoryReplicasRequest(repository=repository(relative_path)),
            metadata=endpoint.metadata,
            timeout=30,
        )


def repo_metadata(
    endpoint: Endpoint, relative_path: str
) -> praefect_pb2.GetRepositoryMetadataResponse:
    with endpoint.channel() as channel:
        return praefect_pb2_grpc.PraefectInfoServiceStub(channel).GetRepositoryMetadata(
            praefect_pb2.GetRepositoryMetadataRequest(
                path=praefect_pb2.GetRepositoryMetadataRequest.Path(
                    virtual_storage=VIRTUAL_STORAGE, relative_path=relative_path
                )
            ),
            metadata=endpoint.metadata,
            timeout=30,
        )


def converged(endpoint: Endpoint, relative_path: str, nodes: int = 3) -> set[str] | None:
    """The replicas' one checksum when every assigned replica is up to date, else None."""
    meta = repo_metadata(endpoint, relative_path)
    assigned = [r for r in meta.replicas if r.assigned]
    if len(assigned) != nodes or any(r.generation != meta.generation for r in assigned):
        return None
    answer = replicas(endpoint, relative_path)
    sums = {d.checksum for d in [answer.primary, *answer.replicas]}
    return sums if len(sums) == 1 and "" not in sums and len(answer.replicas) == nodes - 1 else None


def wait_converged(endpoint: Endpoint, relative_path: str, timeout: float = 30.0) -> set[str]:
    result: set[str] = wait_for(
        lambda: converged(endpoint, relative_path),
        timeout,
        interval=0.1,
        what=f"every replica of {relative_path} to be up to date with one checksum",
    )
    return result


def git(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """git with the SSH helper; ``env`` adds GITQUORUM_TOKEN_FILE, GITQUORUM_TLS_CA..."""
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=git_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def push_after_node_stopped(remote: str, work: Path, **env: str) -> None:
    """Push once the cluster sees a just-stopped node unhealthy.

    Until then, a push that needs that node (as primary) is refused with
    UNAVAILABLE: retry, as a client would.
    """
    wait_for(
        lambda: git("push", remote, "main", cwd=work, **env).returncode == 0,
        30,
        interval=0.5,
        what="a push once the stopped node is seen unhealthy",
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"{proc.args}: {proc.stderr}"
    return proc


def work_tree(path: Path) -> Path:
    return gitrepo.make_repo(path, commits=2, branches=(), tags=(), annotated_tags=())
