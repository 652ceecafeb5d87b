"""WriteRef: point a reference at a revision, or HEAD at a branch, with a vote."""

from __future__ import annotations

import hashlib
import re

from gitquorum.errors import Aborted, Internal, InvalidArgument
from gitquorum.gitaly import repository_pb2
from gitquorum.storage import git
from gitquorum.storage.catfile import ObjectNotFound
from gitquorum.storage.context import NodeContext
from gitquorum.storage.locator import RepoPath
from gitquorum.storage.refupdate import RefUpdate, update_refs
from gitquorum.storage.repo_create import check_ref_format
from gitquorum.wire.transaction_metadata import COMMITTED, PREPARED, Transaction

_FULL_OID = re.compile(rb"^[0-9a-fA-F]{40}$")


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{what} is not valid UTF-8") from exc


async def _resolve(
    node: NodeContext, repo: RepoPath, revision: bytes, what: str, expected: bool = False
) -> str:
    """An object id for ``revision``; the zero id passes through (create/delete).

    An expected old value given as a full object id is not looked up: if no
    such object exists the ref cannot point to it, and update-ref reports the
    mismatch like any other.
    """
    if _FULL_OID.match(revision) and (expected or revision.strip(b"0") == b""):
        return revision.decode().lower()
    if b"\x00" in revision or b"\n" in revision:
        raise InvalidArgument(f"invalid {what}")
    try:
        info = await node.catfile.info(repo, revision)
    except ObjectNotFound as exc:
        raise InvalidArgument(f"{what} not found: {_text(revision, what)!r}") from exc
    return info.oid


async def _point_head(
    node: NodeContext,
    repo: RepoPath,
    request: repository_pb2.WriteRefRequest,
    tx: Transaction | None,
) -> None:
    target = _text(request.revision, "revision")
    if not target.startswith("refs/"):
        raise InvalidArgument("HEAD can only point to a reference under refs/")
    await check_ref_format(target)
    digest = hashlib.sha1(f"symbolic-ref HEAD {target}\n".encode()).digest()
    await node.voting.vote(tx, request.repository, digest, PREPARED)
    args = [*node.voting.no_hooks_args(), "symbolic-ref", "HEAD", target]
    result = await git.run(args, git_dir=repo.path, env=repo.git_env())
    if not result.ok:
        text = result.stderr.decode(errors="replace").strip()
        if ".lock" in text:
            raise Aborted("reference is locked already: HEAD")
        raise Internal(f"setting HEAD failed: {text}")
    await node.voting.vote(tx, request.repository, digest, COMMITTED)


async def write_ref(
    node: NodeContext, request: repository_pb2.WriteRefRequest, tx: Transaction | None
) -> None:
    repo = node.locator.repository(request.repository)
    if not request.ref:
        raise InvalidArgument("empty Ref")
    if not request.revision:
        raise InvalidArgument("empty Revision")
    ref = _text(request.ref, "ref")
    if ref == "HEAD":
        await _point_head(node, repo, request, tx)
        return
    if not ref.startswith("refs/"):
        raise InvalidArgument("ref has to be a full reference")
    await check_ref_format(ref)
    new = await _resolve(node, repo, request.revision, "revision")
    old = None
    if request.old_revision:
        old = await _resolve(node, repo, request.old_revision, "old revision", expected=True)
    await update_refs(repo, request.repository, [RefUpdate(ref, new, old)], node.voting, tx)
