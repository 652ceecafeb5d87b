"""The real git CLI against a real node through ``gitquorum git-ssh`` (GIT_SSH_COMMAND).

Pushes a repository with history, branches, both kinds of tags and a 5 MB
binary, clones it back over protocol v0 and v2, fetches, and checks every
ref and ``git fsck`` on both sides; then the failure modes a user sees.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from gitquorum import tokens
from gitquorum.cli import git_ssh
from gitquorum.gitaly import (
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
    ssh_pb2,
    ssh_pb2_grpc,
)
from tests.conftest import THROUGH_PROXY, Target
from tests.harness import gitrepo

HELPER = f"{shlex.quote(sys.executable)} -m gitquorum.cli.git_ssh"
BINARY_SIZE = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gitrepo.make_repo(
        tmp_path_factory.mktemp("roundtrip") / "source",
        commits=50,
        branches=("feature", "release/1.x"),
        tags=("v1.0",),
        annotated_tags=("v1.1", "v2.0-rc1"),
        binary_size=BINARY_SIZE,
    )


def ssh_env(target: Target, helper: str = HELPER, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_SSH", "GIT_SSH_VARIANT")}
    env.update(gitrepo.GIT_ENV)
    env.update(GIT_SSH_COMMAND=helper, GITQUORUM_STORAGE=target.storage, **extra)
    return env


def url(target: Target, repo: shared_pb2.Repository) -> str:
    return f"ssh://{target.address}/{repo.relative_path}"


def run_git(
    target: Target, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=env or ssh_env(target),
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"{proc.args}: {proc.stderr}"
    return proc


def fsck(path: Path) -> None:
    gitrepo.git("fsck", "--full", "--strict", cwd=path)


def heads_and_tags(path: Path) -> dict[str, str]:
    return {
        name: oid
        for name, oid in gitrepo.refs(path).items()
        if name.startswith(("refs/heads/", "refs/tags/"))
    }


async def create_repository(channel: grpc.aio.Channel, repo: shared_pb2.Repository) -> None:
    stub = repository_pb2_grpc.RepositoryServiceStub(channel)
    await stub.CreateRepository(repository_pb2.CreateRepositoryRequest(repository=repo))


@pytest.fixture
async def pushed(channel: grpc.aio.Channel, target: Target, source: Path) -> shared_pb2.Repository:
    """A repository on the node holding every branch and tag of ``source``, by git push."""
    repo = target.repository()
    await create_repository(channel, repo)
    ok(
        run_git(
            target,
            "push",
            url(target, repo),
            "refs/heads/*:refs/heads/*",
            "refs/tags/*:refs/tags/*",
            cwd=source,
        )
    )
    return repo


async def test_push_then_clone_over_v2_and_v0(
    target: Target, source: Path, pushed: shared_pb2.Repository, tmp_path: Path
) -> None:
    expected = heads_and_tags(source)
    assert len(expected) == 6
    if target.storage_path is not None:
        replica = target.disk_path(pushed)
        assert heads_and_tags(replica) == expected
        fsck(replica)

    v2 = tmp_path / "v2"
    proc = ok(
        run_git(
            target,
            "-c",
            "protocol.version=2",
            "clone",
            "--mirror",
            url(target, pushed),
            str(v2),
            env=ssh_env(target, GIT_TRACE_PACKET="1"),
        )
    )
    assert "< version 2" in proc.stderr
    assert heads_and_tags(v2) == expected
    fsck(v2)

    v0 = tmp_path / "v0"
    proc = ok(
        run_git(
            target,
            "-c",
            "protocol.version=0",
            "clone",
            "--branch",
            "main",
            url(target, pushed),
            str(v0),
            env=ssh_env(target, GIT_TRACE_PACKET="1"),
        )
    )
    assert "< version 2" not in proc.stderr
    assert {f"refs/heads/{b}" for b in ("main", "feature", "release/1.x")} == {
        f"refs/heads/{name.removeprefix('refs/remotes/origin/')}"
        for name in gitrepo.refs(v0)
        if name.startswith("refs/remotes/origin/") and name != "refs/remotes/origin/HEAD"
    }
    assert (v0 / "blob.bin").read_bytes() == (source / "blob.bin").read_bytes()
    assert gitrepo.git("rev-list", "--count", "HEAD", cwd=v0).strip() == "51"
    fsck(v0)


async def test_fetch_brings_new_commits_and_tags(
    target: Target, source: Path, pushed: shared_pb2.Repository, tmp_path: Path
) -> None:
    mirror = tmp_path / "mirror"
    ok(run_git(target, "clone", "--mirror", url(target, pushed), str(mirror)))
    work = tmp_path / "work"
    ok(run_git(target, "clone", "-q", url(target, pushed), str(work)))
    (work / "new.txt").write_text("new\n")
    gitrepo.git("add", "new.txt", cwd=work)
    gitrepo.git("commit", "-q", "-m", "after clone", cwd=work)
    gitrepo.git("tag", "-a", "v3.0", "-m", "v3", cwd=work)
    ok(run_git(target, "push", "origin", "main", "v3.0", cwd=work))

    ok(run_git(target, "fetch", "--prune", cwd=mirror))
    assert (
        heads_and_tags(mirror)["refs/heads/main"]
        == gitrepo.git("rev-parse", "HEAD", cwd=work).strip()
    )
    assert "refs/tags/v3.0" in heads_and_tags(mirror)
    if target.storage_path is not None:
        assert heads_and_tags(mirror) == heads_and_tags(target.disk_path(pushed))
    fsck(mirror)


@pytest.mark.skipif(THROUGH_PROXY, reason="sets repository config on the node's disk")
async def test_non_fast_forward_push_is_rejected_by_the_server(
    target: Target, pushed: shared_pb2.Repository, tmp_path: Path
) -> None:
    replica = target.disk_path(pushed)
    gitrepo.git("config", "receive.denyNonFastForwards", "true", cwd=replica)
    before = gitrepo.refs(replica)
    work = tmp_path / "work"
    ok(run_git(target, "clone", "-q", url(target, pushed), str(work)))
    gitrepo.git("reset", "-q", "--hard", "HEAD~3", cwd=work)
    (work / "rewrite.txt").write_text("history rewritten\n")
    gitrepo.git("add", "rewrite.txt", cwd=work)
    gitrepo.git("commit", "-q", "-m", "rewrite", cwd=work)

    proc = run_git(target, "push", "--force", "origin", "main", cwd=work)
    assert proc.returncode != 0
    assert "denying non-fast-forward refs/heads/main" in proc.stderr
    assert "[remote rejected] main -> main (non-fast-forward)" in proc.stderr
    assert gitrepo.refs(replica) == before


async def test_clone_of_missing_repository_fails_clearly(target: Target, tmp_path: Path) -> None:
    missing = target.repository("missing/never-created.git")
    proc = run_git(target, "clone", url(target, missing), str(tmp_path / "c"))
    assert proc.returncode == 128
    assert "fatal: repository 'missing/never-created.git' not found" in proc.stderr
    assert "Could not read from remote repository" in proc.stderr
    assert not (tmp_path / "c").exists()


async def test_archive_remote_matches_local_archive(
    target: Target, source: Path, pushed: shared_pb2.Repository
) -> None:
    remote = subprocess.run(  # noqa: ASYNC221 - the node runs in another process
        ["git", "archive", f"--remote={url(target, pushed)}", "--format=tar", "feature"],
        env=ssh_env(target),
        capture_output=True,
        timeout=60,
    )
    assert remote.returncode == 0, remote.stderr
    local = subprocess.run(  # noqa: ASYNC221
        ["git", "archive", "--format=tar", "feature"],
        cwd=source,
        env={**os.environ, **gitrepo.GIT_ENV},
        capture_output=True,
        check=True,
    )
    assert remote.stdout == local.stdout

    bad = run_git(target, "archive", f"--remote={url(target, pushed)}", "no-such-ref", cwd=source)
    assert bad.returncode != 0
    assert "no such ref" in bad.stderr


async def test_console_script_and_address_override(
    target: Target, source: Path, pushed: shared_pb2.Repository
) -> None:
    script = shutil.which("gitquorum")
    helper = (
        f"{shlex.quote(script)} git-ssh"
        if script
        else f"{shlex.quote(sys.executable)} -m gitquorum.cli.main git-ssh"
    )
    proc = ok(run_git(target, "ls-remote", url(target, pushed), env=ssh_env(target, helper)))
    listed = {line.split("\t")[1]: line.split("\t")[0] for line in proc.stdout.splitlines()}
    for name, oid in heads_and_tags(source).items():
        assert listed[name] == oid

    # scp-like syntax, no port: GITQUORUM_ADDRESS names the endpoint.
    env = ssh_env(target, GITQUORUM_ADDRESS=target.address)
    proc = ok(run_git(target, "ls-remote", f"git@gitquorum:{pushed.relative_path}", env=env))
    assert f"{heads_and_tags(source)['refs/heads/main']}\trefs/heads/main" in proc.stdout


async def test_helper_without_port_or_address_explains(target: Target) -> None:
    proc = run_git(target, "ls-remote", "git@gitquorum:some/repo.git")
    assert proc.returncode != 0
    assert "no port" in proc.stderr


class _RecordingSSH(ssh_pb2_grpc.SSHServiceServicer):
    """Records what the helper sends and answers like a receive-pack with nothing to do."""

    def __init__(self) -> None:
        self.metadata: dict[str, str] = {}
        self.first: ssh_pb2.SSHReceivePackRequest | None = None

    async def SSHReceivePack(
        self,
        request_iterator: AsyncIterator[ssh_pb2.SSHReceivePackRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ssh_pb2.SSHReceivePackResponse]:
        self.metadata = {k: str(v) for k, v in context.invocation_metadata() or ()}
        self.first = await anext(request_iterator)
        yield ssh_pb2.SSHReceivePackResponse(stderr=b"recorded\n")
        yield ssh_pb2.SSHReceivePackResponse(exit_status=shared_pb2.ExitStatus(value=3))


async def test_helper_sends_token_identity_and_exit_status(tmp_path: Path) -> None:
    recorder = _RecordingSSH()
    server = grpc.aio.server()
    ssh_pb2_grpc.add_SSHServiceServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    secret_file = tmp_path / "token"
    secret_file.write_text("s3cret\n")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gitquorum.cli.git_ssh",
            "-o",
            "SendEnv=GIT_PROTOCOL",
            "-p",
            str(port),
            "git@127.0.0.1",
            "git-receive-pack '/group/project.git'",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={
                **os.environ,
                "GITQUORUM_TOKEN_FILE": str(secret_file),
                "GITQUORUM_STORAGE": "store-b",
                "GL_ID": "key-42",
                "GL_USERNAME": "ada",
                "GIT_PROTOCOL": "version=2",
            },
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        await server.stop(0)
    assert proc.returncode == 3
    assert stderr == b"recorded\n"
    assert recorder.first is not None
    assert recorder.first.repository.storage_name == "store-b"
    assert recorder.first.repository.relative_path == "group/project.git"
    assert (recorder.first.gl_id, recorder.first.gl_username) == ("key-42", "ada")
    assert recorder.first.git_protocol == "version=2"
    assert not recorder.first.stdin
    tokens.check(recorder.metadata.get("authorization"), b"s3cret")


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["git-upload-pack '/group/project.git'"], ("git-upload-pack", "group/project.git")),
        (["git-receive-pack 'it'\\''s here!.git'"], ("git-receive-pack", "it's here!.git")),
        (["git-receive-pack '/a'\\!'b.git'"], ("git-receive-pack", "a!b.git")),
        (["git upload-pack '/x.git'"], ("git-upload-pack", "x.git")),
        (["/usr/lib/git-core/git-upload-archive", "'/x.git'"], ("git-upload-archive", "x.git")),
    ],
)
def test_remote_command_parsing(words: list[str], expected: tuple[str, str]) -> None:
    assert git_ssh.parse_command(words) == expected


@pytest.mark.parametrize(
    "words", [["rm -rf /"], ["git-upload-pack"], ["git-upload-pack '/'"], ["git-upload-pack 'x"]]
)
def test_unsupported_remote_commands_are_refused(words: list[str]) -> None:
    with pytest.raises(ValueError):
        git_ssh.parse_command(words)
