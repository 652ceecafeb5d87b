"""SSHService on a real node: raw pack-protocol sessions, votes and every error path.

Whole clones and pushes with the git CLI are in the acceptance tier
(test_git_ssh_roundtrip); here the RPCs are driven byte by byte and compared
with what plain git produces on the node's replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import struct
import tarfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from gitquorum.gitaly import (
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
    ssh_pb2,
    ssh_pb2_grpc,
    transaction_pb2,
    transaction_pb2_grpc,
)
from gitquorum.storage.voting import ZERO_VOTE
from gitquorum.wire.transaction_metadata import COMMITTED, PREPARED, Transaction, encode_metadata
from tests.conftest import THROUGH_PROXY, Target
from tests.harness import gitrepo

ZERO_OID = "0" * 40
OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

# --- pkt-line helpers -------------------------------------------------------


def pkt(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return b"%04x" % (len(raw) + 4) + raw


def parse_pkts(data: bytes) -> list[bytes | None]:
    """Payloads of a pkt-line stream; None stands for flush/delim packets."""
    out: list[bytes | None] = []
    pos = 0
    while pos < len(data):
        size = int(data[pos : pos + 4], 16)
        if size < 4:
            out.append(None)
            pos += 4
            continue
        out.append(data[pos + 4 : pos + size])
        pos += size
    return out


def empty_pack() -> bytes:
    body = b"PACK" + struct.pack(">II", 2, 0)
    return body + hashlib.sha1(body).digest()


# --- repositories -----------------------------------------------------------


async def create_repository(channel: grpc.aio.Channel, repo: shared_pb2.Repository) -> None:
    """An empty repository, made by the RepositoryService."""
    stub = repository_pb2_grpc.RepositoryServiceStub(channel)
    await stub.CreateRepository(repository_pb2.CreateRepositoryRequest(repository=repo))


async def seed(channel: grpc.aio.Channel, repo: shared_pb2.Repository, source: Path) -> None:
    """``repo`` on the target with every ref of ``source``."""
    scratch = source.parent / f"{source.name}-scratch"
    scratch.mkdir(exist_ok=True)
    await gitrepo.seed(channel, repo, source, scratch)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gitrepo.make_repo(tmp_path_factory.mktemp("ssh") / "source", commits=4)


@pytest.fixture
async def seeded(channel: grpc.aio.Channel, target: Target, source: Path) -> shared_pb2.Repository:
    repo = target.repository()
    await seed(channel, repo, source)
    return repo


# --- calling the RPCs -------------------------------------------------------


async def _stream(messages: Sequence[Any]) -> AsyncIterator[Any]:
    for message in messages:
        yield message


async def call(
    method: Callable[..., Any], messages: Sequence[Any], metadata: Sequence[tuple[str, str]] = ()
) -> tuple[list[Any], grpc.StatusCode, str]:
    """All responses of a bidi call, and its final status."""
    responses: list[Any] = []
    try:
        async for response in method(_stream(messages), metadata=tuple(metadata), timeout=30):
            responses.append(response)
    except grpc.aio.AioRpcError as exc:
        return responses, exc.code(), exc.details() or ""
    return responses, OK, ""


def stdout_of(responses: Sequence[Any]) -> bytes:
    return b"".join(r.stdout for r in responses)


def stderr_of(responses: Sequence[Any]) -> bytes:
    return b"".join(r.stderr for r in responses)


def exit_statuses(responses: Sequence[Any]) -> list[int]:
    return [r.exit_status.value for r in responses if r.HasField("exit_status")]


def local_git(*args: str, input: bytes | None = None) -> bytes:
    import subprocess

    env = {**os.environ, **gitrepo.GIT_ENV}
    return subprocess.run(
        ["git", *args], input=input, capture_output=True, env=env, check=True, timeout=60
    ).stdout


# --- SSHUploadPack ------------------------------------------------------------


async def test_upload_pack_advertises_exactly_what_git_does(
    channel: grpc.aio.Channel, target: Target, seeded: shared_pb2.Repository
) -> None:
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    responses, code, details = await call(
        stub.SSHUploadPack,
        [
            ssh_pb2.SSHUploadPackRequest(repository=seeded),
            ssh_pb2.SSHUploadPackRequest(stdin=b"0000"),
        ],
    )
    assert code == OK, details
    # Success carries no exit status at all (clients take 0).
    assert exit_statuses(responses) == []
    expected = local_git(
        "-c",
        "uploadpack.allowFilter=true",
        "-c",
        "uploadpack.allowAnySHA1InWant=true",
        "upload-pack",
        str(target.disk_path(seeded)),
        input=b"0000",
    )
    assert stdout_of(responses) == expected
    advertised = {line.split(b"\0")[0].strip() for line in parse_pkts(expected) if line}
    for name, oid in gitrepo.refs(target.disk_path(seeded)).items():
        assert f"{oid} {name}".encode() in advertised


async def test_upload_pack_protocol_v2_ls_refs(
    channel: grpc.aio.Channel, target: Target, seeded: shared_pb2.Repository
) -> None:
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    ls_refs = pkt("command=ls-refs\n") + b"0001" + pkt("peel\n") + pkt("symrefs\n") + b"0000"
    responses, code, details = await call(
        stub.SSHUploadPack,
        [
            ssh_pb2.SSHUploadPackRequest(repository=seeded, git_protocol="version=2"),
            ssh_pb2.SSHUploadPackRequest(stdin=ls_refs),
        ],
    )
    assert code == OK, details
    packets = parse_pkts(stdout_of(responses))
    assert packets[0] == b"version 2\n"
    listed = {p.split(b" ")[1].strip() for p in packets if p and p[:40].isalnum() and b" " in p}
    assert listed >= {name.encode() for name in gitrepo.refs(target.disk_path(seeded))}
    assert any(p and p.startswith(b"ls-refs") for p in packets)


async def test_upload_pack_honours_config_options(
    channel: grpc.aio.Channel, seeded: shared_pb2.Repository
) -> None:
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    first = ssh_pb2.SSHUploadPackRequest(
        repository=seeded, git_config_options=["transfer.hideRefs=refs/tags"]
    )
    responses, code, details = await call(
        stub.SSHUploadPack, [first, ssh_pb2.SSHUploadPackRequest(stdin=b"0000")]
    )
    assert code == OK, details
    out = stdout_of(responses)
    assert b"refs/heads/main" in out
    assert b"refs/tags/" not in out


async def test_upload_pack_failure_sends_exit_status_then_error(
    channel: grpc.aio.Channel, seeded: shared_pb2.Repository
) -> None:
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    responses, code, details = await call(
        stub.SSHUploadPack,
        [
            ssh_pb2.SSHUploadPackRequest(repository=seeded),
            ssh_pb2.SSHUploadPackRequest(stdin=b"zzzz not a pkt-line"),
        ],
    )
    # Input git cannot parse is the client's fault: INVALID_ARGUMENT, git's words.
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert exit_statuses(responses) == [128]
    assert b"protocol error" in stderr_of(responses)
    assert "protocol error" in details


# --- SSHReceivePack -------------------------------------------------------------


def _create_ref_commands(oid: str, ref: str) -> bytes:
    return pkt(f"{ZERO_OID} {oid} {ref}\0report-status\n") + b"0000" + empty_pack()


async def test_receive_pack_creates_ref(
    channel: grpc.aio.Channel, target: Target, seeded: shared_pb2.Repository
) -> None:
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    oid = gitrepo.refs(target.disk_path(seeded))["refs/heads/feature"]
    responses, code, details = await call(
        stub.SSHReceivePack,
        [
            ssh_pb2.SSHReceivePackRequest(repository=seeded, gl_id="user-1"),
            ssh_pb2.SSHReceivePackRequest(stdin=_create_ref_commands(oid, "refs/heads/copy")),
        ],
    )
    assert code == OK, details
    assert exit_statuses(responses) == []
    report = parse_pkts(stdout_of(responses))
    assert b"unpack ok\n" in report
    assert b"ok refs/heads/copy\n" in report
    assert gitrepo.refs(target.disk_path(seeded))["refs/heads/copy"] == oid


class VoteRecorder(transaction_pb2_grpc.RefTransactionServicer):
    """Stands in for the proxy's RefTransaction service: records votes, answers ``state``."""

    def __init__(self, state: int) -> None:
        self.state = state
        self.votes: list[tuple[int, str, bytes, int]] = []

    async def VoteTransaction(
        self, request: transaction_pb2.VoteTransactionRequest, context: grpc.aio.ServicerContext
    ) -> transaction_pb2.VoteTransactionResponse:
        self.votes.append(
            (request.transaction_id, request.node, request.reference_updates_hash, request.phase)
        )
        return transaction_pb2.VoteTransactionResponse(state=self.state)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def vote_server(state: int) -> AsyncIterator[tuple[VoteRecorder, list[tuple[str, str]]]]:
    """A RefTransaction server and the metadata that makes a node vote with it."""
    recorder = VoteRecorder(state)
    server = grpc.aio.server()
    transaction_pb2_grpc.add_RefTransactionServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    tx = Transaction(7, "node-a", True, f"tcp://127.0.0.1:{port}", "secret")
    try:
        yield recorder, encode_metadata(tx)
    finally:
        await server.stop(0)


