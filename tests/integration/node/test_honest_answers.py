"""A real node never answers a definite failure for an update it may have applied.

A recording vote server stands in for the proxy. Once the node's prepared
vote is answered COMMIT, the cluster has decided the update and the node goes
on to apply it: a refusal of its committed-phase vote (the update is applied
here already) or a failure of git while committing must end the RPC with the
one unknown-outcome status, UNAVAILABLE "outcome unknown: ...", not ABORTED,
FAILED_PRECONDITION or INTERNAL.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from gitquorum.gitaly import operations_pb2, operations_pb2_grpc, shared_pb2
from gitquorum.wire.finishing import OUTCOME_UNKNOWN_CODE, OUTCOME_UNKNOWN_PREFIX
from gitquorum.wire.transaction_metadata import Transaction, encode_metadata
from tests.harness import failing_git, gitrepo
from tests.harness.node import NodeProcess
from tests.harness.vote_server import (
    ABORT,
    COMMIT,
    COMMITTED,
    ERROR,
    PREPARED,
    STOP,
    Vote,
    VoteServer,
)

USER = shared_pb2.User(gl_id="user-1", name=b"Jane Doe", email=b"jane@example.com")
CORRELATION = "node-honest-answers"


@pytest.fixture(scope="module")
def git_wrapper(tmp_path_factory: pytest.TempPathFactory) -> failing_git.FailingGit:
    return failing_git.install(tmp_path_factory.mktemp("failing-git"))


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, git_wrapper: failing_git.FailingGit
) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("honest-node")
    started = NodeProcess(
        "honest",
        base / "storage",
        base / "logs",
        env={"GITQUORUM_GIT": str(git_wrapper.script)},
        extra_args=["--vote-timeout", "2s"],
    ).start()
    yield started
    started.terminate()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gitrepo.make_repo(tmp_path_factory.mktemp("honest-template") / "work", commits=2)


@pytest.fixture
async def channel(node: NodeProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(node.address) as opened:
        yield opened


async def _repository(
    channel: grpc.aio.Channel, node: NodeProcess, template: Path, scratch: Path
) -> shared_pb2.Repository:
    repo = shared_pb2.Repository(
        storage_name=node.name, relative_path=f"honest/{time.monotonic_ns()}.git"
    )
    await gitrepo.seed(channel, repo, template, scratch)
    return repo


async def _create_branch(
    channel: grpc.aio.Channel, repo: shared_pb2.Repository, server: VoteServer
) -> grpc.aio.AioRpcError | None:
    metadata = [
        *encode_metadata(Transaction(9, "honest", True, server.address, server.token)),
        ("x-gitquorum-correlation-id", CORRELATION),
    ]
    stub = operations_pb2_grpc.OperationServiceStub(channel)
    try:
        await stub.UserCreateBranch(
            operations_pb2.UserCreateBranchRequest(
                repository=repo, branch_name=b"decided", user=USER, start_point=b"main"
            ),
            metadata=metadata,
            timeout=30,
        )
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


def _assert_unknown(error: grpc.aio.AioRpcError | None) -> None:
    assert error is not None, "the update was reported as applied"
    assert error.code() is OUTCOME_UNKNOWN_CODE, (error.code(), error.details())
    details = error.details() or ""
    assert details.startswith(OUTCOME_UNKNOWN_PREFIX), details
    assert CORRELATION in details, details


@pytest.mark.parametrize("answer", [ABORT, STOP, ERROR])
async def test_a_refused_committed_vote_is_an_unknown_outcome(
    answer: str,
    node: NodeProcess,
    channel: grpc.aio.Channel,
    template: Path,
    tmp_path: Path,
) -> None:
    repo = await _repository(channel, node, template, tmp_path)

    def policy(vote: Vote) -> str:
        return COMMIT if vote.phase == PREPARED else answer

    async with VoteServer(policy=policy) as server:
        error = await _create_branch(channel, repo, server)
        assert [v.phase for v in server.votes] == [PREPARED, COMMITTED]
    _assert_unknown(error)
    # The update is applied on the node: exactly why ABORTED would have lied.
    refs = gitrepo.refs(node.storage_path / repo.relative_path)
    assert refs["refs/heads/decided"] == refs["refs/heads/main"]


async def test_a_commit_failure_after_the_decision_is_an_unknown_outcome(
    node: NodeProcess,
    channel: grpc.aio.Channel,
    template: Path,
    tmp_path: Path,
    git_wrapper: failing_git.FailingGit,
) -> None:
    repo = await _repository(channel, node, template, tmp_path)
    replica = node.storage_path / repo.relative_path
    async with VoteServer(policy=COMMIT) as server:
        with git_wrapper.failing_commits(replica):
            error = await _create_branch(channel, repo, server)
        # Decided (answered COMMIT), then git failed: no committed-phase vote.
        assert [v.phase for v in server.votes] == [PREPARED]
    _assert_unknown(error)
    assert "refs/heads/decided" not in gitrepo.refs(replica)
    assert not list(replica.glob("refs/**/*.lock"))


async def test_a_refused_prepared_vote_is_still_a_definite_failure(
    node: NodeProcess, channel: grpc.aio.Channel, template: Path, tmp_path: Path
) -> None:
    repo = await _repository(channel, node, template, tmp_path)
    async with VoteServer(policy=ABORT) as server:
        error = await _create_branch(channel, repo, server)
    assert error is not None
    assert error.code() is grpc.StatusCode.ABORTED
    assert "refs/heads/decided" not in gitrepo.refs(node.storage_path / repo.relative_path)
