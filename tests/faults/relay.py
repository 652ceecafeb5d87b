"""TCP relays whose paths can be cut, slowed and made lossy: the fault suite's network.

A :class:`Relay` listens on a free loopback port and forwards every
connection to its upstream, byte for byte, in both directions. Its
:class:`Shape` says what the path does to the bytes:

* **cut** -- a blackhole. The relay stops reading both sockets of every
  connection, so the kernel buffers fill and the senders block, and new
  connections are accepted (the kernel does it anyway) but never forwarded:
  the peers see timeouts, never a refusal. A heal resumes the frozen
  connections where they stopped, as TCP retransmission does after a short
  partition (``reset=True`` aborts them instead, as after a long one).
* **latency** -- every chunk is delivered ``latency`` seconds after it was
  read, in each direction (a round trip costs twice that).
* **loss** -- a TCP stream above the relay cannot lose bytes without being
  corrupted, so loss is emulated the way a TCP endpoint experiences it: each
  chunk the relay reads (one or more segments, up to 256 KiB) is, with
  probability ``loss``, held for ``stall`` seconds (a retransmission timeout;
  Linux's minimum is 200 ms), and everything behind it in that direction
  waits too (head-of-line blocking). No byte is dropped or reordered.

Relays are plain asyncio protocols (no stream objects, no per-chunk task) and
back-pressure both ways, so a slow peer pauses its sender instead of filling
memory. A :class:`Hub` holds the relays of a run; it runs either on a thread
of the calling process or in a child process of its own (``python relay.py``,
controlled by JSON lines on stdin/stdout), so that relaying a cluster's
traffic does not compete with the workload for the test process's GIL.

This module uses only the standard library: the child process runs it by
path.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
# Bytes a path holds (delayed chunks) before it stops reading its sender.
HIGH_WATER = 1 << 20
LOW_WATER = 1 << 18


@dataclass(frozen=True)
class Shape:
    """What a path does to the bytes it carries (see the module docstring)."""

    cut: bool = False
    latency: float = 0.0  # seconds, each direction
    loss: float = 0.0  # share of chunks stalled
    stall: float = 0.2  # seconds a "lost" chunk is held

    @property
    def clean(self) -> bool:
        return not self.cut and self.latency == 0 and self.loss == 0


class _Side(asyncio.Protocol):
    """One socket of a relayed connection: the accepted one or the upstream one."""

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._holds: set[str] = set()

    # -- reading holds: the side reads only while nothing holds it ----------------------

    def hold(self, reason: str) -> None:
        if not self._holds and self.transport is not None:
            self.transport.pause_reading()
        self._holds.add(reason)

    def release(self, reason: str) -> None:
        if reason not in self._holds:
            return
        self._holds.discard(reason)
        if not self._holds and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        with contextlib.suppress(OSError, AttributeError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._holds:
            transport.pause_reading()
        self.conn.made(self)

    def data_received(self, data: bytes) -> None:
        self.conn.received(self, data)

    def eof_received(self) -> bool:
        self.conn.ended(self, None)
        return True  # half-open: the other direction may still carry bytes

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.conn.ended(self, exc)

    def pause_writing(self) -> None:
        self.conn.backpressure(self, True)

    def resume_writing(self) -> None:
        self.conn.backpressure(self, False)

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


class _Pipe:
    """One direction of a connection: chunks read from ``src``, written to ``dst``."""

    def __init__(self, relay: Relay, src: _Side, dst: _Side) -> None:
        self.relay = relay
        self.src = src
        self.dst = dst
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.last_due = 0.0
        self.timer: asyncio.TimerHandle | None = None
        # None: open; else how the sender ended (EOF, or the error that ended it).
        self.ended: tuple[Exception | None] | None = None
        self.done = False

    def push(self, data: bytes) -> None:
        relay = self.relay
        relay.forwarded += len(data)
        shape = relay.shape
        if shape.clean and not self.queue and self.dst.transport is not None:
            self.dst.transport.write(data)
            return
        due = relay.loop.time() + shape.latency
        if shape.loss and relay.rng.random() < shape.loss:
            due += shape.stall
            relay.stalls += 1
        # Never overtake an earlier chunk: delivery order is the stream's order.
        due = max(due, self.last_due)
        self.last_due = due
        self.queue.append((due, data))
        self.queued += len(data)
        if self.queued > HIGH_WATER:
            self.src.hold("full")
        self.schedule()

    def end(self, exc: Exception | None) -> None:
        if self.ended is None:
            self.ended = (exc,)
            self.schedule()

    def schedule(self) -> None:
        if self.timer is not None or self.relay.shape.cut or self.dst.transport is None:
            return
        if self.queue:
            self.timer = self.relay.loop.call_at(self.queue[0][0], self.flush)
        elif self.ended is not None and not self.done:
            self.finish()

    def flush(self) -> None:
        self.timer = None
        if self.relay.shape.cut or self.dst.transport is None:
            return
        now = self.relay.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _due, data = self.queue.popleft()
            self.queued -= len(data)
            self.dst.transport.write(data)
        if self.queued < LOW_WATER:
            self.src.release("full")
        self.schedule()

    def finish(self) -> None:
        """The sender ended and everything it sent is delivered: pass the end on."""
        self.done = True
        assert self.ended is not None and self.dst.transport is not None
        (exc,) = self.ended
        transport = self.dst.transport
        if exc is not None:
            self.dst.abort()  # a reset travels as a reset
        elif transport.can_write_eof() and not transport.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()
        self.src.conn.check_done()

    def drop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.queued = 0


class _Conn:
    """One relayed connection: the accepted socket and the one to the upstream."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.client = _Side(self)
        self.upstream = _Side(self)
        self.up = _Pipe(relay, self.client, self.upstream)
        self.down = _Pipe(relay, self.upstream, self.client)
        self.connecting = False
        # The client is not read until the upstream connection exists.
        self.client.hold("connecting")
        if relay.shape.cut:
            self.client.hold("cut")
            self.upstream.hold("cut")

    def made(self, side: _Side) -> None:
        if side is self.client:
            self.relay.conns.add(self)
            if not self.relay.shape.cut:
                self.connect()

    def connect(self) -> None:
        if self.connecting:
            return
        self.connecting = True
        task = self.relay.loop.create_task(self._connect())
        # The loop keeps only a weak reference to a task: hold it until done.
        self.relay.tasks.add(task)
        task.add_done_callback(self.relay.tasks.discard)

    async def _connect(self) -> None:
        host, port = self.relay.upstream.rsplit(":", 1)
        try:
            await self.relay.loop.create_connection(lambda: self.upstream, host, int(port))
        except OSError:
            # The upstream refuses: so does the path (the relay adds no timeout of its own).
            self.client.abort()
            self.relay.conns.discard(self)
            return
        self.client.release("connecting")
        self.up.schedule()

    def received(self, side: _Side, data: bytes) -> None:
        (self.up if side is self.client else self.down).push(data)

    def ended(self, side: _Side, exc: Exception | None) -> None:
        (self.up if side is self.client else self.down).end(exc)

    def backpressure(self, side: _Side, on: bool) -> None:
        # ``side`` cannot take more: stop reading the one that writes to it.
        sender = self.upstream if side is self.client else self.client
        if on:
            sender.hold("backpressure")
        else:
            sender.release("backpressure")

    def check_done(self) -> None:
        if self.up.done and self.down.done:
            for side in (self.client, self.upstream):
                if side.transport is not None and not side.transport.is_closing():
                    side.transport.close()
            self.relay.conns.discard(self)
        elif self.client.closed and self.upstream.closed:
            self.relay.conns.discard(self)

    def cut(self) -> None:
        self.client.hold("cut")
        self.upstream.hold("cut")

    def heal(self) -> None:
        self.client.release("cut")
        self.upstream.release("cut")
        if self.upstream.transport is None:
            self.connect()
        self.up.schedule()
        self.down.schedule()

    def abort(self) -> None:
        self.up.drop()
        self.down.drop()
        self.client.abort()
        self.upstream.abort()
        self.relay.conns.discard(self)


