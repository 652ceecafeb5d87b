"""``gitquorum http`` as a process, for tests that clone or push over HTTP."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gitquorum.launch.process import wait_for


@contextmanager
def http_gateway(proxy: str, logs: Path, scratch: Path, *args: str) -> Iterator[str]:
    """A gateway in front of ``proxy`` (more flags in ``args``) until the block
    ends; yields the host:port it serves on. Its log goes under ``logs``."""
    ready = scratch / f"http-{uuid.uuid4().hex[:6]}.ready"
    log_path = logs / f"http-{uuid.uuid4().hex[:6]}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "gitquorum.cli.main", "http",
                "--listen", "127.0.0.1:0",
                "--proxy", proxy,
                "--ready-file", str(ready),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def serving() -> bool:
            assert proc.poll() is None, log_path.read_text()
            return ready.exists() and ready.read_text().endswith("\n")

        wait_for(serving, 30, what="the gateway to serve")
        yield ready.read_text().split()[0]
    finally:
        proc.terminate()
        proc.wait(15)
