"""Bad request bodies are the client's fault, and a success is never an error.

Real node (or proxy, GITQUORUM_TEST_THROUGH_PROXY=1) behind a gateway in this
process: garbage posted to git-upload-pack or git-receive-pack is answered 400
with git's own message (the node's status INVALID_ARGUMENT, not INTERNAL), and
a gzip body that inflates to 200 MB of zeros is not turned into a 500 after
the backend answered OK.
"""

from __future__ import annotations

import gzip
import random
import zlib

import aiohttp
import grpc
import pytest

from gitquorum.gateway.http import GatewayServer
from gitquorum.gitaly import shared_pb2, smarthttp_pb2, smarthttp_pb2_grpc
from tests.integration.gateway.test_http_gateway import RECEIVE_REQUEST, UPLOAD_REQUEST, url

pytestmark = pytest.mark.timeout(120)


def _random_body(size: int = 100 * 1024) -> bytes:
    return random.Random(16).randbytes(size)


def _gzip_of_zeros(size: int, zero: bytes = b"\0") -> bytes:
    """``head -c SIZE /dev/zero | gzip`` (or of ASCII "0"s: endless flush
    packets), built without holding SIZE bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = zero * (1 << 20)
    parts = [compressor.compress(block) for _ in range(size // len(block))]
    parts.append(compressor.flush())
    return b"".join(parts)


@pytest.mark.parametrize(
    ("endpoint", "content_type"),
    [("git-receive-pack", RECEIVE_REQUEST), ("git-upload-pack", UPLOAD_REQUEST)],
)
async def test_random_bytes_are_400_with_gits_message(
    gateway: GatewayServer, seeded: shared_pb2.Repository, endpoint: str, content_type: str
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url(gateway, seeded, endpoint),
            data=_random_body(),
            headers={"Content-Type": content_type},
        ) as resp:
            text = await resp.text()
            assert resp.status == 400, text
            # git's own words reach the client; no exit status or internals.
            assert "protocol error" in text, text
            assert "exit status" not in text and "internal" not in text.lower(), text


async def test_random_bytes_are_invalid_argument_on_grpc(
    channel: grpc.aio.Channel, seeded: shared_pb2.Repository
) -> None:
    stub = smarthttp_pb2_grpc.SmartHTTPServiceStub(channel)
    body = _random_body()

    async def receive() -> object:
        yield smarthttp_pb2.PostReceivePackRequest(repository=seeded, gl_id="user-1")
        yield smarthttp_pb2.PostReceivePackRequest(data=body)

    async def upload() -> object:
        yield smarthttp_pb2.PostUploadPackRequest(repository=seeded)
        yield smarthttp_pb2.PostUploadPackRequest(data=body)

    for call in (stub.PostReceivePack(receive()), stub.PostUploadPack(upload())):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
        ), (caught.value.code(), caught.value.details())
        assert "protocol error" in (caught.value.details() or "")


@pytest.mark.parametrize("zero", [b"\0", b"0"], ids=["nul", "ascii"])
async def test_a_gzip_bomb_of_zeros_is_never_a_500(
    gateway: GatewayServer, seeded: shared_pb2.Repository, zero: bytes
) -> None:
    bomb = _gzip_of_zeros(200 * 1024 * 1024, zero)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url(gateway, seeded, "git-receive-pack"),
            data=bomb,
            headers={"Content-Type": RECEIVE_REQUEST, "Content-Encoding": "gzip"},
        ) as resp:
            text = await resp.text(errors="replace")
            assert resp.status < 500, (resp.status, text[:300])
            assert "gitquorum: ok" not in text
            if resp.status != 200:
                # Refused: the client's fault, in words.
                assert resp.status in (400, 413), (resp.status, text[:300])


def test_gzip_of_zeros_helper() -> None:
    assert gzip.decompress(_gzip_of_zeros(2 << 20)) == bytes(2 << 20)
