"""``gitquorum history``: when primaries changed, from what, to what, and why,
and what the verifier decided.

Reads the bounded history log in etcd (``history/``, see
``gitquorum.cluster.history``): every failover by the leader, every lazy
failover at write time, every move by ``switchover``, ``drain`` and
``track-repository``, and every verdict of the verifier (replicas demoted
and repaired, conflicts), oldest first, like Patroni's ``patronictl history``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from gitquorum.cli import admin_common as common
from gitquorum.cluster.history import VERDICT, Event, History


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser)
    common.add_repository_argument(parser, required=False)
    parser.add_argument(
        "--node", metavar="NODE", help="only changes from or to this node, and its demotions"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=50,
        metavar="N",
        help="the newest N entries (default 50; 0 for every entry kept)",
    )


def select(
    events: Sequence[Event],
    virtual_storage: str | None,
    repository: str | None,
    node: str | None,
    limit: int,
) -> list[Event]:
    """The matching entries, oldest first, the newest ``limit`` of them (0: all)."""
    chosen = [
        e
        for e in events
        if (virtual_storage is None or e.virtual_storage == virtual_storage)
        and (repository is None or e.relative_path == repository)
        and (node is None or node in (e.old, e.new) or node in _demoted(e))
    ]
    chosen.sort(key=lambda e: e.at)
    return chosen[-limit:] if limit > 0 else chosen


def _demoted(event: Event) -> list[str]:
    demoted = event.details.get("demoted")
    return [str(n) for n in demoted] if isinstance(demoted, list) else []


def _reason(event: Event) -> str | None:
    """A verdict's reason says whom it demoted (the rest is in ``--json``)."""
    demoted = _demoted(event)
    if event.kind == VERDICT and demoted:
        return f"{event.reason}: demoted {', '.join(demoted)}"
    return event.reason or None


def render(events: Sequence[Event]) -> str:
    if not events:
        return "nothing recorded"
    rows = [
        [
            common.format_time(e.at),
            e.kind,
            e.virtual_storage,
            e.relative_path,
            e.old,
            e.new,
            e.by or None,
            _reason(e),
        ]
        for e in events
    ]
    headers = ["TIME", "KIND", "VIRTUAL STORAGE", "REPOSITORY", "FROM", "TO", "BY", "REASON"]
    return common.table(headers, rows)


def run(args: argparse.Namespace) -> int:
    async def body(admin: common.Admin) -> int:
        if args.limit < 0:
            raise common.UsageError("--limit must be 0 or more")
        selected = getattr(args, "virtual_storage", None)
        if selected is not None:
            common.pick_virtual_storage(admin.config, selected)
        events = await History(await admin.store(), admin.keys).events()
        shown = select(events, selected, args.repository, args.node, args.limit)
        common.emit(args, {"events": [e.data() for e in shown]}, lambda: render(shown))
        return common.EXIT_OK

    return common.run(args, body)
