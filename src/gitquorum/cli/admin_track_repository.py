"""``gitquorum track-repository``: adopt a repository that is on a node's disk but not in etcd.

Replicas live at paths derived from repository ids (``@cluster/repositories/...``),
so an untracked repository (restored from a backup, copied in by hand, left
by a node that was down during a removal) cannot simply be recorded where it
lies. Tracking therefore copies it in through the front door:

1. check that the relative path is free in etcd and that ``NODE`` (the
   authoritative storage) holds a repository at that path on its disk;
2. stream ``CreateBundle`` of that repository, straight from the node, into
   ``CreateRepositoryFromBundle`` on a proxy for the same relative path: the
   proxy reserves an id, creates every assigned replica with a transaction
   and records the repository, exactly like a client-created one (an empty
   repository is created with ``CreateRepository`` and its default branch);
3. compare ``CalculateChecksum`` of the original (on the node) with the new
   repository's (through the proxy): refs and their targets must be equal;
4. make ``NODE`` the primary when it holds an assigned replica;
5. with ``--remove-original``, remove the original directory from the node.

A bundle carries every ref and the objects they reach; unreachable objects,
hooks and local configuration of the original are not carried over.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any

import grpc

from gitquorum.cli import admin_common as common
from gitquorum.cli.admin_switchover import move_primary
from gitquorum.cli.admin_view import read_view
from gitquorum.cli.progress import Progress
from gitquorum.cluster.repositories import RepositoryStore
from gitquorum.gitaly import ref_pb2, ref_pb2_grpc, repository_pb2, repository_pb2_grpc, shared_pb2

REPLICA_ROOT = "@cluster/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, proxy=True)
    common.add_repository_argument(parser, many=True)
    parser.add_argument(
        "--authoritative-storage",
        required=True,
        metavar="NODE",
        help="the node whose disk holds the repository at that relative path",
    )
    parser.add_argument(
        "--remove-original",
        action="store_true",
        help="remove the untracked original from the node once the copy is verified",
    )


# Read this much of the bundle before opening the creation on the proxy: git
# writes a bundle's header before it finds that there is nothing to bundle.
PREFETCH = 1 << 20


class BundleSource:
    """``CreateBundle`` from the node, with the first part read ahead."""

    def __init__(self, stream: AsyncIterator[repository_pb2.CreateBundleResponse]) -> None:
        self._iterator = stream.__aiter__()
        self.head: list[bytes] = []
        self.ended = False
        self.error: grpc.aio.AioRpcError | None = None

    async def prefetch(self) -> None:
        """Read up to PREFETCH bytes; raises the node's error if it comes that early."""
        size = 0
        while size < PREFETCH:
            try:
                chunk = await self._iterator.__anext__()
            except StopAsyncIteration:
                self.ended = True
                return
            self.head.append(chunk.data)
            size += len(chunk.data)

    async def requests(
        self, target: shared_pb2.Repository
    ) -> AsyncIterator[repository_pb2.CreateRepositoryFromBundleRequest]:
        first = True
        for data in self.head:
            yield repository_pb2.CreateRepositoryFromBundleRequest(
                repository=target if first else None, data=data
            )
            first = False
        if self.ended:
            return
        try:
            async for chunk in self._iterator:
                yield repository_pb2.CreateRepositoryFromBundleRequest(data=chunk.data)
        except grpc.aio.AioRpcError as exc:
            # End the upload short: the proxy refuses a truncated bundle and
            # records nothing; the node's error is reported afterwards.
            self.error = exc


async def copy_through_proxy(
    admin: common.Admin, original: shared_pb2.Repository, target: shared_pb2.Repository
) -> str:
    """Create ``target`` through a proxy with the content of ``original``; returns how."""
    node_channel = admin.node_channels().channel(original.storage_name)
    proxy_stub = repository_pb2_grpc.RepositoryServiceStub(await admin.proxy())
    source = BundleSource(
        repository_pb2_grpc.RepositoryServiceStub(node_channel).CreateBundle(
            repository_pb2.CreateBundleRequest(repository=original),
            metadata=admin.node_metadata(),
        )
    )
    try:
        await source.prefetch()
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not grpc.StatusCode.FAILED_PRECONDITION or "empty" not in (
            exc.details() or ""
        ):
            raise
        # No refs, so no bundle: an empty repository with the same default branch.
        head = await ref_pb2_grpc.RefServiceStub(node_channel).FindDefaultBranchName(
            ref_pb2.FindDefaultBranchNameRequest(repository=original, head_only=True),
            metadata=admin.node_metadata(),
            timeout=admin.timeout,
        )
        await proxy_stub.CreateRepository(
            repository_pb2.CreateRepositoryRequest(repository=target, default_branch=head.name),
            metadata=admin.proxy_metadata(),
            timeout=admin.timeout,
        )
        return "empty"
    if not source.head:
        raise common.CommandError("the node sent an empty bundle")
    try:
        await proxy_stub.CreateRepositoryFromBundle(
            source.requests(target),
            metadata=admin.proxy_metadata(),
            # The whole copy, however large: bounded by the operator's patience.
            timeout=None,
        )
    except grpc.aio.AioRpcError:
        if source.error is not None:
            raise source.error from None
        raise
    return "bundle"


