"""The smart-HTTP gateway's HTTP handling against a real node (or proxy).

An aiohttp client (or raw bytes on a socket, where a client would tidy the
request up) talks to a gateway started in this process; the gateway talks
gRPC to the real node. Real git runs through the gateway in
tests/acceptance/test_git_http.py.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
import yarl

from gitquorum import tokens
from gitquorum.gateway.http import GatewayServer
from gitquorum.gitaly import (
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
    smarthttp_pb2,
    smarthttp_pb2_grpc,
)
from tests.conftest import Target
from tests.harness import gitrepo
from tests.harness.etcd import free_ports
from tests.harness.node import NodeProcess
from tests.integration.gateway.conftest import MakeGateway, raw_request

UPLOAD_ADVERTISEMENT = "application/x-git-upload-pack-advertisement"
UPLOAD_RESULT = "application/x-git-upload-pack-result"
UPLOAD_REQUEST = "application/x-git-upload-pack-request"
RECEIVE_REQUEST = "application/x-git-receive-pack-request"
ZERO_OID = "0" * 40


def pkt(data: str | bytes) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return b"%04x" % (len(raw) + 4) + raw


def ls_refs_request() -> bytes:
    return pkt("command=ls-refs\n") + b"0001" + pkt("symrefs\n") + pkt("peel\n") + b"0000"


def fetch_request(oid: str) -> bytes:
    return (
        pkt("command=fetch\n")
        + b"0001"
        + pkt("no-progress\n")
        + pkt(f"want {oid}\n")
        + pkt("done\n")
        + b"0000"
    )


def url(gateway: GatewayServer, repo: shared_pb2.Repository, tail: str) -> str:
    return f"{gateway.url}/{repo.relative_path}/{tail}"


async def repository_exists(channel: grpc.aio.Channel, repo: shared_pb2.Repository) -> bool:
    stub = repository_pb2_grpc.RepositoryServiceStub(channel)
    response = await stub.RepositoryExists(repository_pb2.RepositoryExistsRequest(repository=repo))
    return bool(response.exists)


async def test_ref_advertisement_headers_and_body(
    gateway: GatewayServer, seeded: shared_pb2.Repository, source: Path
) -> None:
    main = gitrepo.refs(source)["refs/heads/main"]
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            url(gateway, seeded, "info/refs"),
            params={"service": "git-upload-pack"},
            headers={"X-Request-Id": "req-42"},
        ) as response,
    ):
        data = await response.read()
        assert response.status == 200
        assert response.headers["Content-Type"] == UPLOAD_ADVERTISEMENT
        assert "no-cache" in response.headers["Cache-Control"]
        assert response.headers["X-Request-Id"] == "req-42"
    assert data.startswith(b"001e# service=git-upload-pack\n0000")
    assert f"{main} refs/heads/main".encode() in data
    assert data.endswith(b"0000")

    async with (
        aiohttp.ClientSession() as session,
        session.get(
            url(gateway, seeded, "info/refs"), params={"service": "git-receive-pack"}
        ) as response,
    ):
        data = await response.read()
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-git-receive-pack-advertisement"
    assert data.startswith(b"001f# service=git-receive-pack\n0000")
    assert b"report-status" in data


async def test_git_protocol_header_selects_v2(
    gateway: GatewayServer, seeded: shared_pb2.Repository
) -> None:
    async with aiohttp.ClientSession() as session:
        target = url(gateway, seeded, "info/refs?service=git-upload-pack")
        async with session.get(target, headers={"Git-Protocol": "version=2"}) as response:
            v2 = await response.read()
        async with session.get(target) as response:
            v0 = await response.read()
    assert b"version 2\n" in v2
    assert b"ls-refs" in v2
    assert b"version 2" not in v0
    assert b"refs/heads/main" in v0


async def test_missing_repository_is_404_and_not_created(
    gateway: GatewayServer, target: Target, channel: grpc.aio.Channel
) -> None:
    missing = target.repository("missing/never-created.git")
    async with aiohttp.ClientSession() as session:
        for service in ("git-upload-pack", "git-receive-pack"):
            async with session.get(
                url(gateway, missing, f"info/refs?service={service}")
            ) as response:
                text = await response.text()
                assert response.status == 404
                assert response.content_type == "text/plain"
                assert "repository 'missing/never-created.git' not found" in text
        async with session.post(
            url(gateway, missing, "git-upload-pack"),
            data=ls_refs_request(),
            headers={"Content-Type": UPLOAD_REQUEST, "Git-Protocol": "version=2"},
        ) as response:
            assert response.status == 404
            assert "not found" in await response.text()
    assert not await repository_exists(channel, missing)


async def test_missing_repository_is_404_while_a_large_body_is_still_sent(
    gateway: GatewayServer, target: Target
) -> None:
    # The backend refuses the call while the gateway is still streaming the
    # body: the client must see the backend's NOT_FOUND, not grpc's write race
    # (INTERNAL, which became a 500).
    missing = target.repository("missing/large-body.git")
    haves = b"".join(pkt(f"have {i:040x}\n") for i in range(60_000))  # ~3 MB
    body = pkt("command=fetch\n") + b"0001" + haves + pkt("done\n") + b"0000"
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(
                url(gateway, missing, "git-upload-pack"),
                data=body,
                headers={"Content-Type": UPLOAD_REQUEST, "Git-Protocol": "version=2"},
            ) as response:
                text = await response.text()
                assert response.status == 404, text
                assert "not found" in text


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/group/../other.git", "invalid path segment '..'"),
        ("/group/%2e%2e/other.git", "invalid path segment '..'"),
        ("/%2E%2E/other.git", "invalid path segment '..'"),
        ("/group/./other.git", "invalid path segment '.'"),
        ("/x%00.git", "control characters"),
        ("//etc/passwd.git", "must be relative"),
        ("/%2Fetc/passwd.git", "must be relative"),
        ("/a//b.git", "invalid path segment ''"),
        ("/%ff.git", "not valid UTF-8"),
    ],
)
async def test_invalid_paths_are_400(gateway: GatewayServer, path: str, reason: str) -> None:
    for request in (
        f"GET {path}/info/refs?service=git-upload-pack HTTP/1.1\r\n"
        "Host: gitquorum\r\nConnection: close\r\n\r\n",
        f"POST {path}/git-receive-pack HTTP/1.1\r\nHost: gitquorum\r\n"
        f"Content-Type: {RECEIVE_REQUEST}\r\nContent-Length: 4\r\nConnection: close\r\n\r\n0000",
    ):
        response = await raw_request(gateway.port, request.encode())
        assert response.status == 400, response.body
        assert response.headers["content-type"].startswith("text/plain")
        assert reason in response.body.decode()


async def test_requests_that_are_not_smart_http(
    gateway: GatewayServer, seeded: shared_pb2.Repository
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway.url}/{seeded.relative_path}/HEAD") as response:
            assert response.status == 404
        # No ?service=: git would fall back to the dumb protocol.
        async with session.get(url(gateway, seeded, "info/refs")) as response:
            assert response.status == 403
            assert "smart HTTP" in await response.text()
        async with session.get(url(gateway, seeded, "info/refs?service=git-shell")) as response:
            assert response.status == 403
        async with session.get(url(gateway, seeded, "git-upload-pack")) as response:
            assert response.status == 405
            assert response.headers["Allow"] == "POST"
        async with session.post(
            url(gateway, seeded, "git-upload-pack"),
            data=ls_refs_request(),
            headers={"Content-Type": "application/octet-stream"},
        ) as response:
            assert response.status == 415
            assert UPLOAD_REQUEST in await response.text()
        async with session.post(
            url(gateway, seeded, "git-upload-pack"),
            data=ls_refs_request(),
            headers={"Content-Type": UPLOAD_REQUEST, "Content-Encoding": "br"},
        ) as response:
            assert response.status == 415
            assert "Content-Encoding" in await response.text()
        async with session.get(
            url(gateway, seeded, "info/refs?service=git-upload-pack"),
            headers={"Git-Protocol": "version=2; rm -rf /"},
        ) as response:
            assert response.status == 400


async def _post(
    gateway: GatewayServer,
    repo: shared_pb2.Repository,
    data: bytes | AsyncIterator[bytes],
    encoding: str = "",
) -> tuple[int, str, bytes]:
    headers = {"Content-Type": UPLOAD_REQUEST, "Git-Protocol": "version=2"}
    if encoding:
        headers["Content-Encoding"] = encoding
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(url(gateway, repo, "git-upload-pack"), data=data, headers=headers) as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


async def _trickle(data: bytes, size: int) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def test_gzip_and_deflate_request_bodies_are_inflated(
    gateway: GatewayServer, seeded: shared_pb2.Repository, source: Path
) -> None:
    request = ls_refs_request()
    status, content_type, plain = await _post(gateway, seeded, request)
    assert (status, content_type) == (200, UPLOAD_RESULT)
    assert b"refs/heads/main" in plain and b"refs/tags/v1.1 peeled:" in plain
    assert await _post(gateway, seeded, gzip.compress(request), "gzip") == (
        200,
        UPLOAD_RESULT,
        plain,
    )
    assert await _post(gateway, seeded, zlib.compress(request), "deflate") == (
        200,
        UPLOAD_RESULT,
        plain,
    )

    # A fetch whose gzip body arrives in chunked encoding, a few bytes at a
    # time: inflated incrementally, answered with a pack.
    main = gitrepo.refs(source)["refs/heads/main"]
    body = gzip.compress(fetch_request(main))
    status, _, data = await _post(gateway, seeded, _trickle(body, 7), "gzip")
    assert status == 200
    assert pkt("packfile\n") in data
    assert b"\x01PACK" in data


async def test_corrupt_or_truncated_gzip_is_400(
    gateway: GatewayServer, seeded: shared_pb2.Repository
) -> None:
    compressed = gzip.compress(ls_refs_request())
    status, _, body = await _post(gateway, seeded, b"\x1f\x8b" + b"garbage" * 10, "gzip")
    assert status == 400
    assert b"corrupt gzip body" in body
    status, _, body = await _post(gateway, seeded, compressed[: len(compressed) // 2], "gzip")
    assert status == 400
    assert b"truncated gzip body" in body
    status, _, body = await _post(gateway, seeded, compressed + b"trailing", "gzip")
    assert status == 400
    assert b"after the end" in body
    # The gateway is fine afterwards.
    assert (await _post(gateway, seeded, compressed, "gzip"))[0] == 200


async def test_token_file_guards_every_request(
    make_gateway: MakeGateway, seeded: shared_pb2.Repository, tmp_path: Path
) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("# gateway users\ns3cret\n\nreader-secret read-only\n")
    gateway = await make_gateway(token_file=str(token_file))

    def basic(user: str, password: str) -> dict[str, str]:
        value = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {value}"}

    fetch = url(gateway, seeded, "info/refs?service=git-upload-pack")
    push = url(gateway, seeded, "info/refs?service=git-receive-pack")
    async with aiohttp.ClientSession() as session:
        for headers in ({}, basic("ada", "wrong"), {"Authorization": "Bearer nope"}):
            async with session.get(fetch, headers=headers) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"] == 'Basic realm="gitquorum"'
        for headers in (
            basic("ada", "s3cret"),
            {"Authorization": "Bearer s3cret"},
            {"Authorization": tokens.bearer(b"s3cret")[1]},
            basic("reader", "reader-secret"),
        ):
            async with session.get(fetch, headers=headers) as response:
                assert response.status == 200, headers
        async with session.get(push, headers=basic("ada", "s3cret")) as response:
            assert response.status == 200
        # A read-only credential may not push: neither advertise nor POST.
        async with session.get(push, headers=basic("reader", "reader-secret")) as response:
            assert response.status == 403
            assert "may fetch but not push" in await response.text()
        async with session.post(
            url(gateway, seeded, "git-receive-pack"),
            data=b"0000",
            headers={"Content-Type": RECEIVE_REQUEST, **basic("reader", "reader-secret")},
        ) as response:
            assert response.status == 403
        async with session.post(
            url(gateway, seeded, "git-receive-pack"),
            data=b"0000",
            headers={"Content-Type": RECEIVE_REQUEST},
        ) as response:
            assert response.status == 401


async def test_unreachable_backend_is_503(
    make_gateway: MakeGateway, seeded: shared_pb2.Repository
) -> None:
    (port,) = free_ports(1)
    gateway = await make_gateway(proxy=f"127.0.0.1:{port}")
    async with aiohttp.ClientSession() as session:
        async with session.get(url(gateway, seeded, "info/refs?service=git-upload-pack")) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
            text = await resp.text()
            assert "service unavailable" in text
            # No address or grpc internals, the request's correlation id instead.
            assert f"correlation id {resp.headers['X-Request-Id']}" in text
            assert str(port) not in text and "failed to connect" not in text
        async with session.post(
            url(gateway, seeded, "git-upload-pack"),
            data=ls_refs_request(),
            headers={"Content-Type": UPLOAD_REQUEST},
        ) as resp:
            assert resp.status == 503


async def test_push_probe_is_answered_without_a_write(
    make_gateway: MakeGateway, seeded: shared_pb2.Repository
) -> None:
    # The backend is unreachable: only a request that never reaches it succeeds.
    (port,) = free_ports(1)
    gateway = await make_gateway(proxy=f"127.0.0.1:{port}")
    headers = {"Content-Type": RECEIVE_REQUEST}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url(gateway, seeded, "git-receive-pack"), data=b"0000", headers=headers
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/x-git-receive-pack-result"
            assert await resp.read() == b""
        # Four bytes that are not a flush are a request like any other.
        async with session.post(
            url(gateway, seeded, "git-receive-pack"), data=b"0001", headers=headers
        ) as resp:
            assert resp.status == 503


async def test_backend_that_does_not_answer_is_504(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    node = NodeProcess("slow", tmp_path / "storage", tmp_path / "logs").start()
    try:
        gateway = await make_gateway(proxy=node.address, storage="slow", timeout=1.0)
        advertise = f"{gateway.url}/any/repo.git/info/refs?service=git-upload-pack"
        async with aiohttp.ClientSession() as session:
            # Connected and answering: the repository is missing.
            async with session.get(advertise) as resp:
                assert resp.status == 404
            node.pause()
            started = time.monotonic()
            async with session.get(advertise) as resp:
                assert resp.status == 504
                assert "did not answer in time" in await resp.text()
            assert time.monotonic() - started < 10
    finally:
        node.resume()
        node.terminate()


async def test_create_on_push_creates_only_for_receive_pack(
    make_gateway: MakeGateway, target: Target, channel: grpc.aio.Channel
) -> None:
    gateway = await make_gateway(create_on_push=True)
    pushed = target.repository("created/on-push.git")
    fetched = target.repository("created/on-fetch.git")
    async with aiohttp.ClientSession() as session:
        async with session.get(url(gateway, pushed, "info/refs?service=git-receive-pack")) as resp:
            data = await resp.read()
            assert resp.status == 200
        # An empty repository advertises capabilities on the null ref.
        assert f"{ZERO_OID} capabilities^{{}}".encode() in data
        async with session.get(url(gateway, fetched, "info/refs?service=git-upload-pack")) as resp:
            assert resp.status == 404
    assert await repository_exists(channel, pushed)
    assert not await repository_exists(channel, fetched)


async def test_metrics_count_requests_by_service_and_code(
    gateway: GatewayServer, seeded: shared_pb2.Repository, target: Target
) -> None:
    missing = target.repository("missing/metrics.git")
    async with aiohttp.ClientSession() as session:
        for repo in (seeded, seeded, missing):
            async with session.get(url(gateway, repo, "info/refs?service=git-upload-pack")) as r:
                await r.read()
        async with session.get(yarl.URL(f"{gateway.url}/%2e%2e/x.git/info/refs", encoded=True)):
            pass
        async with session.get(f"{gateway.url}/metrics") as response:
            text = await response.text()
    assert 'gitquorum_http_requests_total{code="200",service="InfoRefsUploadPack"} 2.0' in text
    assert 'gitquorum_http_requests_total{code="404",service="InfoRefsUploadPack"} 1.0' in text
    assert 'gitquorum_http_requests_total{code="400",service="none"} 1.0' in text
    assert 'gitquorum_http_request_duration_seconds_count{service="InfoRefsUploadPack"} 3.0' in text


async def test_push_cut_off_mid_body_changes_nothing(
    gateway: GatewayServer, seeded: shared_pb2.Repository, source: Path, target: Target
) -> None:
    before = gitrepo.refs(target.disk_path(seeded))
    main = before["refs/heads/main"]
    commands = pkt(f"{ZERO_OID} {main} refs/heads/cut-off\0 report-status\n") + b"0000"
    partial_pack = b"PACK\x00\x00\x00\x02\x00\x00\x00\x05" + b"\x00" * 1000
    _reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        (
            f"POST /{seeded.relative_path}/git-receive-pack HTTP/1.1\r\nHost: gitquorum\r\n"
            f"Content-Type: {RECEIVE_REQUEST}\r\nContent-Length: 10000000\r\n\r\n"
        ).encode()
        + commands
        + partial_pack
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    # The gateway keeps serving and the replica never saw the ref.
    status, _, _ = await _post(gateway, seeded, ls_refs_request())
    assert status == 200
    assert gitrepo.refs(target.disk_path(seeded)) == before


class _RecordingSmartHTTP(smarthttp_pb2_grpc.SmartHTTPServiceServicer):
    """A backend that checks v2 tokens with the real scheme and records metadata."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.metadata: list[dict[str, str]] = []

    async def InfoRefsUploadPack(
        self, request: smarthttp_pb2.InfoRefsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[smarthttp_pb2.InfoRefsResponse]:
        metadata = {k: str(v) for k, v in context.invocation_metadata() or ()}
        self.metadata.append(metadata)
        header = metadata.get("authorization")
        if not header:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "authentication required")
        try:
            tokens.check(header, self.secret)
        except Exception:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "permission denied")
        yield smarthttp_pb2.InfoRefsResponse(data=b"001e# service=git-upload-pack\n0000")


