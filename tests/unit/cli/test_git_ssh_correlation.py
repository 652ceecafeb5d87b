"""git-ssh refuses a correlation id it could not send, before it connects."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_correlation_id_that_is_not_plain_is_refused_clearly() -> None:
    env = {**os.environ, "GITQUORUM_CORRELATION_ID": "two\nlines", "GIT_PROTOCOL": ""}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gitquorum.cli.main",
            "git-ssh",
            "-p",
            "1",
            "127.0.0.1",
            "git-receive-pack '/group/project.git'",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    # ssh's "could not run the remote command" status, and why: not a gRPC
    # error about metadata from somewhere inside the transport.
    assert proc.returncode == 128, proc.stderr
    assert "GITQUORUM_CORRELATION_ID must be 1 to 128" in proc.stderr
