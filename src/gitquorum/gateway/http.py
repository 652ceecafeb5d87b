"""The smart-HTTP gateway: ``git clone/fetch/push http://HOST:PORT/<relative path>``.

Each request becomes one SmartHTTPService call on the proxy (or a node):

* ``GET /<repo>/info/refs?service=git-upload-pack`` -> InfoRefsUploadPack,
  ``...?service=git-receive-pack`` -> InfoRefsReceivePack;
* ``POST /<repo>/git-upload-pack`` -> PostUploadPack;
* ``POST /<repo>/git-receive-pack`` -> PostReceivePack;
* ``GET /metrics``: the gateway's Prometheus metrics, on the same listener.

Bodies stream both ways in bounded chunks: the request body is read (and
inflated) chunk by chunk while the backend's answers are written out as they
come, so neither a push nor a clone is ever held whole. The response status
is chosen when the backend's first answer (or error) arrives, which lets a
missing repository, an unreachable proxy or a refused credential become a
404/503/401 with a text body git shows. A push the server rejects is not an
HTTP error: git's report-status carries the reason inside the 200 body.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gitquorum import authentication, log, tls
from gitquorum.config import parse_address
from gitquorum.errors import GitquorumError, PermissionDenied
from gitquorum.gateway import body, paths, pktline, status
from gitquorum.gateway.backend import Backend
from gitquorum.gateway.credentials import CHALLENGE, Credentials, Identity
from gitquorum.gateway.metrics import ABORTED, NO_SERVICE, HttpMetrics
from gitquorum.gitaly import smarthttp_pb2
from gitquorum.lifecycle import Assembled, ListenError, run_until_signalled
from gitquorum.wire.callstatus import StatusWatch

logger = log.get("gitquorum.gateway")

UPLOAD_PACK = "git-upload-pack"
RECEIVE_PACK = "git-receive-pack"
# What git-http-backend sends, so no cache between git and the gateway
# serves a stale ref advertisement.
NO_CACHE = {
    "Cache-Control": "no-cache, max-age=0, must-revalidate",
    "Pragma": "no-cache",
    "Expires": "Fri, 01 Jan 1980 00:00:00 GMT",
}
# Values git sends in Git-Protocol ("version=2", "version=2:object-format=sha1").
_GIT_PROTOCOL = re.compile(r"[A-Za-z0-9=:._-]{0,256}\Z")
# Correlation ids a client may choose; anything else gets a fresh one.
_CORRELATION_KEY = web.RequestKey("correlation_id", str)


@dataclass(frozen=True)
class GatewayConfig:
    # gRPC target of the proxy (or a node) serving SmartHTTPService.
    proxy: str
    listen: str = "127.0.0.1:0"
    # The virtual storage every URL path is a repository of.
    storage: str = "default"
    # Gateway users' secrets; empty: no authentication at the gateway.
    token_file: str = ""
    # Shared secret for v2 tokens towards the proxy; empty: none sent.
    proxy_token_file: str = ""
    # HTTPS: certificate and key of the listener; empty: plain HTTP.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # TLS to the proxy, verified with this CA; empty: plaintext gRPC.
    proxy_ca_file: str = ""
    # On a push to a missing repository, create it (receive-pack only).
    create_on_push: bool = False
    # Deadline of ref advertisements and repository creation, in seconds.
    timeout: float = 60.0
    # How long SIGTERM lets requests in flight finish, in seconds.
    graceful_timeout: float = 30.0
    # Request body bytes per gRPC message.
    chunk_size: int = body.DEFAULT_CHUNK
    # GL_ID of pushes (the hooks' notion of the pusher).
    gl_id: str = "user-1"


class _Failure(Exception):
    """An error answered with an HTTP status, before the response started."""

    def __init__(self, http_status: int, text: str, headers: dict[str, str] | None = None):
        super().__init__(text)
        self.http_status = http_status
        self.text = text
        self.headers = headers or {}

    def response(self) -> web.Response:
        return web.Response(
            status=self.http_status,
            text=self.text.rstrip("\n") + "\n",
            content_type="text/plain",
            headers={**NO_CACHE, **self.headers},
        )


@dataclass
class _Exchange:
    """What one request did, for its log line and metrics."""

    service: str = NO_SERVICE
    code: str = ""
    relative_path: str = ""
    user: str = ""
    bytes_in: int = 0
    bytes_out: int = 0


class GatewayServer(Assembled):
    """The gateway: an aiohttp server in front of one gRPC backend.

    ``start()`` listens on ``config.listen`` (port 0 picks a free port, see
    ``port``); ``close()`` stops accepting and lets requests in flight finish
    within ``config.graceful_timeout``.
    """

    def __init__(self, config: GatewayConfig, registry: CollectorRegistry | None = None) -> None:
        super().__init__(config.graceful_timeout)
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = HttpMetrics(self.registry)
        self.credentials = Credentials.load(config.token_file) if config.token_file else None
        # A token file may list several secrets during a rotation; the first signs.
        secret = (
            authentication.signing_secret(authentication.load_secrets(config.proxy_token_file))
            if config.proxy_token_file
            else None
        )
        proxy_tls = tls.ClientTLS(config.proxy_ca_file) if config.proxy_ca_file else None
        self.backend = Backend(config.proxy, config.storage, secret, proxy_tls)
        self._ssl = _ssl_context(config)
        self.host, self.port = parse_address(config.listen)
        # Opened by start(); None until then.
        self._runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl is not None else 'http'}://{self.address}"

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_route("*", "/{path:.*}", self._handle)
        app.on_response_prepare.append(_add_request_id)
        return app

    async def start(self) -> None:
        """Open the backend channel, then listen; a failed start closes what it opened."""
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.backend.close)
            await self.backend.open()
            self._runner = runner = web.AppRunner(
                self.make_app(),
                access_log=None,
                # Bodies are inflated by body.chunks, with a bound on every chunk.
                auto_decompress=False,
                shutdown_timeout=self.config.graceful_timeout,
            )
            # Stops the listener, then lets requests in flight finish (the drain).
            stack.push_async_callback(self._cleanup_runner)
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port, ssl_context=self._ssl)
            try:
                await site.start()
            except OSError as exc:
                raise ListenError(self.config.listen, exc.strerror or exc) from exc
            server = site._server
            if server is not None and server.sockets:  # type: ignore[attr-defined]
                self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
            self._stack = stack.pop_all()
        logger.info(
            "http gateway serving",
            extra=log.fields(
                listen=self.address,
                proxy=self.config.proxy,
                virtual_storage=self.config.storage,
                authentication=self.credentials is not None,
                https=self._ssl is not None,
                proxy_tls=bool(self.config.proxy_ca_file),
                create_on_push=self.config.create_on_push,
            ),
        )

    async def _cleanup_runner(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            # aiohttp reads the drain's timeout from the runner; set it per close.
            runner._shutdown_timeout = self._grace
            await runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        offered = request.headers.get("X-Request-Id", "")
        correlation = offered if log.valid_correlation_id(offered) else log.new_correlation_id()
        request[_CORRELATION_KEY] = correlation
        token = log.correlation_id.set(correlation)
        exchange = _Exchange()
        try:
            try:
                response = await self._route(request, exchange)
            except _Failure as failure:
                response = failure.response()
            exchange.code = exchange.code or str(response.status)
            return response
        except BaseException:
            exchange.code = exchange.code or "500"
            raise
        finally:
            elapsed = time.monotonic() - started
            self.metrics.observe(exchange.service, exchange.code, elapsed)
            logger.info(
                "http request",
                extra=log.fields(
                    method=request.method,
                    path=request.raw_path,
                    service=exchange.service,
                    relative_path=exchange.relative_path,
                    code=exchange.code,
                    user=exchange.user,
                    bytes_in=exchange.bytes_in,
                    bytes_out=exchange.bytes_out,
                    duration_ms=round(elapsed * 1000, 1),
                ),
            )
            log.correlation_id.reset(token)

    async def _route(self, request: web.Request, exchange: _Exchange) -> web.StreamResponse:
        try:
            target = paths.parse(request.raw_path.partition("?")[0])
        except paths.InvalidPath as exc:
            raise _Failure(400, f"gitquorum: invalid repository path: {exc}") from None
        except paths.UnknownEndpoint:
            raise _Failure(404, "gitquorum: not a git smart-HTTP URL") from None
        exchange.relative_path = target.relative_path
        if target.endpoint is paths.Endpoint.INFO_REFS:
            return await self._info_refs(request, target.relative_path, exchange)
        return await self._post(request, target, exchange)

    # -- GET /<repo>/info/refs ------------------------------------------------

    async def _info_refs(
        self, request: web.Request, relative: str, exchange: _Exchange
    ) -> web.StreamResponse:
        if request.method != "GET":
            raise _Failure(405, "gitquorum: use GET for info/refs", {"Allow": "GET"})
        service = request.query.get("service", "")
        if service not in (UPLOAD_PACK, RECEIVE_PACK):
            # Without a service git falls back to the dumb protocol, which
            # would need the repository's files: not served.
            raise _Failure(
                403, "gitquorum: only the smart HTTP protocol is served (need ?service=)"
            )
        push = service == RECEIVE_PACK
        exchange.service = "InfoRefsReceivePack" if push else "InfoRefsUploadPack"
        self._authorize(request, push, exchange)
        protocol = _git_protocol(request)
        call = self.backend.info_refs(relative, push, protocol, self.config.timeout)
        try:
            first = await _first_message(call)
        except grpc.aio.AioRpcError as error:
            if not (
                push and self.config.create_on_push and error.code() == grpc.StatusCode.NOT_FOUND
            ):
                raise self._backend_failure(error, relative) from None
            call = await self._create_and_retry(relative, protocol)
            first = await self._first_or_fail(call, relative)
        response = web.StreamResponse(
            status=200,
            headers={**NO_CACHE, "Content-Type": f"application/x-{service}-advertisement"},
        )
        await response.prepare(request)
        try:
            if first is not None:
                await self._write(response, first.data, exchange)
            async for message in call:
                await self._write(response, message.data, exchange)
        except grpc.aio.AioRpcError as error:
            # The status is out already; an ERR packet makes git stop with
            # the reason instead of parsing a truncated advertisement.
            logger.warning(
                "ref advertisement failed mid-stream",
                extra=log.fields(code=error.code().name, details=error.details()),
            )
            text = status.describe(
                error.code(), error.details() or "", relative, self.backend.storage
            )
            await response.write(pktline.error_line(text))
        except ConnectionError:
            call.cancel()
            exchange.code = ABORTED
            return response
        await response.write_eof()
        return response

    async def _create_and_retry(self, relative: str, protocol: str) -> Any:
        logger.info("creating repository on first push", extra=log.fields(relative_path=relative))
        try:
            await self.backend.create_repository(relative, self.config.timeout)
        except grpc.aio.AioRpcError as error:
            raise self._backend_failure(error, relative) from None
        return self.backend.info_refs(relative, True, protocol, self.config.timeout)

    async def _first_or_fail(self, call: Any, relative: str) -> Any:
        try:
            return await _first_message(call)
        except grpc.aio.AioRpcError as error:
            raise self._backend_failure(error, relative) from None

    # -- POST /<repo>/git-upload-pack, /<repo>/git-receive-pack --------------

    async def _post(
        self, request: web.Request, target: paths.Target, exchange: _Exchange
    ) -> web.StreamResponse:
        push = target.endpoint is paths.Endpoint.RECEIVE_PACK
        service = RECEIVE_PACK if push else UPLOAD_PACK
        exchange.service = "PostReceivePack" if push else "PostUploadPack"
        if request.method != "POST":
            raise _Failure(405, f"gitquorum: use POST for {service}", {"Allow": "POST"})
        identity = self._authorize(request, push, exchange)
        expected = f"application/x-{service}-request"
        if request.content_type != expected:
            raise _Failure(415, f"gitquorum: expected Content-Type {expected}")
        encoding = request.headers.get("Content-Encoding", "")
        try:
            body.check_encoding(encoding)
        except body.UnsupportedEncoding as exc:
            raise _Failure(415, f"gitquorum: {exc}") from None
        protocol = _git_protocol(request)
        head = b""
        if push and request.content_length == len(pktline.FLUSH) and not encoding:
            # Before a push larger than its post buffer, git probes with a bare
            # flush to settle authentication. receive-pack would read no
            # command and answer nothing; answered here, the probe costs no
            # write transaction (and generation bump) on every replica.
            head = await request.content.read()
            if head == pktline.FLUSH:
                probe = _result_response(service)
                await probe.prepare(request)
                await probe.write_eof()
                return probe
        repository = self.backend.repository(target.relative_path)
        make: Callable[..., Any]
        if push:
            make = smarthttp_pb2.PostReceivePackRequest
            first = make(
                repository=repository,
                gl_id=self.config.gl_id,
                gl_username=identity.username if identity else "",
                git_protocol=protocol,
            )
            call = self.backend.post_receive_pack()
        else:
            make = smarthttp_pb2.PostUploadPackRequest
            first = make(repository=repository, git_protocol=protocol)
            call = self.backend.post_upload_pack()
        chunks = _prepend(head, body.chunks(request.content, encoding, self.config.chunk_size))
        # The body is still being sent when a backend refuses the call (a
        # missing repository): the watch recovers its status from the write race.
        watch = StatusWatch(call)
        pump = asyncio.create_task(_pump(call, first, chunks, make, exchange))
        response: web.StreamResponse | None = None
        try:
            try:
                async for message in call:
                    if response is None:
                        response = _result_response(service)
                        await response.prepare(request)
                    await self._write(response, message.data, exchange)
            except asyncio.CancelledError:
                # The pump cancels the call when the request body fails;
                # anything else is this task being cancelled.
                body_error = _pump_error(pump)
                if body_error is None:
                    raise
                return self._body_failed(request, response, body_error, exchange, target)
            except grpc.aio.AioRpcError as error:
                body_error = _pump_error(pump)
                if body_error is not None:
                    return self._body_failed(request, response, body_error, exchange, target)
                code, details = await watch.resolve(error.code(), error.details() or "")
                if code is grpc.StatusCode.OK:
                    # The backend answered before reading the whole body (git
                    # stopped at a flush packet): its answer is a success, and
                    # what the body still held was never used.
                    logger.info(
                        f"{service} answered before the end of the request body",
                        extra=log.fields(bytes_in=exchange.bytes_in),
                    )
                elif response is not None:
                    logger.warning(
                        f"{service} failed mid-stream",
                        extra=log.fields(code=code.name, details=details),
                    )
                    return _abort(request, response, exchange)
                else:
                    raise self._failure(code, details, target.relative_path) from None
            except ConnectionError:
                # The client went away; the call is cancelled below.
                if response is None:
                    raise
                return _abort(request, response, exchange)
        finally:
            if not call.done():
                call.cancel()
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
        if response is None:
            # The backend answered nothing (a request without commands): still
            # a successful, empty result.
            response = _result_response(service)
            await response.prepare(request)
        await response.write_eof()
        return response

    def _body_failed(
        self,
        request: web.Request,
        response: web.StreamResponse | None,
        error: BaseException,
        exchange: _Exchange,
        target: paths.Target,
    ) -> web.StreamResponse:
        logger.warning(
            "request body failed",
            extra=log.fields(relative_path=target.relative_path, error=repr(error)),
        )
        if response is not None:
            return _abort(request, response, exchange)
        if isinstance(error, body.BodyError):
            raise _Failure(400, f"gitquorum: {error}")
        raise _Failure(400, f"gitquorum: cannot read the request body: {error}")

    # -- helpers ---------------------------------------------------------------

    def _authorize(self, request: web.Request, push: bool, exchange: _Exchange) -> Identity | None:
        if self.credentials is None:
            return None
        try:
            identity = self.credentials.authorize(request.headers.get("Authorization"), push)
        except PermissionDenied as exc:
            raise _Failure(403, f"gitquorum: {exc}") from None
        except GitquorumError as exc:
            raise _Failure(401, f"gitquorum: {exc}", {"WWW-Authenticate": CHALLENGE}) from None
        exchange.user = identity.username
        return identity

    def _backend_failure(self, error: grpc.aio.AioRpcError, relative: str) -> _Failure:
        return self._failure(error.code(), error.details() or "", relative)

    def _failure(self, code: grpc.StatusCode, details: str, relative: str) -> _Failure:
        if status.hides_details(code, details):
            # What the client reads is the short message; the rest is logged here.
            logger.warning("backend failed", extra=log.fields(code=code.name, details=details))
        text = status.describe(code, details, relative, self.backend.storage)
        return _Failure(status.http_status(code), text, status.headers(code))

    async def _write(self, response: web.StreamResponse, data: bytes, exchange: _Exchange) -> None:
        exchange.bytes_out += len(data)
        await response.write(data)


def _result_response(service: str) -> web.StreamResponse:
    return web.StreamResponse(
        status=200, headers={**NO_CACHE, "Content-Type": f"application/x-{service}-result"}
    )


async def _prepend(head: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if head:
        yield head
    async for chunk in chunks:
        yield chunk


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    correlation = request.get(_CORRELATION_KEY)
    if correlation:
        response.headers["X-Request-Id"] = correlation


def _git_protocol(request: web.Request) -> str:
    value = request.headers.get("Git-Protocol", "")
    if not _GIT_PROTOCOL.match(value):
        raise _Failure(400, "gitquorum: malformed Git-Protocol header")
    return value


async def _first_message(call: Any) -> Any:
    """The first answer of a server stream; None if it ended without one."""
    try:
        return await anext(aiter(call))
    except StopAsyncIteration:
        return None


async def _pump(
    call: Any,
    first: Any,
    chunks: AsyncIterator[bytes],
    make: Callable[..., Any],
    exchange: _Exchange,
) -> None:
    """Send the first message, then the request body, then half-close."""
    try:
        await call.write(first)
        async for chunk in chunks:
            exchange.bytes_in += len(chunk)
            await call.write(make(data=chunk))
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        # The call ended first (an error, or an answer without reading it
        # all); the reading side reports how.
        return
    except asyncio.CancelledError:
        raise
    except Exception:
        # A truncated or undecodable body must never reach git as a clean
        # end of input: cancel, so the backend discards what it got.
        call.cancel()
        raise


def _pump_error(pump: asyncio.Task[None]) -> BaseException | None:
    if pump.done() and not pump.cancelled():
        return pump.exception()
    return None


def _abort(
    request: web.Request, response: web.StreamResponse, exchange: _Exchange
) -> web.StreamResponse:
    """Cut a response whose status is out: git sees a transfer error, not a clean end."""
    exchange.code = ABORTED
    if request.transport is not None:
        request.transport.close()
    return response


def _ssl_context(config: GatewayConfig) -> ssl.SSLContext | None:
    """The listener's TLS context; read once: a new certificate takes a restart."""
    if not config.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert_file, config.tls_key_file or None)
    return context


async def serve(config: GatewayConfig, ready_file: Path | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain requests in flight; a second signal stops at once."""
    gateway = GatewayServer(config)

    def ready() -> None:
        if ready_file is not None:
            # "ADDRESS METRICS_PORT" like the node and the proxy; /metrics is on
            # the same port.
            ready_file.write_text(f"{gateway.address} {gateway.port}\n")

    await run_until_signalled(
        gateway, grace=config.graceful_timeout, ready=ready, logger_name=logger.name
    )
