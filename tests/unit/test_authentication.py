"""The authenticating interceptor and secret loading, against an in-process grpc.aio server.

The server has one method of each shape, a protobuf-typed method and the
health service; the interceptor must refuse every non-exempt call without a
valid token before any handler or deserializer runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gitquorum import authentication, tokens
from gitquorum.errors import ConfigError, PermissionDenied
from gitquorum.gitaly import shared_pb2

SECRET = b"client-secret-0123456789"
OLD = b"previous-secret-abcdef"
SERVICE = "test.Echo"


def _handlers() -> grpc.GenericRpcHandler:
    calls: list[str] = []

    async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        calls.append("uu")
        return request

    async def unary_stream(
        request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        calls.append("us")
        yield request

    async def stream_unary(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> bytes:
        calls.append("su")
        return b"".join([r async for r in requests])

    async def stream_stream(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        calls.append("ss")
        async for request in requests:
            yield request

    async def typed(request: shared_pb2.Repository, context: grpc.aio.ServicerContext) -> bytes:
        calls.append("typed")
        return request.relative_path.encode()

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
            "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
            "Typed": grpc.unary_unary_rpc_method_handler(
                typed, request_deserializer=shared_pb2.Repository.FromString
            ),
        },
    )
    handler.calls = calls  # type: ignore[attr-defined]
    return handler


class Server:
    """Calls go through a synchronous channel on a thread: the grpc.aio client
    races its request writes against an early status on request streams and
    then reports INTERNAL for some calls (with or without this interceptor);
    the synchronous client, as git-ssh uses, always reports the server's status."""

    def __init__(self, address: str, calls: list[str]) -> None:
        self.address = address
        self.calls = calls

    async def call(self, shape: str, metadata: list[tuple[str, str]] | None = None) -> bytes:
        return await asyncio.to_thread(self._call, shape, metadata)

    def _call(self, shape: str, metadata: list[tuple[str, str]] | None) -> bytes:
        """One call of the given shape with a b"payload" request."""
        path = f"/{SERVICE}/{shape}"
        with grpc.insecure_channel(self.address) as channel:
            if shape in ("UnaryUnary", "Typed"):
                payload = (
                    shared_pb2.Repository(
                        relative_path="group/secret-project.git"
                    ).SerializeToString()
                    if shape == "Typed"
                    else b"payload"
                )
                return bytes(channel.unary_unary(path)(payload, metadata=metadata, timeout=5))
            if shape == "UnaryStream":
                stream = channel.unary_stream(path)(b"payload", metadata=metadata, timeout=5)
                return b"".join(stream)
            chunks = iter([b"pay", b"load"])
            if shape == "StreamUnary":
                return bytes(channel.stream_unary(path)(chunks, metadata=metadata, timeout=5))
            return b"".join(channel.stream_stream(path)(chunks, metadata=metadata, timeout=5))


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    handler = _handlers()
    interceptor = authentication.AuthInterceptor(
        [SECRET, OLD], authentication.HEALTH_METHODS, role="test"
    )
    grpc_server = grpc.aio.server(interceptors=[interceptor])
    grpc_server.add_generic_rpc_handlers([handler])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    yield Server(f"127.0.0.1:{port}", handler.calls)  # type: ignore[attr-defined]
    await grpc_server.stop(None)


SHAPES = ["UnaryUnary", "UnaryStream", "StreamUnary", "StreamStream", "Typed"]


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.mark.parametrize("shape", SHAPES)
async def test_valid_token_of_either_secret_passes(server: Server, shape: str) -> None:
    for secret in (SECRET, OLD):
        answer = await server.call(shape, [tokens.bearer(secret)])
        assert answer in (b"payload", b"group/secret-project.git")
    assert len(server.calls) == 2


