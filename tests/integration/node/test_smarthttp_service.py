"""SmartHTTPService on a real node.

The ref advertisements are compared byte for byte with plain git on the
node's replica; fetch and push run the real git CLI over HTTP through a
minimal smart-HTTP-to-gRPC bridge defined here, so PostUploadPack and
PostReceivePack carry exactly what git sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web

from gitquorum.gitaly import shared_pb2, smarthttp_pb2, smarthttp_pb2_grpc
from gitquorum.storage.voting import ZERO_VOTE
from gitquorum.wire.transaction_metadata import COMMITTED, PREPARED
from tests.conftest import Target
from tests.harness import gitrepo
from tests.integration.node.test_ssh_service import (
    BAD_PATHS,
    COMMIT,
    INVALID,
    OK,
    ZERO_OID,
    _create_ref_commands,
    call,
    create_repository,
    local_git,
    parse_pkts,
    seed,
    vote_server,
)

UPLOAD_PACK_CONFIG = (
    "-c",
    "uploadpack.allowFilter=true",
    "-c",
    "uploadpack.allowAnySHA1InWant=true",
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gitrepo.make_repo(tmp_path_factory.mktemp("http") / "source", commits=5)


@pytest.fixture
async def seeded(channel: grpc.aio.Channel, target: Target, source: Path) -> shared_pb2.Repository:
    repo = target.repository()
    await seed(channel, repo, source)
    return repo


async def info_refs(
    channel: grpc.aio.Channel, method: str, request: smarthttp_pb2.InfoRefsRequest
) -> tuple[list[bytes], grpc.StatusCode, str]:
    stub = smarthttp_pb2_grpc.SmartHTTPServiceStub(channel)
    chunks: list[bytes] = []
    try:
        async for response in getattr(stub, method)(request, timeout=30):
            chunks.append(response.data)
    except grpc.aio.AioRpcError as exc:
        return chunks, exc.code(), exc.details() or ""
    return chunks, OK, ""


def data_of(responses: Sequence[Any]) -> bytes:
    return b"".join(r.data for r in responses)


# --- InfoRefs -------------------------------------------------------------------


async def test_info_refs_upload_pack_is_header_plus_git_advertisement(
    channel: grpc.aio.Channel, target: Target, seeded: shared_pb2.Repository
) -> None:
    request = smarthttp_pb2.InfoRefsRequest(repository=seeded)
    chunks, code, details = await info_refs(channel, "InfoRefsUploadPack", request)
    assert code == OK, details
    expected = local_git(
        *UPLOAD_PACK_CONFIG,
        "upload-pack",
        "--stateless-rpc",
        "--advertise-refs",
        str(target.disk_path(seeded)),
    )
    assert b"".join(chunks) == b"001e# service=git-upload-pack\n0000" + expected


async def test_info_refs_upload_pack_protocol_v2(
    channel: grpc.aio.Channel, seeded: shared_pb2.Repository
) -> None:
    request = smarthttp_pb2.InfoRefsRequest(repository=seeded, git_protocol="version=2")
    chunks, code, details = await info_refs(channel, "InfoRefsUploadPack", request)
    assert code == OK, details
    packets = parse_pkts(b"".join(chunks))
    assert packets[:3] == [b"# service=git-upload-pack\n", None, b"version 2\n"]
    assert any(p and p.startswith(b"ls-refs") for p in packets)
    assert not any(p and b"refs/heads/main" in p for p in packets)


async def test_info_refs_receive_pack_is_header_plus_git_advertisement(
    channel: grpc.aio.Channel, target: Target, seeded: shared_pb2.Repository
) -> None:
    request = smarthttp_pb2.InfoRefsRequest(repository=seeded)
    chunks, code, details = await info_refs(channel, "InfoRefsReceivePack", request)
    assert code == OK, details
    expected = local_git(
        "receive-pack", "--stateless-rpc", "--advertise-refs", str(target.disk_path(seeded))
    )
    assert b"".join(chunks) == b"001f# service=git-receive-pack\n0000" + expected


@pytest.mark.parametrize("method", ["InfoRefsUploadPack", "InfoRefsReceivePack"])
async def test_info_refs_honours_config_options(
    channel: grpc.aio.Channel, seeded: shared_pb2.Repository, method: str
) -> None:
    request = smarthttp_pb2.InfoRefsRequest(
        repository=seeded, git_config_options=["transfer.hideRefs=refs/tags"]
    )
    chunks, code, details = await info_refs(channel, method, request)
    assert code == OK, details
    assert b"refs/heads/main" in b"".join(chunks)
    assert b"refs/tags/" not in b"".join(chunks)


async def test_large_advertisement_is_chunked(
    channel: grpc.aio.Channel, target: Target, tmp_path: Path
) -> None:
    many = gitrepo.make_repo(tmp_path / "many", commits=1, branches=(), tags=(), annotated_tags=())
    head = gitrepo.git("rev-parse", "HEAD", cwd=many).strip()
    # Long names keep the ref count (and the seeding time) low: ~100 KiB of refs.
    commands = "".join(f"create refs/tags/{'t' * 200}-{i:04d} {head}\n" for i in range(400))
    gitrepo.git("update-ref", "--stdin", cwd=many, input=commands.encode())
    repo = target.repository()
    await seed(channel, repo, many)
    chunks, code, details = await info_refs(
        channel, "InfoRefsUploadPack", smarthttp_pb2.InfoRefsRequest(repository=repo)
    )
    assert code == OK, details
    assert len(chunks) >= 2
    assert max(len(c) for c in chunks) <= 1024 * 1024
    expected = local_git(
        *UPLOAD_PACK_CONFIG,
        "upload-pack",
        "--stateless-rpc",
        "--advertise-refs",
        str(target.disk_path(repo)),
    )
    assert b"".join(chunks).endswith(expected)


@pytest.mark.parametrize("method", ["InfoRefsUploadPack", "InfoRefsReceivePack"])
@pytest.mark.parametrize(
    ("case", "storage", "path", "expected"), BAD_PATHS, ids=[c[0] for c in BAD_PATHS]
)
async def test_info_refs_bad_repository(
    channel: grpc.aio.Channel,
    target: Target,
    method: str,
    case: str,
    storage: str | None,
    path: str,
    expected: grpc.StatusCode,
) -> None:
    repo = shared_pb2.Repository(storage_name=storage or target.storage, relative_path=path)
    chunks, code, details = await info_refs(
        channel, method, smarthttp_pb2.InfoRefsRequest(repository=repo)
    )
    assert code == expected, f"{case}: {details}"
    # Nothing, not even the service header, is sent for a bad request.
    assert chunks == []


@pytest.mark.parametrize("method", ["InfoRefsUploadPack", "InfoRefsReceivePack"])
@pytest.mark.parametrize("option", ["missing-equals", "core.hooksPath=/tmp", "includeIf.x.path=/y"])
async def test_info_refs_bad_config_option(
    channel: grpc.aio.Channel, seeded: shared_pb2.Repository, method: str, option: str
) -> None:
    request = smarthttp_pb2.InfoRefsRequest(repository=seeded, git_config_options=[option])
    _, code, _ = await info_refs(channel, method, request)
    assert code == INVALID


@pytest.mark.parametrize("method", ["InfoRefsUploadPack", "InfoRefsReceivePack"])
async def test_info_refs_repository_not_set(channel: grpc.aio.Channel, method: str) -> None:
    _, code, _ = await info_refs(channel, method, smarthttp_pb2.InfoRefsRequest())
    assert code == INVALID


# --- real git over HTTP ----------------------------------------------------------


@contextlib.asynccontextmanager
async def http_bridge(channel: grpc.aio.Channel, storage: str) -> AsyncIterator[str]:
    """A smart-HTTP server that forwards every request to the SmartHTTPService."""
    stub = smarthttp_pb2_grpc.SmartHTTPServiceStub(channel)

    def repository(request: web.Request) -> shared_pb2.Repository:
        return shared_pb2.Repository(storage_name=storage, relative_path=request.match_info["repo"])

    def failure(exc: grpc.aio.AioRpcError) -> web.Response:
        status = 404 if exc.code() == grpc.StatusCode.NOT_FOUND else 500
        return web.Response(status=status, text=exc.details() or "")

    async def get_info_refs(request: web.Request) -> web.Response:
        service = request.query.get("service", "")
        method = {
            "git-upload-pack": stub.InfoRefsUploadPack,
            "git-receive-pack": stub.InfoRefsReceivePack,
        }[service]
        message = smarthttp_pb2.InfoRefsRequest(
            repository=repository(request), git_protocol=request.headers.get("Git-Protocol", "")
        )
        try:
            body = b"".join([r.data async for r in method(message)])
        except grpc.aio.AioRpcError as exc:
            return failure(exc)
        return web.Response(body=body, content_type=f"application/x-{service}-advertisement")

    async def body_chunks(request: web.Request) -> list[bytes]:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return [body[i : i + 65536] for i in range(0, len(body), 65536)]

    async def post_upload_pack(request: web.Request) -> web.Response:
        first = smarthttp_pb2.PostUploadPackRequest(
            repository=repository(request), git_protocol=request.headers.get("Git-Protocol", "")
        )
        data = [smarthttp_pb2.PostUploadPackRequest(data=c) for c in await body_chunks(request)]
        responses, code, details = await call(stub.PostUploadPack, [first, *data])
        if code != OK:
            return web.Response(status=500, text=details)
        return web.Response(
            body=data_of(responses), content_type="application/x-git-upload-pack-result"
        )

    async def post_receive_pack(request: web.Request) -> web.Response:
        first = smarthttp_pb2.PostReceivePackRequest(
            repository=repository(request),
            gl_id="user-1",
            git_protocol=request.headers.get("Git-Protocol", ""),
        )
        data = [smarthttp_pb2.PostReceivePackRequest(data=c) for c in await body_chunks(request)]
        responses, code, details = await call(stub.PostReceivePack, [first, *data])
        if code != OK:
            return web.Response(status=500, text=details)
        return web.Response(
            body=data_of(responses), content_type="application/x-git-receive-pack-result"
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/{repo:.+}/info/refs", get_info_refs)
    app.router.add_post("/{repo:.+}/git-upload-pack", post_upload_pack)
    app.router.add_post("/{repo:.+}/git-receive-pack", post_receive_pack)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def git_async(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    """git without blocking the loop that serves the bridge."""
    env = {
        k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("GIT_")
    }
    env.update(gitrepo.GIT_ENV)
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, stderr.decode(errors="replace")


def heads_and_tags(path: Path) -> dict[str, str]:
    return {
        n: o for n, o in gitrepo.refs(path).items() if n.startswith(("refs/heads/", "refs/tags/"))
    }


@pytest.mark.parametrize("version", ["0", "2"])
async def test_git_push_clone_and_fetch_over_http(
    channel: grpc.aio.Channel, target: Target, source: Path, tmp_path: Path, version: str
) -> None:
    repo = target.repository()
    await create_repository(channel, repo)
    async with http_bridge(channel, target.storage) as base:
        remote = f"{base}/{repo.relative_path}"
        code, err = await git_async(
            "-c", f"protocol.version={version}", "push", remote,
            "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*", cwd=source,
        )  # fmt: skip
        assert code == 0, err
        clone = tmp_path / "clone"
        code, err = await git_async(
            "-c", f"protocol.version={version}", "clone", "--mirror", remote, str(clone)
        )
        assert code == 0, err
        assert heads_and_tags(clone) == heads_and_tags(source)
        gitrepo.git("fsck", "--strict", cwd=clone)

        work = tmp_path / "work"
        code, err = await git_async("clone", "-q", remote, str(work))
        assert code == 0, err
        (work / "more.txt").write_text("more\n")
        gitrepo.git("add", "more.txt", cwd=work)
        gitrepo.git("commit", "-q", "-m", "more", cwd=work)
        code, err = await git_async("push", "origin", "main", cwd=work)
        assert code == 0, err
        code, err = await git_async(
            "-c", f"protocol.version={version}", "fetch", "--prune", cwd=clone
        )
        assert code == 0, err
    head = gitrepo.git("rev-parse", "HEAD", cwd=work).strip()
    assert gitrepo.refs(clone)["refs/heads/main"] == head
    if target.storage_path is not None:
        assert heads_and_tags(target.disk_path(repo)) == heads_and_tags(clone)
        gitrepo.git("fsck", "--strict", cwd=target.disk_path(repo))


async def test_clone_of_missing_repository_over_http_fails(
    channel: grpc.aio.Channel, target: Target, tmp_path: Path
) -> None:
    async with http_bridge(channel, target.storage) as base:
        code, err = await git_async("clone", f"{base}/missing/none.git", str(tmp_path / "c"))
    assert code != 0
    assert "not found" in err


# --- PostUploadPack / PostReceivePack, raw -------------------------------------------


async def test_post_upload_pack_sends_pack_for_wants(
    channel: grpc.aio.Channel, target: Target, seeded: shared_pb2.Repository, tmp_path: Path
) -> None:
    stub = smarthttp_pb2_grpc.SmartHTTPServiceStub(channel)
    head = gitrepo.refs(target.disk_path(seeded))["refs/heads/main"]
    body = (
        f"{len(f'want {head} ofs-delta') + 5:04x}want {head} ofs-delta\n".encode()
        + b"0000"
        + b"0009done\n"
    )
    responses, code, details = await call(
        stub.PostUploadPack,
        [
            smarthttp_pb2.PostUploadPackRequest(repository=seeded),
            smarthttp_pb2.PostUploadPackRequest(data=body),
        ],
    )
    assert code == OK, details
    out = data_of(responses)
    assert out.startswith(b"0008NAK\n")
    pack = out[len(b"0008NAK\n") :]
    assert pack.startswith(b"PACK")
    # Every object the commit needs is in the pack, and nothing is corrupt.
    scratch = tmp_path / "scratch.git"
    gitrepo.git("init", "-q", "--bare", str(scratch))
    verified = local_git("-C", str(scratch), "index-pack", "--stdin", "--strict", input=pack)
    assert verified.startswith(b"pack\t")
    # ...and it holds the whole history of main.
    count = local_git("-C", str(scratch), "rev-list", "--count", head).strip()
    assert count == b"5"


async def test_post_receive_pack_creates_ref_with_votes(
    channel: grpc.aio.Channel, target: Target, seeded: shared_pb2.Repository
) -> None:
    stub = smarthttp_pb2_grpc.SmartHTTPServiceStub(channel)
    oid = gitrepo.refs(target.disk_path(seeded))["refs/heads/feature"]
    messages = [
        smarthttp_pb2.PostReceivePackRequest(repository=seeded, gl_id="user-1"),
        smarthttp_pb2.PostReceivePackRequest(data=_create_ref_commands(oid, "refs/heads/http")),
    ]
    if target.storage_path is None:
        responses, code, details = await call(stub.PostReceivePack, messages)
        votes = None
    else:
        async with vote_server(COMMIT) as (recorder, metadata):
            responses, code, details = await call(stub.PostReceivePack, messages, metadata)
        votes = recorder.votes
    assert code == OK, details
    report = parse_pkts(data_of(responses))
    assert report == [b"unpack ok\n", b"ok refs/heads/http\n", None]
    if votes is not None:
        update = hashlib.sha1(f"{ZERO_OID} {oid} refs/heads/http\n".encode()).digest()
        assert [(v[2], v[3]) for v in votes] == [
            (update, PREPARED),
            (update, COMMITTED),
            (ZERO_VOTE, COMMITTED),
        ]
        assert gitrepo.refs(target.disk_path(seeded))["refs/heads/http"] == oid


async def test_post_receive_pack_requires_gl_id(
    channel: grpc.aio.Channel, seeded: shared_pb2.Repository
) -> None:
    stub = smarthttp_pb2_grpc.SmartHTTPServiceStub(channel)
    _, code, details = await call(
        stub.PostReceivePack, [smarthttp_pb2.PostReceivePackRequest(repository=seeded)]
    )
    assert code == INVALID
    assert "empty GlId" in details


@pytest.mark.parametrize("method", ["PostUploadPack", "PostReceivePack"])
async def test_post_data_in_first_message(
    channel: grpc.aio.Channel, seeded: shared_pb2.Repository, method: str
) -> None:
    stub = smarthttp_pb2_grpc.SmartHTTPServiceStub(channel)
    message = getattr(smarthttp_pb2, f"{method}Request")
    extra = {"gl_id": "user-1"} if method == "PostReceivePack" else {}
    _, code, details = await call(
        getattr(stub, method), [message(repository=seeded, data=b"0000", **extra)]
    )
    assert code == INVALID
    assert "non-empty Data" in details


@pytest.mark.parametrize("method", ["PostUploadPack", "PostReceivePack"])
async def test_post_git_failure_is_an_error(
    channel: grpc.aio.Channel, target: Target, seeded: shared_pb2.Repository, method: str
) -> None:
    stub = smarthttp_pb2_grpc.SmartHTTPServiceStub(channel)
    message = getattr(smarthttp_pb2, f"{method}Request")
    extra = {"gl_id": "user-1"} if method == "PostReceivePack" else {}
    before = gitrepo.refs(target.disk_path(seeded)) if target.storage_path else None
    _, code, details = await call(
        getattr(stub, method),
        [message(repository=seeded, **extra), message(data=b"not a pkt-line at all")],
    )
    # A body git cannot parse is the client's fault, in git's words.
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "protocol error" in details and "exit status" not in details
    if before is not None:
        assert gitrepo.refs(target.disk_path(seeded)) == before


@pytest.mark.parametrize("method", ["PostUploadPack", "PostReceivePack"])
@pytest.mark.parametrize(
    ("case", "storage", "path", "expected"), BAD_PATHS, ids=[c[0] for c in BAD_PATHS]
)
async def test_post_bad_repository(
    channel: grpc.aio.Channel,
    target: Target,
    method: str,
    case: str,
    storage: str | None,
    path: str,
    expected: grpc.StatusCode,
) -> None:
    stub = smarthttp_pb2_grpc.SmartHTTPServiceStub(channel)
    repo = shared_pb2.Repository(storage_name=storage or target.storage, relative_path=path)
    message = getattr(smarthttp_pb2, f"{method}Request")
    extra = {"gl_id": "user-1"} if method == "PostReceivePack" else {}
    _, code, details = await call(getattr(stub, method), [message(repository=repo, **extra)])
    assert code == expected, f"{case}: {details}"


@pytest.mark.parametrize("method", ["PostUploadPack", "PostReceivePack"])
async def test_post_bad_config_option(
    channel: grpc.aio.Channel, seeded: shared_pb2.Repository, method: str
) -> None:
    stub = smarthttp_pb2_grpc.SmartHTTPServiceStub(channel)
    message = getattr(smarthttp_pb2, f"{method}Request")
    extra = {"gl_id": "user-1"} if method == "PostReceivePack" else {}
    _, code, _ = await call(
        getattr(stub, method),
        [message(repository=seeded, git_config_options=["uploadpack.packObjectsHook=x"], **extra)],
    )
    assert code == INVALID


@pytest.mark.parametrize("method", ["PostUploadPack", "PostReceivePack"])
async def test_post_empty_request_stream(channel: grpc.aio.Channel, method: str) -> None:
    stub = smarthttp_pb2_grpc.SmartHTTPServiceStub(channel)
    _, code, _ = await call(getattr(stub, method), [])
    assert code == INVALID
