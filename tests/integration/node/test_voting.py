"""Reference-transaction voting on a real storage node.

The node votes through two paths: RPCs that update refs themselves
(``update_refs``: vote between ``update-ref`` prepare and commit) and git
commands that update refs on their own (the ``reference-transaction`` hook
handing its stdin to the node). A recording vote server stands in for the
proxy. Every vote must be the SHA-1 of the exact ``<old> <new> <ref>\\n``
lines, cast as PREPARED then COMMITTED, and a refused or unanswered vote must
leave the reference as it was.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from gitquorum.gitaly import operations_pb2, operations_pb2_grpc, shared_pb2
from gitquorum.storage import git as gitrun
from gitquorum.storage.locator import RepoPath
from gitquorum.storage.refupdate import RefUpdate, update_refs
from gitquorum.storage.voting import VoteCoordinator
from gitquorum.wire.transaction_metadata import (
    SERVER_KEY,
    TRANSACTION_KEY,
    Transaction,
    encode_metadata,
)
from tests.harness import gitrepo
from tests.harness.node import NodeProcess
from tests.harness.vote_server import ABORT, COMMIT, COMMITTED, HANG, PREPARED, STOP, VoteServer

ZERO = "0" * 40
USER = shared_pb2.User(gl_id="user-1", name=b"Jane Doe", email=b"jane@example.com")
VOTE_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def voter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node whose votes time out after one second, so a silent proxy is quick to test."""
    base = tmp_path_factory.mktemp("voter")
    node = NodeProcess(
        "voter",
        base / "storage",
        base / "logs",
        extra_args=["--vote-timeout", f"{VOTE_TIMEOUT}s"],
    ).start()
    yield node
    node.terminate()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gitrepo.make_repo(tmp_path_factory.mktemp("template") / "work", commits=2)


@pytest.fixture
async def voter_channel(voter: NodeProcess) -> AsyncIterator[grpc.aio.Channel]:
    if not voter.alive():
        voter.start()
    async with grpc.aio.insecure_channel(voter.address) as channel:
        yield channel


@pytest.fixture
async def votes() -> AsyncIterator[VoteServer]:
    async with VoteServer(policy=COMMIT) as server:
        yield server


async def _seed(
    channel: grpc.aio.Channel, node: NodeProcess, template: Path, scratch: Path
) -> shared_pb2.Repository:
    """A fresh copy of the template on the node, through the API when it exists."""
    repo = shared_pb2.Repository(
        storage_name=node.name, relative_path=f"vote/{scratch.name}-{time.monotonic_ns()}.git"
    )
    try:
        await gitrepo.seed(channel, repo, template, scratch)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
        # CreateRepositoryFromBundle not served yet: place the copy directly.
        gitrepo.git(
            "clone", "-q", "--mirror", str(template), str(node.storage_path / repo.relative_path)
        )
    return repo


def _refs(node: NodeProcess, repo: shared_pb2.Repository) -> dict[str, str]:
    return gitrepo.refs(node.storage_path / repo.relative_path)


def _tx(server: VoteServer, tx_id: int = 7, node: str = "voter") -> list[tuple[str, str]]:
    return encode_metadata(Transaction(tx_id, node, True, server.address, server.token))


def _expected(lines: str) -> bytes:
    return hashlib.sha1(lines.encode()).digest()


# --- the update_refs path ---------------------------------------------------------------------


async def test_commit_vote_hashes_exact_update_lines(
    voter: NodeProcess,
    voter_channel: grpc.aio.Channel,
    votes: VoteServer,
    template: Path,
    tmp_path: Path,
) -> None:
    repo = await _seed(voter_channel, voter, template, tmp_path)
    stub = operations_pb2_grpc.OperationServiceStub(voter_channel)
    main = _refs(voter, repo)["refs/heads/main"]

    await stub.UserCreateBranch(
        operations_pb2.UserCreateBranchRequest(
            repository=repo, branch_name=b"voted", user=USER, start_point=b"main"
        ),
        metadata=_tx(votes, tx_id=41),
    )

    assert _refs(voter, repo)["refs/heads/voted"] == main
    expected = _expected(f"{ZERO} {main} refs/heads/voted\n")
    assert [(v.phase, v.hash) for v in votes.votes] == [
        (PREPARED, expected),
        (COMMITTED, expected),
    ]
    assert {(v.transaction_id, v.node, v.relative_path) for v in votes.votes} == {
        (41, "voter", repo.relative_path)
    }
    assert all(v.authenticated for v in votes.votes)


