"""Real storage nodes for tests: separate processes on free loopback ports.

``NodeProcess`` runs ``gitquorum node`` as a child process that a test can
kill (SIGKILL), pause (SIGSTOP) and resume (SIGCONT). Its log is kept in the
test's directory and printed when the test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc


def wait_for(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll until predicate() is truthy; return its value or raise after the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class NodeProcess:
    name: str
    storage_path: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    address: str = ""
    metrics_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    listen: str = "127.0.0.1:0"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 20.0) -> NodeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_path.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / f"{self.name}.ready"
        ready.unlink(missing_ok=True)
        logfile = open(self.log_path, "ab")
        # Reuse the previous port on restart so clients can reconnect.
        listen = self.address or self.listen
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gitquorum.cli.main",
                "node",
                "--listen",
                listen,
                "--storage",
                f"{self.name}={self.storage_path}",
                "--ready-file",
                str(ready),
                *self.extra_args,
            ],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        logfile.close()

        def is_ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited:\n{self.log_tail()}")
            return ready.exists() and ready.read_text().endswith("\n")

        wait_for(is_ready, timeout, what=f"node {self.name} to serve")
        address, metrics = ready.read_text().split()
        self.address, self.metrics_port = address, int(metrics)
        return self

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def terminate(self, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.address)
