"""UserCommitFiles: build a commit from a stream of file actions, then move a branch.

The request stream is a header followed by actions, each an action header plus
content chunks. Content is decoded as it arrives and spooled to files in a
private temporary directory of the storage, so large files never sit in
memory. The new tree is built with the git CLI in a temporary index
(``read-tree`` of the parent, ``update-index --index-info`` for the changed
paths, ``write-tree``), the commit with ``commit-tree``, and the branch is
moved with ``update_refs`` so a transaction votes on it.

The action rules and error codes follow Gitaly's: an existing file is
ALREADY_EXISTS, a missing one NOT_FOUND, a bad path INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from gitquorum.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unimplemented,
)
from gitquorum.gitaly import operations_pb2
from gitquorum.storage import git
from gitquorum.storage.context import NodeContext
from gitquorum.storage.locator import RepoPath, is_repository
from gitquorum.storage.op_objects import check_identity, resolve, signature_time
from gitquorum.storage.refupdate import (
    ZERO_OID,
    RefUpdate,
    RefUpdateError,
    check_refname,
    update_refs,
)
from gitquorum.wire.transaction_metadata import Transaction

Header = operations_pb2.UserCommitFilesActionHeader
_REGULAR = "100644"
_EXECUTABLE = "100755"
_GITLINK = "160000"
_HEX_OID = frozenset("0123456789abcdef")

FILE_EXISTS = "A file with this name already exists"
DIRECTORY_EXISTS = "A directory with this name already exists"
FILE_NOT_FOUND = "A file with this name doesn't exist"
TRAVERSAL = "Path cannot include directory traversal"
EMPTY_PATH = "You must provide a file path"


def clean_path(raw: bytes) -> str:
    """A repository-relative file path, or INVALID_ARGUMENT."""
    if not raw:
        raise InvalidArgument(f"validate path: {EMPTY_PATH}")
    text = raw.decode("utf-8", errors="surrogateescape")
    if "\x00" in text or "//" in text or text.startswith("/"):
        raise InvalidArgument(f"validate path: invalid path: {text!r}")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"validate path: {TRAVERSAL}")
    if not parts:
        raise InvalidArgument(f"validate path: {EMPTY_PATH}")
    # git refuses .git anywhere in a tree; say so before writing anything.
    if any(p.lower() == ".git" for p in parts):
        raise InvalidArgument(f"validate path: invalid path: {text!r}")
    return "/".join(parts)


def _ancestors(path: str) -> Iterator[str]:
    parts = path.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


class _Base64Stream:
    """Decodes base64 that arrives in chunks split at arbitrary positions."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk.translate(None, b" \t\r\n")
        usable = len(data) - len(data) % 4
        self._pending = data[usable:]
        return self._decode(data[:usable])

    def finish(self) -> None:
        if self._pending:
            raise InvalidArgument("invalid base64 content: truncated")

    @staticmethod
    def _decode(data: bytes) -> bytes:
        try:
            return base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            raise InvalidArgument(f"invalid base64 content: {exc}") from exc


@dataclass
class _Action:
    header: Header
    path: str
    previous_path: str = ""
    spool: Path | None = None
    oid: str = ""
    _file: BinaryIO | None = field(default=None, repr=False)
    _base64: _Base64Stream | None = field(default=None, repr=False)

    @property
    def needs_content(self) -> bool:
        kind = self.header.action
        return kind in (Header.CREATE, Header.UPDATE) or (
            kind == Header.MOVE and not self.header.infer_content
        )

    def open(self, directory: Path, index: int) -> None:
        if self.needs_content:
            self.spool = directory / f"content-{index}"
            self._file = open(self.spool, "wb")
            if self.header.base64_content:
                self._base64 = _Base64Stream()

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            return  # content of actions that take none is ignored, as Gitaly does
        self._file.write(self._base64.feed(chunk) if self._base64 is not None else chunk)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            if self._base64 is not None:
                self._base64.finish()

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _action_from(header: Header, directory: Path, index: int) -> _Action:
    if header.action not in Header.ActionType.values():
        raise InvalidArgument(
            f"NoMethodError: undefined method `downcase' for {header.action}:Integer"
        )
    action = _Action(header, clean_path(header.file_path))
    if header.action == Header.MOVE:
        action.previous_path = clean_path(header.previous_path)
    action.open(directory, index)
    return action