async def test_delete_and_commit_files_votes(
    voter: NodeProcess,
    voter_channel: grpc.aio.Channel,
    votes: VoteServer,
    template: Path,
    tmp_path: Path,
) -> None:
    repo = await _seed(voter_channel, voter, template, tmp_path)
    stub = operations_pb2_grpc.OperationServiceStub(voter_channel)
    before = _refs(voter, repo)

    await stub.UserDeleteBranch(
        operations_pb2.UserDeleteBranchRequest(repository=repo, branch_name=b"feature", user=USER),
        metadata=_tx(votes),
    )
    delete_line = f"{before['refs/heads/feature']} {ZERO} refs/heads/feature\n"

    async def commit_requests() -> AsyncIterator[operations_pb2.UserCommitFilesRequest]:
        yield operations_pb2.UserCommitFilesRequest(
            header=operations_pb2.UserCommitFilesRequestHeader(
                repository=repo, user=USER, branch_name=b"main", commit_message=b"add file"
            )
        )
        yield operations_pb2.UserCommitFilesRequest(
            action=operations_pb2.UserCommitFilesAction(
                header=operations_pb2.UserCommitFilesActionHeader(
                    action=operations_pb2.UserCommitFilesActionHeader.CREATE, file_path=b"new.txt"
                )
            )
        )
        yield operations_pb2.UserCommitFilesRequest(
            action=operations_pb2.UserCommitFilesAction(content=b"hello\n")
        )

    response = await stub.UserCommitFiles(commit_requests(), metadata=_tx(votes))
    new = response.branch_update.commit_id
    assert _refs(voter, repo)["refs/heads/main"] == new
    assert "refs/heads/feature" not in _refs(voter, repo)
    commit_line = f"{before['refs/heads/main']} {new} refs/heads/main\n"
    assert [(v.phase, v.hash) for v in votes.votes] == [
        (PREPARED, _expected(delete_line)),
        (COMMITTED, _expected(delete_line)),
        (PREPARED, _expected(commit_line)),
        (COMMITTED, _expected(commit_line)),
    ]


@pytest.mark.parametrize("policy", [ABORT, STOP])
async def test_refused_vote_aborts_and_leaves_ref(
    policy: str,
    voter: NodeProcess,
    voter_channel: grpc.aio.Channel,
    template: Path,
    tmp_path: Path,
) -> None:
    repo = await _seed(voter_channel, voter, template, tmp_path)
    stub = operations_pb2_grpc.OperationServiceStub(voter_channel)
    before = _refs(voter, repo)
    async with VoteServer(policy=policy) as server:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.UserCreateBranch(
                operations_pb2.UserCreateBranchRequest(
                    repository=repo, branch_name=b"refused", user=USER, start_point=b"main"
                ),
                metadata=_tx(server),
            )
        assert info.value.code() == grpc.StatusCode.ABORTED
        # Only the prepared vote: git never committed, so there is nothing more to vote on.
        assert [v.phase for v in server.votes] == [PREPARED]
    assert _refs(voter, repo) == before
    # The aborted update released its lock: the same update now goes through.
    await stub.UserCreateBranch(
        operations_pb2.UserCreateBranchRequest(
            repository=repo, branch_name=b"refused", user=USER, start_point=b"main"
        )
    )
    assert _refs(voter, repo)["refs/heads/refused"] == before["refs/heads/main"]


