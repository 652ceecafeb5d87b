"""``gitquorum dataloss``: repositories without a healthy, up-to-date replica.

Computed here from etcd with the same pure function the proxies use
(``repositories.dataloss``) over the health *consensus*, which is what
failover acts on. Reading etcd rather than asking a proxy keeps the command
useful when no proxy is up. With ``--partially-unavailable`` it also lists
repositories that are available but have an assigned replica that is
outdated or on an unhealthy node.

Repositories whose up-to-date replicas the verifier found different with no
majority among them are always listed: nothing repairs them until an operator
chooses the replica to keep (``accept-dataloss``).

Exit code 1 when any repository is unavailable or its replicas disagree
(partially replicated ones alone exit 0: the replication queue is repairing them).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gitquorum.cli import admin_common as common
from gitquorum.cli.admin_view import read_view
from gitquorum.cluster.reports import DatalossEntry, dataloss


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser)
    parser.add_argument(
        "--partially-unavailable",
        action="store_true",
        help="also list available repositories with an outdated or unhealthy assigned replica",
    )


def entry_data(entry: DatalossEntry) -> dict[str, Any]:
    record = entry.record
    return {
        "virtual_storage": record.virtual_storage,
        "relative_path": record.relative_path,
        "repository_id": record.repository_id,
        "primary": record.primary,
        "generation": record.generation,
        "unavailable": entry.unavailable,
        # Up-to-date replicas that disagree with no majority (empty: none).
        "conflict": list(entry.conflict),
        "replicas": [
            {
                "node": s.node,
                # A missing replica is behind by the repository's generation + 1.
                "generation": s.generation,
                "behind_by": s.behind_by,
                "assigned": s.assigned,
                "healthy": s.healthy,
                "valid_primary": s.valid_primary,
            }
            for s in entry.replicas
        ],
    }


def describe_replica(replica: dict[str, Any]) -> str:
    facts = []
    if replica["generation"] < 0:
        facts.append("missing")
    elif replica["behind_by"] > 0:
        facts.append(f"behind by {replica['behind_by']} generation(s)")
    else:
        facts.append("up to date")
    facts.append("assigned" if replica["assigned"] else "unassigned")
    facts.append("healthy" if replica["healthy"] else "UNHEALTHY")
    if replica["valid_primary"]:
        facts.append("valid primary")
    return f"{replica['node']}: {', '.join(facts)}"


def render(report: dict[str, Any]) -> str:
    lines = []
    if not report["proxies"]:
        lines.append("warning: no live proxy, so no node counts as healthy")
    for vs in report["virtual_storages"]:
        repositories = vs["repositories"]
        lines.append(f"virtual storage {vs['name']}:")
        if not repositories:
            lines.append(
                "  no unavailable or partially replicated repositories"
                if report["partially_unavailable"]
                else "  no unavailable repositories"
            )
            continue
        for repo in repositories:
            states = ["unavailable"] if repo["unavailable"] else []
            if repo["conflict"]:
                states.append(f"replicas disagree, no majority: {', '.join(repo['conflict'])}")
            lines.append(
                f"  {repo['relative_path']} ({'; '.join(states) or 'partially replicated'})"
            )
            lines.append(
                f"    id {repo['repository_id']}, generation {repo['generation']}, "
                f"primary {repo['primary'] or '-'}"
            )
            lines.extend(f"    {describe_replica(r)}" for r in repo["replicas"])
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    async def body(admin: common.Admin) -> int:
        selected = getattr(args, "virtual_storage", None)
        names = (
            [common.pick_virtual_storage(admin.config, selected).name]
            if selected
            else [vs.name for vs in admin.config.virtual_storages]
        )
        view = await read_view(await admin.store(), admin.keys, with_jobs=False)
        report: dict[str, Any] = {
            "proxies": len(view.proxies),
            "partially_unavailable": args.partially_unavailable,
            "virtual_storages": [],
        }
        unavailable = conflicts = 0
        for name in names:
            entries = dataloss(
                view.records,
                view.healthy_map(),
                include_partially_replicated=args.partially_unavailable,
                virtual_storage=name,
            )
            unavailable += sum(1 for e in entries if e.unavailable)
            conflicts += sum(1 for e in entries if e.conflict)
            report["virtual_storages"].append(
                {"name": name, "repositories": [entry_data(e) for e in entries]}
            )
        report["unavailable"] = unavailable
        report["conflicts"] = conflicts
        common.emit(args, report, lambda: render(report))
        if unavailable and not args.json:
            print(
                f"{unavailable} unavailable repositor{'y' if unavailable == 1 else 'ies'}: "
                "bring an up-to-date replica's node back, or accept the data loss with "
                "`gitquorum accept-dataloss`",
                file=sys.stderr,
            )
        if conflicts and not args.json:
            print(
                f"{conflicts} repositor{'y' if conflicts == 1 else 'ies'} whose replicas "
                "disagree with no majority: nothing is repaired until you choose the replica "
                "to keep with `gitquorum accept-dataloss`",
                file=sys.stderr,
            )
        return common.EXIT_PROBLEM if unavailable or conflicts else common.EXIT_OK

    return common.run(args, body)
