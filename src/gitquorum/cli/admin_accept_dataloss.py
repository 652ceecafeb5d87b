"""``gitquorum accept-dataloss``: make one replica authoritative and writable again.

Calls ``SetAuthoritativeStorage`` on a proxy: the chosen node's replica
becomes the repository's new generation and its primary, and replication
jobs copy it over every other assigned replica. Whatever the other replicas
held beyond it is lost for good, hence the guard: when the repository is
still available (some healthy replica is up to date) and the chosen replica
is behind, the command refuses unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gitquorum.cli import admin_common as common
from gitquorum.cli.admin_view import read_view
from gitquorum.cluster.decisions import valid_primaries
from gitquorum.cluster.repositories import MISSING, RepositoryStore
from gitquorum.gitaly import praefect_pb2, praefect_pb2_grpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, proxy=True)
    common.add_repository_argument(parser)
    parser.add_argument(
        "--authoritative-storage",
        required=True,
        metavar="NODE",
        help="the node whose replica wins",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="even when the repository is available and the chosen replica is behind",
    )


def run(args: argparse.Namespace) -> int:
    async def body(admin: common.Admin) -> int:
        vs = admin.virtual_storage.name
        node = args.authoritative_storage
        if node not in admin.nodes(vs):
            raise common.UsageError(f"node {node!r} is not part of virtual storage {vs!r}")
        store = await admin.store()
        repositories = RepositoryStore(store, admin.keys)
        before = await repositories.find(vs, args.repository)
        if before is None:
            raise common.CommandError(f"repository {vs}/{args.repository} not found")
        if before.replica_generation(node) == MISSING:
            raise common.CommandError(f"{node} holds no replica of {args.repository}")
        view = await read_view(store, admin.keys, with_jobs=False)
        healthy = view.healthy(vs)
        valid = valid_primaries(before, healthy)
        behind = before.generation - before.replica_generation(node)
        if valid and behind > 0 and not args.force:
            raise common.CommandError(
                f"{args.repository} is available (up to date on {', '.join(sorted(valid))}); "
                f"making {node} authoritative would discard {behind} generation(s) of writes. "
                "Pass --force to do it anyway."
            )
        channel = await admin.proxy()
        await praefect_pb2_grpc.PraefectInfoServiceStub(channel).SetAuthoritativeStorage(
            praefect_pb2.SetAuthoritativeStorageRequest(
                virtual_storage=vs, relative_path=args.repository, authoritative_storage=node
            ),
            metadata=admin.proxy_metadata(),
            timeout=admin.timeout,
        )
        after = await repositories.get(vs, before.repository_id)
        result: dict[str, Any] = {
            "virtual_storage": vs,
            "relative_path": after.relative_path,
            "repository_id": after.repository_id,
            "authoritative_storage": node,
            "primary": after.primary,
            "generation": after.generation,
            "discarded_generations": behind,
            "to_repair": sorted(n for n in (after.assigned or after.replica_nodes) if n != node),
            "node_healthy": node in healthy,
        }

        def human() -> str:
            lines = [
                f"{after.relative_path}: {node} is authoritative and primary at generation "
                f"{after.generation}",
            ]
            if behind > 0:
                lines.append(f"discarded {behind} generation(s) the other replicas were ahead by")
            if result["to_repair"]:
                lines.append("replication jobs queued to repair: " + ", ".join(result["to_repair"]))
            return "\n".join(lines)

        common.emit(args, result, human)
        if node not in healthy:
            print(
                f"warning: {node} is not healthy by consensus; writes resume once it is",
                file=sys.stderr,
            )
        return common.EXIT_OK

    return common.run(args, body)
