"""ReplicateRepository: bring this node's replica up to date from another node.

The source node is named in the ``gitaly-servers`` metadata. A missing
replica is first seeded from the source's GetSnapshot tar; then, always, git
fetches every ref from the source's upload-pack (carried over SSHService by
the ``gitquorum git-ssh`` helper) with pruning, so the replica ends with
exactly the source's refs; last, HEAD is pointed where the source's points
(FindDefaultBranchName on the source).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from gitquorum import log, tls, tokens
from gitquorum.errors import (
    Aborted,
    AlreadyExists,
    GitquorumError,
    Internal,
    InvalidArgument,
    NotFound,
)
from gitquorum.gitaly import ref_pb2, ref_pb2_grpc, repository_pb2, repository_pb2_grpc, shared_pb2
from gitquorum.storage import git
from gitquorum.storage.context import NodeContext
from gitquorum.storage.durable import sync_tree
from gitquorum.storage.locator import RepoPath, is_repository
from gitquorum.storage.repo_create import check_ref_format
from gitquorum.storage.repo_snapshot import extract_snapshot
from gitquorum.storage.repo_tmp import move_aside, move_into_place, remove_tree, scratch_dir
from gitquorum.wire.options import message_size_options
from gitquorum.wire.paths import validate_relative
from gitquorum.wire.transaction_metadata import Transaction

SERVERS_KEY = "gitaly-servers"
SOURCE_TIMEOUT = 30.0
# Fetch settings Gitaly also uses when replicating: the source is trusted and
# objects were checked when they first arrived.
_FETCH_CONFIG = (
    "fetch.negotiationAlgorithm=skipping",
    "fetch.fsckObjects=false",
    "gc.auto=0",
    "maintenance.auto=false",
)


@dataclass(frozen=True)
class SourceServer:
    """How to reach the node holding the source replica."""

    address: str
    token: str = field(repr=False, default="")

    @property
    def grpc_target(self) -> str:
        return tls.split(self.address)[0]

    @property
    def uses_tls(self) -> bool:
        # The proxy advertises tls:// when it reaches nodes over TLS (docs/security.md).
        return tls.split(self.address)[1]

    @property
    def host_port(self) -> str:
        if self.address.startswith("unix:"):
            raise InvalidArgument("replication over a unix socket is not supported")
        return self.grpc_target

    def metadata(self) -> list[tuple[str, str]]:
        metadata: list[tuple[str, str]] = []
        correlation = log.correlation_id.get()
        if correlation:
            # The source logs the same correlation id as this node.
            metadata.append((log.CORRELATION_METADATA_KEYS[0], correlation))
        if self.token:
            metadata.append(tokens.bearer(self.token.encode()))
        return metadata


def servers_from_metadata(
    metadata: Sequence[tuple[str, str | bytes]] | None,
) -> dict[str, SourceServer]:
    raw = next((v for k, v in metadata or () if k == SERVERS_KEY), None)
    if raw is None:
        raise InvalidArgument(f"{SERVERS_KEY} metadata not set")
    try:
        decoded = json.loads(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument(f"{SERVERS_KEY} metadata is not base64 JSON") from exc
    if not isinstance(decoded, dict):
        raise InvalidArgument(f"{SERVERS_KEY} metadata is not a JSON object")
    servers = {}
    for storage, info in decoded.items():
        address = info.get("address") if isinstance(info, dict) else None
        token = info.get("token", "") if isinstance(info, dict) else None
        if not isinstance(address, str) or not address or not isinstance(token, str):
            raise InvalidArgument(
                f"{SERVERS_KEY}: storage {storage!r} needs an address and a token"
            )
        servers[storage] = SourceServer(address, token)
    return servers


def _remote_error(exc: grpc.aio.AioRpcError, what: str) -> GitquorumError:
    """Carry the source's status code through, so callers see why replication failed."""
    error = GitquorumError(f"{what} on the source failed: {exc.details()}")
    error.code = exc.code()
    return error


