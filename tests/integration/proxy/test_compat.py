"""Clients generated from Gitaly's own protos see the proxy as they see a node.

The same client sequence (CreateRepository, RepositoryExists, SSHReceivePack by
``git push``, FindCommit, FindDefaultBranchName, SSHUploadPack by ``git clone``
over protocol v0 and v2) runs against a standalone node and against the proxy;
the answers must be the same, and through the proxy every replica holds the
push. The clients run in their own interpreters (tests/compat/gitaly2019.py).
"""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.test_gitaly_client_compat import (
    CLIENT,
    PROTO_DIR,
    client,
    git,
    git_env,
    heads_and_tags,
)
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.node import NodeProcess
from tests.integration.proxy import helpers


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (PROTO_DIR / "ssh.proto").exists():
        pytest.skip("Gitaly's 2019 protos are installed by .ci/run (golang-gitaly-proto-dev)")
    outdir = tmp_path_factory.mktemp("gitaly2019-proxy")
    subprocess.run(
        [sys.executable, str(CLIENT), "compile", str(outdir)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return outdir


@pytest.fixture(scope="module")
def lone_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("compat-node")
    node = NodeProcess("compat", base / "storage", base / "logs").start()
    yield node
    node.terminate()


@pytest.fixture(scope="module")
def small_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One branch only: every default-branch heuristic then agrees on it.
    return gitrepo.make_repo(
        tmp_path_factory.mktemp("compat-source") / "source",
        commits=4,
        branches=(),
        tags=("v1.0",),
        annotated_tags=("v1.1",),
    )


def session_2019(
    address: str, storage: str, relative: str, source: Path, stubs: Path, scratch: Path
) -> dict[str, Any]:
    """Everything the 2019 client sees of one endpoint."""
    seen: dict[str, Any] = {"create": client("create", address, storage, relative, stubs=stubs)}
    env = git_env(
        f"{shlex.quote(sys.executable)} {shlex.quote(str(CLIENT))} ssh",
        GITALY2019_STUBS=str(stubs),
        GITALY2019_STORAGE=storage,
    )
    remote = f"ssh://{address}/{relative}"
    git(env, "push", remote, "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*", cwd=source)
    seen["main"] = client("inspect", address, storage, relative, "main", stubs=stubs)
    seen["tag"] = client("inspect", address, storage, relative, "v1.1", stubs=stubs)
    for version in ("0", "2"):
        clone = scratch / f"clone-{uuid.uuid4().hex}"
        trace = git(
            {**env, "GIT_TRACE_PACKET": "1"},
            "-c",
            f"protocol.version={version}",
            "clone",
            "--mirror",
            remote,
            str(clone),
        )
        gitrepo.git("fsck", "--strict", cwd=clone)
        seen[f"clone-v{version}"] = (heads_and_tags(clone), "< version 2" in trace)
    return seen


def test_gitaly_2019_client_sees_proxy_as_node(
    healthy: Cluster,
    lone_node: NodeProcess,
    stubs: Path,
    small_source: Path,
    relative_path: str,
    tmp_path: Path,
) -> None:
    direct = session_2019(
        lone_node.address, lone_node.name, relative_path, small_source, stubs, tmp_path
    )
    address = healthy.proxies[0].address
    proxied = session_2019(address, "default", relative_path, small_source, stubs, tmp_path)
    assert proxied == direct

    head = gitrepo.git("rev-parse", "main", cwd=small_source).strip()
    assert proxied["create"] == {"exists_before": False, "exists_after": True}
    assert proxied["main"] == {
        "commit_id": head,
        "subject": "commit 3",
        "author_email": "ada@example.com",
        "missing_has_commit": False,
        "default_branch": "refs/heads/main",
    }
    assert proxied["clone-v0"] == (heads_and_tags(small_source), False)
    assert proxied["clone-v2"] == (heads_and_tags(small_source), True)
    helpers.wait_converged(address, relative_path)
    for node, refs in helpers.replica_refs(healthy, address, relative_path).items():
        assert heads_and_tags_of(refs) == heads_and_tags(small_source), node


def heads_and_tags_of(refs: dict[str, str]) -> dict[str, str]:
    return {n: o for n, o in refs.items() if n.startswith(("refs/heads/", "refs/tags/"))}


def test_current_gitaly_client_sees_proxy_as_node(
    healthy: Cluster, lone_node: NodeProcess, small_source: Path, relative_path: str
) -> None:
    if importlib.util.find_spec("hgitaly") is None:
        pytest.skip("the hgitaly package (current Gitaly stubs) is installed by .ci/run")
    answers = []
    for address, storage in (
        (lone_node.address, lone_node.name),
        (healthy.proxies[1].address, "default"),
    ):
        created = client("create", address, storage, relative_path, flavor="hgitaly")
        env = git_env(
            f"{shlex.quote(sys.executable)} -m gitquorum.cli.git_ssh", GITQUORUM_STORAGE=storage
        )
        git(env, "push", f"ssh://{address}/{relative_path}", "main", "v1.1", cwd=small_source)
        found = client("inspect", address, storage, relative_path, "main", flavor="hgitaly")
        answers.append((created, found))
    assert answers[0] == answers[1]
    assert answers[1][1]["commit_id"] == gitrepo.git("rev-parse", "main", cwd=small_source).strip()
    assert answers[1][1]["default_branch"] == "refs/heads/main"
