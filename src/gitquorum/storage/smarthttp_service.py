"""SmartHTTPService: git's smart HTTP protocol, one request/response body per RPC.

The ref advertisement is git's ``--stateless-rpc --advertise-refs`` output
behind the ``# service=`` pkt-line that the HTTP protocol expects; the POST
bodies are piped through ``--stateless-rpc`` upload-pack/receive-pack. HTTP
has no stderr or exit-status channel, so a failing git command ends the RPC
with an error. A push votes through the reference-transaction hook and ends
with the zero vote, as every replica must cast the same sequence of votes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from gitquorum.errors import InvalidArgument
from gitquorum.gitaly import smarthttp_pb2, smarthttp_pb2_grpc
from gitquorum.storage import git, pack
from gitquorum.storage.context import NodeContext
from gitquorum.storage.voting import ZERO_VOTE
from gitquorum.wire.transaction_metadata import COMMITTED, transaction_from_metadata


def pkt_line(data: bytes) -> bytes:
    return b"%04x" % (len(data) + 4) + data


def service_header(service: str) -> bytes:
    """What smart HTTP puts before a ref advertisement."""
    return pkt_line(f"# service={service}\n".encode()) + b"0000"


class SmartHTTPService(smarthttp_pb2_grpc.SmartHTTPServiceServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node

    async def InfoRefsUploadPack(
        self, request: smarthttp_pb2.InfoRefsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[smarthttp_pb2.InfoRefsResponse]:
        async for data in self._advertise("upload-pack", request, pack.UPLOAD_PACK_CONFIG):
            yield smarthttp_pb2.InfoRefsResponse(data=data)

    async def InfoRefsReceivePack(
        self, request: smarthttp_pb2.InfoRefsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[smarthttp_pb2.InfoRefsResponse]:
        enforced = self.node.voting.no_hooks_args()
        async for data in self._advertise("receive-pack", request, enforced):
            yield smarthttp_pb2.InfoRefsResponse(data=data)

    async def _advertise(
        self, command: str, request: smarthttp_pb2.InfoRefsRequest, enforced: list[str]
    ) -> AsyncIterator[bytes]:
        repo = self.node.locator.repository(request.repository)
        # Server settings come after the client's so a request cannot override them.
        args = [
            *pack.config_args(request.git_config_options),
            *enforced,
            command,
            "--stateless-rpc",
            "--advertise-refs",
            str(repo.path),
        ]
        env = {**repo.git_env(), **git.protocol_env(request.git_protocol)}
        yield service_header(f"git-{command}")
        async with contextlib.aclosing(pack.stream(args, env=env)) as events:
            async for event in events:
                if isinstance(event, pack.Exit):
                    if not event.ok:
                        raise event.error("ref advertisement")
                elif event.fd == pack.STDOUT:
                    yield event.data

    async def PostUploadPack(
        self,
        request_iterator: AsyncIterator[smarthttp_pb2.PostUploadPackRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[smarthttp_pb2.PostUploadPackResponse]:
        first = await pack.first_request(request_iterator)
        repo = self.node.locator.repository(first.repository)
        if first.data:
            raise InvalidArgument("PostUploadPack: non-empty Data")
        args = [
            *pack.config_args(first.git_config_options),
            *pack.UPLOAD_PACK_CONFIG,
            "upload-pack",
            "--stateless-rpc",
            str(repo.path),
        ]
        env = {**repo.git_env(), **git.protocol_env(first.git_protocol)}
        stdin = pack.payload(request_iterator, "data")
        async with contextlib.aclosing(pack.stream(args, env=env, stdin=stdin)) as events:
            async for event in events:
                if isinstance(event, pack.Exit):
                    if not event.ok:
                        raise event.error("fetch")
                elif event.fd == pack.STDOUT:
                    yield smarthttp_pb2.PostUploadPackResponse(data=event.data)

    async def PostReceivePack(
        self,
        request_iterator: AsyncIterator[smarthttp_pb2.PostReceivePackRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[smarthttp_pb2.PostReceivePackResponse]:
        tx = transaction_from_metadata(context.invocation_metadata())
        first = await pack.first_request(request_iterator)
        repo = self.node.locator.repository(first.repository)
        if not first.gl_id:
            raise InvalidArgument("PostReceivePack: empty GlId")
        if first.data:
            raise InvalidArgument("PostReceivePack: non-empty Data")
        client_config = pack.config_args(first.git_config_options)
        env = {
            **repo.git_env(),
            **git.protocol_env(first.git_protocol),
            **pack.push_env(first.gl_id, first.gl_repository, first.gl_username, "http"),
        }
        stdin = pack.payload(request_iterator, "data")
        async with self.node.voting.hook_session(tx, first.repository) as (hook_args, hook_env):
            args = [
                *client_config,
                *pack.RECEIVE_PACK_CONFIG,
                *hook_args,
                "receive-pack",
                "--stateless-rpc",
                str(repo.path),
            ]
            stream = pack.stream(args, env={**env, **hook_env}, stdin=stdin)
            async with contextlib.aclosing(stream) as events:
                async for event in events:
                    if isinstance(event, pack.Exit):
                        if not event.ok:
                            raise event.error("push")
                    elif event.fd == pack.STDOUT:
                        yield smarthttp_pb2.PostReceivePackResponse(data=event.data)
        # receive-pack's own votes are done; the closing zero vote tells the
        # proxy this replica finished the push.
        await self.node.voting.vote(tx, first.repository, ZERO_VOTE, COMMITTED)
