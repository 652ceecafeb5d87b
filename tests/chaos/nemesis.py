"""Faults for the chaos tests: process signals, etcd member loss, network cuts.

Process faults act on the cluster's real processes (``kill -9``, ``SIGSTOP`` /
``SIGCONT``). Network faults use :class:`Relay`, a small TCP relay that the
proxies reach a node through (the node's address in the proxies' config is
the relay's): ``cut()`` blackholes it -- established connections stop
carrying bytes and new ones are accepted but never forwarded, which is what a
partition looks like to a client (timeouts, not refusals) -- and ``heal()``
drops the frozen connections and forwards again.

The relay runs its own event loop in a thread, so it keeps working while a
test blocks in synchronous code (``Cluster.start()``, ``wait_for``).

Every fault is logged with its monotonic time in :class:`FaultLog`, so the
checker can measure the time from a fault to the first successful write.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from tests.harness.cluster import Cluster


@dataclass
class Fault:
    name: str
    target: str
    at: float  # time.monotonic()


@dataclass
class FaultLog:
    faults: list[Fault] = field(default_factory=list)

    def record(self, name: str, target: str) -> Fault:
        fault = Fault(name, target, time.monotonic())
        self.faults.append(fault)
        return fault


class Relay:
    """A TCP relay in front of one node that can be cut off and healed."""

    def __init__(self, upstream: str, name: str = "") -> None:
        self.upstream = upstream
        self.name = name or upstream
        self.address = ""
        self.cut_off = False
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._held: set[asyncio.StreamWriter] = set()
        self._bandwidth = 0  # bytes per second per direction; 0: unlimited

    # -- control, from the test's thread --------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def start(self) -> Relay:
        self._thread.start()
        self._run(self._start())
        return self

    def cut(self) -> None:
        """Blackhole: nothing reaches the node any more, nothing comes back."""
        self._run(self._set_cut(True))

    def heal(self) -> None:
        self._run(self._set_cut(False))

    def throttle(self, bytes_per_second: int) -> None:
        """Limit each direction of each connection (0: no limit)."""
        self._bandwidth = bytes_per_second

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._run(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # -- the relay, on its own loop -------------------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"

    async def _set_cut(self, cut: bool) -> None:
        self.cut_off = cut
        if not cut:
            # Frozen connections are dropped: clients reconnect through the healed relay.
            for writer in list(self._held):
                _abort(writer)
            self._held.clear()
        else:
            self._held |= self._open

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._open | self._held):
            _abort(writer)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.cut_off:
            # Accepted by the kernel anyway; a partition just never answers.
            self._held.add(writer)
            return
        host, port = self.upstream.rsplit(":", 1)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            _abort(writer)
            return
        for w in (writer, up_writer):
            with contextlib.suppress(OSError):
                w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._open |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, writer), self._pipe(up_reader, writer, up_writer)
            )
        finally:
            self._open -= {writer, up_writer}

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self.cut_off:
                    # Cut while established: these bytes are dropped and nothing
                    # more moves until the heal aborts the connection.
                    await _closed(writer)
                    return
                bandwidth = self._bandwidth
                if bandwidth:
                    await asyncio.sleep(len(data) / bandwidth)
                writer.write(data)
                await writer.drain()
            with contextlib.suppress(OSError):
                writer.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            _abort(peer)
            _abort(writer)


async def _closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        await writer.wait_closed()


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if transport is not None and not transport.is_closing():
        transport.abort()


# -- process faults ---------------------------------------------------------------------------


def kill_node(cluster: Cluster, name: str, faults: FaultLog) -> Fault:
    node = cluster.node(name)
    fault = faults.record("kill-node", name)
    node.kill()
    return fault


def pause_node(cluster: Cluster, name: str, faults: FaultLog) -> Fault:
    fault = faults.record("pause-node", name)
    cluster.node(name).pause()
    return fault


def resume_node(cluster: Cluster, name: str, faults: FaultLog) -> Fault:
    fault = faults.record("resume-node", name)
    cluster.node(name).resume()
    return fault


def restart_node(cluster: Cluster, name: str, faults: FaultLog) -> Fault:
    node = cluster.node(name)
    node.kill()
    node.start(timeout=60)
    return faults.record("restart-node", name)


def kill_proxy(cluster: Cluster, name: str, faults: FaultLog) -> Fault:
    proxy = next(p for p in cluster.proxies if p.name == name)
    fault = faults.record("kill-proxy", name)
    proxy.kill()
    return fault


def kill_etcd_member(cluster: Cluster, index: int, faults: FaultLog) -> Fault:
    assert cluster.etcd is not None
    fault = faults.record("kill-etcd", f"etcd{index}")
    cluster.etcd.kill(index)
    return fault


# -- reading cluster state from etcd (the v3 JSON gateway: no client library needed) ---------

PREFIX = "/gitquorum/default/"


def etcd_range(cluster: Cluster, prefix: str) -> dict[str, bytes]:
    """Every key under ``prefix`` (relative to the cluster's keyspace) and its value."""
    found, _revision = etcd_range_at(cluster, prefix)
    return {key: value for key, (value, _mod) in found.items()}


def etcd_range_at(
    cluster: Cluster, prefix: str, *, revision: int = 0, one_key: bool = False
) -> tuple[dict[str, tuple[bytes, int]], int]:
    """Every key under ``prefix`` (or the one key ``prefix``), as of
    ``revision`` (0: now), with its value and mod_revision, and the revision
    the answer was read at."""
    assert cluster.etcd is not None
    key = (PREFIX + prefix).encode()
    request_body: dict[str, object] = {"key": base64.b64encode(key).decode()}
    if not one_key:
        end = key[:-1] + bytes([key[-1] + 1])
        request_body["range_end"] = base64.b64encode(end).decode()
    if revision:
        request_body["revision"] = revision
    body = json.dumps(request_body).encode()
    for member in cluster.etcd.members:
        if not member.alive() or member.paused:
            continue
        request = urllib.request.Request(
            f"{member.client_url}/v3/kv/range", data=body, method="POST"
        )
        try:
            with member._open(request, 2.0) as response:
                answer = json.loads(response.read())
        except (OSError, ValueError):
            continue
        if "kvs" not in answer and "header" not in answer:
            raise RuntimeError(f"etcd range: {answer}")  # e.g. a compacted revision
        found = {
            base64.b64decode(kv["key"]).decode()[len(PREFIX) :]: (
                base64.b64decode(kv.get("value", "")),
                int(kv.get("mod_revision", 0)),
            )
            for kv in answer.get("kvs", [])
        }
        return found, int(answer["header"]["revision"])
    raise RuntimeError("no etcd member answered")


def leader(cluster: Cluster) -> str | None:
    """The proxy holding the leader key."""
    value = etcd_range(cluster, "election/leader").get("election/leader")
    return str(json.loads(value)["proxy"]) if value else None


def locks(cluster: Cluster) -> dict[str, str]:
    """Replication job locks: lock key -> worker name ("<proxy>/<index>")."""
    return {
        key: str(json.loads(value).get("worker", ""))
        for key, value in etcd_range(cluster, "locks/").items()
    }


def jobs(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {key: json.loads(value) for key, value in etcd_range(cluster, "jobs/").items()}
