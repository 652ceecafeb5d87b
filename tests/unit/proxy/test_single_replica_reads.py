"""A unary read with one replica to go to (``primary-only``): its own short path
in ``Reader.unary`` must end every way the general loop does.

Same scripted nodes as tests/unit/proxy/test_read_availability.py: n1 is the
primary, n2 a drained up-to-date replica that a distributed read would fall
back to, but a ``primary-only`` read never does.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gitquorum.gitaly import commit_pb2
from tests.unit.proxy import test_read_availability as availability
from tests.unit.proxy.test_read_availability import (
    ANSWER,
    FIND_COMMIT,
    HANG,
    MISSING,
    NOT_FOUND,
    UNAVAILABLE,
    WAIT,
    Proxy,
    repository,
)

# The scripted nodes and the proxy in front of them, as in that file.
proxy = availability.proxy


PRIMARY_ONLY = (("gitaly-route-repository-accessor-policy", "primary-only"),)


async def find_commit(proxy: Proxy, timeout: float = WAIT) -> bytes:
    request = commit_pb2.FindCommitRequest(repository=repository(), revision=b"main")
    call = proxy.channel.unary_unary(FIND_COMMIT)
    answer: bytes = await call(request.SerializeToString(), metadata=PRIMARY_ONLY, timeout=timeout)
    return answer


def strikes(proxy: Proxy, node: str) -> int:
    state = proxy.health._outliers.get(node)
    return 0 if state is None else state.strikes


async def test_the_primary_answers_with_the_request_rewritten_for_it(proxy: Proxy) -> None:
    assert await find_commit(proxy) == b"from n1"
    [[sent]] = proxy.nodes.received["n1"]
    rewritten = commit_pb2.FindCommitRequest.FromString(sent)
    assert (rewritten.repository.storage_name, rewritten.revision) == ("n1", b"main")
    assert proxy.nodes.calls("n2") == 0
    # The answer's time is a latency sample of the node (what hedging reads).
    assert proxy.health._latency[(FIND_COMMIT, "n1")].samples


async def test_a_failing_primary_is_not_replaced_and_gets_a_strike(proxy: Proxy) -> None:
    proxy.nodes.script["n1"] = UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await find_commit(proxy)
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
    assert proxy.nodes.calls("n2") == 0
    assert proxy.metric("gitquorum_read_retries_total") == 0
    assert strikes(proxy, "n1") == 1


async def test_the_primarys_own_answer_is_relayed_and_counts_as_an_answer(proxy: Proxy) -> None:
    proxy.nodes.script["n1"] = NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await find_commit(proxy)
    assert (failure.value.code(), failure.value.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "commit not found",
    )
    assert strikes(proxy, "n1") == 0
    proxy.nodes.script["n1"] = ANSWER
    assert await find_commit(proxy) == b"from n1"


async def test_a_primary_missing_its_replica_says_so(proxy: Proxy) -> None:
    proxy.nodes.script["n1"] = MISSING
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await find_commit(proxy)
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "missing on disk on n1" in (failure.value.details() or "")
    assert proxy.nodes.calls("n2") == 0
    assert proxy.metric("gitquorum_read_replicas_missing_total", storage="n1") == 1


async def test_a_stalled_primary_is_cancelled_at_the_deadline_with_a_strike(
    proxy: Proxy,
) -> None:
    proxy.nodes.script["n1"] = HANG
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await find_commit(proxy, timeout=0.5)
    assert failure.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(proxy.nodes.cancel_seen.wait(), WAIT)
    assert proxy.nodes.cancelled == ["n1"]
    assert proxy.nodes.calls("n2") == 0
    # The proxy counts the strike when its own call ends, which can come just
    # after the client saw its deadline pass.
    deadline = asyncio.get_running_loop().time() + WAIT
    for _ in range(int(WAIT / 0.01)):
        if strikes(proxy, "n1") == 1 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.01)
    assert strikes(proxy, "n1") == 1
