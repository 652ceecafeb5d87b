"""``gitquorum list-storages``: the virtual storages and their nodes, as the cluster sees them.

Praefect's ``list-storages`` in gitquorum's terms: per virtual storage, each
configured node with its address, its health by the proxies' consensus (what
failover acts on), whether an operator drained it, and how many primaries and
replicas it holds. Read from the configuration and etcd; no proxy needed.
"""

from __future__ import annotations

import argparse
from typing import Any

from gitquorum.cli import admin_common as common
from gitquorum.cli.admin_view import ClusterView, read_view
from gitquorum.config import VirtualStorageConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser)


def storages_data(storages: list[VirtualStorageConfig], view: ClusterView) -> list[dict[str, Any]]:
    result = []
    for vs in storages:
        healthy = view.healthy(vs.name)
        draining = view.operator.draining(vs.name)
        records = view.records_of(vs.name)
        result.append(
            {
                "name": vs.name,
                "replication_factor": vs.default_replication_factor,
                "repositories": len(records),
                "nodes": [
                    {
                        "name": node.storage,
                        "address": node.address,
                        "healthy": node.storage in healthy,
                        "draining": node.storage in draining,
                        "primaries": sum(1 for r in records if r.primary == node.storage),
                        "replicas": sum(1 for r in records if node.storage in r.replica_nodes),
                    }
                    for node in vs.nodes
                ],
            }
        )
    return result


def render(storages: list[dict[str, Any]]) -> str:
    rows = [
        [
            vs["name"],
            node["name"],
            node["address"],
            "healthy" if node["healthy"] else "UNHEALTHY",
            "DRAINING" if node["draining"] else "",
            node["primaries"],
            node["replicas"],
        ]
        for vs in storages
        for node in vs["nodes"]
    ]
    headers = ["VIRTUAL STORAGE", "NODE", "ADDRESS", "HEALTH", "DRAIN", "PRIMARIES", "REPLICAS"]
    return common.table(headers, rows)


def run(args: argparse.Namespace) -> int:
    async def body(admin: common.Admin) -> int:
        selected = getattr(args, "virtual_storage", None)
        storages = [
            vs for vs in admin.config.virtual_storages if selected is None or vs.name == selected
        ]
        if not storages:
            raise common.UsageError(f"virtual storage {selected!r} is not configured")
        view = await read_view(await admin.store(), admin.keys, with_jobs=False)
        data = storages_data(storages, view)
        common.emit(args, {"virtual_storages": data}, lambda: render(data))
        return common.EXIT_OK

    return common.run(args, body)
