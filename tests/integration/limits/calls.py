"""Long-running calls a test can hold open, steer and end: pack streams over gRPC."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc

from gitquorum.gitaly import shared_pb2, ssh_pb2, ssh_pb2_grpc

FLUSH = b"0000"


def pkt(payload: bytes) -> bytes:
    return b"%04x" % (len(payload) + 4) + payload


def first_oid(advertisement: bytes) -> str:
    """The object id of the first ref in a v0 ref advertisement."""
    return advertisement[4:44].decode()


@dataclass
class HeldCall:
    """An SSHUploadPack/SSHReceivePack call kept open after the ref advertisement."""

    call: Any
    advertisement: bytes
    waited: float  # seconds until the advertisement arrived (includes queueing)

    async def finish(self) -> None:
        """End the session cleanly: a flush (no wants / no commands), then EOF."""
        await self.call.write(self.request(FLUSH))
        await self.call.done_writing()
        while await self.call.read() is not grpc.aio.EOF:
            pass
        code = await self.call.code()
        assert code == grpc.StatusCode.OK, (code, await self.call.details())

    def request(self, stdin: bytes) -> Any:
        raise NotImplementedError


class HeldUploadPack(HeldCall):
    def request(self, stdin: bytes) -> Any:
        return ssh_pb2.SSHUploadPackRequest(stdin=stdin)


class HeldReceivePack(HeldCall):
    def request(self, stdin: bytes) -> Any:
        return ssh_pb2.SSHReceivePackRequest(stdin=stdin)


async def _open(call: Any, first: Any) -> tuple[bytes, float]:
    started = time.monotonic()
    await call.write(first)
    data = b""
    # The advertisement ends with a flush packet.
    while not data.endswith(FLUSH):
        response = await call.read()
        if response is grpc.aio.EOF:
            break
        data += response.stdout
    return data, time.monotonic() - started


async def hold_upload_pack(
    channel: grpc.aio.Channel, repository: shared_pb2.Repository, deadline: float | None = None
) -> HeldUploadPack:
    """``deadline``: the call's gRPC timeout in seconds (None: no deadline)."""
    call = ssh_pb2_grpc.SSHServiceStub(channel).SSHUploadPack(timeout=deadline)
    data, waited = await _open(call, ssh_pb2.SSHUploadPackRequest(repository=repository))
    return HeldUploadPack(call, data, waited)


async def hold_receive_pack(
    channel: grpc.aio.Channel, repository: shared_pb2.Repository, deadline: float | None = None
) -> HeldReceivePack:
    call = ssh_pb2_grpc.SSHServiceStub(channel).SSHReceivePack(timeout=deadline)
    first = ssh_pb2.SSHReceivePackRequest(repository=repository, gl_id="user-1")
    data, waited = await _open(call, first)
    return HeldReceivePack(call, data, waited)


async def status_of(awaitable: Any) -> tuple[grpc.StatusCode, str, float]:
    """Run a call to its end: (status, details, seconds it took)."""
    started = time.monotonic()
    try:
        await awaitable
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", time.monotonic() - started
    return grpc.StatusCode.OK, "", time.monotonic() - started


async def wait_until(predicate: Any, within: float, what: str) -> None:
    """Poll a synchronous predicate from async code, with a deadline."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)
