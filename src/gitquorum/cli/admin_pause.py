"""``gitquorum pause`` / ``gitquorum resume``: stop the cluster acting on its own.

While paused (``operator/paused`` in etcd) no proxy fails a primary over (the
leader's failover and the lazy election at write time both stop), the leader
queues no repairs and no replication job is claimed: a maintenance window
where nodes may come and go without the cluster moving data around. Health,
generations and the queue are still recorded, writes and reads keep being
served by valid primaries and replicas, and ``resume`` lets failover and
repair act on the current state at once. A write to a repository whose
primary is down fails with UNAVAILABLE while paused.
"""

from __future__ import annotations

import argparse
from typing import Any

from gitquorum.cli import admin_common as common
from gitquorum.cli.admin_common import operator_name
from gitquorum.cluster.operator_state import OperatorState


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, virtual_storage=False)
    if common.command_name(parser) == "pause":
        parser.add_argument("--reason", default="", help="why (shown by `gitquorum status`)")


def run(args: argparse.Namespace) -> int:
    pausing = args.command != "resume"

    async def body(admin: common.Admin) -> int:
        state = OperatorState(await admin.store(), admin.keys)
        if pausing:
            changed = await state.pause(reason=args.reason, by=operator_name())
        else:
            changed = await state.resume()
        snapshot = await state.snapshot()
        data: dict[str, Any] = {"paused": snapshot.paused, "changed": changed}

        def human() -> str:
            if pausing:
                first = "paused" if changed else "already paused"
                return (
                    f"{first}: no failover, no reconciliation, no replication until "
                    "`gitquorum resume`"
                )
            if not changed:
                return "not paused"
            return "resumed: failover and repair act on the current state"

        common.emit(args, data, human)
        return common.EXIT_OK

    return common.run(args, body)
