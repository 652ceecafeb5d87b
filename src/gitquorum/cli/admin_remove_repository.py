"""``gitquorum remove-repository``: delete a repository everywhere (dry run by default).

Without ``--apply`` it only shows what would go: the record, its replicas
and its queued replication jobs. With ``--apply`` it calls
``RemoveRepository`` on a proxy, which deletes the record from etcd first
(atomically: from then on the repository does not exist for any client)
and then removes the replicas from the nodes, best effort. The command then
drops the repository's pending replication jobs and verification records,
and asks every node whether the replica is still on disk: a node that was
down keeps its copy as an untracked directory (``list-untracked-repositories``
finds it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

import grpc

from gitquorum.cli import admin_common as common
from gitquorum.cluster.errors import FailedPrecondition
from gitquorum.cluster.queue import JobState, ReplicationQueue
from gitquorum.cluster.repositories import RepositoryRecord, RepositoryStore
from gitquorum.gitaly import repository_pb2, repository_pb2_grpc, shared_pb2
from gitquorum.proxy.verifier import VerificationStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, proxy=True)
    common.add_repository_argument(parser)
    parser.add_argument(
        "--apply", action="store_true", help="really remove it (default: show what would go)"
    )


def plan_data(record: RepositoryRecord, jobs: int) -> dict[str, Any]:
    return {
        "virtual_storage": record.virtual_storage,
        "relative_path": record.relative_path,
        "repository_id": record.repository_id,
        "replica_path": record.replica_path,
        "primary": record.primary,
        "replicas": list(record.replica_nodes),
        "assigned": list(record.assigned),
        "queued_jobs": jobs,
    }


async def replica_on_disk(admin: common.Admin, node: str, replica_path: str) -> bool | None:
    """Whether ``node`` still has the directory; None when the node did not answer."""
    stub = repository_pb2_grpc.RepositoryServiceStub(admin.node_channels().channel(node))
    try:
        response = await stub.RepositoryExists(
            repository_pb2.RepositoryExistsRequest(
                repository=shared_pb2.Repository(storage_name=node, relative_path=replica_path)
            ),
            metadata=admin.node_metadata(),
            timeout=min(admin.timeout, 5.0),
        )
    except grpc.aio.AioRpcError:
        return None
    return bool(response.exists)


def run(args: argparse.Namespace) -> int:
    async def body(admin: common.Admin) -> int:
        vs = admin.virtual_storage.name
        store = await admin.store()
        record = await RepositoryStore(store, admin.keys).find(vs, args.repository)
        if record is None:
            raise common.CommandError(f"repository {vs}/{args.repository} not found")
        queue = ReplicationQueue(store, admin.keys)
        jobs = [j for j in await queue.jobs(vs) if j.repository_id == record.repository_id]
        data: dict[str, Any] = {"applied": args.apply, **plan_data(record, len(jobs))}
        if not args.apply:
            common.emit(args, data, lambda: render_plan(data))
            return common.EXIT_OK

        channel = await admin.proxy()
        await repository_pb2_grpc.RepositoryServiceStub(channel).RemoveRepository(
            repository_pb2.RemoveRepositoryRequest(
                repository=shared_pb2.Repository(storage_name=vs, relative_path=args.repository)
            ),
            metadata=admin.proxy_metadata(),
            timeout=admin.timeout,
        )
        # Workers drop jobs of a removed repository anyway; removing them keeps
        # the queue depth (and its alerts) honest right away.
        dropped = 0
        for job in jobs:
            if job.state is not JobState.IN_PROGRESS:
                with contextlib.suppress(FailedPrecondition):
                    dropped += int(await queue.remove(job))
        await VerificationStore(store, admin.keys).clear(vs, record.repository_id)
        nodes = admin.nodes(vs)
        answers = await asyncio.gather(
            *(replica_on_disk(admin, n, record.replica_path) for n in nodes)
        )
        data["jobs_dropped"] = dropped
        data["left_on_disk"] = [n for n, a in zip(nodes, answers, strict=True) if a]
        data["unreachable"] = [n for n, a in zip(nodes, answers, strict=True) if a is None]
        common.emit(args, data, lambda: render_applied(data))
        if data["left_on_disk"] or data["unreachable"]:
            print(
                "warning: a replica may remain on "
                + ", ".join(data["left_on_disk"] + data["unreachable"])
                + f" at {record.replica_path}; remove it there once the node is back",
                file=sys.stderr,
            )
        return common.EXIT_OK

    return common.run(args, body)


def render_plan(data: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"would remove {data['virtual_storage']}/{data['relative_path']} "
            f"(id {data['repository_id']}):",
            "  the record in etcd",
            f"  replicas at {data['replica_path']} on "
            + (", ".join(data["replicas"]) or "no node"),
            f"  {data['queued_jobs']} queued replication job(s)",
            "re-run with --apply to remove it",
        ]
    )


def render_applied(data: dict[str, Any]) -> str:
    lines = [
        f"removed {data['virtual_storage']}/{data['relative_path']} (id {data['repository_id']})",
        f"dropped {data['jobs_dropped']} queued replication job(s)",
    ]
    if not data["left_on_disk"] and not data["unreachable"]:
        lines.append("no replica left on any node")
    return "\n".join(lines)
