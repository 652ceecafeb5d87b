"""Build real git repositories for tests with the git CLI, and seed targets from them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import grpc

from gitquorum.gitaly import repository_pb2, repository_pb2_grpc, shared_pb2

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ada Author",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Cy Committer",
    "GIT_COMMITTER_EMAIL": "cy@example.com",
    "GIT_AUTHOR_DATE": "2024-01-02T03:04:05+01:00",
    "GIT_COMMITTER_DATE": "2024-01-02T03:04:05+01:00",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(
    *args: str,
    cwd: Path | None = None,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run git and return stdout; raise with stderr on failure."""
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        input=input,
        capture_output=True,
        env={**os.environ, **GIT_ENV, **(env or {})},
        timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode(errors="replace")


def make_repo(
    path: Path,
    commits: int = 3,
    branches: tuple[str, ...] = ("feature",),
    tags: tuple[str, ...] = ("v1.0",),
    annotated_tags: tuple[str, ...] = ("v1.1",),
    binary_size: int = 0,
) -> Path:
    """A non-bare repository on branch main with linear history, extra branches and tags."""
    path.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "-b", "main", str(path))
    for i in range(commits):
        (path / "README.md").write_text(f"# project\n\nrevision {i}\n")
        (path / "src").mkdir(exist_ok=True)
        (path / "src" / f"file{i}.txt").write_text(f"content {i}\n")
        git("add", "-A", cwd=path)
        git("commit", "-q", "-m", f"commit {i}\n\nbody of commit {i}", cwd=path)
    if binary_size:
        (path / "blob.bin").write_bytes(os.urandom(binary_size))
        git("add", "blob.bin", cwd=path)
        git("commit", "-q", "-m", "add binary", cwd=path)
    for branch in branches:
        git("branch", branch, "HEAD~1" if commits > 1 else "HEAD", cwd=path)
    for tag in tags:
        git("tag", tag, cwd=path)
    for tag in annotated_tags:
        git("tag", "-a", tag, "-m", f"release {tag}", cwd=path)
    return path


def bundle(path: Path, out: Path) -> bytes:
    git("bundle", "create", str(out), "--all", cwd=path)
    return out.read_bytes()


async def seed(
    channel: grpc.aio.Channel, repo: shared_pb2.Repository, source: Path, scratch: Path
) -> None:
    """Create ``repo`` on the target from the local repository at ``source``."""
    data = bundle(source, scratch / "seed.bundle")
    stub = repository_pb2_grpc.RepositoryServiceStub(channel)

    async def requests():  # type: ignore[no-untyped-def]
        chunk = 1 << 20
        yield repository_pb2.CreateRepositoryFromBundleRequest(repository=repo, data=data[:chunk])
        for offset in range(chunk, len(data), chunk):
            yield repository_pb2.CreateRepositoryFromBundleRequest(
                data=data[offset : offset + chunk]
            )

    await stub.CreateRepositoryFromBundle(requests())


def refs(path: Path) -> dict[str, str]:
    """refname -> oid of every ref in a repository (bare or not)."""
    out = git("for-each-ref", "--format=%(objectname) %(refname)", cwd=path)
    return {name: oid for oid, name in (line.split(" ", 1) for line in out.splitlines())}
