"""Client-side steps the monitoring tests take against a test ``Cluster``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from gitquorum.gitaly import (
    praefect_pb2,
    praefect_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
)
from tests.harness.cluster import VIRTUAL_STORAGE, Cluster
from tests.harness.node import wait_for

T = TypeVar("T")

# Failures a write may meet while the cluster notices a node is gone.
TRANSIENT = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.FAILED_PRECONDITION,
)


async def until(
    predicate: Callable[[], Awaitable[T | None]] | Callable[[], T | None],
    within: float,
    what: str,
    interval: float = 0.2,
) -> T:
    """Poll ``predicate`` (sync or async) until truthy, for up to ``within`` seconds;
    its value, or TimeoutError."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


async def write_ref(
    channel: grpc.aio.Channel,
    repo: shared_pb2.Repository,
    ref: str,
    oid: str,
    within: float = 20.0,
) -> None:
    """WriteRef through the proxy, retried on transient failures for up to ``within``
    seconds until acknowledged."""
    stub = repository_pb2_grpc.RepositoryServiceStub(channel)
    request = repository_pb2.WriteRefRequest(
        repository=repo, ref=ref.encode(), revision=oid.encode()
    )
    deadline = time.monotonic() + within
    while True:
        try:
            await stub.WriteRef(request, timeout=10)
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in TRANSIENT or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def metadata(
    channel: grpc.aio.Channel, relative_path: str
) -> praefect_pb2.GetRepositoryMetadataResponse:
    stub = praefect_pb2_grpc.PraefectInfoServiceStub(channel)
    path = praefect_pb2.GetRepositoryMetadataRequest.Path(
        virtual_storage=VIRTUAL_STORAGE, relative_path=relative_path
    )
    return await stub.GetRepositoryMetadata(
        praefect_pb2.GetRepositoryMetadataRequest(path=path), timeout=10
    )


@dataclass
class Gateway:
    """``gitquorum http`` in front of the cluster's first proxy."""

    proc: subprocess.Popen[bytes]
    address: str
    port: int
    log_path: Path

    @classmethod
    def start(cls, cluster: Cluster, workdir: Path, timeout: float = 30.0) -> Gateway:
        ready = workdir / "http.ready"
        log_path = workdir / "http.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gitquorum.cli.main",
                    "http",
                    "--listen",
                    "127.0.0.1:0",
                    "--proxy",
                    cluster.proxies[0].address,
                    "--virtual-storage",
                    VIRTUAL_STORAGE,
                    "--ready-file",
                    str(ready),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=os.environ.copy(),
            )

        def is_ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited:\n{log_path.read_text(errors='replace')}")
            return ready.exists() and ready.read_text().endswith("\n")

        wait_for(is_ready, timeout, what="the HTTP gateway to serve")
        address, port = ready.read_text().split()
        return cls(proc, address, int(port), log_path)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