COMMIT = transaction_pb2.VoteTransactionResponse.COMMIT
ABORT = transaction_pb2.VoteTransactionResponse.ABORT
needs_direct_node = pytest.mark.skipif(
    THROUGH_PROXY, reason="sends its own transaction metadata to one node"
)


@needs_direct_node
async def test_receive_pack_votes_through_hook_and_ends_with_zero_vote(
    channel: grpc.aio.Channel, target: Target, seeded: shared_pb2.Repository
) -> None:
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    oid = gitrepo.refs(target.disk_path(seeded))["refs/heads/feature"]
    async with vote_server(COMMIT) as (recorder, metadata):
        _, code, details = await call(
            stub.SSHReceivePack,
            [
                ssh_pb2.SSHReceivePackRequest(repository=seeded, gl_id="user-1"),
                ssh_pb2.SSHReceivePackRequest(stdin=_create_ref_commands(oid, "refs/heads/voted")),
            ],
            metadata,
        )
    assert code == OK, details
    update = hashlib.sha1(f"{ZERO_OID} {oid} refs/heads/voted\n".encode()).digest()
    assert recorder.votes == [
        (7, "node-a", update, PREPARED),
        (7, "node-a", update, COMMITTED),
        (7, "node-a", ZERO_VOTE, COMMITTED),
    ]
    assert gitrepo.refs(target.disk_path(seeded))["refs/heads/voted"] == oid