async def _receive_actions(
    requests: AsyncIterator[operations_pb2.UserCommitFilesRequest], directory: Path
) -> list[_Action]:
    actions: list[_Action] = []
    try:
        async for request in requests:
            kind = request.WhichOneof("user_commit_files_request_payload")
            if kind == "header":
                raise InvalidArgument("only the first message may carry a header")
            if kind is None:
                raise InvalidArgument("request carries neither header nor action")
            payload = request.action.WhichOneof("user_commit_files_action_payload")
            if payload == "header":
                if actions:
                    actions[-1].close()
                actions.append(_action_from(request.action.header, directory, len(actions)))
            elif payload == "content":
                if not actions:
                    raise InvalidArgument("content sent before action")
                actions[-1].write(request.action.content)
            else:
                raise InvalidArgument("action message carries neither header nor content")
        if actions:
            actions[-1].close()
    finally:
        for action in actions:
            action.discard()
    return actions


class _Tree:
    """The files of the parent commit, changed action by action."""

    def __init__(self, files: dict[str, tuple[str, str]]) -> None:
        self.original = files
        self.files = dict(files)
        self._dirs: Counter[str] = Counter()
        for path in files:
            self._dirs.update(_ancestors(path))

    def is_dir(self, path: str) -> bool:
        return self._dirs[path] > 0

    def _check_parents(self, path: str) -> None:
        for parent in _ancestors(path):
            if parent in self.files:
                raise AlreadyExists(FILE_EXISTS)

    def add(self, path: str, mode: str, oid: str) -> None:
        self.files[path] = (mode, oid)
        self._dirs.update(_ancestors(path))

    def remove(self, path: str) -> None:
        del self.files[path]
        self._dirs.subtract(_ancestors(path))

    def remove_dir(self, path: str) -> None:
        prefix = path + "/"
        for name in [p for p in self.files if p.startswith(prefix)]:
            self.remove(name)

    def file(self, path: str) -> tuple[str, str]:
        entry = self.files.get(path)
        if entry is None or entry[0] == _GITLINK:
            raise NotFound(FILE_NOT_FOUND)
        return entry

    def create(self, path: str, mode: str, oid: str) -> None:
        if path in self.files:
            raise AlreadyExists(FILE_EXISTS)
        self._check_parents(path)
        if self.is_dir(path):
            # Gitaly replaces a directory by a file created at its path.
            self.remove_dir(path)
        self.add(path, mode, oid)

    def apply(self, action: _Action, empty_blob: str) -> None:
        kind, path = action.header.action, action.path
        if kind == Header.CREATE:
            mode = _EXECUTABLE if action.header.execute_filemode else _REGULAR
            self.create(path, mode, action.oid)
        elif kind == Header.CREATE_DIR:
            if path in self.files:
                # A submodule counts as a directory, as in Gitaly.
                gitlink = self.files[path][0] == _GITLINK
                raise AlreadyExists(DIRECTORY_EXISTS if gitlink else FILE_EXISTS)
            if self.is_dir(path):
                raise AlreadyExists(DIRECTORY_EXISTS)
            self._check_parents(path)
            self.add(f"{path}/.gitkeep", _REGULAR, empty_blob)
        elif kind == Header.UPDATE:
            mode, _ = self.file(path)
            self.files[path] = (mode, action.oid)
        elif kind == Header.MOVE:
            mode, oid = self.file(action.previous_path)
            self.remove(action.previous_path)
            self.create(path, mode, action.oid or oid)
        elif kind == Header.DELETE:
            if path in self.files:
                self.remove(path)
            elif self.is_dir(path):
                self.remove_dir(path)
            else:
                raise NotFound(FILE_NOT_FOUND)
        elif kind == Header.CHMOD:
            mode, oid = self.file(path)
            if mode in (_REGULAR, _EXECUTABLE):
                mode = _EXECUTABLE if action.header.execute_filemode else _REGULAR
            self.files[path] = (mode, oid)

    def index_info(self) -> bytes:
        """update-index -z --index-info input: removals first, then additions."""
        lines: list[bytes] = []
        for path in self.original:
            if path not in self.files:
                lines.append(f"0 {ZERO_OID}\t{path}\x00".encode(errors="surrogateescape"))
        for path, (mode, oid) in self.files.items():
            if self.original.get(path) != (mode, oid):
                lines.append(f"{mode} {oid}\t{path}\x00".encode(errors="surrogateescape"))
        return b"".join(lines)


