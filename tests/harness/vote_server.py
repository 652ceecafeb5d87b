"""A RefTransaction server for tests: records every vote and answers by policy.

Stands in for the proxy's vote endpoint so storage-node tests can check what a
node votes on and how it reacts to each answer. Run it inside the test's
event loop::

    async with VoteServer(policy=COMMIT) as votes:
        metadata = encode_metadata(Transaction(1, "node", True, votes.address, votes.token))
        ...
        assert [v.phase for v in votes.votes] == [PREPARED, COMMITTED]

Policies: ``COMMIT``, ``ABORT``, ``STOP``, ``HANG`` (never answer, so the
node's vote deadline expires), ``ERROR`` (fail the RPC with UNAVAILABLE), or a
callable taking the ``Vote`` and returning one of those.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from gitquorum import tokens
from gitquorum.gitaly import transaction_pb2, transaction_pb2_grpc

COMMIT = "commit"
ABORT = "abort"
STOP = "stop"
HANG = "hang"
ERROR = "error"

PREPARED = transaction_pb2.VoteTransactionRequest.PREPARED_PHASE
COMMITTED = transaction_pb2.VoteTransactionRequest.COMMITTED_PHASE

_STATES = {
    COMMIT: transaction_pb2.VoteTransactionResponse.COMMIT,
    ABORT: transaction_pb2.VoteTransactionResponse.ABORT,
    STOP: transaction_pb2.VoteTransactionResponse.STOP,
}

Policy = str | Callable[["Vote"], str]


@dataclass(frozen=True)
class Vote:
    """One VoteTransaction call as the server received it."""

    transaction_id: int
    node: str
    hash: bytes
    phase: int
    storage: str
    relative_path: str
    # Whether the call carried a valid v2 token for the server's token.
    authenticated: bool
    received_at: float


@dataclass
class VoteServer(transaction_pb2_grpc.RefTransactionServicer):
    policy: Policy = COMMIT
    token: str = "vote-secret"
    votes: list[Vote] = field(default_factory=list)
    stops: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server: grpc.aio.Server | None = None
        self._changed = asyncio.Condition()
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> VoteServer:
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        transaction_pb2_grpc.add_RefTransactionServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def close(self) -> None:
        if self._server is not None:
            # No grace: hanging votes are cancelled rather than waited for.
            await self._server.stop(0)
            self._server = None

    async def __aenter__(self) -> VoteServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_for_votes(self, count: int, within: float = 10.0) -> list[Vote]:
        """Block until at least ``count`` votes arrived (a deadline, not a sleep)."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: len(self.votes) >= count)
        return list(self.votes)

    def _authenticated(self, context: grpc.aio.ServicerContext) -> bool:
        header = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode()
        try:
            tokens.check(header, self.token.encode())
        except Exception:
            return False
        return True

    async def VoteTransaction(
        self, request: transaction_pb2.VoteTransactionRequest, context: grpc.aio.ServicerContext
    ) -> transaction_pb2.VoteTransactionResponse:
        vote = Vote(
            request.transaction_id,
            request.node,
            request.reference_updates_hash,
            request.phase,
            request.repository.storage_name,
            request.repository.relative_path,
            self._authenticated(context),
            time.perf_counter(),
        )
        async with self._changed:
            self.votes.append(vote)
            self._changed.notify_all()
        decision = self.policy(vote) if callable(self.policy) else self.policy
        if decision == HANG:
            await asyncio.Event().wait()
        if decision == ERROR:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "vote server configured to fail")
        return transaction_pb2.VoteTransactionResponse(state=_STATES[decision])

    async def StopTransaction(
        self, request: transaction_pb2.StopTransactionRequest, context: grpc.aio.ServicerContext
    ) -> transaction_pb2.StopTransactionResponse:
        self.stops.append(request.transaction_id)
        return transaction_pb2.StopTransactionResponse()
