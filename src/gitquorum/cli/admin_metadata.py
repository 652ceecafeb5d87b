"""``gitquorum metadata``: one repository's record as a proxy sees it.

``GetRepositoryMetadata`` on a proxy, by relative path or by repository id:
id, replica path, primary, generation and per replica whether it is
assigned, its generation (-1: missing), health, whether it may be primary
and when the verifier last checked it.
"""

from __future__ import annotations

import argparse
from typing import Any

from gitquorum.cli import admin_common as common
from gitquorum.gitaly import praefect_pb2, praefect_pb2_grpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, proxy=True)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--repository", "--relative-path", dest="repository", metavar="PATH", help="relative path"
    )
    which.add_argument("--repository-id", type=int, metavar="ID", help="repository id")


def request_for(
    args: argparse.Namespace, virtual_storage: str | None
) -> praefect_pb2.GetRepositoryMetadataRequest:
    if args.repository_id is not None:
        return praefect_pb2.GetRepositoryMetadataRequest(repository_id=args.repository_id)
    return praefect_pb2.GetRepositoryMetadataRequest(
        path=praefect_pb2.GetRepositoryMetadataRequest.Path(
            virtual_storage=virtual_storage or "", relative_path=args.repository
        )
    )


def metadata_data(response: praefect_pb2.GetRepositoryMetadataResponse) -> dict[str, Any]:
    return {
        "repository_id": response.repository_id,
        "virtual_storage": response.virtual_storage,
        "relative_path": response.relative_path,
        "replica_path": response.replica_path,
        "primary": response.primary or None,
        "generation": response.generation,
        "replicas": [
            {
                "storage": r.storage,
                "assigned": r.assigned,
                "generation": r.generation,
                "healthy": r.healthy,
                "valid_primary": r.valid_primary,
                "verified_at": r.verified_at.ToNanoseconds() / 1e9
                if r.HasField("verified_at")
                else None,
            }
            for r in response.replicas
        ],
    }


def render(data: dict[str, Any]) -> str:
    head = [
        f"repository id:   {data['repository_id']}",
        f"virtual storage: {data['virtual_storage']}",
        f"relative path:   {data['relative_path']}",
        f"replica path:    {data['replica_path']}",
        f"primary:         {data['primary'] or '-'}",
        f"generation:      {data['generation']}",
        "replicas:",
    ]
    rows = [
        [
            r["storage"],
            r["assigned"],
            r["generation"] if r["generation"] >= 0 else "missing",
            r["healthy"],
            r["valid_primary"],
            common.format_time(r["verified_at"]),
        ]
        for r in data["replicas"]
    ]
    body = common.table(
        ["STORAGE", "ASSIGNED", "GENERATION", "HEALTHY", "VALID PRIMARY", "VERIFIED AT"], rows
    )
    return "\n".join(head) + "\n" + "\n".join(f"  {line}" for line in body.splitlines())


def run(args: argparse.Namespace) -> int:
    async def body(admin: common.Admin) -> int:
        vs = admin.virtual_storage.name if args.repository is not None else None
        channel = await admin.proxy()
        response = await praefect_pb2_grpc.PraefectInfoServiceStub(channel).GetRepositoryMetadata(
            request_for(args, vs), metadata=admin.proxy_metadata(), timeout=admin.timeout
        )
        data = metadata_data(response)
        common.emit(args, data, lambda: render(data))
        return common.EXIT_OK

    return common.run(args, body)