async def _git(
    repo: RepoPath, args: list[str], env: dict[str, str] | None = None, input: bytes | None = None
) -> bytes:
    result = await git.run(
        args, git_dir=repo.path, env={**repo.git_env(), **(env or {})}, input=input
    )
    if not result.ok:
        text = result.stderr.decode(errors="replace").strip()
        raise Internal(f"git {args[0]} failed: {text}")
    return result.stdout


async def _list_files(repo: RepoPath, commit: str | None) -> dict[str, tuple[str, str]]:
    if commit is None:
        return {}
    out = await _git(repo, ["ls-tree", "-r", "-z", "--full-tree", commit])
    files: dict[str, tuple[str, str]] = {}
    for record in out.split(b"\x00"):
        if not record:
            continue
        meta, _, path = record.partition(b"\t")
        mode, _kind, oid = meta.decode().split(" ")
        files[path.decode("utf-8", errors="surrogateescape")] = (mode, oid)
    return files


async def _write_blobs(repo: RepoPath, actions: list[_Action], directory: Path) -> str:
    """Hash every spooled content into the object database; returns the empty blob id."""
    empty = directory / "empty"
    empty.touch()
    spools = [a for a in actions if a.spool is not None]
    paths = [str(empty)] + [str(a.spool) for a in spools]
    out = await _git(
        repo,
        ["hash-object", "-w", "--no-filters", "--stdin-paths"],
        input="".join(p + "\n" for p in paths).encode(),
    )
    oids = out.decode().split()
    if len(oids) != len(paths):
        raise Internal("hash-object returned an unexpected number of object ids")
    for action, oid in zip(spools, oids[1:], strict=True):
        action.oid = oid
    return oids[0]


def _is_hex_oid(value: str) -> bool:
    return len(value) == 40 and set(value) <= _HEX_OID


@dataclass(frozen=True)
class _Plan:
    """Where the branch is and which commit the new one builds on."""

    ref: str
    target: str | None
    parent: str | None


async def _resolve_commit(node: NodeContext, repo: RepoPath, revision: str) -> str | None:
    info = await resolve(node.catfile, repo, f"{revision}^{{commit}}".encode())
    return info.oid if info is not None else None


async def _has_branches(repo: RepoPath) -> bool:
    out = await _git(repo, ["for-each-ref", "--count=1", "--format=%(refname)", "refs/heads/"])
    return bool(out.strip())


def _check_start_repository(
    node: NodeContext, header: operations_pb2.UserCommitFilesRequestHeader, repo: RepoPath
) -> None:
    if not header.HasField("start_repository"):
        return
    start = header.start_repository
    if (start.storage_name, start.relative_path) == (
        header.repository.storage_name,
        header.repository.relative_path,
    ):
        return
    # Behind a proxy the start repository keeps its virtual address, which this
    # node does not know: it can only mean the target repository itself.
    try:
        located = node.locator.locate(start)
    except InvalidArgument:
        return
    if is_repository(located.path) and located.path != repo.path:
        raise Unimplemented("a start repository other than the target is not supported")


def _utf8(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"invalid {what}: not UTF-8") from exc


async def _plan(
    node: NodeContext, repo: RepoPath, header: operations_pb2.UserCommitFilesRequestHeader
) -> _Plan:
    branch = _utf8(header.branch_name, "branch name")
    ref = f"refs/heads/{branch}"
    try:
        await check_refname(repo, ref)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid branch name: {branch!r}") from exc
    target = await _resolve_commit(node, repo, ref)
    if header.start_sha:
        parent = await _resolve_commit(node, repo, header.start_sha)
        if parent is None:
            raise FailedPrecondition(f"revspec '{header.start_sha}' not found")
        return _Plan(ref, target, parent)
    if not header.start_branch_name:
        return _Plan(ref, target, target)
    if not await _has_branches(repo):
        # Gitaly's rule: with no branches at all the start branch cannot exist
        # yet, and the commit becomes the repository's first.
        return _Plan(ref, target, target)
    start = _utf8(header.start_branch_name, "start branch name")
    parent = await _resolve_commit(node, repo, f"refs/heads/{start}")
    if parent is None:
        raise FailedPrecondition(f"revspec 'refs/heads/{start}' not found")
    return _Plan(ref, target, parent)


def _validate_header(header: operations_pb2.UserCommitFilesRequestHeader) -> None:
    if not header.HasField("user"):
        raise InvalidArgument("empty User")
    if not header.commit_message:
        raise InvalidArgument("empty CommitMessage")
    if not header.branch_name:
        raise InvalidArgument("empty BranchName")
    if header.start_sha and not _is_hex_oid(header.start_sha):
        raise InvalidArgument(f"invalid object ID: {header.start_sha!r}")
    if header.expected_old_oid and not _is_hex_oid(header.expected_old_oid):
        raise InvalidArgument(f"invalid expected old object ID: {header.expected_old_oid!r}")