async def test_proxy_token_and_refused_credentials(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    backend = _RecordingSmartHTTP(b"proxy-secret")
    server = grpc.aio.server()
    smarthttp_pb2_grpc.add_SmartHTTPServiceServicer_to_server(backend, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text("proxy-secret\n")
    wrong.write_text("not-the-secret\n")
    try:
        results = {}
        for name, token_file in (("none", ""), ("wrong", str(wrong)), ("right", str(right))):
            gateway = await make_gateway(proxy=f"127.0.0.1:{port}", proxy_token_file=token_file)
            async with (
                aiohttp.ClientSession() as session,
                session.get(
                    f"{gateway.url}/a/b.git/info/refs?service=git-upload-pack",
                    headers={"X-Request-Id": f"request-{name}"},
                ) as resp,
            ):
                results[name] = (resp.status, await resp.text())
                # No challenge: the user's credentials would not help.
                assert "WWW-Authenticate" not in resp.headers
    finally:
        await server.stop(0)
    assert results["none"][0] == 401
    assert "refused by the proxy" in results["none"][1]
    assert results["wrong"][0] == 403
    assert results["right"][0] == 200
    assert [m["x-gitquorum-correlation-id"] for m in backend.metadata] == [
        "request-none",
        "request-wrong",
        "request-right",
    ]


class _FailingMidStream(smarthttp_pb2_grpc.SmartHTTPServiceServicer):
    """A backend that sends one message, then fails: the status is already out."""

    async def InfoRefsUploadPack(
        self, request: smarthttp_pb2.InfoRefsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[smarthttp_pb2.InfoRefsResponse]:
        yield smarthttp_pb2.InfoRefsResponse(data=b"001e# service=git-upload-pack\n0000")
        await context.abort(grpc.StatusCode.INTERNAL, "disk on fire")

    async def PostUploadPack(
        self,
        request_iterator: AsyncIterator[smarthttp_pb2.PostUploadPackRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[smarthttp_pb2.PostUploadPackResponse]:
        async for _request in request_iterator:
            pass
        yield smarthttp_pb2.PostUploadPackResponse(data=b"0008NAK\n")
        await context.abort(grpc.StatusCode.INTERNAL, "pack-objects died")


async def test_failures_after_the_status_went_out(make_gateway: MakeGateway) -> None:
    server = grpc.aio.server()
    smarthttp_pb2_grpc.add_SmartHTTPServiceServicer_to_server(_FailingMidStream(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        gateway = await make_gateway(proxy=f"127.0.0.1:{port}")
        async with aiohttp.ClientSession() as session:
            # A ref advertisement ends with an ERR packet git stops on.
            async with session.get(
                f"{gateway.url}/a/b.git/info/refs?service=git-upload-pack"
            ) as resp:
                assert resp.status == 200
                data = await resp.read()
            assert data.startswith(b"001e# service=git-upload-pack\n0000")
            # The backend's own text stays in the gateway's log: the client
            # reads a short message with the request's correlation id.
            assert b"ERR gitquorum: internal error, correlation id " in data
            assert b"disk on fire" not in data
            # A pack stream is cut off without its last chunk: a transfer
            # error, never a clean (truncated) end.
            async with session.post(
                f"{gateway.url}/a/b.git/git-upload-pack",
                data=ls_refs_request(),
                headers={"Content-Type": UPLOAD_REQUEST},
            ) as resp:
                assert resp.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()
            async with session.get(f"{gateway.url}/metrics") as resp:
                text = await resp.text()
    finally:
        await server.stop(0)
    assert 'gitquorum_http_requests_total{code="aborted",service="PostUploadPack"} 1.0' in text
