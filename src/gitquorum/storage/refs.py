"""Reference listing and naming helpers shared by the ref and commit services.

Listings stream ``git for-each-ref`` output (NUL-separated fields, one ref
per line) instead of collecting it, so a repository with very many refs does
not have to fit in one message or in memory at once.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Sequence

from gitquorum.errors import Internal, InvalidArgument
from gitquorum.storage import git
from gitquorum.storage.locator import RepoPath

HEADS = "refs/heads/"
DEFAULT_REF = "refs/heads/main"
LEGACY_DEFAULT_REF = "refs/heads/master"

# Characters check-ref-format refuses anywhere in a name.
_BAD_CHARS = re.compile(rb"[\x00-\x20\x7f~^:?*\[\\]")


def valid_refname(name: bytes) -> bool:
    """git check-ref-format's rules (without --allow-onelevel), checked in-process."""
    if not name or name == b"@" or b"@{" in name or b".." in name:
        return False
    if _BAD_CHARS.search(name):
        return False
    if name.startswith(b"/") or name.endswith((b"/", b".")):
        return False
    components = name.split(b"/")
    if len(components) < 2:
        return False
    for component in components:
        if not component or component.startswith(b".") or component.endswith(b".lock"):
            return False
    return True


def check_reference(name: bytes) -> str:
    """A fully qualified, well-formed reference name, or INVALID_ARGUMENT."""
    if not name.startswith(b"refs/"):
        raise InvalidArgument(f"reference is not fully qualified: {name!r}")
    if not valid_refname(name):
        raise InvalidArgument(f"invalid reference name: {name!r}")
    return name.decode()


def branch_ref(name: bytes) -> bytes:
    """``main`` or ``refs/heads/main`` as ``refs/heads/main``."""
    return name if name.startswith(HEADS.encode()) else HEADS.encode() + name


async def for_each_ref(
    repo: RepoPath,
    patterns: Sequence[bytes],
    fields: Sequence[str],
    *,
    sort: str | None = None,
    points_at: Sequence[bytes] = (),
) -> AsyncGenerator[list[bytes], None]:
    """Yield the requested ``%(field)`` values of every matching ref, in git's order."""
    args = ["for-each-ref", "--format=" + "%00".join(f"%({f})" for f in fields)]
    if sort:
        args.append(f"--sort={sort}")
    for oid in points_at:
        args.append("--points-at=" + oid.decode(errors="replace"))
    args.append("--")
    args += [p.decode(errors="surrogateescape") for p in patterns]
    async with git.started(args, git_dir=repo.path, env=repo.git_env()) as process:
        while True:
            line = await process.stdout.readline()
            if not line:
                break
            if line.endswith(b"\n"):
                line = line[:-1]
            yield line.split(b"\x00")
        stderr = await process.stderr.read()
        code = await process.wait()
    if code != 0:
        text = stderr.decode(errors="replace").strip()
        if "malformed object name" in text or "not a valid" in text:
            raise InvalidArgument(text.removeprefix("error: ").removeprefix("fatal: "))
        raise Internal(f"for-each-ref failed: {text}")


async def branch_names(repo: RepoPath) -> list[str]:
    return [
        fields[0].decode(errors="surrogateescape")
        async for fields in for_each_ref(repo, [b"refs/heads/"], ["refname"])
    ]


def head_symref(repo: RepoPath) -> str | None:
    """What HEAD points to (full name), even if that branch does not exist; None if detached."""
    try:
        content = (repo.path / "HEAD").read_bytes()
    except OSError:
        return None
    if content.startswith(b"ref: "):
        return content[5:].strip().decode(errors="surrogateescape")
    return None


async def default_branch(repo: RepoPath) -> str:
    """The branch clients should treat as default, with Gitaly's fallbacks.

    No branches: "". One branch: that branch. Otherwise HEAD's branch if it
    exists, else ``main``, else ``master``, else the first branch by name.
    """
    branches = await branch_names(repo)
    if not branches:
        return ""
    if len(branches) == 1:
        return branches[0]
    head = head_symref(repo)
    if head in branches:
        return head
    for fallback in (DEFAULT_REF, LEGACY_DEFAULT_REF):
        if fallback in branches:
            return fallback
    return branches[0]


async def ref_exists(repo: RepoPath, ref: bytes) -> bool:
    result = await git.run(
        ["show-ref", "--verify", "--quiet", "--", ref.decode(errors="surrogateescape")],
        git_dir=repo.path,
        env=repo.git_env(),
    )
    if result.returncode == 0:
        return True
    if result.returncode == 1:
        return False
    raise Internal(f"show-ref failed: {result.stderr.decode(errors='replace').strip()}")


async def all_refs(repo: RepoPath) -> dict[str, str]:
    """refname -> object id of every ref under refs/."""
    return {
        fields[0].decode(errors="surrogateescape"): fields[1].decode()
        async for fields in for_each_ref(repo, [b"refs/"], ["refname", "objectname"])
    }
