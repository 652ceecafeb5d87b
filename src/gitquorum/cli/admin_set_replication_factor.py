"""``gitquorum set-replication-factor``: assign or unassign nodes to reach a factor.

``SetReplicationFactor`` on a proxy. The primary stays assigned; added nodes
get their replica by replication jobs; unassigned nodes stop taking writes
and reads for the repository (their replica stays on disk).
"""

from __future__ import annotations

import argparse

from gitquorum.cli import admin_common as common
from gitquorum.gitaly import praefect_pb2, praefect_pb2_grpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, proxy=True)
    common.add_repository_argument(parser)
    parser.add_argument(
        "--replication-factor",
        type=int,
        required=True,
        metavar="N",
        help="number of nodes that should hold a replica (1..nodes)",
    )


def run(args: argparse.Namespace) -> int:
    async def body(admin: common.Admin) -> int:
        vs = admin.virtual_storage
        if not 1 <= args.replication_factor <= len(vs.nodes):
            raise common.UsageError(
                f"replication factor must be between 1 and {len(vs.nodes)} "
                f"(the nodes of {vs.name}), not {args.replication_factor}"
            )
        channel = await admin.proxy()
        response = await praefect_pb2_grpc.PraefectInfoServiceStub(channel).SetReplicationFactor(
            praefect_pb2.SetReplicationFactorRequest(
                virtual_storage=vs.name,
                relative_path=args.repository,
                replication_factor=args.replication_factor,
            ),
            metadata=admin.proxy_metadata(),
            timeout=admin.timeout,
        )
        storages = list(response.storages)
        data = {
            "virtual_storage": vs.name,
            "relative_path": args.repository,
            "replication_factor": len(storages),
            "assigned": storages,
        }
        common.emit(args, data, lambda: f"{args.repository}: assigned to {', '.join(storages)}")
        return common.EXIT_OK

    return common.run(args, body)