async def test_unanswered_vote_times_out_and_leaves_ref(
    voter: NodeProcess, voter_channel: grpc.aio.Channel, template: Path, tmp_path: Path
) -> None:
    repo = await _seed(voter_channel, voter, template, tmp_path)
    stub = operations_pb2_grpc.OperationServiceStub(voter_channel)
    before = _refs(voter, repo)
    async with VoteServer(policy=HANG) as server:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.UserDeleteBranch(
                operations_pb2.UserDeleteBranchRequest(
                    repository=repo, branch_name=b"feature", user=USER
                ),
                metadata=_tx(server),
                timeout=VOTE_TIMEOUT * 10,
            )
        elapsed = time.monotonic() - started
        assert info.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        assert [v.phase for v in server.votes] == [PREPARED]
    assert VOTE_TIMEOUT * 0.8 <= elapsed < VOTE_TIMEOUT * 8
    assert _refs(voter, repo) == before


async def test_unreachable_vote_server_fails_closed(
    voter: NodeProcess, voter_channel: grpc.aio.Channel, template: Path, tmp_path: Path
) -> None:
    repo = await _seed(voter_channel, voter, template, tmp_path)
    stub = operations_pb2_grpc.OperationServiceStub(voter_channel)
    before = _refs(voter, repo)
    server = await VoteServer().start()
    await server.close()  # its port now refuses connections
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.UserCreateTag(
            operations_pb2.UserCreateTagRequest(
                repository=repo, tag_name=b"v9", user=USER, target_revision=b"main"
            ),
            metadata=_tx(server),
            timeout=VOTE_TIMEOUT * 10,
        )
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert _refs(voter, repo) == before


async def test_no_transaction_means_no_votes(
    voter: NodeProcess,
    voter_channel: grpc.aio.Channel,
    votes: VoteServer,
    template: Path,
    tmp_path: Path,
) -> None:
    repo = await _seed(voter_channel, voter, template, tmp_path)
    stub = operations_pb2_grpc.OperationServiceStub(voter_channel)
    await stub.UserCreateBranch(
        operations_pb2.UserCreateBranchRequest(
            repository=repo, branch_name=b"plain", user=USER, start_point=b"main"
        )
    )
    assert _refs(voter, repo)["refs/heads/plain"] == _refs(voter, repo)["refs/heads/main"]
    assert votes.votes == []


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _server_md(address: str) -> str:
    return _b64(json.dumps({"listen_addr": address, "token": "t"}).encode())


def _tx_md(**fields: object) -> str:
    info: dict[str, object] = {"id": 1, "node": "voter", "primary": True}
    info.update(fields)
    return _b64(json.dumps(info).encode())


