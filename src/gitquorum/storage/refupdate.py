"""Atomic reference updates with a vote between prepare and commit.

``git update-ref -z --stdin`` locks every ref at ``prepare``; the node then
votes on the exact lines git would have given the reference-transaction
hook, and only commits when the cluster agreed. Hooks are disabled for the
command so the same update is not voted on twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gitquorum.errors import (
    Aborted,
    FailedPrecondition,
    Internal,
    InvalidArgument,
)
from gitquorum.gitaly import shared_pb2
from gitquorum.storage import git
from gitquorum.storage.locator import RepoPath
from gitquorum.storage.voting import VoteCoordinator, vote_hash
from gitquorum.wire.finishing import OutcomeUnknown
from gitquorum.wire.transaction_metadata import COMMITTED, PREPARED, Transaction

ZERO_OID = git.ZERO_OID
_OID = re.compile(r"^[0-9a-f]{40}$")
# How long an abandoned update-ref may take to roll back before it is killed.
_ABANDON_TIMEOUT = 10.0


@dataclass(frozen=True)
class RefUpdate:
    """Set ``ref`` to ``new`` (ZERO_OID deletes); ``old`` None means "whatever it is now"."""

    ref: str
    new: str
    old: str | None = None


class RefUpdateError(FailedPrecondition):
    """An update git refused: stale old value, missing object, bad name."""


class RefLockedError(Aborted):
    def __init__(self, ref: str) -> None:
        super().__init__(f"reference is locked already: {ref}")
        self.ref = ref


async def check_refname(repo: RepoPath, ref: str) -> None:
    if not ref or "\x00" in ref or "\n" in ref:
        raise InvalidArgument(f"invalid reference name {ref!r}")
    result = await git.run(["check-ref-format", ref], git_dir=repo.path)
    if not result.ok and ref != "HEAD":
        raise InvalidArgument(f"invalid reference name {ref!r}")


async def current_values(repo: RepoPath, refs: Sequence[str]) -> dict[str, str]:
    """Present values of the given refs (absent refs are left out)."""
    if not refs:
        return {}
    result = await git.run(
        ["for-each-ref", "--format=%(objectname) %(refname)", *refs],
        git_dir=repo.path,
        env=repo.git_env(),
    )
    wanted = set(refs)
    values: dict[str, str] = {}
    for line in result.stdout.decode().splitlines():
        oid, _, name = line.partition(" ")
        if name in wanted:
            values[name] = oid
    return values


def _classify(stderr: bytes, refs: Sequence[str]) -> Exception:
    text = stderr.decode(errors="replace").strip()
    for ref in refs:
        locked = "File exists" in text or ("Unable to create" in text and ".lock" in text)
        if ref in text and locked:
            return RefLockedError(ref)
    if "cannot lock ref" in text or "is at" in text or "expected" in text:
        return RefUpdateError(text.removeprefix("fatal: "))
    if "not a valid" in text or "invalid" in text or "trying to write" in text:
        return RefUpdateError(text.removeprefix("fatal: "))
    return Internal(f"update-ref failed: {text}")


async def _abandon(process: git.GitProcess) -> None:
    """End an unfinished ``update-ref --stdin`` transaction cleanly (git drops its locks)."""
    if process.proc.returncode is not None:
        return

    async def abort() -> None:
        with contextlib.suppress(Exception):
            process.stdin.write(b"abort\x00")
        with contextlib.suppress(Exception):
            await process.close_stdin()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(process.wait(), _ABANDON_TIMEOUT)

    # Shielded: the RPC may be cancelled while git aborts (the proxy gives up on a
    # call after a lost vote); git would then be killed holding its .lock files
    # and the references would stay locked for good (seen in the chaos tests).
    task = asyncio.ensure_future(abort())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


async def _finish(process: git.GitProcess) -> tuple[bytes, bytes, int]:
    await process.close_stdin()
    line = await process.stdout.readline()
    stderr = await process.stderr.read()
    return line, stderr, await process.wait()


async def update_refs(
    repo: RepoPath,
    repository: shared_pb2.Repository,
    updates: Sequence[RefUpdate],
    voting: VoteCoordinator,
    tx: Transaction | None,
) -> None:
    """Apply all updates atomically, voting between prepare and commit when in a transaction."""
    if not updates:
        return
    refs = [u.ref for u in updates]
    if len(set(refs)) != len(refs):
        raise InvalidArgument("a reference appears twice in one update")
    for update in updates:
        for oid in (update.new, update.old):
            if oid is not None and not _OID.match(oid):
                raise InvalidArgument(f"invalid object id {oid!r}")
    present = await current_values(repo, [u.ref for u in updates if u.old is None])
    vote_lines = []
    commands = [b"start\x00"]
    for update in updates:
        old = update.old if update.old is not None else present.get(update.ref, ZERO_OID)
        vote_lines.append(f"{old} {update.new} {update.ref}\n")
        commands.append(f"update {update.ref}\x00{update.new}\x00{old}\x00".encode())
    commands.append(b"prepare\x00")
    data = "".join(vote_lines).encode()
    args = [*voting.no_hooks_args(), "update-ref", "-z", "--stdin"]
    async with git.started(args, git_dir=repo.path, env=repo.git_env(), stdin=True) as process:
        try:
            process.stdin.write(b"".join(commands))
            await process.stdin.drain()
            for expected in (b"start: ok", b"prepare: ok"):
                line = await process.stdout.readline()
                if line.rstrip(b"\n") != expected:
                    await process.close_stdin()
                    stderr = await process.stderr.read()
                    await process.wait()
                    raise _classify(stderr, refs)
            await voting.vote(tx, repository, vote_hash(data), PREPARED)
        except BaseException:
            # Also on cancellation: a killed git leaves its .lock files behind
            # and the references stay locked for good, so let git abort itself.
            await _abandon(process)
            raise
        process.stdin.write(b"commit\x00")
        finish = asyncio.ensure_future(_finish(process))
        try:
            line, stderr, code = await asyncio.shield(finish)
        except asyncio.CancelledError:
            # git is committing: killing it now could leave locks or half the
            # update; it takes milliseconds, so wait for it before giving up.
            with contextlib.suppress(Exception):
                await finish
            raise
        if line.rstrip(b"\n") != b"commit: ok" or code != 0:
            # Past prepare, git moves the references one by one: some may be
            # updated already, and in a transaction the cluster decided the
            # update, so other replicas may hold it. Not a refusal.
            text = stderr.decode(errors="replace").strip()
            raise OutcomeUnknown(f"committing the reference update failed: {text}")
    await voting.vote(tx, repository, vote_hash(data), COMMITTED)
