"""Durable before the committed vote: what git and the node write reaches the disk.

The syscall traces come from the real ``strace`` (installed by ``.ci/run``):
a write whose fsync is missing shows up as a path that was never fsynced.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gitquorum.errors import InvalidArgument
from gitquorum.storage import git
from tests.harness.gitrepo import make_repo

STRACE = shutil.which("strace")


def _strace() -> str:
    if STRACE is None:
        pytest.fail("strace is needed to trace fsync calls (apt-get install strace)")
    return STRACE


def fsynced(command: list[str], env: dict[str, str], tmp_path: Path, cwd: Path) -> list[str]:
    """Paths fsynced by ``command`` and every process it starts."""
    trace = tmp_path / "trace.txt"
    subprocess.run(
        [_strace(), "-f", "-y", "-e", "trace=fsync,fdatasync", "-o", str(trace), *command],
        env=env,
        cwd=cwd,
        check=True,
        capture_output=True,
    )
    return re.findall(r"f(?:data)?sync\(\d+<([^>]*)>\)", trace.read_text())


def without_durability() -> dict[str, str]:
    env = git.base_env()
    for key in [
        k for k in env if k.startswith("GIT_CONFIG_COUNT") or "_KEY_" in k or "_VALUE_" in k
    ]:
        del env[key]
    return env


async def test_every_git_the_node_runs_has_durable_settings(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    for key, value in git.DURABILITY_CONFIG.items():
        result = await git.run(["config", "--get", key], cwd=repo)
        assert result.ok, result.stderr
        assert result.stdout.decode().strip() == value


def test_reference_updates_are_fsynced(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    command = [git.GIT, "update-ref", "refs/heads/durable", "HEAD"]
    paths = fsynced(command, git.base_env(), tmp_path, repo)
    assert any(p.endswith("refs/heads/durable.lock") for p in paths), paths
    # The control: git's defaults do not fsync a reference (why the setting exists).
    command = [git.GIT, "update-ref", "refs/heads/plain", "HEAD"]
    assert not any(
        "refs/heads/plain" in p for p in fsynced(command, without_durability(), tmp_path, repo)
    )


def test_loose_objects_are_fsynced(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    blob = tmp_path / "blob"
    blob.write_text("durable\n")
    paths = fsynced([git.GIT, "hash-object", "-w", str(blob)], git.base_env(), tmp_path, repo)
    assert any("/objects/" in p for p in paths), paths
    blob.write_text("not durable\n")
    paths = fsynced([git.GIT, "hash-object", "-w", str(blob)], without_durability(), tmp_path, repo)
    assert not any("/objects/" in p for p in paths), paths


@pytest.mark.parametrize(
    "option", ["core.fsync=none", "core.fsyncMethod=writeout-only", "CORE.FSYNC=none"]
)
def test_clients_cannot_turn_durability_off(option: str) -> None:
    with pytest.raises(InvalidArgument, match="set by the node"):
        git.config_args([option])


def test_a_repository_moved_into_place_is_durable(tmp_path: Path) -> None:
    """Files and directories as staged, then the rename itself, are fsynced."""
    staged = tmp_path / "scratch" / "repo.git"
    (staged / "refs" / "heads").mkdir(parents=True)
    (staged / "HEAD").write_text("ref: refs/heads/main\n")
    (staged / "refs" / "heads" / "main").write_text("0" * 40 + "\n")
    target = tmp_path / "storage" / "ab" / "cd" / "repo.git"
    code = (
        "import sys; from pathlib import Path; "
        "from gitquorum.storage.durable import sync_tree; "
        "from gitquorum.storage.repo_tmp import move_into_place; "
        "sync_tree(Path(sys.argv[1])); move_into_place(Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    paths = fsynced(
        [sys.executable, "-c", code, str(staged), str(target)], git.base_env(), tmp_path, tmp_path
    )
    assert (target / "HEAD").exists()
    # Files and directories as staged (fsynced before the rename) ...
    assert str(staged / "HEAD") in paths and str(staged / "refs" / "heads" / "main") in paths
    assert str(staged / "refs" / "heads") in paths
    # ... new parent directories, and both directories of the rename.
    assert str(tmp_path / "storage" / "ab") in paths and str(target.parent) in paths
    assert str(staged.parent) in paths
