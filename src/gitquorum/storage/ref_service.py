"""RefService: reference queries and updates, with Gitaly's semantics.

Error mapping (beyond the locator's: bad address -> INVALID_ARGUMENT, missing
repository -> NOT_FOUND, invalid repository -> FAILED_PRECONDITION):

* RefExists: a ref outside ``refs/`` -> INVALID_ARGUMENT "invalid refname".
* FindBranch: empty name -> INVALID_ARGUMENT; unknown branch -> OK, empty response.
* FindLocalBranches / ListRefs: a page token that matches no ref ->
  INVALID_ARGUMENT "could not find page token"; unknown sort key or direction,
  or a malformed ``pointing_at_oids`` entry -> INVALID_ARGUMENT.
* UpdateReferences: no messages, a message without updates, the repository
  repeated in a later message, a malformed reference or object id, or one
  reference twice -> INVALID_ARGUMENT; an old value that no longer matches ->
  FAILED_PRECONDITION; a new object that does not exist -> NOT_FOUND; a
  reference locked by someone else -> ABORTED; a lost vote -> ABORTED.
* DeleteRefs: both or neither of ``refs`` and ``except_with_prefix``, or an
  empty entry -> INVALID_ARGUMENT; malformed names -> INVALID_ARGUMENT
  "invalid references"; a locked reference -> FAILED_PRECONDITION "cannot lock
  references"; refs that do not exist are ignored.

ListRefs with no patterns lists everything under ``refs/`` (Gitaly itself
insists on at least one pattern).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from gitquorum.errors import FailedPrecondition, InvalidArgument, NotFound
from gitquorum.gitaly import ref_pb2, ref_pb2_grpc, shared_pb2
from gitquorum.storage import gitobjects, refs
from gitquorum.storage.catfile import ObjectNotFound
from gitquorum.storage.context import NodeContext
from gitquorum.storage.locator import RepoPath
from gitquorum.storage.refread import Unsure
from gitquorum.storage.refupdate import (
    ZERO_OID,
    RefLockedError,
    RefUpdate,
    RefUpdateError,
    current_values,
    update_refs,
)
from gitquorum.storage.voting import vote_hash
from gitquorum.wire.transaction_metadata import COMMITTED, PREPARED, transaction_from_metadata

# References per ListRefs message, and branches (each with a commit) per FindLocalBranches message.
REFS_PER_MESSAGE = 1000
BRANCHES_PER_MESSAGE = 100

_LOCAL_BRANCH_SORT = {
    ref_pb2.FindLocalBranchesRequest.NAME: "refname",
    ref_pb2.FindLocalBranchesRequest.UPDATED_ASC: "committerdate",
    ref_pb2.FindLocalBranchesRequest.UPDATED_DESC: "-committerdate",
}
_LIST_REFS_KEYS = {
    ref_pb2.ListRefsRequest.SortBy.REFNAME: "refname",
    ref_pb2.ListRefsRequest.SortBy.CREATORDATE: "creatordate",
    ref_pb2.ListRefsRequest.SortBy.AUTHORDATE: "authordate",
    ref_pb2.ListRefsRequest.SortBy.COMMITTERDATE: "committerdate",
}
_DIRECTIONS = {shared_pb2.ASCENDING: "", shared_pb2.DESCENDING: "-"}


class _Page:
    """Gitaly's ref pagination: start after ``page_token`` (a refname), at most ``limit``.

    Without parameters everything is listed; a negative limit means no limit
    and a zero limit means nothing. A token that names no listed ref is an
    error, and so is a token with a zero limit (Gitaly never finds it).
    """

    def __init__(self, params: shared_pb2.PaginationParameter | None) -> None:
        self.limit: int | None = None
        self.token = ""
        if params is not None:
            self.token = params.page_token
            self.limit = None if params.limit < 0 else params.limit
        if self.token and self.limit == 0:
            raise InvalidArgument("could not find page token")
        self.started = not self.token
        self.taken = 0
        self.more = False

    @property
    def bounded(self) -> bool:
        return self.limit is not None

    def admit(self, name: bytes) -> bool | None:
        """True: send this ref. False: skip it. None: the page is full, stop."""
        if not self.started:
            if name.decode(errors="surrogateescape") == self.token:
                self.started = True
            return False
        if self.limit is not None and self.taken >= self.limit:
            self.more = True
            return None
        self.taken += 1
        return True

    def finish(self) -> None:
        if not self.started:
            raise InvalidArgument("could not find page token")


class RefService(ref_pb2_grpc.RefServiceServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node

    async def FindDefaultBranchName(
        self, request: ref_pb2.FindDefaultBranchNameRequest, context: grpc.aio.ServicerContext
    ) -> ref_pb2.FindDefaultBranchNameResponse:
        repo = self.node.locator.repository(request.repository)
        if request.head_only:
            name = refs.head_symref(repo) or ""
        else:
            name = await self._default_branch(repo)
        return ref_pb2.FindDefaultBranchNameResponse(name=name.encode(errors="surrogateescape"))

    async def FindLocalBranches(
        self, request: ref_pb2.FindLocalBranchesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ref_pb2.FindLocalBranchesResponse]:
        repo = self.node.locator.repository(request.repository)
        sort = _LOCAL_BRANCH_SORT.get(request.sort_by)
        if sort is None:
            raise InvalidArgument(f"unsupported sort key {request.sort_by}")
        page = _Page(request.pagination_params if request.HasField("pagination_params") else None)
        batch: list[tuple[bytes, bytes]] = []
        listing = refs.for_each_ref(repo, [b"refs/heads/"], ["refname", "objectname"], sort=sort)
        async with contextlib.aclosing(listing) as rows:
            async for fields in rows:
                admitted = page.admit(fields[0])
                if admitted is None:
                    break
                if not admitted:
                    continue
                batch.append((fields[0], fields[1]))
                if len(batch) >= BRANCHES_PER_MESSAGE:
                    yield await self._branches(repo, batch)
                    batch = []
        page.finish()
        if batch:
            yield await self._branches(repo, batch)

    async def _branches(
        self, repo: RepoPath, batch: list[tuple[bytes, bytes]]
    ) -> ref_pb2.FindLocalBranchesResponse:
        response = ref_pb2.FindLocalBranchesResponse()
        names = iter(name for name, _oid in batch)
        async with self.node.catfile.batch(repo) as process:
            # Each commit is parsed while git prepares the next ones.
            commits = gitobjects.each_commit_object(process, [oid for _name, oid in batch])
            async with contextlib.aclosing(commits) as found_each:
                async for found in found_each:
                    branch = response.local_branches.add(name=next(names))
                    if found is not None:
                        # Parsed in place: no commit message built only to be copied.
                        gitobjects.parse_commit(*found, into=branch.target_commit)
        return response

    async def RefExists(
        self, request: ref_pb2.RefExistsRequest, context: grpc.aio.ServicerContext
    ) -> ref_pb2.RefExistsResponse:
        repo = self.node.locator.repository(request.repository)
        if not request.ref.startswith(b"refs/") or b"\x00" in request.ref:
            raise InvalidArgument("invalid refname")
        if not refs.valid_refname(request.ref):
            # A name git could never store cannot exist.
            return ref_pb2.RefExistsResponse(value=False)
        exists = await self._resolves(repo, request.ref)
        if exists is None:
            exists = await refs.ref_exists(repo, request.ref)
        return ref_pb2.RefExistsResponse(value=exists)

    async def _resolves(self, repo: RepoPath, ref: bytes, *, to_object: bool = True) -> bool | None:
        """Whether a well-formed ``ref`` exists (and points to an object), read from the files.

        None when git must say: a symbolic ref, an unusual file, or, with
        ``to_object``, an object that is not there (``show-ref`` fails on it).
        """
        try:
            oid = self.node.packed_refs.resolve(repo.path, ref)
        except Unsure:
            return None
        if oid is None:
            return False
        if not to_object:
            return True
        # Found once, an object a ref points to stays (git prunes only unreachable ones).
        key = ("exists", repo.path, oid)
        if not repo.env and self.node.reachable.get(key):
            return True
        try:
            await self.node.catfile.info(repo, oid)
        except ObjectNotFound:
            return None
        if not repo.env:
            self.node.reachable.put(key, True)
        return True

    async def _default_branch(self, repo: RepoPath) -> str:
        """``refs.default_branch``, without listing branches when HEAD's branch exists.

        Whatever other branches there are, an existing HEAD branch is the
        answer ``refs.default_branch`` gives (the only branch, or HEAD's).
        Existing as ``for-each-ref --format=%(refname)`` lists it: whether
        its object is there does not matter.
        """
        head = refs.head_symref(repo)
        if head is not None and head.startswith(refs.HEADS):
            name = head.encode(errors="surrogateescape")
            if refs.valid_refname(name) and await self._resolves(repo, name, to_object=False):
                return head
        return await refs.default_branch(repo)

    async def FindBranch(
        self, request: ref_pb2.FindBranchRequest, context: grpc.aio.ServicerContext
    ) -> ref_pb2.FindBranchResponse:
        repo = self.node.locator.repository(request.repository)
        if not request.name:
            raise InvalidArgument("Branch name cannot be empty")
        ref = refs.branch_ref(request.name)
        if not refs.valid_refname(ref):
            return ref_pb2.FindBranchResponse()
        values = await current_values(repo, [ref.decode(errors="surrogateescape")])
        oid = values.get(ref.decode(errors="surrogateescape"))
        if oid is None:
            return ref_pb2.FindBranchResponse()
        async with self.node.catfile.batch(repo) as batch:
            commit = await gitobjects.read_commit(batch, oid.encode())
        branch = shared_pb2.Branch(name=ref[len(refs.HEADS) :])
        if commit is not None:
            branch.target_commit.CopyFrom(commit)
        return ref_pb2.FindBranchResponse(branch=branch)

    async def UpdateReferences(
        self,
        request_iterator: AsyncIterator[ref_pb2.UpdateReferencesRequest],
        context: grpc.aio.ServicerContext,
    ) -> ref_pb2.UpdateReferencesResponse:
        tx = transaction_from_metadata(context.invocation_metadata())
        repo: RepoPath | None = None
        repository: shared_pb2.Repository | None = None
        updates: list[RefUpdate] = []
        async for request in request_iterator:
            if repo is None:
                repository = request.repository
                repo = self.node.locator.repository(request.repository)
            elif request.HasField("repository"):
                raise InvalidArgument("repository set in subsequent request")
            if not request.updates:
                raise InvalidArgument("no updates specified")
            for update in request.updates:
                ref = refs.check_reference(update.reference)
                old: str | None = None
                if update.old_object_id:
                    if not gitobjects.is_object_id(update.old_object_id):
                        raise InvalidArgument(
                            f"validating old object ID: invalid object ID {update.old_object_id!r}"
                        )
                    old = update.old_object_id.decode()
                if not gitobjects.is_object_id(update.new_object_id):
                    raise InvalidArgument(
                        f"validating new object ID: invalid object ID {update.new_object_id!r}"
                    )
                updates.append(RefUpdate(ref, update.new_object_id.decode(), old))
        if repo is None or repository is None:
            raise InvalidArgument("empty request: no repository and no updates")
        try:
            await update_refs(repo, repository, updates, self.node.voting, tx)
        except RefUpdateError as exc:
            if "nonexistent object" in exc.message:
                raise NotFound(exc.message) from exc
            raise
        return ref_pb2.UpdateReferencesResponse()

    async def DeleteRefs(
        self, request: ref_pb2.DeleteRefsRequest, context: grpc.aio.ServicerContext
    ) -> ref_pb2.DeleteRefsResponse:
        tx = transaction_from_metadata(context.invocation_metadata())
        repo = self.node.locator.repository(request.repository)
        if request.refs and request.except_with_prefix:
            raise InvalidArgument("ExceptWithPrefix and Refs are mutually exclusive")
        if not request.refs and not request.except_with_prefix:
            raise InvalidArgument("empty ExceptWithPrefix and Refs")
        if any(not prefix for prefix in request.except_with_prefix):
            raise InvalidArgument("empty prefix for exclusion")
        if any(not ref for ref in request.refs):
            raise InvalidArgument("empty ref")
        invalid = [ref for ref in request.refs if not refs.valid_refname(ref)]
        if invalid:
            raise InvalidArgument(f"invalid references: {invalid!r}")

        if request.refs:
            decoded = (ref.decode(errors="surrogateescape") for ref in request.refs)
            names = list(dict.fromkeys(decoded))
            present = await current_values(repo, names)
            targets = [(name, present[name]) for name in names if name in present]
        else:
            prefixes = [p.decode(errors="surrogateescape") for p in request.except_with_prefix]
            existing = await refs.all_refs(repo)
            targets = [(n, oid) for n, oid in existing.items() if not n.startswith(tuple(prefixes))]

        if not targets:
            # Still vote, so every replica of a transaction casts the same number of votes.
            await self.node.voting.vote(tx, request.repository, vote_hash(b""), PREPARED)
            await self.node.voting.vote(tx, request.repository, vote_hash(b""), COMMITTED)
            return ref_pb2.DeleteRefsResponse()
        updates = [RefUpdate(name, ZERO_OID, oid) for name, oid in targets]
        try:
            await update_refs(repo, request.repository, updates, self.node.voting, tx)
        except RefLockedError as exc:
            raise FailedPrecondition(f"cannot lock references: {exc.ref}") from exc
        return ref_pb2.DeleteRefsResponse()

    async def ListRefs(
        self, request: ref_pb2.ListRefsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ref_pb2.ListRefsResponse]:
        repo = self.node.locator.repository(request.repository)
        sort = None
        if request.HasField("sort_by"):
            key = _LIST_REFS_KEYS.get(request.sort_by.key)
            direction = _DIRECTIONS.get(request.sort_by.direction)
            if key is None:
                raise InvalidArgument(f"sorting key {request.sort_by.key} is not supported")
            if direction is None:
                raise InvalidArgument("sorting direction is not supported")
            sort = direction + key
        patterns = list(request.patterns) or [b"refs/"]
        if any(not p or b"\x00" in p or p.startswith(b"-") for p in patterns):
            raise InvalidArgument("invalid pattern")
        for oid in request.pointing_at_oids:
            if not oid or b"\x00" in oid or oid.startswith(b"-"):
                raise InvalidArgument(f"invalid object id in pointing_at_oids: {oid!r}")
        fields = ["refname", "objectname"] + (["*objectname"] if request.peel_tags else [])
        page = _Page(request.pagination_params if request.HasField("pagination_params") else None)

        response = ref_pb2.ListRefsResponse()
        if request.head:
            head = await self._head_oid(repo)
            if head is not None:
                response.references.add(name=b"HEAD", target=head)
        # A bounded page is collected so its cursor can travel in the first message.
        pending: list[ref_pb2.ListRefsResponse] = []
        listing = refs.for_each_ref(
            repo, patterns, fields, sort=sort, points_at=list(request.pointing_at_oids)
        )
        async with contextlib.aclosing(listing) as rows:
            async for values in rows:
                admitted = page.admit(values[0])
                if admitted is None:
                    break
                if not admitted:
                    continue
                reference = response.references.add(name=values[0], target=values[1].decode())
                if request.peel_tags and len(values) > 2:
                    reference.peeled_target = values[2].decode()
                if len(response.references) >= REFS_PER_MESSAGE:
                    if page.bounded:
                        pending.append(response)
                    else:
                        yield response
                    response = ref_pb2.ListRefsResponse()
        page.finish()
        if not page.bounded:
            if response.references:
                yield response
            return
        if response.references:
            pending.append(response)
        if page.more and pending:
            last = pending[-1].references[-1].name
            pending[0].pagination_cursor.next_cursor = last.decode(errors="surrogateescape")
        for message in pending:
            yield message

    async def _head_oid(self, repo: RepoPath) -> str | None:
        try:
            info = await self.node.catfile.info(repo, b"HEAD")
        except ObjectNotFound:
            return None
        return info.oid
