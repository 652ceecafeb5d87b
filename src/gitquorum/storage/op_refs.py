"""Branch and tag operations: UserCreateBranch/DeleteBranch and UserCreateTag/DeleteTag.

Every reference change goes through ``update_refs`` so that, inside a
transaction, the node votes on it between prepare and commit. Error codes and
messages follow Gitaly (16.x): request problems are INVALID_ARGUMENT, a state
of the repository that forbids the change is FAILED_PRECONDITION, an existing
tag is ALREADY_EXISTS.
"""

from __future__ import annotations

import re
import time

from gitquorum.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from gitquorum.gitaly import operations_pb2, shared_pb2
from gitquorum.storage import git
from gitquorum.storage.context import NodeContext
from gitquorum.storage.gitobjects import MAX_MESSAGE_SIZE, parse_author, validate_revision
from gitquorum.storage.locator import RepoPath
from gitquorum.storage.op_objects import check_identity, read_commit, resolve, signature_time
from gitquorum.storage.refupdate import (
    ZERO_OID,
    RefUpdate,
    RefUpdateError,
    check_refname,
    current_values,
    update_refs,
)
from gitquorum.wire.transaction_metadata import Transaction

_HEX_OID = re.compile(r"^[0-9a-f]{40}$")
_NON_SPACE = re.compile(rb"\S")


def _name(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"invalid {what}: not UTF-8") from exc


async def _reference(repo: RepoPath, prefix: str, name: bytes, what: str) -> str:
    ref = prefix + _name(name, what)
    try:
        await check_refname(repo, ref)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid {what}: {name.decode(errors='replace')!r}") from exc
    return ref


def _refresh_message(ref: str) -> str:
    # Gitaly's wording for any reference update git refused.
    return f"Could not update {ref}. Please refresh and try again."


async def _expected_old(node: NodeContext, repo: RepoPath, expected: str) -> str:
    if not _HEX_OID.match(expected):
        raise InvalidArgument(f"invalid expected old object ID: {expected!r}")
    info = await resolve(node.catfile, repo, f"{expected}^{{object}}".encode())
    if info is None:
        raise InvalidArgument(f"cannot resolve expected old object ID: {expected}")
    return info.oid


async def create_branch(
    node: NodeContext, request: operations_pb2.UserCreateBranchRequest, tx: Transaction | None
) -> operations_pb2.UserCreateBranchResponse:
    repo = node.locator.repository(request.repository)
    if not request.branch_name:
        raise InvalidArgument("empty branch name")
    if not request.HasField("user"):
        raise InvalidArgument("empty user")
    if not request.start_point:
        raise InvalidArgument("empty start point")
    ref = await _reference(repo, "refs/heads/", request.branch_name, "branch name")
    start = await resolve(node.catfile, repo, request.start_point + b"^{commit}")
    if start is None:
        raise FailedPrecondition(
            f"revspec '{request.start_point.decode(errors='replace')}' not found"
        )
    commit = await read_commit(node.catfile, repo, start.oid)
    try:
        await update_refs(
            repo, request.repository, [RefUpdate(ref, start.oid, ZERO_OID)], node.voting, tx
        )
    except RefUpdateError as exc:
        raise FailedPrecondition(_refresh_message(ref)) from exc
    return operations_pb2.UserCreateBranchResponse(
        branch=shared_pb2.Branch(name=request.branch_name, target_commit=commit)
    )


async def _delete_reference(
    node: NodeContext,
    repository: shared_pb2.Repository,
    repo: RepoPath,
    ref: str,
    expected_old_oid: str,
    missing: str,
    tx: Transaction | None,
) -> None:
    if expected_old_oid:
        old = await _expected_old(node, repo, expected_old_oid)
    else:
        present = await current_values(repo, [ref])
        if ref not in present:
            raise FailedPrecondition(missing)
        old = present[ref]
    try:
        await update_refs(repo, repository, [RefUpdate(ref, ZERO_OID, old)], node.voting, tx)
    except RefUpdateError as exc:
        raise FailedPrecondition(f"reference update failed: {_refresh_message(ref)}") from exc


async def delete_branch(
    node: NodeContext, request: operations_pb2.UserDeleteBranchRequest, tx: Transaction | None
) -> operations_pb2.UserDeleteBranchResponse:
    repo = node.locator.repository(request.repository)
    if not request.branch_name:
        raise InvalidArgument("bad request: empty branch name")
    if not request.HasField("user"):
        raise InvalidArgument("bad request: empty user")
    ref = await _reference(repo, "refs/heads/", request.branch_name, "branch name")
    name = request.branch_name.decode(errors="replace")
    await _delete_reference(
        node,
        request.repository,
        repo,
        ref,
        request.expected_old_oid,
        f'branch not found: "{name}"',
        tx,
    )
    return operations_pb2.UserDeleteBranchResponse()