class Relay:
    """One path: a loopback listener forwarding to ``upstream`` (``host:port``)."""

    def __init__(self, name: str, upstream: str, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.upstream = upstream
        self.loop = loop
        self.shape = Shape()
        self.rng = random.Random(name)
        self.address = ""
        self.conns: set[_Conn] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.forwarded = 0
        self.stalls = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> Relay:
        self._server = await self.loop.create_server(self._accept, HOST, 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"{HOST}:{port}"
        return self

    def _accept(self) -> _Side:
        self.accepted += 1
        return _Conn(self).client

    def set(self, shape: Shape, reset: bool = False) -> None:
        was_cut = self.shape.cut
        self.shape = shape
        if shape.cut and not was_cut:
            for conn in list(self.conns):
                conn.cut()
        elif was_cut and not shape.cut:
            for conn in list(self.conns):
                conn.abort() if reset else conn.heal()
        elif not shape.cut:
            for conn in list(self.conns):
                conn.up.schedule()
                conn.down.schedule()

    def stats(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "upstream": self.upstream,
            "shape": asdict(self.shape),
            "accepted": self.accepted,
            "open": len(self.conns),
            "forwarded": self.forwarded,
            "stalls": self.stalls,
        }

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            conn.abort()


class Engine:
    """The relays of a run, on one event loop; ``handle`` executes a command."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.relays: dict[str, Relay] = {}

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command["op"]
        if op == "add":
            name = command["name"]
            if name in self.relays:
                raise ValueError(f"relay {name!r} exists")
            relay = await Relay(name, command["upstream"], self.loop).start()
            self.relays[name] = relay
            return {"address": relay.address}
        if op == "set":
            shape = Shape(**command.get("shape", {}))
            for name in command["names"]:
                self.relays[name].set(shape, reset=bool(command.get("reset", False)))
            return {}
        if op == "stats":
            times = os.times()
            return {
                "relays": {name: r.stats() for name, r in self.relays.items()},
                "cpu": times.user + times.system,
            }
        if op == "close":
            for relay in self.relays.values():
                relay.close()
            self.relays.clear()
            return {}
        raise ValueError(f"unknown command {op!r}")


# -- the hub: an engine on a thread, or in a child process ---------------------------------------


class Hub:
    """Where the relays run; ``call`` sends one command and returns its answer."""

    mode: str = ""

    def call(self, command: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        """CPU time the relays have used so far (user + system)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class ThreadHub(Hub):
    """The relays on an event loop of their own, in a thread of this process."""

    mode = "thread"

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._engine = Engine(self._loop)
        self._tid = 0
        started = threading.Event()

        def run() -> None:
            self._tid = threading.get_native_id()
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="relay-hub", daemon=True)
        self._thread.start()
        started.wait(10)

    def call(self, command: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        future = asyncio.run_coroutine_threadsafe(self._engine.handle(command), self._loop)
        return future.result(timeout)

    def cpu_seconds(self) -> float:
        # The thread's own CPU time, from /proc (Linux).
        fields = Path(f"/proc/self/task/{self._tid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self.call({"op": "close"})
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class ProcessHub(Hub):
    """The relays in a child process (``python relay.py``), one JSON line per command.

    The child exits when its stdin closes, so it never outlives this process.
    """

    mode = "process"

    def __init__(self, log: Path | None = None) -> None:
        self._lock = threading.Lock()
        with contextlib.ExitStack() as stack:
            stderr: Any = subprocess.DEVNULL
            if log is not None:
                stderr = stack.enter_context(log.open("ab"))
            self._proc = subprocess.Popen(
                [sys.executable, "-u", str(Path(__file__).resolve())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        self.pid = self._proc.pid

    def call(self, command: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        with self._lock:
            if self._proc.poll() is not None:
                raise RuntimeError(f"relay hub exited ({self._proc.returncode})")
            self._proc.stdin.write(json.dumps(command).encode() + b"\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("relay hub exited")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"relay hub: {answer['error']}")
        return answer

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(Exception):
                self.call({"op": "close"}, timeout=5)
            with contextlib.suppress(OSError):
                assert self._proc.stdin is not None
                self._proc.stdin.close()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def open_hub(mode: str = "process", log: Path | None = None) -> Hub:
    if mode == "thread":
        return ThreadHub()
    if mode == "process":
        return ProcessHub(log)
    raise ValueError(f"relay hub mode must be 'thread' or 'process', not {mode!r}")


# -- the child process ---------------------------------------------------------------------------


async def _serve(read_line: Callable[[], bytes]) -> None:
    loop = asyncio.get_running_loop()
    engine = Engine(loop)
    while True:
        line = await loop.run_in_executor(None, read_line)
        if not line:
            break  # the parent is gone (or closed us): stop relaying
        try:
            answer = await engine.handle(json.loads(line))
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
        if json.loads(line).get("op") == "close":
            break
    await engine.handle({"op": "close"})


def main() -> None:
    started = time.monotonic()
    asyncio.run(_serve(sys.stdin.buffer.readline))
    print(f"relay hub ran {time.monotonic() - started:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()


__all__ = ["Hub", "ProcessHub", "Relay", "Shape", "ThreadHub", "open_hub"]