@needs_direct_node
async def test_receive_pack_aborted_vote_leaves_refs_alone(
    channel: grpc.aio.Channel, target: Target, seeded: shared_pb2.Repository
) -> None:
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    before = gitrepo.refs(target.disk_path(seeded))
    oid = before["refs/heads/feature"]
    async with vote_server(ABORT) as (recorder, metadata):
        responses, code, _details = await call(
            stub.SSHReceivePack,
            [
                ssh_pb2.SSHReceivePackRequest(repository=seeded, gl_id="user-1"),
                ssh_pb2.SSHReceivePackRequest(stdin=_create_ref_commands(oid, "refs/heads/nope")),
            ],
            metadata,
        )
    # git dies when the hook refuses the transaction: exit status, then an error.
    assert code == grpc.StatusCode.INTERNAL
    assert exit_statuses(responses) == [128]
    assert b"aborted" in stderr_of(responses)
    # Only the prepared vote: no commit vote, no closing zero vote after a failure.
    assert [vote[3] for vote in recorder.votes] == [PREPARED]
    assert gitrepo.refs(target.disk_path(seeded)) == before


async def test_receive_pack_requires_gl_id(
    channel: grpc.aio.Channel, seeded: shared_pb2.Repository
) -> None:
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    _, code, details = await call(
        stub.SSHReceivePack, [ssh_pb2.SSHReceivePackRequest(repository=seeded)]
    )
    assert code == INVALID
    assert "empty GlId" in details


