"""SSHService: git's SSH transport, one interactive pack-protocol session per RPC.

git's stdout and stderr travel in separate response messages. Exit statuses
follow Gitaly: upload-pack and receive-pack send ``exit_status`` only when
git fails, and then also end the RPC with an error (INTERNAL, or CANCELLED
when the client hung up), so a client that reads messages until the error
still gets the exit code; on success there is no exit status and clients
take 0. upload-archive always ends with an ``exit_status`` (0 on success) and
an OK status, even when git failed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

import grpc

from gitquorum.errors import InvalidArgument
from gitquorum.gitaly import shared_pb2, ssh_pb2, ssh_pb2_grpc
from gitquorum.storage import git, pack
from gitquorum.storage.context import NodeContext
from gitquorum.storage.locator import RepoPath
from gitquorum.storage.voting import ZERO_VOTE
from gitquorum.wire.transaction_metadata import COMMITTED, transaction_from_metadata

_Response = TypeVar(
    "_Response",
    ssh_pb2.SSHUploadPackResponse,
    ssh_pb2.SSHReceivePackResponse,
    ssh_pb2.SSHUploadArchiveResponse,
)


class SSHService(ssh_pb2_grpc.SSHServiceServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node

    def _repository(self, repository: shared_pb2.Repository, stdin: bytes) -> RepoPath:
        repo = self.node.locator.repository(repository)
        if stdin:
            raise InvalidArgument("non-empty stdin in first request")
        return repo

    async def SSHUploadPack(
        self,
        request_iterator: AsyncIterator[ssh_pb2.SSHUploadPackRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ssh_pb2.SSHUploadPackResponse]:
        first = await pack.first_request(request_iterator)
        repo = self._repository(first.repository, first.stdin)
        args = [
            *pack.config_args(first.git_config_options),
            *pack.UPLOAD_PACK_CONFIG,
            "upload-pack",
            str(repo.path),
        ]
        env = {**repo.git_env(), **git.protocol_env(first.git_protocol)}
        events = pack.stream(args, env=env, stdin=pack.payload(request_iterator, "stdin"))
        session = _session(events, ssh_pb2.SSHUploadPackResponse, "fetch")
        async with contextlib.aclosing(session):
            async for response in session:
                yield response

    async def SSHReceivePack(
        self,
        request_iterator: AsyncIterator[ssh_pb2.SSHReceivePackRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ssh_pb2.SSHReceivePackResponse]:
        tx = transaction_from_metadata(context.invocation_metadata())
        first = await pack.first_request(request_iterator)
        repo = self._repository(first.repository, first.stdin)
        if not first.gl_id:
            raise InvalidArgument("empty GlId")
        client_config = pack.config_args(first.git_config_options)
        env = {
            **repo.git_env(),
            **git.protocol_env(first.git_protocol),
            **pack.push_env(first.gl_id, first.gl_repository, first.gl_username, "ssh"),
        }
        stdin = pack.payload(request_iterator, "stdin")
        async with self.node.voting.hook_session(tx, first.repository) as (hook_args, hook_env):
            args = [
                *client_config,
                *pack.RECEIVE_PACK_CONFIG,
                *hook_args,
                "receive-pack",
                str(repo.path),
            ]
            events = pack.stream(args, env={**env, **hook_env}, stdin=stdin)
            session = _session(events, ssh_pb2.SSHReceivePackResponse, "push")
            async with contextlib.aclosing(session):
                async for response in session:
                    yield response
        # Only reached when receive-pack succeeded: the closing zero vote.
        await self.node.voting.vote(tx, first.repository, ZERO_VOTE, COMMITTED)

    async def SSHUploadArchive(
        self,
        request_iterator: AsyncIterator[ssh_pb2.SSHUploadArchiveRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ssh_pb2.SSHUploadArchiveResponse]:
        first = await pack.first_request(request_iterator)
        repo = self._repository(first.repository, first.stdin)
        events = pack.stream(
            ["upload-archive", str(repo.path)],
            env=repo.git_env(),
            stdin=pack.payload(request_iterator, "stdin"),
        )
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, pack.Exit):
                    yield ssh_pb2.SSHUploadArchiveResponse(
                        exit_status=shared_pb2.ExitStatus(value=event.code)
                    )
                else:
                    yield _output(ssh_pb2.SSHUploadArchiveResponse, event)


def _output(response: type[_Response], event: pack.Output) -> _Response:
    if event.fd == pack.STDOUT:
        return response(stdout=event.data)
    return response(stderr=event.data)


async def _session(
    events: AsyncGenerator[pack.Output | pack.Exit, None], response: type[_Response], what: str
) -> AsyncGenerator[_Response, None]:
    """Responses for upload-pack/receive-pack: exit status and error only on failure."""
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, pack.Exit):
                if not event.ok:
                    yield response(exit_status=shared_pb2.ExitStatus(value=event.code))
                    raise event.error(what)
            else:
                yield _output(response, event)
