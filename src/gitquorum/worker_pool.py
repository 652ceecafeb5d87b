"""Several processes of one server on one listening address (SO_REUSEPORT).

One Python process uses one core. With ``workers: N`` the command a user runs
becomes a small parent that starts N worker processes of the same command
(``--worker-index I``), each a whole server bound to the same address with
SO_REUSEPORT, so the kernel spreads incoming connections over them. The parent:

* reserves the address first (a socket bound with SO_REUSEPORT, never listening:
  the kernel sends it no connection), so that port 0 resolves to one port every
  worker binds, and a port another program holds fails here at once;
* starts worker 0 and waits until it serves, then the others: worker 0 runs
  what must be single per server (for a proxy: membership, leader election,
  replication), which the others read from etcd once it is there;
* forwards SIGTERM (drain), a second SIGTERM (stop at once) and SIGHUP
  (reload) to every worker, and exits 0 only when every worker did;
* stops every worker when one of them ends on its own, and exits 1: a
  supervisor (systemd) restarts the whole server, whose workers share one
  identity that a lone restarted worker would not have;
* serves the server's metrics address itself, as the merge of the workers'
  own pages (``worker_metrics``), so one scrape shows the whole server.

Workers run in their own session, so a Ctrl-C in a terminal reaches the parent
only, which turns it into one orderly drain. This module knows nothing of
proxies or nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gitquorum import log
from gitquorum.launch.process import describe_exit, die_with_parent, parse_ready
from gitquorum.lifecycle import ListenError
from gitquorum.worker_metrics import MergedMetricsServer

logger = log.get("gitquorum.workers")

# Variables a worker must not inherit: systemd talks to the parent only.
_PARENT_ONLY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# After the grace period, how long the parent still waits for workers before SIGKILL.
_KILL_MARGIN = 5.0


@dataclass(frozen=True)
class WorkerSlot:
    """Which of ``count`` processes this one is; ``WorkerSlot(0, 1)``: the only one."""

    index: int = 0
    count: int = 1

    @property
    def pooled(self) -> bool:
        """One of several processes sharing the listening address."""
        return self.count > 1

    @property
    def first(self) -> bool:
        """Worker 0: runs what must run once per server."""
        return self.index == 0


SINGLE = WorkerSlot()


def join_address(host: str, port: int) -> str:
    """``host:port``, IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# The kernel's TIME_WAIT: how long closed connections of a single-process
# listener can keep the holder (SO_REUSEPORT) from binding a port the probe found free.
HOLDER_BIND_WAIT = 60.0
_HOLDER_BIND_RETRY = 0.25


def _bind(sock: socket.socket, address: tuple[str, int]) -> None:
    sock.bind(address)


def reserve_address(host: str, port: int, *, wait: float = HOLDER_BIND_WAIT) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT, not listening; ListenError if taken.

    A fixed port is first bound without SO_REUSEPORT: that fails when anything
    holds it, including another pooled server, which SO_REUSEPORT alone would
    let this one share.

    When that probe succeeds but the holder's bind finds the address in use,
    what holds it is closed connections in TIME_WAIT of a listener without
    SO_REUSEPORT (a single-process server that just stopped): they conflict
    with a SO_REUSEPORT socket that has no SO_REUSEADDR. The holder's bind is
    then retried for up to ``wait`` seconds, the probe each time, so that a
    port something really listens on still fails at once.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = join_address(host, port)
    deadline = time.monotonic() + wait
    logged = False
    try:
        while True:
            if port:
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    # SO_REUSEADDR, as grpc sets on its own listeners: connections of
                    # a server that just stopped (TIME_WAIT) must not hold the port,
                    # while any socket still listening on it does.
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind((host, port))
            holder = socket.socket(family, socket.SOCK_STREAM)
            try:
                # No SO_REUSEADDR here: a second server's probe must fail on it.
                holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                _bind(holder, (host, port))
                return holder
            except OSError as exc:
                holder.close()
                if not port or exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                    raise
            except BaseException:
                holder.close()
                raise
            if not logged:
                logged = True
                logger.warning(
                    "address held by closed connections (TIME_WAIT); waiting for it",
                    extra=log.fields(address=address, wait=wait),
                )
            time.sleep(_HOLDER_BIND_RETRY)
    except OSError as exc:
        raise ListenError(address, exc.strerror or exc) from exc


class WorkerFailed(RuntimeError):
    """A worker ended before it served, or while the others served."""


@dataclass
class _Worker:
    index: int
    ready_file: Path
    process: asyncio.subprocess.Process


