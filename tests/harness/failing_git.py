"""A git that fails while committing a reference update, for the nodes of a test.

A node runs the git named by ``GITQUORUM_GIT``. :func:`install` writes a
wrapper that runs the real git, except for ``update-ref --stdin`` in a
repository under the directory named in the flag file: there it removes git's
``.lock`` files just before passing on ``commit``, so the real git fails at
commit time after a successful prepare (as it does when the disk fills up or
the file system turns read-only between the two). Everything else, and every
repository while the flag file is absent, goes to the real git untouched.

    wrapper = failing_git.install(tmp_path)
    node_env = {"GITQUORUM_GIT": str(wrapper.script)}
    with wrapper.failing_commits(replica_dir):
        ...  # update-ref in replica_dir fails at commit
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_SHELL = """#!/bin/bash
# Only update-ref --stdin can be made to fail; everything else is the real git.
flag={flag}
if [ -s "$flag" ]; then
  for arg in "$@"; do
    if [ "$arg" = update-ref ]; then exec {python} {relay} "$flag" {git} "$@"; fi
  done
fi
exec {git} "$@"
"""

_RELAY = '''"""Relay update-ref's stdin to the real git; drop its locks before "commit"."""
import os, subprocess, sys
from pathlib import Path

flag, git, args = sys.argv[1], sys.argv[2], sys.argv[3:]
prefix = Path(flag).read_text().strip()
git_dir = next((a.split("=", 1)[1] for a in args if a.startswith("--git-dir=")), "")
failing = bool(prefix) and git_dir.startswith(prefix)
proc = subprocess.Popen([git, *args], stdin=subprocess.PIPE)
while True:
    chunk = os.read(0, 65536)
    if not chunk:
        break
    if failing and b"commit\\0" in chunk:
        for lock in Path(git_dir).glob("refs/**/*.lock"):
            lock.unlink()
    proc.stdin.write(chunk)
    proc.stdin.flush()
proc.stdin.close()
sys.exit(proc.wait())
'''


@dataclass(frozen=True)
class FailingGit:
    script: Path  # the value of GITQUORUM_GIT
    flag: Path  # holds the directory whose repositories fail; absent: none do

    @contextlib.contextmanager
    def failing_commits(self, under: Path) -> Iterator[None]:
        """While in the block, update-ref in repositories under ``under`` fails at commit."""
        self.flag.write_text(str(under))
        try:
            yield
        finally:
            self.flag.unlink(missing_ok=True)


def install(directory: Path) -> FailingGit:
    directory.mkdir(parents=True, exist_ok=True)
    git = shutil.which("git")
    assert git is not None, "git not found"
    relay = directory / "failing_git_relay.py"
    relay.write_text(_RELAY)
    flag = directory / "failing-git.flag"
    script = directory / "git"
    script.write_text(
        _SHELL.format(flag=str(flag), python=sys.executable, relay=str(relay), git=git)
    )
    script.chmod(0o755)
    return FailingGit(script, flag)