async def checksum(
    stub: repository_pb2_grpc.RepositoryServiceStub,
    repo: shared_pb2.Repository,
    metadata: Any,
    seconds: float,
) -> str:
    response = await stub.CalculateChecksum(
        repository_pb2.CalculateChecksumRequest(repository=repo), metadata=metadata, timeout=seconds
    )
    return str(response.checksum)


async def track_one(
    admin: common.Admin, vs: str, node: str, path: str, remove_original: bool
) -> dict[str, Any]:
    """Track ``path`` from ``node``'s disk; CommandError (or an RPC error) if it cannot."""
    if path.startswith(REPLICA_ROOT):
        raise common.UsageError(
            f"{path} is a replica path; track a repository under the path clients use"
        )
    store = await admin.store()
    repositories = RepositoryStore(store, admin.keys)
    if await repositories.find(vs, path) is not None:
        raise common.CommandError(f"repository {vs}/{path} is already tracked")
    original = shared_pb2.Repository(storage_name=node, relative_path=path)
    node_stub = repository_pb2_grpc.RepositoryServiceStub(admin.node_channels().channel(node))
    exists = await node_stub.RepositoryExists(
        repository_pb2.RepositoryExistsRequest(repository=original),
        metadata=admin.node_metadata(),
        timeout=admin.timeout,
    )
    if not exists.exists:
        raise common.CommandError(f"{node} has no repository at {path}")
    expected = await checksum(node_stub, original, admin.node_metadata(), admin.timeout)

    target = shared_pb2.Repository(storage_name=vs, relative_path=path)
    method = await copy_through_proxy(admin, original, target)
    proxy_stub = repository_pb2_grpc.RepositoryServiceStub(await admin.proxy())
    actual = await checksum(proxy_stub, target, admin.proxy_metadata(), admin.timeout)
    record = await repositories.get_by_path(vs, path)
    if actual != expected:
        raise common.CommandError(
            f"tracked {path} as id {record.repository_id}, but its checksum {actual} "
            f"differs from the original's {expected}; the original was left in place"
        )
    primary_note = ""
    if record.primary != node:
        if record.is_assigned(node):
            view = await read_view(store, admin.keys, with_jobs=False)
            move = await move_primary(
                repositories,
                record,
                node,
                view.healthy(vs),
                history=admin.history(),
                reason="track-repository",
            )
            primary_note = "" if move.ok else f"{node} not made primary: {move.detail}"
        else:
            primary_note = f"{node} is not assigned a replica (replication factor)"
        record = await repositories.get(vs, record.repository_id)
    removed = False
    if remove_original:
        await node_stub.RemoveRepository(
            repository_pb2.RemoveRepositoryRequest(repository=original),
            metadata=admin.node_metadata(),
            timeout=admin.timeout,
        )
        removed = True
    return {
        "virtual_storage": vs,
        "relative_path": path,
        "repository_id": record.repository_id,
        "replica_path": record.replica_path,
        "primary": record.primary,
        "replicas": list(record.replica_nodes),
        "authoritative_storage": node,
        "copied_as": method,
        "checksum": actual,
        "original_removed": removed,
        "note": primary_note,
    }


def render_one(data: dict[str, Any]) -> str:
    node, path = data["authoritative_storage"], data["relative_path"]
    lines = [
        f"tracked {data['virtual_storage']}/{path} as repository {data['repository_id']} "
        f"({data['replica_path']}), primary {data['primary']}, replicas on "
        + ", ".join(data["replicas"]),
        f"checksum {data['checksum']} matches the original on {node}",
    ]
    if data["note"]:
        lines.append(data["note"])
    lines.append(
        f"removed the original from {node}"
        if data["original_removed"]
        else f"the original stays on {node} at {path} (--remove-original removes it)"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    async def body(admin: common.Admin) -> int:
        vs = admin.virtual_storage.name
        node = args.authoritative_storage
        if node not in admin.nodes(vs):
            raise common.UsageError(f"node {node!r} is not part of virtual storage {vs!r}")
        paths = list(dict.fromkeys(args.repository))
        if len(paths) == 1:
            data = await track_one(admin, vs, node, paths[0], args.remove_original)
            common.emit(args, data, lambda: render_one(data))
            return common.EXIT_OK
        # Many: each on its own; one failing does not stop the others.
        tracked: list[dict[str, Any]] = []
        failed: list[dict[str, str]] = []
        with Progress.of(args, f"tracking from {node}", len(paths)) as progress:
            for path in paths:
                try:
                    tracked.append(await track_one(admin, vs, node, path, args.remove_original))
                except common.CommandError as exc:
                    failed.append({"relative_path": path, "error": str(exc)})
                except grpc.aio.AioRpcError as exc:
                    failed.append(
                        {"relative_path": path, "error": f"{exc.code().name}: {exc.details()}"}
                    )
                progress.update(len(tracked) + len(failed))

        def human() -> str:
            rows = [
                [d["relative_path"], "tracked", f"id {d['repository_id']}, primary {d['primary']}"]
                for d in tracked
            ] + [[f["relative_path"], "FAILED", f["error"]] for f in failed]
            summary = f"{len(tracked)} tracked, {len(failed)} failed"
            return common.table(["REPOSITORY", "RESULT", "DETAIL"], rows) + "\n" + summary

        common.emit(args, {"virtual_storage": vs, "tracked": tracked, "failed": failed}, human)
        return common.EXIT_PROBLEM if failed else common.EXIT_OK

    return common.run(args, body)
