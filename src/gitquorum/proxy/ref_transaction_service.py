"""RefTransaction: where nodes cast their votes (the dial-back model)."""

from __future__ import annotations

import math
import time

import grpc

from gitquorum import tokens
from gitquorum.errors import InvalidArgument, PermissionDenied
from gitquorum.gitaly import transaction_pb2, transaction_pb2_grpc
from gitquorum.proxy.metrics import ProxyMetrics
from gitquorum.proxy.vote_counting import Outcome, TransactionManager

_STATES = {
    Outcome.COMMIT: transaction_pb2.VoteTransactionResponse.COMMIT,
    Outcome.ABORT: transaction_pb2.VoteTransactionResponse.ABORT,
    Outcome.STOP: transaction_pb2.VoteTransactionResponse.STOP,
}


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode()
    return None


def _check_vote_token(context: grpc.aio.ServicerContext, secret: str) -> None:
    """The token must be signed with the transaction's secret; its age is not
    checked: the secret is fresh and dies with the transaction, which bounds
    any replay already, and the node signs on its own wall clock, which may
    be minutes off this proxy's (every vote, so every write, would fail)."""
    tokens.check(_authorization(context), secret.encode(), skew=math.inf)


def _check_any_voter(context: grpc.aio.ServicerContext, secrets: list[str]) -> None:
    for secret in secrets[:-1]:
        try:
            _check_vote_token(context, secret)
            return
        except PermissionDenied:
            continue
    _check_vote_token(context, secrets[-1])


class RefTransactionService(transaction_pb2_grpc.RefTransactionServicer):
    def __init__(self, manager: TransactionManager, metrics: ProxyMetrics) -> None:
        self.manager = manager
        self.metrics = metrics

    async def VoteTransaction(
        self, request: transaction_pb2.VoteTransactionRequest, context: grpc.aio.ServicerContext
    ) -> transaction_pb2.VoteTransactionResponse:
        if len(request.reference_updates_hash) != 20:
            raise InvalidArgument("reference_updates_hash must be a 20-byte SHA-1")
        tx = self.manager.get(request.transaction_id)
        # Only the node this proxy told its own secret of this transaction may
        # vote as that node.
        _check_vote_token(context, tx.voter_token(request.node))
        started = time.perf_counter()
        outcome = await tx.vote(request.node, request.reference_updates_hash, request.phase)
        self.metrics.vote_latency.observe(time.perf_counter() - started)
        return transaction_pb2.VoteTransactionResponse(state=_STATES[outcome])

    async def StopTransaction(
        self, request: transaction_pb2.StopTransactionRequest, context: grpc.aio.ServicerContext
    ) -> transaction_pb2.StopTransactionResponse:
        tx = self.manager.get(request.transaction_id)
        # Any of its voters may stop it (the request names no node).
        _check_any_voter(context, [tx.voter_token(node) for node in tx.voters])
        tx.stop()
        return transaction_pb2.StopTransactionResponse()
