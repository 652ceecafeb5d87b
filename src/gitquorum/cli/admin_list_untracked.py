"""``gitquorum list-untracked-repositories``: git repositories on disk that etcd does not know.

Nodes have no RPC that walks a storage, so this command reads the disks
itself and runs on the node's host: name the storages with
``--storage-path NODE=PATH`` or with the node's configuration file
(``--node-config FILE``). Every directory holding ``HEAD``, ``objects/`` and
``refs/`` is a repository (the walk does not descend into one, nor into the
node's private ``+gitquorum`` area, nor follow symlinks). A repository is
tracked when its path is the replica path of a repository record that lists
this node (as a replica or assigned); everything else is listed:

* ``untracked``: not a replica path at all (copied in by hand, restored...);
* ``no record``: a replica path whose repository no longer exists (removed
  while the node was down);
* ``not recorded on this node``: a replica path of a live repository that does
  not count this node (e.g. after lowering its replication factor).

Repositories changed within ``--older-than`` (default 6h) are skipped: a
repository being created is on disk a moment before its record is in etcd.
Adopt one with ``track-repository``, or delete it by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitquorum.cli import admin_common as common
from gitquorum.cli.admin_view import read_records
from gitquorum.cluster.keys import replica_path
from gitquorum.cluster.repositories import RepositoryRecord
from gitquorum.config import load_node_config
from gitquorum.errors import ConfigError
from gitquorum.wire.paths import INTERNAL_DIR

_REPLICA = re.compile(r"^@cluster/repositories/[0-9a-f]{2}/[0-9a-f]{2}/([0-9]+)$")


@dataclass(frozen=True)
class Found:
    node: str
    relative_path: str
    modified: float
    kind: str

    def data(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "relative_path": self.relative_path,
            "modified": self.modified,
            "kind": self.kind,
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser)
    parser.add_argument(
        "--storage-path",
        action="append",
        default=[],
        metavar="NODE=PATH",
        help="a node's storage root on this host (repeatable)",
    )
    parser.add_argument(
        "--node-config",
        action="append",
        default=[],
        metavar="FILE",
        help="a node's YAML configuration: its storages and their roots (repeatable)",
    )
    parser.add_argument(
        "--older-than",
        type=common.parse_duration_arg,
        default=6 * 3600.0,
        metavar="DURATION",
        help="only repositories unchanged for this long (default 6h)",
    )


def storage_roots(args: argparse.Namespace) -> dict[str, Path]:
    roots: dict[str, Path] = {}
    for item in args.storage_path:
        node, sep, path = item.partition("=")
        if not sep or not node or not path:
            raise common.UsageError(f"--storage-path expects NODE=PATH, not {item!r}")
        roots[node] = Path(path)
    for file in args.node_config:
        try:
            config = load_node_config(file)
        except ConfigError as exc:
            raise common.UsageError("\n".join(f"{file}: {p}" for p in exc.problems)) from exc
        roots.update((s.name, s.path) for s in config.storages)
    if not roots:
        raise common.UsageError(
            "name the storages to walk: --storage-path NODE=PATH or --node-config FILE"
        )
    return roots


def is_repository(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def modified(path: Path) -> float:
    # refs/ changes with every ref update that is not packed; the directory with renames.
    return max(path.stat().st_mtime, (path / "refs").stat().st_mtime)


def walk(root: Path) -> list[tuple[str, float]]:
    """(relative path, last change) of every repository under ``root``."""
    if not root.is_dir():
        raise common.CommandError(f"storage root {root} is not a readable directory")
    found = []
    for directory, subdirs, _files in os.walk(root, followlinks=False):
        here = Path(directory)
        if here == root:
            subdirs[:] = [d for d in subdirs if d != INTERNAL_DIR]
        if here != root and is_repository(here):
            found.append((here.relative_to(root).as_posix(), modified(here)))
            subdirs[:] = []
            continue
        subdirs.sort()
    return found


def classify(
    node: str, relative: str, by_id: dict[int, RepositoryRecord], tracked: set[str]
) -> str | None:
    """None when tracked on ``node``; else why it is listed."""
    if relative in tracked:
        return None
    match = _REPLICA.match(relative)
    if match is None or replica_path(int(match.group(1))) != relative:
        return "untracked"
    record = by_id.get(int(match.group(1)))
    if record is None:
        return "no record"
    return "not recorded on this node"


def tracked_paths(
    records: tuple[RepositoryRecord, ...], vs_nodes: dict[str, list[str]]
) -> dict[str, set[str]]:
    """node -> replica paths it should hold."""
    paths: dict[str, set[str]] = {}
    for record in records:
        nodes = set(record.replica_nodes) | set(
            record.assigned or vs_nodes.get(record.virtual_storage, [])
        )
        for node in nodes:
            paths.setdefault(node, set()).add(record.replica_path)
    return paths


def run(args: argparse.Namespace) -> int:
    async def body(admin: common.Admin) -> int:
        roots = storage_roots(args)
        known = set(admin.node_addresses())
        unknown = sorted(set(roots) - known)
        if unknown:
            raise common.UsageError(f"not a configured node: {', '.join(unknown)}")
        records = await read_records(await admin.store(), admin.keys)
        by_id = {r.repository_id: r for r in records}
        vs_nodes = {vs.name: [n.storage for n in vs.nodes] for vs in admin.config.virtual_storages}
        tracked = tracked_paths(records, vs_nodes)
        cutoff = time.time() - args.older_than
        found: list[Found] = []
        for node, root in sorted(roots.items()):
            for relative, changed in await asyncio.to_thread(walk, root):
                kind = classify(node, relative, by_id, tracked.get(node, set()))
                if kind is not None and changed <= cutoff:
                    found.append(Found(node, relative, changed, kind))
        data = {"repositories": [f.data() for f in found]}

        def human() -> str:
            if not found:
                return "no untracked repositories"
            return common.table(
                ["NODE", "RELATIVE PATH", "KIND", "MODIFIED"],
                [[f.node, f.relative_path, f.kind, common.format_time(f.modified)] for f in found],
            )

        common.emit(args, data, human)
        return common.EXIT_OK

    return common.run(args, body)
