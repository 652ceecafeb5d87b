"""CommitService: commit and tree queries, with Gitaly's semantics.

Objects are read through the node's shared ``cat-file`` processes; git is
spawned only for walks (``rev-list``, ``merge-base``, recursive ``ls-tree``).

Error mapping (beyond the locator's: bad address -> INVALID_ARGUMENT, missing
repository -> NOT_FOUND, invalid repository -> FAILED_PRECONDITION):

* FindCommit: empty revision, or one starting with '-' or holding whitespace,
  NUL, ':' or '\\' -> INVALID_ARGUMENT; unknown revision -> OK, empty response.
* ListCommits: no revisions, or one starting with '-' other than ``--all`` /
  ``--not`` -> INVALID_ARGUMENT; a revision git cannot resolve ->
  INVALID_ARGUMENT (Gitaly answers INTERNAL here).
* CommitIsAncestor: empty ids or ids starting with '-' -> INVALID_ARGUMENT;
  unknown revisions -> OK, false.
* CountCommits: no revision and not ``all`` -> INVALID_ARGUMENT; git failing
  (unknown revision, say) -> OK, count 0, as in Gitaly.
* TreeEntry: bad revision, empty path, negative limit or max_size ->
  INVALID_ARGUMENT; nothing at the path -> NOT_FOUND "tree entry not found";
  a blob larger than max_size -> FAILED_PRECONDITION.
* GetTreeEntries: see ``GetTreeEntries``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator, Sequence
from typing import cast

import grpc

from gitquorum.errors import FailedPrecondition, InvalidArgument, NotFound
from gitquorum.gitaly import commit_pb2, commit_pb2_grpc, shared_pb2
from gitquorum.storage import git, gitobjects
from gitquorum.storage.catfile import ObjectInfo, ObjectNotFound
from gitquorum.storage.context import NodeContext
from gitquorum.storage.gitobjects import TreeItem
from gitquorum.storage.locator import RepoPath

# Commits read per cat-file hold (and per ListCommits message: at most ~1 MiB of bodies).
COMMITS_PER_MESSAGE = 100
TREE_ENTRIES_PER_MESSAGE = 1000
# TreeEntry keeps blobs up to this size whole when a ref names their commit.
KEPT_BLOB_SIZE = 4096
# Gitaly follows single-subtree chains this many levels deep for flat paths.
FLAT_PATH_DEPTH = 10

_TREE_ENTRY_TYPES = {
    "blob": commit_pb2.TreeEntry.BLOB,
    "tree": commit_pb2.TreeEntry.TREE,
    "commit": commit_pb2.TreeEntry.COMMIT,
}
# TREES_FIRST order: trees, then blobs, then submodules.
_KIND_ORDER = {"tree": 0, "blob": 1, "commit": 2}
_ORDER_FLAGS = {
    commit_pb2.ListCommitsRequest.NONE: [],
    commit_pb2.ListCommitsRequest.TOPO: ["--topo-order"],
    commit_pb2.ListCommitsRequest.DATE: ["--date-order"],
}


def _arg(value: bytes) -> str:
    # Command-line arguments round-trip arbitrary bytes this way.
    return value.decode(errors="surrogateescape")


def _encode_page_token(path: bytes) -> str:
    data = json.dumps({"file_name": _arg(path)}, ensure_ascii=False, separators=(",", ":"))
    return base64.b64encode(data.encode("utf-8", errors="surrogateescape")).decode()


def _decode_page_token(token: str) -> tuple[bytes, bool]:
    """(continuation point, is_path); tokens that are not base64 JSON are legacy object ids."""
    try:
        decoded = json.loads(
            base64.b64decode(token, validate=True).decode("utf-8", "surrogateescape")
        )
        name = decoded["file_name"]
        if isinstance(name, str):
            return name.encode("utf-8", errors="surrogateescape"), True
    except (binascii.Error, ValueError, TypeError, KeyError):
        pass
    return token.encode(errors="surrogateescape"), False


def _check_size(info: ObjectInfo, max_size: int) -> None:
    if max_size > 0 and info.size > max_size:
        raise FailedPrecondition(
            f"object size ({info.size}) is bigger than the maximum allowed size ({max_size})"
        )


def _blob_messages(
    info: ObjectInfo, mode: int, chunks: AsyncIterator[bytes]
) -> AsyncIterator[commit_pb2.TreeEntryResponse]:
    """TreeEntry's answer for a blob: the header in the first message, data in chunks."""
    first = commit_pb2.TreeEntryResponse(
        type=commit_pb2.TreeEntryResponse.BLOB, oid=info.oid, size=info.size, mode=mode
    )
    return gitobjects.data_messages(first, chunks, commit_pb2.TreeEntryResponse)


