"""OptimizeRepository: repack objects, pack refs, write the commit-graph.

Maintenance, not a mutation: refs keep their values, so nothing is voted on.
Unreachable objects go into a cruft pack instead of being dropped, because a
concurrent write may have stored objects whose refs it has not updated yet.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gitquorum.errors import Internal
from gitquorum.gitaly import repository_pb2
from gitquorum.storage import git
from gitquorum.storage.context import NodeContext
from gitquorum.storage.locator import RepoPath
from gitquorum.storage.repo_info import repository_info

Strategy = repository_pb2.OptimizeRepositoryRequest.Strategy
# Heuristic thresholds: below these the repository is left as it is.
LOOSE_OBJECTS_LIMIT = 1024
PACKFILE_LIMIT = 8
LOOSE_REFS_LIMIT = 64


@dataclass(frozen=True)
class Plan:
    full_repack: bool
    incremental_repack: bool
    pack_refs: bool
    commit_graph: bool


async def plan(repo: RepoPath, strategy: int) -> Plan:
    if strategy == repository_pb2.OptimizeRepositoryRequest.STRATEGY_EAGER:
        return Plan(full_repack=True, incremental_repack=False, pack_refs=True, commit_graph=True)
    info = await asyncio.to_thread(repository_info, repo.path)
    objects = info.objects
    # A repository without a bitmap has never been fully repacked.
    full = objects.packfile_count > PACKFILE_LIMIT or not info.bitmap.version
    full = full and objects.packfile_count + objects.loose_objects_count > 0
    incremental = not full and objects.loose_objects_count > LOOSE_OBJECTS_LIMIT
    has_refs = info.references.loose_count > 0 or info.references.packed_size > 0
    missing_graph = has_refs and not info.commit_graph.has_generation_data
    return Plan(
        full_repack=full,
        incremental_repack=incremental,
        pack_refs=info.references.loose_count > LOOSE_REFS_LIMIT,
        commit_graph=full or incremental or missing_graph,
    )


async def _run(node: NodeContext, repo: RepoPath, args: list[str]) -> None:
    # Hooks off, no automatic gc: maintenance must not trigger more maintenance.
    command = [*node.voting.no_hooks_args(), "-c", "gc.auto=0", *args]
    result = await git.run(command, git_dir=repo.path, env=repo.git_env())
    if not result.ok:
        text = result.stderr.decode(errors="replace").strip()
        raise Internal(f"git {args[0]} failed: {text}")


async def optimize(node: NodeContext, repo: RepoPath, strategy: int) -> Plan:
    chosen = await plan(repo, strategy)
    if chosen.full_repack:
        await _run(node, repo, ["repack", "-d", "-a", "--cruft", "--write-bitmap-index"])
    elif chosen.incremental_repack:
        await _run(node, repo, ["repack", "-d"])
    if chosen.pack_refs:
        await _run(node, repo, ["pack-refs", "--all"])
    if chosen.commit_graph:
        await _run(
            node,
            repo,
            ["commit-graph", "write", "--reachable", "--split=replace", "--changed-paths"],
        )
    return chosen