@pytest.mark.parametrize("shape", SHAPES)
async def test_missing_token_is_unauthenticated(server: Server, shape: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        await server.call(shape)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details() == "authentication required"
    assert server.calls == []


BAD_TOKENS = {
    "wrong-secret": lambda: bearer(tokens.v2_token(b"some other secret")),
    # Made when the test runs: the clock moves on after collection.
    "stale": lambda: bearer(tokens.v2_token(SECRET, now=time.time() - 120)),
    "future": lambda: bearer(tokens.v2_token(SECRET, now=time.time() + 120)),
    "garbage": lambda: bearer("v2.deadbeef.notanumber"),
    "raw-secret": lambda: bearer(SECRET.decode()),  # the secret itself is not a token
    "basic": lambda: [("authorization", "Basic dXNlcjpwYXNz")],
    "empty-bearer": lambda: [("authorization", "Bearer")],
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_bad_token_is_unauthenticated_too(server: Server, shape: str, kind: str) -> None:
    metadata = BAD_TOKENS[kind]()
    with pytest.raises(grpc.RpcError) as caught:
        await server.call(shape, metadata)
    # Gitaly says PERMISSION_DENIED here; gitquorum says UNAUTHENTICATED for
    # every failed authentication (docs/security.md), and nothing more.
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details() == "authentication failed"
    assert server.calls == []


async def test_refused_request_is_never_parsed(server: Server) -> None:
    # Bytes that are no Repository message: unauthenticated, not INVALID_ARGUMENT
    # or INTERNAL (which would show the server parsed what it had not admitted).
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = channel.unary_unary(f"/{SERVICE}/Typed")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"\xff\xff\xff garbage", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_is_open_and_unknown_methods_stay_unimplemented(server: Server) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(f"/{SERVICE}/Nope")(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_rejections_are_logged_without_secrets(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    token = tokens.v2_token(b"wrong secret")
    caplog.set_level(logging.INFO, logger="gitquorum.auth")
    with pytest.raises(grpc.RpcError):
        await server.call("UnaryUnary", bearer(token))
    stale = tokens.v2_token(SECRET, now=time.time() - 3600)
    with pytest.raises(grpc.RpcError):
        await server.call("UnaryUnary", bearer(stale))
    reasons = [getattr(r, "fields", {}).get("reason") for r in caplog.records]
    assert reasons == ["wrong signature", "timestamp outside the allowed clock skew"]
    text = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', {})}" for r in caplog.records)
    for leaked in (token, stale, SECRET.decode(), OLD.decode(), "secret-project"):
        assert leaked not in text


def test_rejection_reasons() -> None:
    assert authentication.rejection_reason(None) == "no token"
    assert authentication.rejection_reason("Bearer abc") == "not a v2 bearer token"
    assert authentication.rejection_reason("Bearer v2.x.y") == "malformed timestamp"
    assert (
        authentication.rejection_reason("Bearer v2.x.1")
        == "timestamp outside the allowed clock skew"
    )
    assert authentication.rejection_reason(f"Bearer v2.x.{int(time.time())}") == "wrong signature"


def test_verify_accepts_any_listed_secret() -> None:
    authentication.verify(f"Bearer {tokens.v2_token(OLD)}", [SECRET, OLD])
    with pytest.raises(PermissionDenied):
        authentication.verify(f"Bearer {tokens.v2_token(OLD)}", [SECRET])
    with pytest.raises(ValueError):
        authentication.AuthInterceptor([])


def test_secret_files_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"  new-secret \n\nold-secret\n")
    assert authentication.parse_secrets(path.read_bytes()) == (b"new-secret", b"old-secret")
    assert authentication.signing_secret(authentication.load_secrets(str(path))) == b"new-secret"
    env = {authentication.TOKEN_ENV: "from-env"}
    # The file wins over the environment; the environment serves without a file.
    assert authentication.load_secrets(str(path), authentication.TOKEN_ENV, env)[0] == b"new-secret"
    assert authentication.load_secrets("", authentication.TOKEN_ENV, env) == (b"from-env",)
    assert authentication.load_secrets("", authentication.TOKEN_ENV, {}) == ()
    assert authentication.signing_secret(()) is None
    with pytest.raises(ConfigError, match=r"\$GITQUORUM_TOKEN is set but empty"):
        authentication.load_secrets("", authentication.TOKEN_ENV, {authentication.TOKEN_ENV: " \n"})
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n  \n")
    with pytest.raises(ConfigError, match="holds no secret"):
        authentication.load_secrets(str(empty))
    with pytest.raises(ConfigError, match="cannot read"):
        authentication.load_secrets(str(tmp_path / "missing"))


def test_take_secrets_drops_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(authentication.NODE_TOKEN_ENV, "node-secret")
    assert authentication.take_secrets("", authentication.NODE_TOKEN_ENV) == (b"node-secret",)
    assert authentication.NODE_TOKEN_ENV not in os.environ
