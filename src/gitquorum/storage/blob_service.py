"""BlobService: blob reads through the node's shared cat-file processes, as Gitaly answers them.

* GetBlob: ``oid`` may be any revision naming an object. The first message
  carries ``size`` and ``oid``, data follows in chunks. ``limit`` < 0 sends the
  whole blob, ``limit`` >= 0 at most that many bytes (so 0, the default, sends
  none). An object that is missing or not a blob gives one empty message, OK.
  Empty ``oid`` -> INVALID_ARGUMENT.
* GetBlobs: for every ``(revision, path)``: one message with revision, path,
  oid, mode, type and size (submodules: ``is_submodule`` and type COMMIT, no
  size; trees: type TREE, no data), blob data following in chunks under the
  same ``limit`` rule. Nothing at the path -> a message with only revision and
  path. No revision_paths, or a revision Gitaly would reject ->
  INVALID_ARGUMENT.
"""

from __future__ import annotations

import posixpath
from collections.abc import AsyncIterator

import grpc

from gitquorum.errors import InvalidArgument
from gitquorum.gitaly import blob_pb2, blob_pb2_grpc, shared_pb2
from gitquorum.storage import gitobjects
from gitquorum.storage.catfile import ObjectNotFound
from gitquorum.storage.context import NodeContext
from gitquorum.storage.gitobjects import TreeItem
from gitquorum.storage.locator import RepoPath

_OBJECT_TYPES = {"blob": shared_pb2.BLOB, "tree": shared_pb2.TREE, "commit": shared_pb2.COMMIT}


class BlobService(blob_pb2_grpc.BlobServiceServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node

    async def GetBlob(
        self, request: blob_pb2.GetBlobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[blob_pb2.GetBlobResponse]:
        repo = self.node.locator.repository(request.repository)
        if not request.oid:
            raise InvalidArgument("empty Oid")
        name = request.oid.encode(errors="surrogateescape")
        async with gitobjects.open_blob(self.node.catfile, repo, name, request.limit) as blob:
            if blob is None:
                yield blob_pb2.GetBlobResponse()
                return
            first = blob_pb2.GetBlobResponse(size=blob.info.size, oid=blob.info.oid)
            async for message in gitobjects.data_messages(
                first, blob.chunks, blob_pb2.GetBlobResponse
            ):
                yield message

    async def GetBlobs(
        self, request: blob_pb2.GetBlobsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[blob_pb2.GetBlobsResponse]:
        repo = self.node.locator.repository(request.repository)
        if not request.revision_paths:
            raise InvalidArgument("empty RevisionPaths")
        for item in request.revision_paths:
            gitobjects.validate_revision(item.revision.encode(errors="surrogateescape"))
        # Parent trees already read in this request: many paths share a directory.
        trees: dict[tuple[bytes, bytes], list[TreeItem] | None] = {}
        for item in request.revision_paths:
            path = item.path.rstrip(b"/") if len(item.path) > 1 else item.path
            response = blob_pb2.GetBlobsResponse(revision=item.revision, path=path)
            entry = await self._find(
                repo, trees, item.revision.encode(errors="surrogateescape"), path
            )
            if entry is None:
                yield response
                continue
            response.oid = entry.oid
            response.mode = entry.mode
            response.type = _OBJECT_TYPES[entry.kind]  # type: ignore[assignment]
            if entry.kind == "commit":
                response.is_submodule = True
                yield response
                continue
            async for message in self._send_object(repo, response, request.limit):
                yield message

    async def _find(
        self,
        repo: RepoPath,
        trees: dict[tuple[bytes, bytes], list[TreeItem] | None],
        revision: bytes,
        path: bytes,
    ) -> TreeItem | None:
        normalized = gitobjects.normalize_path(path)
        if not normalized:
            return None
        parent = posixpath.dirname(normalized)
        key = (revision, parent)
        if key not in trees:
            async with self.node.catfile.batch(repo) as batch:
                trees[key] = await gitobjects.read_tree(batch, revision, parent)
        for entry in trees[key] or ():
            if entry.path == normalized:
                return entry
        return None

    async def _send_object(
        self, repo: RepoPath, response: blob_pb2.GetBlobsResponse, limit: int
    ) -> AsyncIterator[blob_pb2.GetBlobsResponse]:
        try:
            info = await self.node.catfile.info(repo, response.oid.encode())
        except ObjectNotFound:
            # A tree entry whose object is missing: report what the tree says.
            yield response
            return
        response.size = info.size
        wanted = info.size if limit < 0 or limit > info.size else limit
        if response.type != shared_pb2.BLOB or wanted == 0:
            yield response
            return
        async with gitobjects.open_blob(self.node.catfile, repo, info.oid.encode(), wanted) as blob:
            if blob is None:
                yield response
                return
            async for message in gitobjects.data_messages(
                response, blob.chunks, blob_pb2.GetBlobsResponse
            ):
                yield message
