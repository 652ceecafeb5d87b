"""One child server process: started, waited for, signalled, stopped.

Nodes, proxies and the HTTP gateway write a ready file (``ADDRESS [METRICS_PORT]``
and a newline) once they serve; :class:`ChildProcess` spawns a command with its
output in a log file and reads that file. The same object lets a caller kill
(-9), pause (SIGSTOP), resume and terminate the child, and print its log's tail.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1

T = TypeVar("T")


class LaunchError(RuntimeError):
    """A part could not be started; the message says why and where to look."""


def wait_for(
    predicate: Callable[[], T], timeout: float, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll until predicate() is truthy; return its value or raise after the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGTERM the child when we die (Linux only).

    The kernel ties this to the *thread* that spawned the child: spawn from a
    thread that outlives the child.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    sigterm = int(signal.SIGTERM)

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        # The parent may have died between fork and prctl: nobody would tell us.
        if os.getppid() != parent:
            os._exit(1)

    return hook


def parse_ready(text: str) -> tuple[str, int] | None:
    """(address, metrics port or 0) from a ready file's text; None while incomplete."""
    if not text.endswith("\n"):
        return None
    words = text.split()
    if not words:
        return None
    metrics = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
    return words[0], metrics


def describe_exit(code: int | None) -> str:
    """How a child ended, from its return code (negative: the signal that killed it)."""
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class ChildProcess:
    """A command run as a child with its output appended to ``log_path``.

    Subclasses whose command depends on state at start time (a node restarted
    on the port it had) override :meth:`command`.
    """

    def __init__(
        self,
        name: str,
        log_path: Path,
        ready_file: Path | None = None,
        *,
        argv: list[str] | None = None,
        env: Mapping[str, str] | None = None,
        new_session: bool = False,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.ready_file = ready_file
        self.argv = list(argv or [])
        # None: the caller's environment at spawn time.
        self.env = dict(env) if env is not None else None
        # Own session: a Ctrl-C in the terminal reaches only the launcher.
        self.new_session = new_session
        self.preexec = preexec
        self.address = ""
        self.metrics_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return self.argv

    def environment(self) -> dict[str, str]:
        return dict(os.environ) if self.env is None else dict(self.env)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    # -- start -------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the command; do not wait for it to serve."""
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.new_session,
                # Runs between fork and exec: it only calls prctl and getppid.
                preexec_fn=self.preexec,
            )

    def check_ready(self) -> bool:
        """True once the ready file is complete; raises if the child died first."""
        if self.exited():
            raise LaunchError(f"{self.name} {self.describe_exit()} while starting")
        if self.ready_file is None:
            return True
        try:
            ready = parse_ready(self.ready_file.read_text())
        except FileNotFoundError:
            return False
        if ready is None:
            return False
        self.address, self.metrics_port = ready
        return True

    def wait_ready(self, timeout: float) -> None:
        try:
            wait_for(self.check_ready, timeout, what=f"{self.name} to serve")
        except LaunchError as exc:
            raise LaunchError(f"{exc}:\n{self.log_tail()}") from None

    def start(self, timeout: float = 30.0) -> ChildProcess:
        """Spawn and wait until the child serves."""
        self.spawn()
        self.wait_ready(timeout)
        return self

    # -- state -------------------------------------------------------------------

    def exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def alive(self) -> bool:
        return not self.exited()

    def describe_exit(self) -> str:
        return describe_exit(self.proc.returncode if self.proc is not None else None)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(text)

    # -- signals -----------------------------------------------------------------

    def signal(self, sig: int) -> None:
        """Send ``sig`` if the child still runs."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL (no clean shutdown) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM (resuming a paused child first); SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # kill(), not the process alone: a subclass may have more to kill.
            self.kill()
            return self.proc.wait(10)


def stop_group(
    group: list[ChildProcess], timeout: float, hurry: Callable[[], bool] | None = None
) -> None:
    """SIGTERM every child of ``group`` together; SIGKILL what is left after ``timeout``
    seconds (or as soon as ``hurry()``)."""
    for child in group:
        # A paused child cannot act on SIGTERM.
        child.signal(signal.SIGCONT)
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(not c.exited() for c in group):
        if time.monotonic() > deadline or (hurry is not None and hurry()):
            break
        time.sleep(0.05)
    for child in group:
        if not child.exited():
            child.signal(signal.SIGKILL)
        if child.proc is not None:
            child.proc.wait()
