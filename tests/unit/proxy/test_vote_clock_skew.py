"""Votes from a node whose wall clock differs from the proxy's.

A vote carries a v2 token signed with the transaction's own secret on the
node's clock. That secret is fresh and dies with the transaction, so the
token's age limit (30 s) adds nothing but a dependency on the two clocks: a
proxy ten minutes off refused every vote, and so every write through it.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, cast

import grpc
import pytest
from prometheus_client import CollectorRegistry

from gitquorum import tokens
from gitquorum.errors import PermissionDenied
from gitquorum.gitaly import transaction_pb2
from gitquorum.proxy.metrics import ProxyMetrics
from gitquorum.proxy.ref_transaction_service import RefTransactionService
from gitquorum.proxy.vote_counting import TransactionManager

DIGEST = hashlib.sha1(b"updates").digest()


class Context:
    def __init__(self, token: str) -> None:
        self.token = token

    def invocation_metadata(self) -> Any:
        return [("authorization", f"Bearer {self.token}")]


async def vote(offset: float, secret: str | None = None, node: str = "n1") -> Any:
    manager = TransactionManager(vote_timeout=5)
    tx = manager.register("n1", ["n2"])
    service = RefTransactionService(manager, ProxyMetrics(CollectorRegistry()))
    token = tokens.v2_token((secret or tx.voter_token(node)).encode(), now=time.time() + offset)
    request = transaction_pb2.VoteTransactionRequest(
        transaction_id=tx.id, node="n1", reference_updates_hash=DIGEST
    )
    return await service.VoteTransaction(request, cast(grpc.aio.ServicerContext, Context(token)))


@pytest.mark.parametrize("offset", [0.0, 600.0, -600.0], ids=["same", "ahead", "behind"])
async def test_a_vote_signed_on_a_skewed_clock_counts(offset: float) -> None:
    answer = await vote(offset)
    assert answer.state == transaction_pb2.VoteTransactionResponse.COMMIT


async def test_a_vote_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(PermissionDenied):
        await vote(0.0, secret="not the transaction's")


async def test_a_vote_signed_with_another_voters_secret_is_refused() -> None:
    # n2 was told its own secret only: it cannot vote as the primary n1.
    with pytest.raises(PermissionDenied):
        await vote(0.0, node="n2")
