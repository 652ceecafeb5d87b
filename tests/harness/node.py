"""Real storage nodes for tests: separate processes on free loopback ports.

``NodeProcess`` runs ``gitquorum node`` as a child process (the package's
:class:`gitquorum.launch.process.ChildProcess`) that a test can kill (SIGKILL),
pause (SIGSTOP) and resume (SIGCONT). Its log is kept in the test's directory
and printed when the test fails.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc

from gitquorum.launch.process import wait_for
from tests.harness.pooled import PooledChild, workers_from_env

__all__ = ["NODE_WORKERS_ENV", "NodeProcess", "wait_for"]

# GITQUORUM_TEST_NODE_WORKERS=N runs every test node with N worker processes.
NODE_WORKERS_ENV = "GITQUORUM_TEST_NODE_WORKERS"


class NodeProcess(PooledChild):
    def __init__(
        self,
        name: str,
        storage_path: Path,
        workdir: Path,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        address: str = "",
        metrics_port: int = 0,
        listen: str = "127.0.0.1:0",
    ) -> None:
        super().__init__(name, workdir / f"{name}.log", workdir / f"{name}.ready")
        self.storage_path = storage_path
        self.workdir = workdir
        # Added to the test process's environment at every start.
        self.extra_env = dict(env or {})
        # Read at every start: a test may change them between restarts.
        self.extra_args = list(extra_args or [])
        self.address = address
        self.metrics_port = metrics_port
        self.listen = listen

    def command(self) -> list[str]:
        # Reuse the previous port on restart so clients can reconnect.
        listen = self.address or self.listen
        return [
            sys.executable,
            "-m",
            "gitquorum.cli.main",
            "node",
            "--listen",
            listen,
            "--storage",
            f"{self.name}={self.storage_path}",
            "--ready-file",
            str(self.ready_file),
            *self.worker_args(),
            *self.extra_args,
        ]

    def worker_args(self) -> list[str]:
        """``--workers N`` from GITQUORUM_TEST_NODE_WORKERS (default: one process)."""
        workers = workers_from_env(NODE_WORKERS_ENV)
        if workers == 1 or "--config" in self.extra_args:
            return []  # a node run from a file takes its workers from the file
        return ["--workers", str(workers)]

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.extra_env}

    def start(self, timeout: float = 20.0) -> NodeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_path.mkdir(parents=True, exist_ok=True)
        super().start(timeout)
        return self

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.address)
