"""``gitquorum drain NODE`` / ``gitquorum undrain NODE``: take a node out of service gently.

Draining marks the node in etcd (``operator/drained/<vs>/<node>``). Every
proxy follows that key: the node gets no new primaries (failover, lazy
election and repository creation choose other nodes while any is up) and no
reads while another healthy, up-to-date replica can serve them. It keeps its
replicas and keeps taking part in writes, so it stays up to date and
undraining is instant. ``drain`` then switches the node's current primaries
away (see ``switchover``); ``--no-switchover`` leaves them.

Without ``--virtual-storage`` the node is drained in every virtual storage
that lists it.
"""

from __future__ import annotations

import argparse
from typing import Any

from gitquorum.cli import admin_common as common
from gitquorum.cli.admin_common import operator_name
from gitquorum.cli.admin_switchover import Move, move_all_from
from gitquorum.cli.admin_switchover import render as render_moves
from gitquorum.cluster.operator_state import OperatorState


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser)
    parser.add_argument("node", metavar="NODE", help="the node (storage name)")
    if common.command_name(parser) == "drain":
        parser.add_argument("--reason", default="", help="why (shown by `gitquorum status`)")
        parser.add_argument(
            "--no-switchover",
            action="store_true",
            help="keep the node's current primaries where they are",
        )


def storages_of(admin: common.Admin, node: str, selected: str | None) -> list[str]:
    if selected is not None:
        vs = common.pick_virtual_storage(admin.config, selected).name
        if node not in admin.nodes(vs):
            raise common.UsageError(f"node {node!r} is not part of virtual storage {vs!r}")
        return [vs]
    names = [vs.name for vs in admin.config.virtual_storages if node in admin.nodes(vs.name)]
    if not names:
        raise common.UsageError(f"node {node!r} is not part of any configured virtual storage")
    return names


def run(args: argparse.Namespace) -> int:
    draining = args.command != "undrain"

    async def body(admin: common.Admin) -> int:
        storages = storages_of(admin, args.node, getattr(args, "virtual_storage", None))
        store = await admin.store()
        state = OperatorState(store, admin.keys)
        results: list[dict[str, Any]] = []
        moves: list[Move] = []
        for vs in storages:
            if draining:
                changed = await state.drain(vs, args.node, reason=args.reason, by=operator_name())
            else:
                changed = await state.undrain(vs, args.node)
            vs_moves = (
                await move_all_from(store, admin, vs, args.node, None, reason="drain")
                if draining and not args.no_switchover
                else []
            )
            moves.extend(vs_moves)
            results.append(
                {
                    "virtual_storage": vs,
                    "node": args.node,
                    "draining": draining,
                    "changed": changed,
                    "moves": [m.data() for m in vs_moves],
                }
            )

        def human() -> str:
            lines = []
            for result in results:
                verb = "drained" if draining else "undrained"
                already = "" if result["changed"] else " (it already was)"
                lines.append(f"{args.node} {verb} in {result['virtual_storage']}{already}")
            if draining and not args.no_switchover:
                lines.append(render_moves(moves))
            return "\n".join(lines)

        common.emit(args, {"results": results}, human)
        return common.EXIT_OK if all(m.ok for m in moves) else common.EXIT_PROBLEM

    return common.run(args, body)