def _commit_env(header: operations_pb2.UserCommitFilesRequestHeader) -> dict[str, str]:
    committer_name = check_identity(header.user.name, "committer name")
    committer_email = check_identity(header.user.email, "committer email")
    author_name = committer_name
    author_email = committer_email
    if header.commit_author_name.strip():
        author_name = check_identity(header.commit_author_name, "author name")
    if header.commit_author_email.strip():
        author_email = check_identity(header.commit_author_email, "author email")
    seconds, offset = signature_time(
        header.timestamp if header.HasField("timestamp") else None, header.user, time.time()
    )
    date = f"{seconds} {offset}"
    return {
        "GIT_AUTHOR_NAME": author_name,
        "GIT_AUTHOR_EMAIL": author_email,
        "GIT_AUTHOR_DATE": date,
        "GIT_COMMITTER_NAME": committer_name,
        "GIT_COMMITTER_EMAIL": committer_email,
        "GIT_COMMITTER_DATE": date,
    }


async def _write_commit(
    repo: RepoPath,
    header: operations_pb2.UserCommitFilesRequestHeader,
    parent: str | None,
    tree: _Tree,
    directory: Path,
) -> str:
    index_env = {"GIT_INDEX_FILE": str(directory / "index")}
    await _git(repo, ["read-tree", parent or "--empty"], env=index_env)
    changes = tree.index_info()
    if changes:
        await _git(repo, ["update-index", "-z", "--index-info"], env=index_env, input=changes)
    tree_oid = (await _git(repo, ["write-tree"], env=index_env)).decode().strip()
    args = ["commit-tree", tree_oid]
    if parent is not None:
        args += ["-p", parent]
    env = _commit_env(header)
    result = await git.run(
        args, git_dir=repo.path, env={**repo.git_env(), **env}, input=header.commit_message
    )
    if not result.ok:
        text = result.stderr.decode(errors="replace").strip()
        if "disallowed characters" in text:
            raise InvalidArgument(f"commit: failed to parse signature - {text}")
        raise Internal(f"git commit-tree failed: {text}")
    return result.stdout.decode().strip()


async def commit_files(
    node: NodeContext,
    requests: AsyncIterator[operations_pb2.UserCommitFilesRequest],
    tx: Transaction | None,
) -> operations_pb2.UserCommitFilesResponse:
    first = await anext(requests, None)
    if first is None or first.WhichOneof("user_commit_files_request_payload") != "header":
        raise InvalidArgument("empty UserCommitFilesRequestHeader")
    header = first.header
    repo = node.locator.repository(header.repository)
    _validate_header(header)
    # Identity and date problems are the caller's; report them before any work.
    _commit_env(header)
    _check_start_repository(node, header, repo)
    plan = await _plan(node, repo, header)
    directory = Path(
        tempfile.mkdtemp(prefix="commit-files-", dir=node.locator.internal_dir(repo.storage, "tmp"))
    )
    try:
        actions = await _receive_actions(requests, directory)
        empty_blob = await _write_blobs(repo, actions, directory)
        tree = _Tree(await _list_files(repo, plan.parent))
        for action in actions:
            tree.apply(action, empty_blob)
        commit = await _write_commit(repo, header, plan.parent, tree, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    repo_created = not await _has_branches(repo)
    if header.expected_old_oid:
        old_info = await resolve(
            node.catfile, repo, f"{header.expected_old_oid}^{{object}}".encode()
        )
        if old_info is None:
            raise InvalidArgument(
                f"cannot resolve expected old object ID: {header.expected_old_oid}"
            )
        old = old_info.oid
    elif plan.target is None:
        old = ZERO_OID
    elif header.force:
        old = plan.target
    else:
        # Without force the branch must still be where the new commit's parent is.
        old = plan.parent or ZERO_OID
    try:
        await update_refs(
            repo, header.repository, [RefUpdate(plan.ref, commit, old)], node.voting, tx
        )
    except RefUpdateError as exc:
        raise FailedPrecondition(
            f"Could not update {plan.ref}. Please refresh and try again."
        ) from exc
    return operations_pb2.UserCommitFilesResponse(
        branch_update=operations_pb2.OperationBranchUpdate(
            commit_id=commit, repo_created=repo_created, branch_created=old == ZERO_OID
        )
    )