class Replication:
    """One ReplicateRepository call: the target replica, the source and how to reach it."""

    def __init__(
        self,
        node: NodeContext,
        request: repository_pb2.ReplicateRepositoryRequest,
        metadata: Sequence[tuple[str, str | bytes]] | None,
        tx: Transaction | None,
    ) -> None:
        self.node = node
        self.request = request
        self.tx = tx
        self.target: RepoPath = node.locator.locate(request.repository)
        source = request.source
        if not request.HasField("source") or (not source.storage_name and not source.relative_path):
            raise InvalidArgument("source repository not set")
        if not source.storage_name:
            raise InvalidArgument("source storage name not set")
        if not source.relative_path:
            raise InvalidArgument("source repository path not set")
        self.source_relative = validate_relative(source.relative_path, "source relative path")
        if source.storage_name == self.target.storage:
            raise InvalidArgument("source and target repository must be on different storages")
        server = servers_from_metadata(metadata).get(source.storage_name)
        if server is None:
            raise InvalidArgument(f"storage {source.storage_name!r} not found in {SERVERS_KEY}")
        self.server = server
        self.source: shared_pb2.Repository = source

    async def run(self) -> None:
        options = message_size_options()
        async with tls.dial(self.server.address, self.node.client_tls, options) as channel:
            await self._require_source(channel)
            if not is_repository(self.target.path):
                await self._create_from_snapshot(channel)
            async with scratch_dir(self.node.locator, self.target.storage, "fetch-") as scratch:
                env = self._ssh_env(scratch)
                await self._fetch(env)
            await self._sync_head(channel)

    async def _require_source(self, channel: grpc.aio.Channel) -> None:
        stub = repository_pb2_grpc.RepositoryServiceStub(channel)
        try:
            response = await stub.RepositoryExists(
                repository_pb2.RepositoryExistsRequest(repository=self.source),
                metadata=self.server.metadata(),
                timeout=SOURCE_TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            raise _remote_error(exc, "RepositoryExists") from exc
        if not response.exists:
            raise NotFound("invalid source repository")

    async def _create_from_snapshot(self, channel: grpc.aio.Channel) -> None:
        locator, storage = self.node.locator, self.target.storage
        if self.target.path.exists() or self.target.path.is_symlink():
            # A broken leftover: set it aside so the snapshot can take its place.
            await remove_tree(move_aside(locator, storage, self.target.path, "stale"))
        stub = repository_pb2_grpc.RepositoryServiceStub(channel)
        async with scratch_dir(locator, storage, "snapshot-") as scratch:
            archive = scratch / "snapshot.tar"
            try:
                with archive.open("wb") as handle:
                    stream = stub.GetSnapshot(
                        repository_pb2.GetSnapshotRequest(repository=self.source),
                        metadata=self.server.metadata(),
                    )
                    async for response in stream:
                        handle.write(response.data)
            except grpc.aio.AioRpcError as exc:
                raise _remote_error(exc, "GetSnapshot") from exc
            staged = scratch / "repo.git"
            await asyncio.to_thread(extract_snapshot, archive, staged)
            # On disk before the replica can be recorded up to date (``durable``).
            await asyncio.to_thread(sync_tree, staged)
            try:
                move_into_place(staged, self.target.path)
            except AlreadyExists:
                # A concurrent replication got there first; the fetch below
                # brings whichever copy won up to date.
                pass
        self.node.forget_repository(self.target.path)

    def _ssh_env(self, scratch: Path) -> dict[str, str]:
        env = {
            "GIT_SSH_COMMAND": f"{sys.executable} -m gitquorum.cli.main git-ssh",
            # An OpenSSH-style command: git passes -p and skips its -G probe.
            "GIT_SSH_VARIANT": "ssh",
            "GITQUORUM_STORAGE": self.source.storage_name,
        }
        if self.server.token:
            token_file = scratch / "token"
            fd = os.open(token_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(self.server.token)
            env["GITQUORUM_TOKEN_FILE"] = str(token_file)
        # Explicit either way: a GITQUORUM_TLS_* inherited from the node's own
        # environment must not decide how git-ssh dials the source.
        env["GITQUORUM_TLS"] = "1" if self.server.uses_tls else "0"
        if self.server.uses_tls:
            # File paths only, never key material, travel in the environment.
            client = self.node.client_tls or tls.ClientTLS()
            for name, path in (
                ("GITQUORUM_TLS_CA", client.ca_file),
                ("GITQUORUM_TLS_CERT", client.cert_file),
                ("GITQUORUM_TLS_KEY", client.key_file),
            ):
                if path:
                    env[name] = path
        return env

    @property
    def _url(self) -> str:
        return f"ssh://{self.server.host_port}/{self.source_relative}"

    async def _fetch(self, ssh_env: dict[str, str]) -> None:
        config = [arg for option in _FETCH_CONFIG for arg in ("-c", option)]
        async with self.node.voting.hook_session(self.tx, self.request.repository) as (
            hook_args,
            hook_env,
        ):
            args = [
                *config,
                *hook_args,
                "fetch",
                "--quiet",
                "--atomic",
                "--prune",
                "--no-tags",
                "--no-write-fetch-head",
                self._url,
                "+refs/*:refs/*",
            ]
            env = {**self.target.git_env(), **ssh_env, **hook_env}
            result = await git.run(args, git_dir=self.target.path, env=env)
        if not result.ok:
            text = result.stderr.decode(errors="replace").strip()
            if "vote: " in text:
                # The reference-transaction hook refused: the cluster voted no.
                raise Aborted(f"fetching from the source was aborted: {text}")
            raise Internal(f"fetching from the source failed: {text}")

    async def _source_head(self, channel: grpc.aio.Channel) -> str | None:
        stub = ref_pb2_grpc.RefServiceStub(channel)
        try:
            response = await stub.FindDefaultBranchName(
                ref_pb2.FindDefaultBranchNameRequest(repository=self.source, head_only=True),
                metadata=self.server.metadata(),
                timeout=SOURCE_TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            raise _remote_error(exc, "FindDefaultBranchName") from exc
        return response.name.decode(errors="replace") or None

    async def _sync_head(self, channel: grpc.aio.Channel) -> None:
        head = await self._source_head(channel)
        if head is None:
            return
        if not head.startswith("refs/"):
            head = f"refs/heads/{head}"
        await check_ref_format(head)
        current = await git.run(["symbolic-ref", "-q", "HEAD"], git_dir=self.target.path)
        if current.stdout.decode(errors="replace").strip() == head:
            return
        result = await git.run(["symbolic-ref", "HEAD", head], git_dir=self.target.path)
        if not result.ok:
            text = result.stderr.decode(errors="replace").strip()
            raise Internal(f"setting HEAD failed: {text}")
