"""Clients generated from Gitaly's own protos work against a gitquorum node.

The 2019 client is compiled at test time from the protos Debian ships in
``golang-gitaly-proto-dev``; it creates a repository, pushes and clones with
the real git CLI through SSHReceivePack/SSHUploadPack (as gitlab-shell does),
and reads commits and the default branch back. The current-protocol client
uses the stubs in the ``hgitaly`` package. Each client runs in its own
interpreter (tests/compat/gitaly2019.py): Gitaly's ``gitaly.*`` descriptors
cannot share a process with gitquorum's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target
from tests.harness import gitrepo

CLIENT = Path(__file__).resolve().parents[1] / "compat" / "gitaly2019.py"
PROTO_DIR = Path("/usr/share/gocode/src/gitlab.com/gitlab-org/gitaly-proto")


@pytest.fixture(scope="module")
def stubs_2019(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (PROTO_DIR / "ssh.proto").exists():
        pytest.skip("Gitaly's 2019 protos are installed by .ci/run (golang-gitaly-proto-dev)")
    outdir = tmp_path_factory.mktemp("gitaly2019")
    subprocess.run(
        [sys.executable, str(CLIENT), "compile", str(outdir)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return outdir


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One branch only: every default-branch heuristic then agrees on it.
    return gitrepo.make_repo(
        tmp_path_factory.mktemp("compat") / "source",
        commits=6,
        branches=(),
        tags=("v1.0",),
        annotated_tags=("v1.1",),
    )


def client(*args: str, flavor: str = "2019", stubs: Path | None = None) -> dict[str, Any]:
    command = [sys.executable, str(CLIENT), "--flavor", flavor]
    if stubs is not None:
        command += ["--stubs", str(stubs)]
    proc = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def git_env(ssh_command: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_SSH", "GIT_SSH_VARIANT")}
    env.update(gitrepo.GIT_ENV)
    env.update(GIT_SSH_COMMAND=ssh_command, **extra)
    return env


def git(env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"git {args}: {proc.stderr}"
    return proc.stderr


def heads_and_tags(path: Path) -> dict[str, str]:
    return {
        n: o for n, o in gitrepo.refs(path).items() if n.startswith(("refs/heads/", "refs/tags/"))
    }


def test_gitaly_2019_client(target: Target, stubs_2019: Path, source: Path, tmp_path: Path) -> None:
    repo = target.repository()
    address, storage, relative = target.address, target.storage, repo.relative_path

    created = client("create", address, storage, relative, stubs=stubs_2019)
    assert created == {"exists_before": False, "exists_after": True}

    env = git_env(
        f"{shlex.quote(sys.executable)} {shlex.quote(str(CLIENT))} ssh",
        GITALY2019_STUBS=str(stubs_2019),
        GITALY2019_STORAGE=storage,
    )
    remote = f"ssh://{address}/{relative}"
    git(env, "push", remote, "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*", cwd=source)

    head = gitrepo.git("rev-parse", "main", cwd=source).strip()
    found = client("inspect", address, storage, relative, "main", stubs=stubs_2019)
    assert found == {
        "commit_id": head,
        "subject": "commit 5",
        "author_email": "ada@example.com",
        "missing_has_commit": False,
        "default_branch": "refs/heads/main",
    }
    tag_target = gitrepo.git("rev-parse", "v1.1^{commit}", cwd=source).strip()
    assert (
        client("inspect", address, storage, relative, "v1.1", stubs=stubs_2019)["commit_id"]
        == tag_target
    )

    for version in ("0", "2"):
        clone = tmp_path / f"clone-v{version}"
        trace = git(
            {**env, "GIT_TRACE_PACKET": "1"},
            "-c",
            f"protocol.version={version}",
            "clone",
            "--mirror",
            remote,
            str(clone),
        )
        assert ("< version 2" in trace) == (version == "2")
        assert heads_and_tags(clone) == heads_and_tags(source)
        gitrepo.git("fsck", "--strict", cwd=clone)


def test_current_gitaly_client(target: Target, source: Path) -> None:
    if importlib.util.find_spec("hgitaly") is None:
        pytest.skip("the hgitaly package (current Gitaly stubs) is installed by .ci/run")
    repo = target.repository()
    address, storage, relative = target.address, target.storage, repo.relative_path

    created = client("create", address, storage, relative, flavor="hgitaly")
    assert created == {"exists_before": False, "exists_after": True}

    # hgitaly has no SSH stubs: push with gitquorum's own helper.
    env = git_env(
        f"{shlex.quote(sys.executable)} -m gitquorum.cli.git_ssh", GITQUORUM_STORAGE=storage
    )
    git(env, "push", f"ssh://{address}/{relative}", "main", "v1.1", cwd=source)

    found = client("inspect", address, storage, relative, "main", flavor="hgitaly")
    assert found["commit_id"] == gitrepo.git("rev-parse", "main", cwd=source).strip()
    assert found["subject"] == "commit 5"
    assert found["missing_has_commit"] is False
    assert found["default_branch"] == "refs/heads/main"