class WorkerPool:
    """The parent of ``count`` worker processes: start, reload, close (lifecycle.Server).

    ``argv(index, ready_file)`` is worker ``index``'s command line.
    """

    def __init__(
        self,
        count: int,
        argv: Callable[[int, Path], list[str]],
        *,
        ready_base: Path | None,
        env: Mapping[str, str],
        grace: float,
        metrics_listen: tuple[str, int] | None = None,
        worst_gauges: tuple[str, ...] = (),
    ) -> None:
        self.count = count
        self._argv = argv
        self._env = {k: v for k, v in env.items() if k not in _PARENT_ONLY_ENV}
        self._grace = grace
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if ready_base is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="gitquorum-workers-")
            ready_base = Path(self._tmp.name) / "worker"
        self._ready_base = ready_base
        self.workers: list[_Worker] = []
        self.ready: list[tuple[str, int]] = []
        self.failed = False
        self._closing = False
        self._watch: asyncio.Task[None] | None = None
        # The server's own metrics address, merging the workers' pages.
        self.metrics: MergedMetricsServer | None = None
        if metrics_listen is not None:
            self.metrics = MergedMetricsServer(
                *metrics_listen, self.metrics_ports, worst=worst_gauges
            )
        self.metrics_port = 0

    def metrics_ports(self) -> list[int]:
        """Each worker's private metrics port, by index (0: not serving yet)."""
        ports = [port for _address, port in self.ready]
        return ports + [0] * (self.count - len(ports))

    def ready_file(self, index: int) -> Path:
        return self._ready_base.with_name(f"{self._ready_base.name}.worker{index}")

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers]

    async def start(self) -> None:
        if self.metrics is not None:
            # Before any worker runs: a taken metrics port fails at once.
            try:
                self.metrics_port = await self.metrics.start()
            except OSError as exc:
                host, port = self.metrics.host, self.metrics.port
                raise ListenError(join_address(host, port), exc.strerror or exc) from exc
        try:
            first = await self._spawn(0)
            self.ready = [await self._until_ready(first)]
            others = [await self._spawn(i) for i in range(1, self.count)]
            self.ready += await asyncio.gather(*(self._until_ready(w) for w in others))
        except BaseException:
            await self._stop_all(grace=0.0)
            await self._close_metrics()
            raise
        self._watch = asyncio.get_running_loop().create_task(self._watch_workers())
        logger.info(
            "workers serving",
            extra=log.fields(workers=self.count, pids=self.pids),
        )

    async def _spawn(self, index: int) -> _Worker:
        ready_file = self.ready_file(index)
        ready_file.unlink(missing_ok=True)
        process = await asyncio.create_subprocess_exec(
            *self._argv(index, ready_file),
            env=self._env,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        worker = _Worker(index, ready_file, process)
        self.workers.append(worker)
        return worker

    async def _until_ready(self, worker: _Worker) -> tuple[str, int]:
        while True:
            with contextlib.suppress(FileNotFoundError):
                found = parse_ready(worker.ready_file.read_text())
                if found is not None:
                    return found
            if worker.process.returncode is not None:
                raise WorkerFailed(
                    f"worker {worker.index} {describe_exit(worker.process.returncode)} "
                    "before serving"
                )
            await asyncio.sleep(0.05)

    async def _watch_workers(self) -> None:
        waits = {asyncio.ensure_future(w.process.wait()): w for w in self.workers}
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for pending in waits:
            pending.cancel()
        if self._closing:
            return
        ended = waits[next(iter(done))]
        self.failed = True
        logger.error(
            "a worker ended while serving: stopping every worker",
            extra=log.fields(worker=ended.index, exit=describe_exit(ended.process.returncode)),
        )
        # The parent's own drain (lifecycle.run_until_signalled) stops the others.
        os.kill(os.getpid(), signal.SIGTERM)

    def reload(self) -> None:
        self._signal(signal.SIGHUP)

    async def close(self, grace: float | None = None) -> None:
        """SIGTERM every worker, wait for them; cancelled (a second signal): stop them at once."""
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
        try:
            await self._stop_all(self._grace if grace is None else grace)
        finally:
            # Last: the workers' metrics stay readable while they drain.
            await self._close_metrics()
            if self._tmp is not None:
                self._tmp.cleanup()

    async def _close_metrics(self) -> None:
        if self.metrics is not None:
            await self.metrics.close()

    async def _stop_all(self, grace: float) -> None:
        self._closing = True
        self._signal(signal.SIGTERM)
        try:
            await self._wait_all(grace + _KILL_MARGIN)
        except asyncio.CancelledError:
            # A second signal: a second SIGTERM makes each worker stop at once.
            self._signal(signal.SIGTERM)
            await asyncio.shield(self._wait_all(_KILL_MARGIN))
            raise
        codes = [w.process.returncode for w in self.workers]
        if any(code != 0 for code in codes):
            self.failed = True
        logger.info(
            "workers stopped",
            extra=log.fields(exits=[describe_exit(code) for code in codes]),
        )

    async def _wait_all(self, timeout: float) -> None:
        waiting = [w.process.wait() for w in self.workers]
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*waiting)
        except TimeoutError:
            logger.error("workers still running after the grace period: killed")
            self._signal(signal.SIGKILL)
            await asyncio.gather(*(w.process.wait() for w in self.workers))

    def _signal(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            if worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)
