"""CreateBundle and CreateRepositoryFromBundle: repositories in and out as git bundles."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

from gitquorum.errors import FailedPrecondition, Internal, InvalidArgument
from gitquorum.gitaly import repository_pb2
from gitquorum.storage import git
from gitquorum.storage.context import NodeContext
from gitquorum.storage.durable import sync_tree
from gitquorum.storage.locator import RepoPath
from gitquorum.storage.repo_create import DEFAULT_BRANCH, init_bare
from gitquorum.storage.repo_tmp import ensure_absent, move_into_place, scratch_dir
from gitquorum.wire.transaction_metadata import COMMITTED, PREPARED, Transaction

_SIGNATURES = (b"# v2 git bundle\n", b"# v3 git bundle\n")
_HEADER_LIMIT = 1 << 20
# git falls back to these, in order, when HEAD matches several branches.
_PREFERRED_HEADS = (f"refs/heads/{DEFAULT_BRANCH}", "refs/heads/master")


async def stream_bundle(repo: RepoPath) -> AsyncIterator[bytes]:
    """``git bundle create - --all`` as chunks; FailedPrecondition for an empty repository."""
    args = ["bundle", "create", "--quiet", "-", "--all"]
    async with git.started(args, git_dir=repo.path, env=repo.git_env(), streams=True) as process:
        # stderr is read concurrently so a chatty failure can never block stdout.
        stderr_task = asyncio.ensure_future(process.stderr.read())
        try:
            async for chunk in git.read_chunks(process.stdout):
                yield chunk
            code = await process.wait()
            stderr = await stderr_task
        finally:
            stderr_task.cancel()
        if code != 0:
            text = stderr.decode(errors="replace").strip()
            if "empty bundle" in text:
                raise FailedPrecondition("empty bundle")
            raise Internal(f"bundle creation failed: {text}")


def bundle_object_format(path: Path) -> str:
    """The object format a bundle file declares; InvalidArgument when it is no bundle."""
    with path.open("rb") as handle:
        header = handle.read(_HEADER_LIMIT)
    signature = next((s for s in _SIGNATURES if header.startswith(s)), None)
    if signature is None:
        raise InvalidArgument("invalid bundle: not a v2 or v3 git bundle")
    object_format = "sha1"
    for line in header[len(signature) :].split(b"\n"):
        if not line.startswith(b"@"):
            break
        key, _, value = line[1:].partition(b"=")
        if key == b"object-format":
            if value not in (b"sha1", b"sha256"):
                raise InvalidArgument("invalid bundle: unknown object format")
            object_format = value.decode()
    return object_format


def _classify_fetch(stderr: bytes) -> Exception:
    text = stderr.decode(errors="replace").strip()
    if "prerequisite" in text:
        return FailedPrecondition(f"bundle needs objects the repository lacks: {text}")
    if "bundle" in text or "pack" in text or "fatal" in text:
        return InvalidArgument(f"invalid bundle: {text}")
    return Internal(f"fetching from the bundle failed: {text}")


def choose_head(heads: bytes) -> str | None:
    """The branch HEAD should point to, from ``git bundle list-heads`` output."""
    refs: dict[str, str] = {}
    head_oid = None
    for line in heads.decode(errors="replace").splitlines():
        oid, _, name = line.partition(" ")
        if name == "HEAD":
            head_oid = oid
        elif name.startswith("refs/heads/"):
            refs[name] = oid
    if head_oid is not None:
        matching = sorted(name for name, oid in refs.items() if oid == head_oid)
        for preferred in _PREFERRED_HEADS:
            if preferred in matching:
                return preferred
        if matching:
            return matching[0]
    return _PREFERRED_HEADS[0] if _PREFERRED_HEADS[0] in refs else None


async def refs_digest(path: Path) -> bytes:
    """SHA-1 over HEAD's target and every ref: equal on replicas built from the same bundle."""
    listing = await git.run(["for-each-ref", "--format=%(objectname) %(refname)"], git_dir=path)
    head = await git.run(["symbolic-ref", "-q", "HEAD"], git_dir=path)
    if not listing.ok:
        raise Internal(f"listing refs failed: {listing.stderr.decode(errors='replace').strip()}")
    return hashlib.sha1(b"HEAD " + head.stdout + listing.stdout).digest()


async def _write_stream(
    first: repository_pb2.CreateRepositoryFromBundleRequest,
    requests: AsyncIterator[repository_pb2.CreateRepositoryFromBundleRequest],
    destination: Path,
) -> int:
    size = 0
    with destination.open("wb") as handle:
        handle.write(first.data)
        size += len(first.data)
        async for request in requests:
            handle.write(request.data)
            size += len(request.data)
    return size


async def create_from_bundle(
    node: NodeContext,
    requests: AsyncIterator[repository_pb2.CreateRepositoryFromBundleRequest],
    tx: Transaction | None,
) -> None:
    first = await anext(aiter(requests), None)
    if first is None:
        raise InvalidArgument("empty request stream: the first message must name the repository")
    repo = node.locator.locate(first.repository if first.HasField("repository") else None)
    ensure_absent(repo.path)
    async with scratch_dir(node.locator, repo.storage, "bundle-") as scratch:
        bundle = scratch / "repo.bundle"
        if await _write_stream(first, requests, bundle) == 0:
            raise InvalidArgument("empty bundle")
        staged = scratch / "repo.git"
        await init_bare(staged, bundle_object_format(bundle), _PREFERRED_HEADS[0])
        fetch = [
            *node.voting.no_hooks_args(),
            "-c",
            "gc.auto=0",
            "fetch",
            "--quiet",
            "--atomic",
            "--no-write-fetch-head",
            str(bundle),
            "+refs/*:refs/*",
        ]
        result = await git.run(fetch, git_dir=staged)
        if not result.ok:
            raise _classify_fetch(result.stderr)
        heads = await git.run(["bundle", "list-heads", str(bundle)], git_dir=staged)
        head = choose_head(heads.stdout) if heads.ok else None
        if head is not None:
            await git.run(["symbolic-ref", "HEAD", head], git_dir=staged)
        digest = await refs_digest(staged)
        # On disk before the vote (``durable``); the rename after it is quick.
        await asyncio.to_thread(sync_tree, staged)
        await node.voting.vote(tx, first.repository, digest, PREPARED)
        move_into_place(staged, repo.path)
    node.forget_repository(repo.path)
    await node.voting.vote(tx, first.repository, digest, COMMITTED)
