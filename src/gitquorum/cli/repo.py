"""Create, list, remove and inspect repositories of a virtual storage.

``create``, ``remove`` and ``info`` talk to a proxy (``--proxy ADDR`` or
``--config FILE``); ``list`` reads the repository records from etcd (see
``repo_list``). Exit status: 0 done, 1 the operation failed (not found,
unreachable, refused), 2 the command line or configuration is wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC
from typing import Any

import grpc

from gitquorum.cli import render
from gitquorum.cli.repo_client import (
    EXIT_OK,
    CliError,
    Target,
    add_target_arguments,
    channel,
    load_config,
    resolve,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create an empty repository")
    create.add_argument("path", help="relative path, e.g. group/project.git")
    create.add_argument("--default-branch", default="main", help="HEAD's branch (default main)")
    add_target_arguments(create)

    listing = actions.add_parser(
        "list", help="every repository with its primary, generation and replica state (etcd)"
    )
    listing.add_argument(
        "--etcd", default="", metavar="HOST:PORT[,...]", help="etcd endpoints (without --config)"
    )
    listing.add_argument("--cluster", default="", help="etcd cluster name (without --config)")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    add_target_arguments(listing)

    remove = actions.add_parser(
        "remove",
        help="remove a repository and all its replicas (dry run without --apply)",
        description="Shows what would be removed; with --apply (or --yes) removes it.",
    )
    remove.add_argument("path", help="relative path")
    remove.add_argument(
        "--apply",
        "--yes",
        dest="apply",
        action="store_true",
        help="really remove it (default: show what would go)",
    )
    remove.add_argument("--json", action="store_true", help="one JSON document")
    add_target_arguments(remove)

    info = actions.add_parser("info", help="primary, generations and replica checksums")
    info.add_argument("path", help="relative path")
    info.add_argument("--json", action="store_true", help="one JSON document")
    add_target_arguments(info)


def run(args: argparse.Namespace) -> int:
    handlers = {"create": _create, "list": _list, "remove": _remove, "info": _info}
    try:
        return handlers[args.action](args)
    except CliError as exc:
        print(f"gitquorum repo {args.action}: {exc.message}", file=sys.stderr)
        return exc.exit_code


def _repository(target: Target, path: str) -> Any:
    from gitquorum.gitaly import shared_pb2

    return shared_pb2.Repository(storage_name=target.storage, relative_path=path)


def _create(args: argparse.Namespace) -> int:
    from gitquorum.gitaly import repository_pb2, repository_pb2_grpc

    target = resolve(args)
    request = repository_pb2.CreateRepositoryRequest(
        repository=_repository(target, args.path), default_branch=args.default_branch.encode()
    )
    with channel(target) as ch:
        try:
            repository_pb2_grpc.RepositoryServiceStub(ch).CreateRepository(
                request, timeout=target.timeout, metadata=target.metadata()
            )
        except grpc.RpcError as error:
            raise target.describe(error, f"repository {args.path!r}") from None
        where = ""
        try:
            meta = _metadata(ch, target, args.path)
            nodes = ", ".join(r.storage for r in meta.replicas if r.generation >= 0)
            where = f" (primary {meta.primary}; replicas on {nodes})"
        except CliError:
            pass  # created all the same; the placement is only a courtesy
    print(f"created {args.path} on virtual storage {target.storage!r}{where}")
    return EXIT_OK


def removal_plan(meta: Any) -> dict[str, Any]:
    """What ``repo remove`` would delete: the record and every replica it lists."""
    return {
        "virtual_storage": meta.virtual_storage,
        "relative_path": meta.relative_path,
        "repository_id": meta.repository_id,
        "replica_path": meta.replica_path,
        "primary": meta.primary or None,
        "replicas": sorted(r.storage for r in meta.replicas if r.generation >= 0),
    }


def render_plan(plan: dict[str, Any], applied: bool) -> str:
    where = f"{plan['virtual_storage']}/{plan['relative_path']} (id {plan['repository_id']})"
    if applied:
        return f"removed {where}"
    return "\n".join(
        [
            f"would remove {where}:",
            "  its record in etcd",
            f"  replicas at {plan['replica_path']} on "
            + (", ".join(plan["replicas"]) or "no node"),
            "re-run with --apply (or --yes) to remove it",
        ]
    )


def _remove(args: argparse.Namespace) -> int:
    from gitquorum.gitaly import repository_pb2, repository_pb2_grpc

    target = resolve(args)
    with channel(target) as ch:
        # The dry run and the removal read the same record: a typo fails here, as NOT_FOUND.
        plan = removal_plan(_metadata(ch, target, args.path))
        if args.apply:
            request = repository_pb2.RemoveRepositoryRequest(
                repository=_repository(target, args.path)
            )
            try:
                repository_pb2_grpc.RepositoryServiceStub(ch).RemoveRepository(
                    request, timeout=target.timeout, metadata=target.metadata()
                )
            except grpc.RpcError as error:
                raise target.describe(error, f"repository {args.path!r}") from None
    doc = {"applied": bool(args.apply), **plan}
    print(json.dumps(doc) if args.json else render_plan(plan, args.apply))
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    from gitquorum.cli import repo_list

    config = load_config(args)
    resolve(args, need_proxy=False)  # validates --virtual-storage against the config
    settings = repo_list.etcd_settings(
        config.etcd if config is not None else None, args.etcd, args.cluster
    )
    rows = repo_list.list_repositories(settings, args.virtual_storage, args.timeout)
    if args.json:
        print(
            json.dumps(
                {
                    "virtual_storage": args.virtual_storage,
                    "repositories": [r.as_dict() for r in rows],
                }
            )
        )
    elif rows:
        print(repo_list.table(rows))
    else:
        print(f"no repositories on virtual storage {args.virtual_storage!r}", file=sys.stderr)
    return EXIT_OK


def _metadata(ch: grpc.Channel, target: Target, path: str) -> Any:
    from gitquorum.gitaly import praefect_pb2, praefect_pb2_grpc

    request = praefect_pb2.GetRepositoryMetadataRequest(
        path=praefect_pb2.GetRepositoryMetadataRequest.Path(
            virtual_storage=target.storage, relative_path=path
        )
    )
    try:
        return praefect_pb2_grpc.PraefectInfoServiceStub(ch).GetRepositoryMetadata(
            request, timeout=target.timeout, metadata=target.metadata()
        )
    except grpc.RpcError as error:
        raise target.describe(error, f"repository {path!r}") from None


def _checksums(ch: grpc.Channel, target: Target, path: str) -> dict[str, str]:
    from gitquorum.gitaly import praefect_pb2, praefect_pb2_grpc

    request = praefect_pb2.RepositoryReplicasRequest(repository=_repository(target, path))
    try:
        response = praefect_pb2_grpc.PraefectInfoServiceStub(ch).RepositoryReplicas(
            request, timeout=target.timeout, metadata=target.metadata()
        )
    except grpc.RpcError as error:
        raise target.describe(error, f"repository {path!r}") from None
    details = (
        [response.primary, *response.replicas]
        if response.HasField("primary")
        else [*response.replicas]
    )
    return {d.repository.storage_name: d.checksum for d in details}


def info_document(meta: Any, checksums: dict[str, str]) -> dict[str, Any]:
    replicas = []
    for r in meta.replicas:
        verified = None
        if r.HasField("verified_at"):
            verified = r.verified_at.ToDatetime(tzinfo=UTC).isoformat()
        replicas.append(
            {
                "storage": r.storage,
                "primary": r.storage == meta.primary,
                "assigned": r.assigned,
                "generation": r.generation,
                "up_to_date": r.generation == meta.generation,
                "healthy": r.healthy,
                "valid_primary": r.valid_primary,
                # None: the node could not compute one (down, or no replica there).
                "checksum": checksums.get(r.storage) or None,
                "verified_at": verified,
            }
        )
    # The primary first, then by name: the order people read a replica table in.
    replicas.sort(key=lambda r: (not r["primary"], r["storage"]))
    return {
        "virtual_storage": meta.virtual_storage,
        "relative_path": meta.relative_path,
        "repository_id": meta.repository_id,
        "replica_path": meta.replica_path,
        "primary": meta.primary,
        "generation": meta.generation,
        "replicas": replicas,
    }


def info_table(doc: dict[str, Any]) -> str:
    lines = [
        f"repository   {doc['relative_path']} on virtual storage {doc['virtual_storage']!r}",
        f"id           {doc['repository_id']}  (replica path {doc['replica_path']})",
        f"primary      {doc['primary'] or '-  (none: unavailable)'}",
        f"generation   {doc['generation']}",
        "",
    ]
    header = ("STORAGE", "ROLE", "ASSIGNED", "HEALTHY", "GENERATION", "VALID PRIMARY", "CHECKSUM")
    rows = []
    for r in doc["replicas"]:
        generation = "missing" if r["generation"] < 0 else str(r["generation"])
        if 0 <= r["generation"] < doc["generation"]:
            generation += f" (behind {doc['generation'] - r['generation']})"
        rows.append(
            (
                r["storage"],
                "primary" if r["primary"] else "secondary",
                r["assigned"],
                r["healthy"],
                generation,
                r["valid_primary"],
                r["checksum"] or None,
            )
        )
    lines.append(render.table(header, rows))
    sums = {r["checksum"] for r in doc["replicas"] if r["up_to_date"] and r["checksum"]}
    if len(sums) > 1:
        lines += ["", "warning: up-to-date replicas have different checksums"]
    return "\n".join(lines)


def _info(args: argparse.Namespace) -> int:
    target = resolve(args)
    with channel(target) as ch:
        meta = _metadata(ch, target, args.path)
        checksums = _checksums(ch, target, args.path)
    doc = info_document(meta, checksums)
    print(json.dumps(doc) if args.json else info_table(doc))
    return EXIT_OK