MALFORMED = {
    "transaction not base64": lambda addr: [
        (TRANSACTION_KEY, "%%%"),
        (SERVER_KEY, _server_md(addr)),
    ],
    "transaction not json": lambda addr: [
        (TRANSACTION_KEY, _b64(b"{not json")),
        (SERVER_KEY, _server_md(addr)),
    ],
    "transaction not an object": lambda addr: [
        (TRANSACTION_KEY, _b64(b"[1, 2]")),
        (SERVER_KEY, _server_md(addr)),
    ],
    "negative id": lambda addr: [(TRANSACTION_KEY, _tx_md(id=-1)), (SERVER_KEY, _server_md(addr))],
    "missing node": lambda addr: [
        (TRANSACTION_KEY, _tx_md(node="")),
        (SERVER_KEY, _server_md(addr)),
    ],
    "primary not a bool": lambda addr: [
        (TRANSACTION_KEY, _tx_md(primary="yes")),
        (SERVER_KEY, _server_md(addr)),
    ],
    "missing server key": lambda addr: [(TRANSACTION_KEY, _tx_md())],
    "server not base64": lambda addr: [(TRANSACTION_KEY, _tx_md()), (SERVER_KEY, "@@@")],
    "server without address": lambda addr: [
        (TRANSACTION_KEY, _tx_md()),
        (SERVER_KEY, _b64(json.dumps({"token": "t"}).encode())),
    ],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_transaction_metadata_is_invalid_argument(
    case: str,
    voter: NodeProcess,
    voter_channel: grpc.aio.Channel,
    votes: VoteServer,
    template: Path,
    tmp_path: Path,
) -> None:
    repo = await _seed(voter_channel, voter, template, tmp_path)
    stub = operations_pb2_grpc.OperationServiceStub(voter_channel)
    before = _refs(voter, repo)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.UserCreateBranch(
            operations_pb2.UserCreateBranchRequest(
                repository=repo, branch_name=b"malformed", user=USER, start_point=b"main"
            ),
            metadata=MALFORMED[case](votes.address),
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _refs(voter, repo) == before
    assert votes.votes == []


async def test_cancelled_update_never_leaves_a_lock(
    coordinator: VoteCoordinator, votes: VoteServer, template: Path, tmp_path: Path
) -> None:
    """An RPC cancelled at any point (client gone, deadline) must not leave ``*.lock`` files.

    git cannot clean up its locks when killed, so a stale lock would block the
    reference for good. The update must end atomically: old value or new value.
    """
    path = _bare(template, tmp_path)
    repo = RepoPath("voter", path.name, path)
    repository = shared_pb2.Repository(storage_name="voter", relative_path=path.name)
    main = gitrepo.refs(path)["refs/heads/main"]
    tx = Transaction(10, "voter", True, votes.address, votes.token)
    outcomes = set()
    for step in range(40):
        ref = f"refs/heads/cancel-{step}"
        task = asyncio.ensure_future(
            update_refs(repo, repository, [RefUpdate(ref, main, ZERO)], coordinator, tx)
        )
        await asyncio.sleep(step * 0.0005)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        locks = [p for p in (path / "refs").rglob("*.lock")]
        assert locks == [], f"step {step}: stale locks {locks}"
        value = gitrepo.refs(path).get(ref)
        assert value in (None, main)
        outcomes.add(value)
        # The reference is usable afterwards, whatever happened.
        await update_refs(
            repo, repository, [RefUpdate(ref, main, value or ZERO)], coordinator, None
        )
    # The sweep did cancel before the update at least once.
    assert None in outcomes


# --- the hook path ----------------------------------------------------------------------------


@pytest.fixture
async def coordinator() -> AsyncIterator[VoteCoordinator]:
    voting = VoteCoordinator(vote_timeout=VOTE_TIMEOUT)
    await voting.start()
    yield voting
    await voting.close()


def _bare(template: Path, tmp_path: Path) -> Path:
    path = tmp_path / "hooked.git"
    gitrepo.git("clone", "-q", "--mirror", str(template), str(path))
    return path


async def _update_ref_through_hook(
    voting: VoteCoordinator, tx: Transaction | None, path: Path, *args: str
) -> gitrun.GitResult:
    repository = shared_pb2.Repository(storage_name="voter", relative_path=path.name)
    async with voting.hook_session(tx, repository) as (git_args, env):
        # Asynchronous on purpose: the hook calls back into this event loop.
        return await gitrun.run([*git_args, "update-ref", *args], git_dir=path, env=env)


async def test_hook_commit_votes_sha1_of_hook_stdin(
    coordinator: VoteCoordinator, votes: VoteServer, template: Path, tmp_path: Path
) -> None:
    path = _bare(template, tmp_path)
    main = gitrepo.refs(path)["refs/heads/main"]
    tx = Transaction(3, "voter", True, votes.address, votes.token)

    # A multi-byte name: the hook must frame its stdin by bytes, not characters.
    ref = "refs/heads/hooked-zürich"
    result = await _update_ref_through_hook(coordinator, tx, path, ref, main)

    assert result.ok, result.stderr
    assert gitrepo.refs(path)[ref] == main
    expected = _expected(f"{ZERO} {main} {ref}\n")
    assert [(v.phase, v.hash, v.transaction_id) for v in votes.votes] == [
        (PREPARED, expected, 3),
        (COMMITTED, expected, 3),
    ]
    assert all(v.authenticated for v in votes.votes)


async def test_hook_abort_makes_git_fail_and_keeps_ref(
    coordinator: VoteCoordinator, template: Path, tmp_path: Path
) -> None:
    path = _bare(template, tmp_path)
    before = gitrepo.refs(path)
    async with VoteServer(policy=ABORT) as server:
        tx = Transaction(4, "voter", True, server.address, server.token)
        result = await _update_ref_through_hook(
            coordinator, tx, path, "refs/heads/main", before["refs/heads/feature"]
        )
        assert [v.phase for v in server.votes] == [PREPARED]
    assert not result.ok
    assert b"vote:" in result.stderr
    assert gitrepo.refs(path) == before


async def test_hook_unanswered_vote_makes_git_fail(
    coordinator: VoteCoordinator, template: Path, tmp_path: Path
) -> None:
    path = _bare(template, tmp_path)
    before = gitrepo.refs(path)
    async with VoteServer(policy=HANG) as server:
        tx = Transaction(5, "voter", True, server.address, server.token)
        result = await asyncio.wait_for(
            _update_ref_through_hook(
                coordinator, tx, path, "-d", "refs/heads/feature", before["refs/heads/feature"]
            ),
            VOTE_TIMEOUT * 10,
        )
        assert [v.phase for v in server.votes] == [PREPARED]
    assert not result.ok
    assert gitrepo.refs(path) == before


async def test_hook_without_transaction_does_not_vote(
    coordinator: VoteCoordinator, votes: VoteServer, template: Path, tmp_path: Path
) -> None:
    path = _bare(template, tmp_path)
    main = gitrepo.refs(path)["refs/heads/main"]
    result = await _update_ref_through_hook(coordinator, None, path, "refs/heads/free", main)
    assert result.ok, result.stderr
    assert gitrepo.refs(path)["refs/heads/free"] == main
    assert votes.votes == []


async def test_hook_skips_force_deletion_only_batches(
    coordinator: VoteCoordinator, votes: VoteServer, template: Path, tmp_path: Path
) -> None:
    """git's packed-refs cleanup (zero old, zero new) is not voted on; the real update is."""
    path = _bare(template, tmp_path)
    gitrepo.git("pack-refs", "--all", cwd=path)
    feature = gitrepo.refs(path)["refs/heads/feature"]
    tx = Transaction(6, "voter", True, votes.address, votes.token)
    result = await _update_ref_through_hook(
        coordinator, tx, path, "-d", "refs/heads/feature", feature
    )
    assert result.ok, result.stderr
    assert "refs/heads/feature" not in gitrepo.refs(path)
    line = _expected(f"{feature} {ZERO} refs/heads/feature\n")
    assert [(v.phase, v.hash) for v in votes.votes] == [(PREPARED, line), (COMMITTED, line)]


async def test_hook_force_deletion_casts_no_vote(
    coordinator: VoteCoordinator, votes: VoteServer, template: Path, tmp_path: Path
) -> None:
    """A deletion without an old value reaches the hook as zero/zero lines only (Gitaly skips)."""
    path = _bare(template, tmp_path)
    tx = Transaction(9, "voter", True, votes.address, votes.token)
    result = await _update_ref_through_hook(coordinator, tx, path, "-d", "refs/heads/feature")
    assert result.ok, result.stderr
    assert "refs/heads/feature" not in gitrepo.refs(path)
    assert votes.votes == []


async def test_time_one_vote_through_the_hook(
    coordinator: VoteCoordinator, votes: VoteServer, template: Path, tmp_path: Path
) -> None:
    """Reports (does not assert) what one hook round trip costs on top of update-ref."""
    path = _bare(template, tmp_path)
    main = gitrepo.refs(path)["refs/heads/main"]
    tx = Transaction(8, "voter", True, votes.address, votes.token)
    rounds = 10
    plain = hooked = 0.0
    for i in range(rounds):
        started = time.perf_counter()
        result = await _update_ref_through_hook(coordinator, None, path, f"refs/heads/p{i}", main)
        plain += time.perf_counter() - started
        assert result.ok
        started = time.perf_counter()
        result = await _update_ref_through_hook(coordinator, tx, path, f"refs/heads/h{i}", main)
        hooked += time.perf_counter() - started
        assert result.ok
    assert len(votes.votes) == 2 * rounds
    per_vote_ms = (hooked - plain) / rounds / 2 * 1000
    print(
        f"\nupdate-ref: {plain / rounds * 1000:.1f} ms without votes, "
        f"{hooked / rounds * 1000:.1f} ms with 2 hook votes "
        f"(~{per_vote_ms:.1f} ms per vote through the hook)"
    )


def test_hook_shell_is_installed() -> None:
    # The hook runs under bash (for /dev/tcp); the node depends on it being installed.
    assert shutil.which("bash") is not None