class CommitService(commit_pb2_grpc.CommitServiceServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node

    async def ListCommits(
        self, request: commit_pb2.ListCommitsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[commit_pb2.ListCommitsResponse]:
        repo = self.node.locator.repository(request.repository)
        if not request.revisions:
            raise InvalidArgument("missing revisions")
        for revision in request.revisions:
            if revision.startswith("-") and revision not in ("--all", "--not"):
                raise InvalidArgument(f"invalid revision: {revision!r}")
            if not revision or "\x00" in revision or "\n" in revision:
                raise InvalidArgument(f"invalid revision: {revision!r}")
        args = ["rev-list", *_ORDER_FLAGS.get(request.order, [])]
        if request.reverse:
            args.append("--reverse")
        if request.max_parents > 0:
            args.append(f"--max-parents={request.max_parents}")
        if request.disable_walk:
            args.append("--no-walk")
        if request.first_parent:
            args.append("--first-parent")
        if request.HasField("before"):
            args.append(f"--before=@{request.before.seconds}")
        if request.HasField("after"):
            args.append(f"--after=@{request.after.seconds}")
        if request.author:
            args.append("--author=" + _arg(request.author))
        if request.ignore_case:
            args.append("--regexp-ignore-case")
        for pattern in request.commit_message_patterns:
            args.append("--grep=" + _arg(pattern))
        if request.skip > 0:
            args.append(f"--skip={request.skip}")
        args += list(request.revisions)
        args += ["--", *(_arg(p) for p in request.paths)]

        token = request.pagination_params.page_token
        limit = request.pagination_params.limit
        seen_token = not token
        sent = 0
        pending: list[bytes] = []
        code = 0
        stderr = b""
        async with git.started(args, git_dir=repo.path, env=repo.git_env()) as process:
            while True:
                line = await process.stdout.readline()
                if not line:
                    # Only a walk that ran to its end has an exit status worth reading;
                    # one cut short by the page limit is killed on leaving the block.
                    stderr = await process.stderr.read()
                    code = await process.wait()
                    break
                oid = line.strip()
                if not seen_token:
                    # Everything up to and including the token was on earlier pages.
                    seen_token = oid.decode(errors="replace") == token
                    continue
                if limit > 0 and sent >= limit:
                    break
                pending.append(oid)
                sent += 1
                if len(pending) >= COMMITS_PER_MESSAGE:
                    yield await self._commits(repo, pending)
                    pending = []
        if code != 0:
            text = stderr.decode(errors="replace").strip().removeprefix("fatal: ")
            raise InvalidArgument(f"invalid revision: {text}")
        if pending:
            yield await self._commits(repo, pending)

    async def _commits(
        self, repo: RepoPath, oids: Sequence[bytes]
    ) -> commit_pb2.ListCommitsResponse:
        commits = await gitobjects.read_commits(self.node.catfile, repo, oids)
        return commit_pb2.ListCommitsResponse(commits=[c for c in commits if c is not None])

    async def CommitIsAncestor(
        self, request: commit_pb2.CommitIsAncestorRequest, context: grpc.aio.ServicerContext
    ) -> commit_pb2.CommitIsAncestorResponse:
        repo = self.node.locator.repository(request.repository)
        if not request.ancestor_id:
            raise InvalidArgument("empty ancestor sha")
        if not request.child_id:
            raise InvalidArgument("empty child sha")
        for revision in (request.ancestor_id, request.child_id):
            if revision.startswith("-") or "\x00" in revision:
                raise InvalidArgument(f"invalid revision: {revision!r}")
        result = await git.run(
            ["merge-base", "--is-ancestor", request.ancestor_id, request.child_id],
            git_dir=repo.path,
            env=repo.git_env(),
        )
        # Exit 1 is "not an ancestor"; anything else (unknown revisions) is also false.
        return commit_pb2.CommitIsAncestorResponse(value=result.returncode == 0)

    async def TreeEntry(
        self, request: commit_pb2.TreeEntryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[commit_pb2.TreeEntryResponse]:
        repo = self.node.locator.repository(request.repository)
        gitobjects.validate_revision(request.revision)
        if not request.path:
            raise InvalidArgument("empty Path")
        if request.limit < 0:
            raise InvalidArgument("negative Limit")
        if request.max_size < 0:
            raise InvalidArgument("negative MaxSize")
        entry, reachable = await self._find_entry(repo, request.revision, request.path)
        if entry is None:
            raise NotFound("tree entry not found")
        if entry.kind == "commit":
            yield commit_pb2.TreeEntryResponse(
                type=commit_pb2.TreeEntryResponse.COMMIT, oid=entry.oid, mode=entry.mode
            )
            return
        if entry.kind == "tree":
            try:
                info = await self.node.catfile.info(repo, entry.oid.encode())
            except ObjectNotFound as exc:
                raise NotFound("tree entry not found") from exc
            yield commit_pb2.TreeEntryResponse(
                type=commit_pb2.TreeEntryResponse.TREE,
                oid=entry.oid,
                size=info.size,
                mode=entry.mode,
            )
            return
        limit = request.limit if request.limit > 0 else -1
        # Small blobs of a commit a ref names are kept whole (storage/commitcache.py).
        key = ("blob", repo.path, entry.oid)
        kept = self.node.reachable.get(key) if reachable else None
        if kept is not None:
            info, data = kept
            _check_size(info, request.max_size)
            chunks = gitobjects.chunked(data if limit < 0 else data[:limit])
            async for message in _blob_messages(info, entry.mode, chunks):
                yield message
            return
        if request.max_size > 0:
            # Judged from the header alone, before the blob is read: once its
            # body is under way, a refusal would read (or break off) all of it.
            try:
                info = await self.node.catfile.info(repo, entry.oid.encode())
            except ObjectNotFound as exc:
                raise NotFound("tree entry not found") from exc
            _check_size(info, request.max_size)
        # Without max_size, the blob's header tells its size: no separate
        # batch-check round trip.
        async with gitobjects.open_blob(self.node.catfile, repo, entry.oid.encode(), limit) as blob:
            if blob is None:
                raise NotFound("tree entry not found")
            _check_size(blob.info, request.max_size)
            keep = reachable and limit < 0 and blob.info.size <= KEPT_BLOB_SIZE
            parts: list[bytes] = []
            async for message in _blob_messages(blob.info, entry.mode, blob.chunks):
                if keep:
                    parts.append(message.data)
                yield message
        if keep:
            self.node.reachable.put(key, (blob.info, b"".join(parts)))

    async def _find_entry(
        self, repo: RepoPath, revision: bytes, path: bytes
    ) -> tuple[TreeItem | None, bool]:
        """``gitobjects.find_entry``, and whether it was reached through a ref
        (then it is kept per object)."""
        answers = self.node.reachable
        oid = None if repo.env else answers.target(repo.path, revision)
        key = ("entry", repo.path, oid, path)
        if oid is not None:
            known = answers.get(key)
            if known is not None:
                return cast(TreeItem, known), True
        async with self.node.catfile.batch(repo) as batch:
            entry = await gitobjects.find_entry(batch, revision if oid is None else oid, path)
        if entry is not None and oid is not None:
            answers.put(key, entry)
        return entry, oid is not None

    async def CountCommits(
        self, request: commit_pb2.CountCommitsRequest, context: grpc.aio.ServicerContext
    ) -> commit_pb2.CountCommitsResponse:
        repo = self.node.locator.repository(request.repository)
        gitobjects.validate_revision(request.revision, allow_empty=True)
        for revision in request.revisions:
            if not revision or revision.startswith(b"-") or b"\x00" in revision:
                raise InvalidArgument(f"invalid revision: {revision!r}")
        if not request.revision and not request.revisions and not request.all:
            raise InvalidArgument("empty Revision and false All")
        args = ["rev-list", "--count"]
        if request.all:
            args.append("--all")
        elif request.revisions:
            args += [_arg(r) for r in request.revisions]
        else:
            args.append(_arg(request.revision))
        if request.HasField("before"):
            args.append(f"--before=@{request.before.seconds}")
        if request.HasField("after"):
            args.append(f"--after=@{request.after.seconds}")
        if request.max_count:
            args.append(f"--max-count={request.max_count}")
        if request.first_parent:
            args.append("--first-parent")
        if request.path:
            args += ["--", _arg(request.path)]
        env = repo.git_env()
        if request.global_options.literal_pathspecs:
            env["GIT_LITERAL_PATHSPECS"] = "1"
        result = await git.run(args, git_dir=repo.path, env=env)
        if not result.ok:
            return commit_pb2.CountCommitsResponse(count=0)
        try:
            count = int(result.stdout.strip() or b"0")
        except ValueError:
            count = 0
        return commit_pb2.CountCommitsResponse(count=min(count, 2**31 - 1))

    async def GetTreeEntries(
        self, request: commit_pb2.GetTreeEntriesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[commit_pb2.GetTreeEntriesResponse]:
        """List a tree the way Gitaly 16 does.

        * Empty path -> INVALID_ARGUMENT "empty path"; a bad revision ->
          INVALID_ARGUMENT with ``validate_revision``'s message; "." is the root.
        * A revision or path that does not exist -> INVALID_ARGUMENT "invalid
          revision or path" (Gitaly's code, not NOT_FOUND); a path that names a
          blob or submodule -> OK with no entries.
        * Paths are relative to the repository root; ``commit_oid`` carries the
          requested revision as given, as Gitaly does.
        * Non-recursive listings get ``flat_path``: a subtree whose only entry is
          a subtree is followed (up to 10 levels), unless ``skip_flat_paths``.
        * Recursive listings include the subtrees themselves (``ls-tree -r -t``).
        * Sorting (TREES_FIRST: trees, blobs, submodules; stable) happens before
          pagination. The page token is base64 JSON ``{"file_name": <path>}``
          (legacy tokens holding an object id are accepted too); an unknown token
          -> INVALID_ARGUMENT "could not find starting OID" (Gitaly: INTERNAL).
          The next cursor travels in the first message only.
        """
        repo = self.node.locator.repository(request.repository)
        gitobjects.validate_revision(request.revision)
        if not request.path:
            raise InvalidArgument("empty path")
        path = gitobjects.normalize_path(request.path)
        revision = request.revision
        if path is None:
            raise InvalidArgument("invalid revision or path")
        name = revision + b":" + path
        if not gitobjects.safe_object_name(name):
            raise InvalidArgument("invalid revision or path")
        try:
            info = await self.node.catfile.info(repo, name)
        except ObjectNotFound as exc:
            raise InvalidArgument("invalid revision or path") from exc
        if info.type != "tree":
            return
        if request.recursive:
            items = await self._ls_tree(repo, info.oid, path)
        else:
            async with self.node.catfile.batch(repo) as batch:
                tree = await gitobjects.read_tree(batch, info.oid.encode(), b"")
            items = [
                TreeItem(i.mode, (path + b"/" if path else b"") + i.path, i.oid) for i in tree or []
            ]
        if request.sort == commit_pb2.GetTreeEntriesRequest.TREES_FIRST:
            items.sort(key=lambda item: _KIND_ORDER[item.kind])

        cursor = ""
        if request.HasField("pagination_params"):
            items, cursor = self._paginate(items, request.pagination_params)

        flat_paths: dict[bytes, bytes] = {}
        if not request.recursive and not request.skip_flat_paths:
            flat_paths = await self._flat_paths(repo, items)

        revision_text = revision.decode(errors="replace")
        response = commit_pb2.GetTreeEntriesResponse()
        if cursor:
            response.pagination_cursor.next_cursor = cursor
        for item in items:
            entry = response.entries.add(
                oid=item.oid,
                path=item.path,
                type=_TREE_ENTRY_TYPES[item.kind],
                mode=item.mode,
                commit_oid=revision_text,
            )
            if not request.recursive and not request.skip_flat_paths:
                entry.flat_path = flat_paths.get(item.path, item.path)
            if len(response.entries) >= TREE_ENTRIES_PER_MESSAGE:
                yield response
                response = commit_pb2.GetTreeEntriesResponse()
        if response.entries:
            yield response

    async def _ls_tree(self, repo: RepoPath, tree_oid: str, prefix: bytes) -> list[TreeItem]:
        result = await git.run(
            ["ls-tree", "-z", "-r", "-t", tree_oid], git_dir=repo.path, env=repo.git_env()
        )
        if not result.ok:
            raise InvalidArgument("invalid revision or path")
        lead = prefix + b"/" if prefix else b""
        items: list[TreeItem] = []
        for record in result.stdout.split(b"\x00"):
            if not record:
                continue
            meta, _tab, name = record.partition(b"\t")
            mode, _kind, oid = meta.split(b" ")
            items.append(TreeItem(int(mode, 8), lead + name, oid.decode()))
        return items

    @staticmethod
    def _paginate(
        items: list[TreeItem], params: shared_pb2.PaginationParameter
    ) -> tuple[list[TreeItem], str]:
        start = 0
        if params.page_token:
            point, is_path = _decode_page_token(params.page_token)
            for index, item in enumerate(items):
                if (item.path if is_path else item.oid.encode()) == point:
                    start = index + 1
                    break
            else:
                raise InvalidArgument(f"could not find starting OID: {params.page_token}")
        if params.limit == 0:
            return [], ""
        if params.limit < 0 or start + params.limit >= len(items):
            return items[start:], ""
        page = items[start : start + params.limit]
        return page, _encode_page_token(page[-1].path)

    async def _flat_paths(self, repo: RepoPath, items: Sequence[TreeItem]) -> dict[bytes, bytes]:
        """path -> flat path for every subtree entry (chains of single-subtree trees collapsed)."""
        flat: dict[bytes, bytes] = {}
        async with self.node.catfile.batch(repo) as batch:
            for item in items:
                if item.kind != "tree":
                    continue
                current_path, current_oid = item.path, item.oid
                for _ in range(1, FLAT_PATH_DEPTH):
                    children = await gitobjects.read_tree(batch, current_oid.encode(), b"")
                    if not children or len(children) != 1 or children[0].kind != "tree":
                        break
                    current_path = current_path + b"/" + children[0].path
                    current_oid = children[0].oid
                flat[item.path] = current_path
        return flat

    async def FindCommit(
        self, request: commit_pb2.FindCommitRequest, context: grpc.aio.ServicerContext
    ) -> commit_pb2.FindCommitResponse:
        repo = self.node.locator.repository(request.repository)
        gitobjects.validate_revision(request.revision)
        answers = self.node.reachable
        # The object a plain ref name points to, read from the files: its
        # answer never changes (see storage/commitcache.py).
        oid = None if repo.env else answers.target(repo.path, request.revision)
        key = ("commit", repo.path, oid, request.trailers)
        if oid is not None:
            known = answers.get(key)
            if known is not None:
                return cast(commit_pb2.FindCommitResponse, known)
        async with self.node.catfile.batch(repo) as batch:
            commit = await gitobjects.read_commit(
                batch, request.revision if oid is None else oid, trailers=request.trailers
            )
        if commit is None:
            return commit_pb2.FindCommitResponse()
        response = commit_pb2.FindCommitResponse(commit=commit)
        if oid is not None:
            answers.put(key, response)
        return response
