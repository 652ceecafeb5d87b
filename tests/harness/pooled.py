"""A child server that may run as a parent of worker processes (``workers`` > 1).

The parent passes SIGTERM, SIGINT and SIGHUP on to its workers: those go to it
alone (sent twice, a worker would stop at once instead of draining). SIGKILL,
SIGSTOP and SIGCONT cannot be passed on: they go to every process, so a fault
hits the whole server, as it would a single process.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from gitquorum.launch.process import ChildProcess

# Signals that reach every process of a pooled server.
_WHOLE_SERVER_SIGNALS = frozenset({signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT})


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def workers_from_env(variable: str) -> int:
    """The worker count a test switch asks for (unset: 1, one process)."""
    value = os.environ.get(variable, "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{variable}: expected an integer >= 1, got {value!r}")
    return int(value)


class PooledChild(ChildProcess):
    def worker_pids(self) -> list[int]:
        """The pids in the workers' ready files (none for a single process), those
        still children of this process: a file left by an earlier run may name a
        pid since given to an unrelated process."""
        if self.ready_file is None or self.proc is None:
            return []
        pids = []
        for path in self.ready_file.parent.glob(f"{self.ready_file.name}.worker*"):
            words = path.read_text().split()
            if len(words) >= 4 and words[3].isdigit() and _parent(int(words[3])) == self.pid:
                pids.append(int(words[3]))
        # In pid order, not the directory's: callers compare lists taken at two times.
        return sorted(pids)

    def server_pids(self) -> list[int]:
        """This process and its workers: where the server's own children run."""
        return [self.pid, *self.worker_pids()] if self.proc is not None else []

    def _to_workers(self, sig: int) -> None:
        for pid in self.worker_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def signal(self, sig: int) -> None:
        if sig in _WHOLE_SERVER_SIGNALS and self.alive():
            self._to_workers(sig)
        super().signal(sig)

    def kill(self) -> None:
        if self.alive():
            # Workers first: killed after their parent, they would get its
            # death signal (SIGTERM) and drain instead of dying.
            self._to_workers(signal.SIGKILL)
        super().kill()

    def terminate(self, timeout: float = 20.0) -> int:
        # Paused workers could not act on the SIGTERM their parent passes on.
        # Past the timeout, the base class calls kill(): workers first, not
        # left draining as orphans holding the ports a restart needs.
        if self.alive():
            self._to_workers(signal.SIGCONT)
        return super().terminate(timeout)


# Fixed ports are drawn below this when the kernel's range cannot be read.
_EPHEMERAL_LOW = 32768
_FIXED_LOW = 10000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _EPHEMERAL_LOW


def fixed_ports(count: int, rng: random.Random | None = None) -> list[int]:
    """Distinct loopback ports free now and below the kernel's ephemeral range.

    For ports a server binds again after a restart (a proxy worker's
    ``vote_listen``): a port from the ephemeral range (``free_ports``) can be
    taken meanwhile as the local port of any outgoing connection, and the
    restart would fail. Ports below the range are only ever taken by a bind
    that names them.
    """
    rng = rng or random.SystemRandom()
    high = _ephemeral_low()
    chosen: list[int] = []
    for _ in range(1000):
        if len(chosen) == count:
            return chosen
        port = rng.randrange(_FIXED_LOW, high)
        if port in chosen:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    raise RuntimeError(f"no {count} free ports between {_FIXED_LOW} and {high}")


@dataclass(frozen=True)
class Worker:
    address: str
    metrics_port: int
    vote_address: str
    pid: int


def workers_of(server: ChildProcess, count: int = 2) -> list[Worker]:
    """Each worker's ready file: ``ADDRESS METRICS_PORT VOTE_ADDRESS PID`` (a node's
    workers have no vote address: ``-``)."""
    assert server.ready_file is not None
    found = []
    for index in range(count):
        words = Path(f"{server.ready_file}.worker{index}").read_text().split()
        found.append(Worker(words[0], int(words[1]), words[2], int(words[3])))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone as far as serving goes: its parent has not reaped it yet.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