async def test_receive_pack_failure_sends_exit_status_then_error(
    channel: grpc.aio.Channel, target: Target, seeded: shared_pb2.Repository
) -> None:
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    before = gitrepo.refs(target.disk_path(seeded))
    responses, code, _ = await call(
        stub.SSHReceivePack,
        [
            ssh_pb2.SSHReceivePackRequest(repository=seeded, gl_id="user-1"),
            ssh_pb2.SSHReceivePackRequest(stdin=b"garbage!"),
        ],
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert exit_statuses(responses) == [128]
    assert gitrepo.refs(target.disk_path(seeded)) == before


async def test_receive_pack_client_hang_up_is_cancelled(
    channel: grpc.aio.Channel, seeded: shared_pb2.Repository
) -> None:
    # The client goes away in the middle of a pkt-line: git's "hung up" error.
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    responses, code, details = await call(
        stub.SSHReceivePack,
        [
            ssh_pb2.SSHReceivePackRequest(repository=seeded, gl_id="user-1"),
            ssh_pb2.SSHReceivePackRequest(stdin=b"0060" + ZERO_OID.encode()),
        ],
    )
    assert code == grpc.StatusCode.CANCELLED
    assert details == "user canceled the push"
    assert exit_statuses(responses) == [128]


async def test_receive_pack_without_pack_reports_unpack_error(
    channel: grpc.aio.Channel, target: Target, seeded: shared_pb2.Repository
) -> None:
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    before = gitrepo.refs(target.disk_path(seeded))
    commands = pkt(f"{ZERO_OID} {'1' * 40} refs/heads/x\0report-status\n") + b"0000"
    responses, code, details = await call(
        stub.SSHReceivePack,
        [
            ssh_pb2.SSHReceivePackRequest(repository=seeded, gl_id="user-1"),
            ssh_pb2.SSHReceivePackRequest(stdin=commands),
        ],
    )
    # receive-pack reports the problem in-band and exits 0.
    assert code == OK, details
    assert b"ng refs/heads/x unpacker error\n" in parse_pkts(stdout_of(responses))
    assert gitrepo.refs(target.disk_path(seeded)) == before


async def test_half_close_ends_the_session(
    channel: grpc.aio.Channel, target: Target, seeded: shared_pb2.Repository
) -> None:
    # An empty command list, then EOF: receive-pack has nothing to do and exits 0.
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    responses, code, details = await call(
        stub.SSHReceivePack,
        [
            ssh_pb2.SSHReceivePackRequest(repository=seeded, gl_id="user-1"),
            ssh_pb2.SSHReceivePackRequest(stdin=b"0000"),
        ],
    )
    assert code == OK, details
    assert exit_statuses(responses) == []
    advertised = parse_pkts(stdout_of(responses))
    assert advertised[-1] is None
    main = gitrepo.refs(target.disk_path(seeded))["refs/heads/main"]
    assert any(p and p.startswith(f"{main} refs/heads/main".encode()) for p in advertised)


def git_processes(path: Path) -> list[int]:
    """Pids of git commands running on ``path``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in cmdline and b"pack" in cmdline:
            pids.append(int(entry.name))
    return pids


async def poll(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


@needs_direct_node
async def test_client_going_away_kills_git(
    channel: grpc.aio.Channel, target: Target, seeded: shared_pb2.Repository
) -> None:
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    hold = asyncio.Event()

    async def requests() -> AsyncIterator[ssh_pb2.SSHReceivePackRequest]:
        yield ssh_pb2.SSHReceivePackRequest(repository=seeded, gl_id="user-1")
        await hold.wait()  # never half-closes: git waits for commands

    rpc = stub.SSHReceivePack(requests())
    first = await rpc.read()
    assert first.stdout
    path = target.disk_path(seeded)
    await poll(lambda: bool(git_processes(path)), 10, "receive-pack to run")
    rpc.cancel()
    await poll(lambda: not git_processes(path), 10, "receive-pack to be killed")
    hold.set()


# --- SSHUploadArchive -----------------------------------------------------------


def _demux_archive(stdout: bytes) -> tuple[bytes, bytes]:
    """(archive bytes, remote messages) from git upload-archive's sideband output."""
    packets = parse_pkts(stdout)
    assert packets[0] == b"ACK\n"
    data, messages = b"", b""
    for packet in packets[2:]:
        if not packet:
            continue
        if packet[0] == 1:
            data += packet[1:]
        elif packet[0] in (2, 3):
            messages += packet[1:]
    return data, messages


async def test_upload_archive_matches_git_archive(
    channel: grpc.aio.Channel, target: Target, seeded: shared_pb2.Repository
) -> None:
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    request = pkt("argument --format=tar\n") + pkt("argument main\n") + b"0000"
    responses, code, details = await call(
        stub.SSHUploadArchive,
        [
            ssh_pb2.SSHUploadArchiveRequest(repository=seeded),
            ssh_pb2.SSHUploadArchiveRequest(stdin=request),
        ],
    )
    assert code == OK, details
    # Always ends with an exit status, zero on success.
    assert responses[-1].HasField("exit_status")
    assert exit_statuses(responses) == [0]
    archive, _ = _demux_archive(stdout_of(responses))
    expected = local_git(
        "--git-dir", str(target.disk_path(seeded)), "archive", "--format=tar", "main"
    )
    assert archive == expected
    names = tarfile.open(fileobj=io.BytesIO(archive)).getnames()
    assert "README.md" in names


async def test_upload_archive_failure_is_exit_status_not_error(
    channel: grpc.aio.Channel, seeded: shared_pb2.Repository
) -> None:
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    request = pkt("argument --format=tar\n") + pkt("argument no-such-ref\n") + b"0000"
    responses, code, details = await call(
        stub.SSHUploadArchive,
        [
            ssh_pb2.SSHUploadArchiveRequest(repository=seeded),
            ssh_pb2.SSHUploadArchiveRequest(stdin=request),
        ],
    )
    assert code == OK, details
    statuses = exit_statuses(responses)
    assert len(statuses) == 1 and statuses[0] != 0
    _, messages = _demux_archive(stdout_of(responses))
    assert b"no such ref" in messages + stderr_of(responses)


# --- bad input, every RPC ----------------------------------------------------------


def _first(method: str, repo: shared_pb2.Repository | None, **fields: Any) -> Any:
    message = {
        "SSHUploadPack": ssh_pb2.SSHUploadPackRequest,
        "SSHReceivePack": ssh_pb2.SSHReceivePackRequest,
        "SSHUploadArchive": ssh_pb2.SSHUploadArchiveRequest,
    }[method]
    if method == "SSHReceivePack":
        fields.setdefault("gl_id", "user-1")
    if repo is not None:
        fields["repository"] = repo
    return message(**fields)


METHODS = ["SSHUploadPack", "SSHReceivePack", "SSHUploadArchive"]
BAD_PATHS = [
    ("unknown storage", "no-such-storage", "a.git", INVALID),
    ("absolute path", None, "/etc/passwd", INVALID),
    ("dot-dot", None, "../outside.git", INVALID),
    ("nul byte", None, "a\x00b.git", INVALID),
    ("empty path", None, "", INVALID),
    ("missing repository", None, "missing/nothing-here.git", NOT_FOUND),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("case", "storage", "path", "expected"), BAD_PATHS, ids=[c[0] for c in BAD_PATHS]
)
async def test_bad_repository(
    channel: grpc.aio.Channel,
    target: Target,
    method: str,
    case: str,
    storage: str | None,
    path: str,
    expected: grpc.StatusCode,
) -> None:
    repo = shared_pb2.Repository(storage_name=storage or target.storage, relative_path=path)
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    _, code, details = await call(getattr(stub, method), [_first(method, repo)])
    assert code == expected, f"{case}: {details}"


@pytest.mark.parametrize("method", METHODS)
async def test_repository_not_set(channel: grpc.aio.Channel, method: str) -> None:
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    _, code, _ = await call(getattr(stub, method), [_first(method, None)])
    assert code == INVALID


@pytest.mark.skipif(THROUGH_PROXY, reason="needs the storage's disk")
@pytest.mark.parametrize("method", METHODS)
async def test_symlink_escaping_storage(
    channel: grpc.aio.Channel, target: Target, tmp_path: Path, method: str
) -> None:
    outside = tmp_path / "outside.git"
    gitrepo.git("init", "-q", "--bare", str(outside))
    assert target.storage_path is not None
    link = target.storage_path / f"escape-{tmp_path.name}.git"
    link.symlink_to(outside)
    try:
        repo = shared_pb2.Repository(storage_name=target.storage, relative_path=link.name)
        stub = ssh_pb2_grpc.SSHServiceStub(channel)
        _, code, _ = await call(getattr(stub, method), [_first(method, repo)])
        assert code == INVALID
    finally:
        link.unlink()


@pytest.mark.parametrize("method", METHODS)
async def test_stdin_in_first_message(
    channel: grpc.aio.Channel, seeded: shared_pb2.Repository, method: str
) -> None:
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    _, code, details = await call(getattr(stub, method), [_first(method, seeded, stdin=b"0000")])
    assert code == INVALID
    assert "non-empty stdin" in details


@pytest.mark.parametrize("method", METHODS)
async def test_empty_request_stream(channel: grpc.aio.Channel, method: str) -> None:
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    _, code, _ = await call(getattr(stub, method), [])
    assert code == INVALID


@pytest.mark.parametrize("method", ["SSHUploadPack", "SSHReceivePack"])
@pytest.mark.parametrize(
    "option", ["no-equals-sign", "=value", "core.hooksPath=/tmp", "include.path=/etc/x"]
)
async def test_bad_config_option(
    channel: grpc.aio.Channel, seeded: shared_pb2.Repository, method: str, option: str
) -> None:
    stub = ssh_pb2_grpc.SSHServiceStub(channel)
    first = _first(method, seeded, git_config_options=[option])
    _, code, _ = await call(getattr(stub, method), [first])
    assert code == INVALID


async def test_malformed_message_is_invalid_argument(
    channel: grpc.aio.Channel, seeded: shared_pb2.Repository
) -> None:
    # Bytes that are not an SSHUploadPackRequest after a valid first message.
    method = channel.stream_stream(
        "/gitaly.SSHService/SSHUploadPack",
        request_serializer=lambda b: b,
        response_deserializer=ssh_pb2.SSHUploadPackResponse.FromString,
    )
    first = ssh_pb2.SSHUploadPackRequest(repository=seeded).SerializeToString()
    _, code, _ = await call(method, [first, b"\x12\xff\xff\xff"])
    assert code == INVALID
