"""``gitquorum status``: proxies, leader, node health, queue depth and replica lag.

Read from etcd only (no proxy needed): live proxies from their membership
keys, the leader from the election key, each node's health as every proxy
sees it and by consensus (what failover acts on), operator state (paused,
drained), and per node the primaries and replicas it holds, its outdated
replicas, its replication jobs by state and the age of its oldest pending job.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import signal
import sys
from typing import Any

from gitquorum.cli import admin_common as common
from gitquorum.cli.admin_view import ClusterView, read_view
from gitquorum.cli.arguments import positive_duration
from gitquorum.cluster.decisions import valid_primaries
from gitquorum.cluster.operator_state import Mark
from gitquorum.cluster.queue import JobState, queue_stats
from gitquorum.cluster.reports import outdated_by_node

STATES = (JobState.READY, JobState.IN_PROGRESS, JobState.FAILED, JobState.DEAD)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser)
    parser.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=positive_duration,
        metavar="INTERVAL",
        help="refresh every INTERVAL (default 2s) until Ctrl-C; with --json, one JSON "
        "document per line",
    )


def mark_data(mark: Mark | None) -> dict[str, Any] | None:
    if mark is None:
        return None
    return {"since": mark.since, "reason": mark.reason, "by": mark.by}


def build_status(view: ClusterView, nodes: dict[str, list[str]], cluster: str) -> dict[str, Any]:
    """The whole report as plain data (the JSON output; the table renders it)."""
    stats = queue_stats(view.jobs, view.read_at)
    outdated = outdated_by_node(view.records)
    storages = []
    for vs, configured in nodes.items():
        records = view.records_of(vs)
        healthy = view.healthy(vs)
        draining = view.operator.draining(vs)
        seen = [
            *configured,
            *sorted(
                {j.target_node for j in view.jobs if j.virtual_storage == vs} - set(configured)
            ),
        ]
        rows = []
        for node in seen:
            queue = {str(s): stats.depth.get((vs, node, str(s)), 0) for s in STATES}
            rows.append(
                {
                    "name": node,
                    "configured": node in configured,
                    "healthy": node in healthy,
                    "votes": {
                        p.name: bool(p.health.get(vs, {}).get(node, False)) for p in view.proxies
                    },
                    "draining": node in draining,
                    "primaries": sum(1 for r in records if r.primary == node),
                    "replicas": sum(1 for r in records if node in r.replica_nodes),
                    "outdated": len(outdated.get((vs, node), ())),
                    "queue": queue,
                    # Ready, failed (waiting to retry) or running; not dead (retried later).
                    "oldest_pending_age": stats.oldest_pending_age.get((vs, node)),
                }
            )
        storages.append(
            {
                "name": vs,
                "repositories": len(records),
                "unavailable": sum(1 for r in records if not valid_primaries(r, healthy)),
                "nodes": rows,
            }
        )
    return {
        "cluster": cluster,
        "leader": view.leader,
        "paused": mark_data(view.operator.pause),
        "proxies": [
            {
                "name": p.name,
                "address": p.address,
                "started_at": p.started_at,
                "leader": p.name == view.leader,
            }
            for p in view.proxies
        ],
        "virtual_storages": storages,
        "read_at": view.read_at,
    }


def render_status(status: dict[str, Any]) -> str:
    now = status["read_at"]
    paused = status["paused"]
    head = [
        f"cluster {status['cluster']}",
        f"leader {status['leader'] or 'NONE'}",
        "paused since " + common.format_time(paused["since"]) if paused else "not paused",
    ]
    parts = ["   ".join(head)]
    if paused and paused.get("reason"):
        parts.append(f"pause reason: {paused['reason']}")
    if status["proxies"]:
        parts.append(
            common.table(
                ["PROXY", "ADDRESS", "LEADER", "UP"],
                [
                    [
                        p["name"],
                        p["address"],
                        "*" if p["leader"] else "",
                        common.format_age(now - p["started_at"]) if p["started_at"] else None,
                    ]
                    for p in status["proxies"]
                ],
            )
        )
    else:
        parts.append("no live proxy: node health is unknown (every node counts as unhealthy)")
    for vs in status["virtual_storages"]:
        parts.append("")
        parts.append(
            f"virtual storage {vs['name']}: {vs['repositories']} "
            f"repositor{'y' if vs['repositories'] == 1 else 'ies'}, "
            f"{vs['unavailable']} unavailable"
        )
        rows = []
        for node in vs["nodes"]:
            votes = " ".join(
                f"{proxy}:{'ok' if ok else 'down'}" for proxy, ok in sorted(node["votes"].items())
            )
            name = node["name"] if node["configured"] else f"{node['name']} (not configured)"
            rows.append(
                [
                    name,
                    "healthy" if node["healthy"] else "UNHEALTHY",
                    votes or None,
                    "DRAINING" if node["draining"] else "",
                    node["primaries"],
                    node["replicas"],
                    node["outdated"],
                    *(node["queue"][str(s)] for s in STATES),
                    common.format_age(node["oldest_pending_age"]),
                ]
            )
        parts.append(
            common.table(
                [
                    "NODE",
                    "HEALTH",
                    "VOTES",
                    "DRAIN",
                    "PRIMARIES",
                    "REPLICAS",
                    "OUTDATED",
                    "READY",
                    "RUNNING",
                    "FAILED",
                    "DEAD",
                    "OLDEST JOB",
                ],
                rows,
            )
        )
    return "\n".join(parts)


# Home the cursor and clear the screen: each refresh replaces the last on a terminal.
CLEAR = "\x1b[H\x1b[2J"


def run(args: argparse.Namespace) -> int:
    async def body(admin: common.Admin) -> int:
        selected = getattr(args, "virtual_storage", None)
        nodes = {
            vs.name: [n.storage for n in vs.nodes]
            for vs in admin.config.virtual_storages
            if selected is None or vs.name == selected
        }
        if selected is not None and not nodes:
            raise common.UsageError(f"virtual storage {selected!r} is not configured")
        store = await admin.store()
        # Ctrl-C ends a watch between two refreshes: handled on the event loop,
        # since a KeyboardInterrupt raised inside a gRPC callback can be lost
        # and leave the watch running.
        interrupted = asyncio.Event()
        if args.watch is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGINT, interrupted.set)
        while True:
            view = await read_view(store, admin.keys)
            status = build_status(view, nodes, admin.config.etcd.cluster)
            if args.watch is None:
                common.emit(args, status, functools.partial(render_status, status))
                return common.EXIT_OK
            if args.json:
                # JSON lines: one compact document per refresh, for a program to follow.
                print(json.dumps(status, sort_keys=True, separators=(",", ":")), flush=True)
            else:
                clear = CLEAR if sys.stdout.isatty() else ""
                stamp = f"every {common.format_age(args.watch)}: " + common.format_time(
                    status["read_at"]
                )
                print(f"{clear}{stamp}\n{render_status(status)}\n", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(interrupted.wait(), args.watch)
            if interrupted.is_set():
                return common.EXIT_OK

    code = common.run(args, body)
    # Ctrl-C is how a watch ends: not a failure.
    return common.EXIT_OK if code == 130 and args.watch is not None else code
