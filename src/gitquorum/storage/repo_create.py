"""CreateRepository and RemoveRepository: whole repositories appear and vanish atomically.

A repository is built in scratch space and renamed into place, and removed by
renaming it into scratch space first, so no reader ever sees half of one.
Inside a transaction each replica votes on a description of the change that
is identical on every node (Gitaly's PREPARED/COMMITTED pair), and an ABORT
before the rename leaves the storage untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from gitquorum.errors import FailedPrecondition, Internal, InvalidArgument, NotFound
from gitquorum.gitaly import repository_pb2, shared_pb2
from gitquorum.storage import git
from gitquorum.storage.context import NodeContext
from gitquorum.storage.durable import sync_tree
from gitquorum.storage.locator import RepoPath
from gitquorum.storage.repo_tmp import (
    ensure_absent,
    move_aside,
    move_into_place,
    remove_tree,
    scratch_dir,
)
from gitquorum.wire.transaction_metadata import COMMITTED, PREPARED, Transaction

DEFAULT_BRANCH = "main"
_FORMATS = {
    shared_pb2.OBJECT_FORMAT_UNSPECIFIED: "sha1",
    shared_pb2.OBJECT_FORMAT_SHA1: "sha1",
    shared_pb2.OBJECT_FORMAT_SHA256: "sha256",
}


def object_format_name(value: int) -> str:
    name = _FORMATS.get(value)  # type: ignore[call-overload]
    if name is None:
        raise InvalidArgument(f"unknown object format {value}")
    return name


async def check_ref_format(ref: str) -> None:
    """Reject names git would refuse (checked without a repository)."""
    if not ref or "\x00" in ref or "\n" in ref or ref.startswith("-"):
        raise InvalidArgument(f"invalid reference name {ref!r}")
    result = await git.run(["check-ref-format", ref])
    if not result.ok:
        raise InvalidArgument(f"invalid reference name {ref!r}")


async def default_branch_ref(raw: bytes) -> str:
    """``refs/heads/<name>`` for a CreateRepository default branch ("main" when empty)."""
    try:
        name = raw.decode() if raw else DEFAULT_BRANCH
    except UnicodeDecodeError as exc:
        raise InvalidArgument("default branch is not valid UTF-8") from exc
    ref = name if name.startswith("refs/heads/") else f"refs/heads/{name}"
    if ref.removeprefix("refs/heads/").startswith("-"):
        # git itself refuses such branch names: they read like options.
        raise InvalidArgument(f"invalid default branch name {name!r}")
    await check_ref_format(ref)
    return ref


async def init_bare(path: Path, object_format: str, head: str) -> None:
    """``git init --bare`` without templates, HEAD pointing at ``head``."""
    result = await git.run(
        ["init", "--bare", "--quiet", "--template=", f"--object-format={object_format}", str(path)]
    )
    if not result.ok:
        raise Internal(f"git init failed: {result.stderr.decode(errors='replace').strip()}")
    result = await git.run(["symbolic-ref", "HEAD", head], git_dir=path)
    if not result.ok:
        raise Internal(f"setting HEAD failed: {result.stderr.decode(errors='replace').strip()}")


def vote_digest(text: str) -> bytes:
    return hashlib.sha1(text.encode()).digest()


async def create_repository(
    node: NodeContext,
    request: repository_pb2.CreateRepositoryRequest,
    tx: Transaction | None,
) -> None:
    repo = node.locator.locate(request.repository)
    head = await default_branch_ref(request.default_branch)
    object_format = object_format_name(request.object_format)
    ensure_absent(repo.path)
    async with scratch_dir(node.locator, repo.storage, "create-") as scratch:
        staged = scratch / "repo.git"
        await init_bare(staged, object_format, head)
        # Every replica builds the same thing, so a description of it is a
        # vote all replicas agree on regardless of their git versions.
        digest = vote_digest(f"create {head} {object_format}\n")
        # On disk before the vote (``durable``); the rename after it is quick.
        await asyncio.to_thread(sync_tree, staged)
        await node.voting.vote(tx, request.repository, digest, PREPARED)
        move_into_place(staged, repo.path)
    node.forget_repository(repo.path)
    await node.voting.vote(tx, request.repository, digest, COMMITTED)


@contextlib.contextmanager
def _removal_lock(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError as exc:
        raise FailedPrecondition("repository is already locked") from exc
    os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()


async def remove_repository(
    node: NodeContext,
    request: repository_pb2.RemoveRepositoryRequest,
    tx: Transaction | None,
) -> None:
    repo: RepoPath = node.locator.locate(request.repository)
    if not (repo.path.exists() or repo.path.is_symlink()):
        raise NotFound("repository does not exist")
    relative = request.repository.relative_path
    with _removal_lock(repo.path):
        await node.voting.vote(
            tx, request.repository, vote_digest(f"pre-remove {relative}"), PREPARED
        )
        try:
            removed = move_aside(node.locator, repo.storage, repo.path, "removed")
        except FileNotFoundError as exc:
            raise NotFound("repository does not exist") from exc
        try:
            node.forget_repository(repo.path)
            post = vote_digest(f"post-remove {relative}")
            await node.voting.vote(tx, request.repository, post, COMMITTED)
        finally:
            await remove_tree(removed)
