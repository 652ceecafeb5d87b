"""``gitquorum switchover``: move primaries on purpose, without failing a write.

``--repository PATH --to NODE`` moves one repository's primary;
``--from NODE [--to NODE]`` moves every primary a node holds (to ``--to``,
or each where failover would put it: the least-loaded valid candidate, a
drained one only when no other qualifies).

A move is one compare-and-swap on the repository record: it applies only if
the primary is still the one read, and only to a *valid primary* (healthy by
consensus, up to date, assigned), so the new primary already holds every
acknowledged write. Writes in flight keep going: they were sent to the old
primary and to every up-to-date secondary (the new primary among them), and
their generation bump counts every replica that committed, whoever is primary
when it lands. The next write is routed to the new primary as soon as a
proxy's cache sees the change. No replica is ever demoted, so no write fails.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from gitquorum.cli import admin_common as common
from gitquorum.cli.admin_view import read_view
from gitquorum.cli.progress import Progress
from gitquorum.cluster.cas import RETRY, Retry, compare_and_swap, fixed_backoff
from gitquorum.cluster.decisions import choose_primary, primary_load, valid_primaries
from gitquorum.cluster.errors import Conflict, FailedPrecondition, RepositoryNotFound
from gitquorum.cluster.history import SWITCHOVER, History
from gitquorum.cluster.repositories import RepositoryRecord, RepositoryStore
from gitquorum.cluster.store import Store

# A candidate can be a generation behind for the few milliseconds a write
# needs to record itself; a move retries that long before giving up.
ATTEMPTS = 20
RETRY_DELAY = 0.05


@dataclass(frozen=True)
class Move:
    repository_id: int
    relative_path: str
    old: str | None
    new: str | None
    ok: bool
    detail: str = ""

    def data(self) -> dict[str, Any]:
        return {
            "repository_id": self.repository_id,
            "relative_path": self.relative_path,
            "from": self.old,
            "to": self.new,
            "ok": self.ok,
            "detail": self.detail,
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser)
    parser.add_argument(
        "--repository", "--relative-path", dest="repository", metavar="PATH", help="one repository"
    )
    parser.add_argument(
        "--from", dest="source", metavar="NODE", help="move every primary this node holds"
    )
    parser.add_argument("--to", dest="target", metavar="NODE", help="the new primary")


async def move_primary(
    repositories: RepositoryStore,
    record: RepositoryRecord,
    target: str | None,
    healthy: frozenset[str],
    draining: frozenset[str] = frozenset(),
    load: dict[str, int] | None = None,
    history: History | None = None,
    reason: str = "switchover",
) -> Move:
    """Move ``record``'s primary away from its current one: to ``target`` if given,
    else where failover would put it (``decisions.choose_primary``: least loaded,
    drained nodes only when nothing else qualifies)."""
    old = record.primary
    load = load if load is not None else {}
    last_problem = ""

    async def attempt(number: int) -> Move | Retry:
        nonlocal record, last_problem
        if number:
            try:
                record = await repositories.get(record.virtual_storage, record.repository_id)
            except RepositoryNotFound:
                return Move(record.repository_id, record.relative_path, old, None, False, "removed")
            if record.primary != old:
                # Someone else (failover, another operator) moved it meanwhile.
                ok = target is None or record.primary == target
                return Move(
                    record.repository_id,
                    record.relative_path,
                    old,
                    record.primary,
                    ok,
                    "moved concurrently",
                )
        choice = target or choose_primary(
            record, healthy, load=load, draining=draining, exclude=frozenset({old or ""})
        )
        if choice is None:
            last_problem = "no other healthy, up-to-date, assigned replica"
            others = set(record.assigned or record.replica_nodes) - {old or ""}
            if not others & healthy:
                return failed()  # nothing healthy to wait for: no retry can succeed
            return RETRY
        if choice == old:
            return Move(record.repository_id, record.relative_path, old, old, True, "already")
        if choice not in valid_primaries(record, healthy):
            last_problem = f"{choice} is not a valid primary (healthy, up to date, assigned)"
            return RETRY
        try:
            updated = await repositories.set_primary(
                record.virtual_storage, record.repository_id, choice, expected=old
            )
        except (Conflict, FailedPrecondition) as exc:
            last_problem = str(exc)
            return RETRY
        load[choice] = load.get(choice, 0) + 1
        if old:
            load[old] = max(0, load.get(old, 0) - 1)
        if history is not None:
            await history.primary_moved(SWITCHOVER, updated, old, updated.primary, reason)
        return Move(updated.repository_id, updated.relative_path, old, updated.primary, True)

    def failed() -> Move:
        return Move(record.repository_id, record.relative_path, old, target, False, last_problem)

    return await compare_and_swap(
        attempt, attempts=ATTEMPTS, give_up=failed, backoff=fixed_backoff(RETRY_DELAY)
    )


async def move_all_from(
    store: Store,
    admin: common.Admin,
    virtual_storage: str,
    node: str,
    target: str | None,
    reason: str = "switchover",
) -> list[Move]:
    """Move every primary ``node`` holds in ``virtual_storage``."""
    view = await read_view(store, admin.keys, with_jobs=False)
    repositories = RepositoryStore(store, admin.keys)
    healthy = view.healthy(virtual_storage)
    draining = view.operator.draining(virtual_storage)
    load = primary_load(view.records_of(virtual_storage))
    history = admin.history()
    held = sorted(
        (r for r in view.records_of(virtual_storage) if r.primary == node),
        key=lambda r: r.relative_path,
    )
    moves = []
    with Progress.of(admin.args, f"moving primaries off {node}", len(held)) as progress:
        for record in held:
            moves.append(
                await move_primary(
                    repositories, record, target, healthy, draining, load, history, reason
                )
            )
            progress.update(len(moves))
    return moves


def render(moves: list[Move]) -> str:
    if not moves:
        return "no primary to move"
    rows = [
        [m.relative_path, m.old, m.new, "ok" if m.ok else "FAILED", m.detail or None] for m in moves
    ]
    failed = sum(1 for m in moves if not m.ok)
    summary = f"{len(moves) - failed} moved, {failed} failed"
    return common.table(["REPOSITORY", "FROM", "TO", "RESULT", "DETAIL"], rows) + "\n" + summary


def run(args: argparse.Namespace) -> int:
    async def body(admin: common.Admin) -> int:
        vs = admin.virtual_storage.name
        nodes = admin.nodes(vs)
        for name in (args.source, args.target):
            if name is not None and name not in nodes:
                raise common.UsageError(f"node {name!r} is not part of virtual storage {vs!r}")
        if (args.repository is None) == (args.source is None):
            raise common.UsageError("pass either --repository PATH --to NODE or --from NODE")
        if args.repository is not None and args.target is None:
            raise common.UsageError("--repository needs --to NODE")
        if args.source is not None and args.source == args.target:
            raise common.UsageError("--from and --to name the same node")
        store = await admin.store()
        if args.repository is not None:
            repositories = RepositoryStore(store, admin.keys)
            record = await repositories.find(vs, args.repository)
            if record is None:
                raise common.CommandError(f"repository {vs}/{args.repository} not found")
            view = await read_view(store, admin.keys, with_jobs=False)
            moves = [
                await move_primary(
                    repositories, record, args.target, view.healthy(vs), history=admin.history()
                )
            ]
        else:
            moves = await move_all_from(store, admin, vs, args.source, args.target)
        common.emit(
            args, {"virtual_storage": vs, "moves": [m.data() for m in moves]}, lambda: render(moves)
        )
        return common.EXIT_OK if all(m.ok for m in moves) else common.EXIT_PROBLEM

    return common.run(args, body)