async def delete_tag(
    node: NodeContext, request: operations_pb2.UserDeleteTagRequest, tx: Transaction | None
) -> operations_pb2.UserDeleteTagResponse:
    repo = node.locator.repository(request.repository)
    if not request.tag_name:
        raise InvalidArgument("empty tag name")
    if not request.HasField("user"):
        raise InvalidArgument("empty user")
    ref = await _reference(repo, "refs/tags/", request.tag_name, "tag name")
    name = request.tag_name.decode(errors="replace")
    await _delete_reference(
        node, request.repository, repo, ref, request.expected_old_oid, f"tag not found: {name}", tx
    )
    return operations_pb2.UserDeleteTagResponse()


async def _write_tag(
    repo: RepoPath,
    target: str,
    target_type: str,
    name: str,
    message: bytes,
    user: shared_pb2.User,
    when: tuple[int, str],
) -> str:
    tagger_name = check_identity(user.name, "tagger name")
    tagger_email = user.email.decode("utf-8", errors="surrogateescape")
    if any(c in tagger_email for c in "<>\n\x00"):
        raise InvalidArgument("formatting tag: tagger email contains disallowed characters")
    header = (
        f"object {target}\ntype {target_type}\ntag {name}\n"
        f"tagger {tagger_name} <{tagger_email}> {when[0]} {when[1]}\n\n"
    )
    data = header.encode("utf-8", errors="surrogateescape") + message
    result = await git.run(["mktag"], git_dir=repo.path, env=repo.git_env(), input=data)
    if not result.ok:
        # Gitaly reports a tag git refuses to write this way.
        raise NotFound(
            "Gitlab::Git::CommitError: "
            + result.stderr.decode(errors="replace").strip().removeprefix("error: ")
        )
    return result.stdout.decode().strip()


async def create_tag(
    node: NodeContext, request: operations_pb2.UserCreateTagRequest, tx: Transaction | None
) -> operations_pb2.UserCreateTagResponse:
    repo = node.locator.repository(request.repository)
    if not request.tag_name:
        raise InvalidArgument("validating request: empty tag name")
    try:
        # Gitaly's revision rules first (no leading '-', no whitespace or ':'), then git's.
        validate_revision(request.tag_name)
        ref = await _reference(repo, "refs/tags/", request.tag_name, "tag name")
    except InvalidArgument as exc:
        message = exc.message.removeprefix("invalid tag name: ")
        raise InvalidArgument(f"validating request: invalid tag name: {message}") from exc
    if not request.HasField("user"):
        raise InvalidArgument("validating request: empty user")
    if not request.target_revision:
        raise InvalidArgument("validating request: empty target revision")
    if b"\x00" in request.message:
        raise InvalidArgument("validating request: tag message contains NUL byte")
    when = signature_time(
        request.timestamp if request.HasField("timestamp") else None, request.user, time.time()
    )
    target = await resolve(node.catfile, repo, request.target_revision)
    if target is None:
        raise FailedPrecondition(
            f"revspec '{request.target_revision.decode(errors='replace')}' not found"
        )
    # Checked before writing any object; update_refs still catches a concurrent creation.
    if ref in await current_values(repo, [ref]):
        raise AlreadyExists("tag reference exists already")
    annotated = _NON_SPACE.search(request.message) is not None
    peeled = target
    if target.type == "tag":
        found = await resolve(node.catfile, repo, target.oid.encode() + b"^{}")
        if found is None:
            raise FailedPrecondition(f"cannot peel tag {target.oid}")
        peeled = found
    tag = shared_pb2.Tag(name=request.tag_name)
    if annotated:
        tag_oid = await _write_tag(
            repo,
            target.oid,
            target.type,
            ref.removeprefix("refs/tags/"),
            request.message,
            request.user,
            when,
        )
        tag.id = tag_oid
        tag.message = request.message[:MAX_MESSAGE_SIZE]
        tag.message_size = len(request.message)
        ident = request.user.name.strip() + b" <" + request.user.email + b"> "
        tag.tagger.CopyFrom(parse_author(ident + f"{when[0]} {when[1]}".encode()))
        ref_oid = tag_oid
    else:
        tag.id = peeled.oid
        ref_oid = peeled.oid
    if peeled.type == "commit":
        tag.target_commit.CopyFrom(await read_commit(node.catfile, repo, peeled.oid))
    try:
        await update_refs(
            repo, request.repository, [RefUpdate(ref, ref_oid, ZERO_OID)], node.voting, tx
        )
    except RefUpdateError as exc:
        raise FailedPrecondition(f"reference update failed: {_refresh_message(ref)}") from exc
    return operations_pb2.UserCreateTagResponse(tag=tag)
