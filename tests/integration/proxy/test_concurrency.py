"""Concurrent pushes through both proxies: nothing acknowledged is lost.

Two repositories; on each, pushers to their own branches and pushers racing on
one shared branch (a rejected push fetches, rebases and retries, as a user
would). Afterwards every replica holds every acknowledged push and the
replicas' refs are identical.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.integration.proxy import helpers

OWN_BRANCH_PUSHERS = 2
SHARED_PUSHERS = 3
COMMITS = 2
ATTEMPTS = 15


@dataclass
class Ledger:
    """Pushes the server acknowledged (exit status 0), by repository."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    branches: dict[tuple[str, str], str] = field(default_factory=dict)
    shared: dict[str, list[str]] = field(default_factory=dict)
    retries: int = 0

    def own(self, repo: str, branch: str, oid: str) -> None:
        with self.lock:
            self.branches[(repo, branch)] = oid

    def on_shared(self, repo: str, oid: str) -> None:
        with self.lock:
            self.shared.setdefault(repo, []).append(oid)


def _clone(address: str, repo: str, work: Path) -> None:
    helpers.ok(helpers.run_git("clone", "-q", helpers.url(address, repo), str(work)))
    gitrepo.git("config", "user.name", "Pusher", cwd=work)
    gitrepo.git("config", "user.email", "pusher@example.com", cwd=work)


def own_branch_pusher(address: str, repo: str, work: Path, branch: str, ledger: Ledger) -> None:
    _clone(address, repo, work)
    gitrepo.git("checkout", "-q", "-b", branch, cwd=work)
    for i in range(COMMITS):
        oid = helpers.commit(work, f"{branch}-{i}.txt")
        # A push that failed (e.g. a vote timed out on a loaded machine) was not
        # acknowledged: the user pushes again, which is a no-op if it had landed.
        for _ in range(ATTEMPTS):
            push = helpers.run_git("push", "origin", f"HEAD:refs/heads/{branch}", cwd=work)
            if push.returncode == 0:
                ledger.own(repo, branch, oid)
                break
            with ledger.lock:
                ledger.retries += 1
        else:
            raise AssertionError(f"{branch}: push never succeeded: {push.stderr}")


def shared_pusher(address: str, repo: str, work: Path, name: str, ledger: Ledger) -> None:
    _clone(address, repo, work)
    gitrepo.git("checkout", "-q", "-B", "shared", "origin/shared", cwd=work)
    for i in range(COMMITS):
        helpers.commit(work, f"{name}-{i}.txt")
        for _ in range(ATTEMPTS):
            if (
                helpers.run_git("push", "origin", "HEAD:refs/heads/shared", cwd=work).returncode
                == 0
            ):
                ledger.on_shared(repo, gitrepo.git("rev-parse", "HEAD", cwd=work).strip())
                break
            with ledger.lock:
                ledger.retries += 1
            helpers.ok(helpers.run_git("fetch", "-q", "origin", cwd=work))
            gitrepo.git("rebase", "-q", "origin/shared", cwd=work)
        else:
            raise AssertionError(f"{name}: push to shared never succeeded")


def test_concurrent_pushes_lose_nothing(healthy: Cluster, source: Path, tmp_path: Path) -> None:
    proxies = [p.address for p in healthy.proxies]
    repos = [f"proxy/concurrent-{tmp_path.name}-{i}.git" for i in range(2)]
    for repo in repos:
        helpers.create(proxies[0], repo)
        helpers.push(proxies[0], repo, source, "main", "main:refs/heads/shared")

    ledger = Ledger()
    jobs: list[Callable[[], None]] = []
    for r, repo in enumerate(repos):
        for i in range(OWN_BRANCH_PUSHERS):
            address = proxies[(r + i) % 2]
            work = tmp_path / f"own-{r}-{i}"
            jobs.append(partial(own_branch_pusher, address, repo, work, f"b{i}", ledger))
        for i in range(SHARED_PUSHERS):
            address = proxies[(r + i + 1) % 2]
            work = tmp_path / f"shared-{r}-{i}"
            jobs.append(partial(shared_pusher, address, repo, work, f"s{r}{i}", ledger))
    with ThreadPoolExecutor(max_workers=6) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()

    assert len(ledger.branches) == len(repos) * OWN_BRANCH_PUSHERS
    assert sum(len(v) for v in ledger.shared.values()) == len(repos) * SHARED_PUSHERS * COMMITS
    for repo in repos:
        helpers.wait_converged(proxies[0], repo, timeout=60)
        on_disk = helpers.replica_refs(healthy, proxies[0], repo)
        first = next(iter(on_disk.values()))
        for node, refs in on_disk.items():
            assert refs == first, f"{repo}: {node} differs"
        for (name, branch), oid in ledger.branches.items():
            if name == repo:
                assert first[f"refs/heads/{branch}"] == oid
        for path in helpers.replica_dirs(healthy, proxies[0], repo).values():
            tip = first["refs/heads/shared"]
            for oid in ledger.shared[repo]:
                gitrepo.git("merge-base", "--is-ancestor", oid, tip, cwd=path)
        # Every shared pusher's commits are in the history exactly once.
        path = next(iter(helpers.replica_dirs(healthy, proxies[0], repo).values()))
        subjects = gitrepo.git("log", "--format=%s", "shared", cwd=path).splitlines()
        r = repos.index(repo)
        for i in range(SHARED_PUSHERS):
            for j in range(COMMITS):
                assert subjects.count(f"change s{r}{i}-{j}.txt") == 1
    print(f"retried pushes: {ledger.retries}")
