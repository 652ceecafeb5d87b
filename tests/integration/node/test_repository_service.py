"""RepositoryService against a real node process, checked against the git CLI."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from gitquorum.gitaly import (
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
    transaction_pb2,
    transaction_pb2_grpc,
)
from gitquorum.wire.replication_claim import claim_metadata
from gitquorum.wire.transaction_metadata import Transaction, encode_metadata
from tests.conftest import THROUGH_PROXY, Target
from tests.harness import gitrepo
from tests.harness.gitrepo import git
from tests.harness.node import NodeProcess

R = repository_pb2
ZERO = "0" * 40
INVALID = grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------- helpers


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> repository_pb2_grpc.RepositoryServiceStub:
    return repository_pb2_grpc.RepositoryServiceStub(channel)


def replica(target: Target, repo: shared_pb2.Repository) -> Path:
    """A repository created through the target, on disk: the node's directory, or
    through a proxy the primary's replica (every replica is up to date after a
    write, and the tests below read only what every replica agrees on)."""
    return target.disk_path(repo)


def on_disk(target: Target) -> Path:
    """The storage root; tests that read disk directly do not run through a proxy."""
    if target.storage_path is None:
        pytest.skip("needs the node's disk")
    return target.storage_path


async def seeded(
    channel: grpc.aio.Channel, target: Target, workdir: Path, **kwargs: object
) -> tuple[shared_pb2.Repository, Path]:
    local = gitrepo.make_repo(workdir / f"local-{os.urandom(4).hex()}", **kwargs)  # type: ignore[arg-type]
    repo = target.repository()
    await gitrepo.seed(channel, repo, local, workdir)
    return repo, local


async def expect_code(call: object, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Await a unary call (or drain a stream) and require it to fail with ``code``."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if hasattr(call, "__aiter__"):
            async for _ in call:  # type: ignore[attr-defined]
                pass
        else:
            await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    return info.value


async def collect(stream: AsyncIterator[object]) -> bytes:
    data = b""
    async for message in stream:
        data += message.data  # type: ignore[attr-defined]
    return data


def show_ref_checksum(path: Path) -> str:
    """An independent reading of Gitaly's checksum rule, to compare the RPC with."""
    proc = subprocess.run(
        ["git", "--git-dir", str(path), "show-ref", "--head"], capture_output=True
    )
    pattern = re.compile(r"HEAD|(refs/(heads|tags|keep-around|merge-requests|environments|notes)/)")
    total = 0
    for line in proc.stdout.decode().splitlines():
        if pattern.search(line):
            total ^= int(hashlib.sha1(line.encode()).hexdigest(), 16)
    if total == 0:
        return ZERO
    # Go's big.Int.Bytes(): whole bytes, no leading zero byte.
    text = f"{total:x}"
    return "0" + text if len(text) % 2 else text


def tmp_leftovers(target: Target) -> list[str]:
    tmp = on_disk(target) / "+gitquorum" / "tmp"
    return sorted(os.listdir(tmp)) if tmp.exists() else []


def bad_repositories(
    target: Target, storage_root: Path | None
) -> Iterator[tuple[str, shared_pb2.Repository]]:
    storage = target.storage
    yield "unset", shared_pb2.Repository()
    yield "unknown storage", shared_pb2.Repository(storage_name="nope", relative_path="a.git")
    yield "no storage", shared_pb2.Repository(relative_path="a.git")
    yield "no path", shared_pb2.Repository(storage_name=storage)
    yield "absolute", shared_pb2.Repository(storage_name=storage, relative_path="/etc/passwd")
    yield "dotdot", shared_pb2.Repository(storage_name=storage, relative_path="../outside.git")
    yield "nul", shared_pb2.Repository(storage_name=storage, relative_path="a\x00b.git")
    yield "internal", shared_pb2.Repository(storage_name=storage, relative_path="+gitquorum/tmp")
    if storage_root is not None:
        outside = storage_root.parent / "outside-target"
        outside.mkdir(exist_ok=True)
        link = storage_root / "escape-link"
        if not link.is_symlink():
            link.symlink_to(outside)
        yield (
            "symlink escape",
            shared_pb2.Repository(storage_name=storage, relative_path="escape-link/repo.git"),
        )


# ---------------------------------------------------------------- transactions


class Votes(transaction_pb2_grpc.RefTransactionServicer):
    """A stand-in for the proxy's RefTransaction service: records votes, answers as told."""

    def __init__(self) -> None:
        self.votes: list[tuple[int, bytes]] = []
        self.answer = transaction_pb2.VoteTransactionResponse.COMMIT
        self.abort_phase: int | None = None

    async def VoteTransaction(
        self, request: transaction_pb2.VoteTransactionRequest, context: grpc.aio.ServicerContext
    ) -> transaction_pb2.VoteTransactionResponse:
        self.votes.append((request.phase, request.reference_updates_hash))
        state = transaction_pb2.VoteTransactionResponse
        if self.abort_phase is not None and request.phase == self.abort_phase:
            return state(state=state.ABORT)
        return state(state=self.answer)


@pytest.fixture
async def votes() -> AsyncIterator[tuple[Votes, list[tuple[str, str]]]]:
    if THROUGH_PROXY:
        pytest.skip("sends its own transaction metadata: the proxy runs its own transaction")
    servicer = Votes()
    server = grpc.aio.server()
    transaction_pb2_grpc.add_RefTransactionServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    metadata = encode_metadata(Transaction(7, "default", True, f"127.0.0.1:{port}", ""))
    yield servicer, metadata
    await server.stop(None)


PREPARED = transaction_pb2.VoteTransactionRequest.PREPARED_PHASE
COMMITTED = transaction_pb2.VoteTransactionRequest.COMMITTED_PHASE


def sha1(text: str) -> bytes:
    return hashlib.sha1(text.encode()).digest()


# ---------------------------------------------------------------- RepositoryExists


async def test_repository_exists(stub, channel, target, workdir) -> None:
    repo, _ = await seeded(channel, target, workdir)
    assert (await stub.RepositoryExists(R.RepositoryExistsRequest(repository=repo))).exists
    missing = target.repository()
    assert not (await stub.RepositoryExists(R.RepositoryExistsRequest(repository=missing))).exists


async def test_repository_exists_false_for_invalid_directory(stub, target) -> None:
    repo = target.repository()
    path = on_disk(target) / repo.relative_path
    (path / "objects").mkdir(parents=True)
    response = await stub.RepositoryExists(R.RepositoryExistsRequest(repository=repo))
    assert response.exists is False


@pytest.mark.parametrize(
    "case",
    [
        "unset",
        "unknown storage",
        "no storage",
        "no path",
        "absolute",
        "dotdot",
        "nul",
        "internal",
        "symlink escape",
    ],
)
async def test_address_errors_are_invalid_argument(stub, target, case) -> None:
    bad = dict(bad_repositories(target, target.storage_path))
    if case not in bad:
        pytest.skip("needs the node's disk")
    repo = bad[case]
    calls = [
        stub.RepositoryExists(R.RepositoryExistsRequest(repository=repo)),
        stub.CreateRepository(R.CreateRepositoryRequest(repository=repo)),
        stub.RemoveRepository(R.RemoveRepositoryRequest(repository=repo)),
        stub.RepositorySize(R.RepositorySizeRequest(repository=repo)),
        stub.RepositoryInfo(R.RepositoryInfoRequest(repository=repo)),
        stub.CalculateChecksum(R.CalculateChecksumRequest(repository=repo)),
        stub.OptimizeRepository(R.OptimizeRepositoryRequest(repository=repo)),
        stub.WriteRef(R.WriteRefRequest(repository=repo, ref=b"refs/heads/x", revision=b"HEAD")),
        stub.CreateBundle(R.CreateBundleRequest(repository=repo)),
        stub.GetSnapshot(R.GetSnapshotRequest(repository=repo)),
    ]
    for call in calls:
        await expect_code(call, INVALID)


@pytest.mark.parametrize(
    "rpc",
    [
        "RepositorySize",
        "RepositoryInfo",
        "CalculateChecksum",
        "OptimizeRepository",
        "WriteRef",
        "CreateBundle",
        "GetSnapshot",
        "RemoveRepository",
    ],
)
async def test_missing_repository_is_not_found(stub, target, rpc) -> None:
    repo = target.repository()
    requests = {
        "RepositorySize": R.RepositorySizeRequest(repository=repo),
        "RepositoryInfo": R.RepositoryInfoRequest(repository=repo),
        "CalculateChecksum": R.CalculateChecksumRequest(repository=repo),
        "OptimizeRepository": R.OptimizeRepositoryRequest(repository=repo),
        "WriteRef": R.WriteRefRequest(repository=repo, ref=b"refs/heads/x", revision=b"HEAD"),
        "CreateBundle": R.CreateBundleRequest(repository=repo),
        "GetSnapshot": R.GetSnapshotRequest(repository=repo),
        "RemoveRepository": R.RemoveRepositoryRequest(repository=repo),
    }
    error = await expect_code(getattr(stub, rpc)(requests[rpc]), grpc.StatusCode.NOT_FOUND)
    if rpc == "RemoveRepository":
        assert "repository does not exist" in error.details()


async def test_malformed_request_is_invalid_argument(channel) -> None:
    call = channel.unary_unary(
        "/gitaly.RepositoryService/RepositoryExists",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    await expect_code(call(b"\x0a\xff\xff\xff"), INVALID)


# ---------------------------------------------------------------- CreateRepository


async def test_create_repository_defaults(stub, target) -> None:
    repo = target.repository(f"group/sub/{os.urandom(4).hex()}.git")
    await stub.CreateRepository(R.CreateRepositoryRequest(repository=repo))
    assert (await stub.RepositoryExists(R.RepositoryExistsRequest(repository=repo))).exists
    path = replica(target, repo)
    assert git("--git-dir", str(path), "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    assert git("--git-dir", str(path), "rev-parse", "--is-bare-repository").strip() == "true"
    assert git("--git-dir", str(path), "rev-parse", "--show-object-format").strip() == "sha1"
    assert git("--git-dir", str(path), "for-each-ref") == ""
    assert not [n for n in tmp_leftovers(target) if n.startswith("create-")]


async def test_create_repository_branch_and_sha256(stub, target) -> None:
    repo = target.repository()
    await stub.CreateRepository(
        R.CreateRepositoryRequest(
            repository=repo,
            default_branch=b"develop",
            object_format=shared_pb2.OBJECT_FORMAT_SHA256,
        )
    )
    path = replica(target, repo)
    assert git("--git-dir", str(path), "symbolic-ref", "HEAD").strip() == "refs/heads/develop"
    assert git("--git-dir", str(path), "rev-parse", "--show-object-format").strip() == "sha256"


async def test_create_repository_errors(stub, target, channel, workdir) -> None:
    existing, _ = await seeded(channel, target, workdir)
    error = await expect_code(
        stub.CreateRepository(R.CreateRepositoryRequest(repository=existing)),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert "exists already" in error.details()
    fresh = target.repository()
    for branch in (b"a..b", b"bad name", b"-x", b"\xff"):
        await expect_code(
            stub.CreateRepository(
                R.CreateRepositoryRequest(repository=fresh, default_branch=branch)
            ),
            INVALID,
        )
    await expect_code(
        stub.CreateRepository(R.CreateRepositoryRequest(repository=fresh, object_format=9)),  # type: ignore[arg-type]
        INVALID,
    )
    assert not (await stub.RepositoryExists(R.RepositoryExistsRequest(repository=fresh))).exists


async def test_create_repository_votes(stub, target, votes) -> None:
    servicer, metadata = votes
    repo = target.repository()
    await stub.CreateRepository(R.CreateRepositoryRequest(repository=repo), metadata=metadata)
    expected = sha1("create refs/heads/main sha1\n")
    assert servicer.votes == [(PREPARED, expected), (COMMITTED, expected)]
    assert (await stub.RepositoryExists(R.RepositoryExistsRequest(repository=repo))).exists


async def test_create_repository_aborted_vote_leaves_nothing(stub, target, votes) -> None:
    servicer, metadata = votes
    servicer.answer = transaction_pb2.VoteTransactionResponse.ABORT
    repo = target.repository()
    await expect_code(
        stub.CreateRepository(R.CreateRepositoryRequest(repository=repo), metadata=metadata),
        grpc.StatusCode.ABORTED,
    )
    assert [phase for phase, _ in servicer.votes] == [PREPARED]
    assert not (await stub.RepositoryExists(R.RepositoryExistsRequest(repository=repo))).exists
    if target.storage_path is not None:
        assert not (target.storage_path / repo.relative_path).exists()
        assert not [n for n in tmp_leftovers(target) if n.startswith("create-")]


# ---------------------------------------------------------------- RemoveRepository


async def test_remove_repository(stub, channel, target, workdir, votes) -> None:
    servicer, metadata = votes
    repo, _ = await seeded(channel, target, workdir)
    await stub.RemoveRepository(R.RemoveRepositoryRequest(repository=repo), metadata=metadata)
    assert not (await stub.RepositoryExists(R.RepositoryExistsRequest(repository=repo))).exists
    assert servicer.votes == [
        (PREPARED, sha1(f"pre-remove {repo.relative_path}")),
        (COMMITTED, sha1(f"post-remove {repo.relative_path}")),
    ]
    if target.storage_path is not None:
        assert not (target.storage_path / repo.relative_path).exists()
        assert not [n for n in tmp_leftovers(target) if n.startswith("removed-")]


async def test_remove_repository_aborted_keeps_it(stub, channel, target, workdir, votes) -> None:
    servicer, metadata = votes
    servicer.answer = transaction_pb2.VoteTransactionResponse.ABORT
    repo, _ = await seeded(channel, target, workdir)
    await expect_code(
        stub.RemoveRepository(R.RemoveRepositoryRequest(repository=repo), metadata=metadata),
        grpc.StatusCode.ABORTED,
    )
    assert (await stub.RepositoryExists(R.RepositoryExistsRequest(repository=repo))).exists


async def test_remove_repository_locked(stub, channel, target, workdir) -> None:
    repo, _ = await seeded(channel, target, workdir)
    path = on_disk(target) / repo.relative_path
    lock = path.with_name(path.name + ".lock")
    lock.write_text("")
    await expect_code(
        stub.RemoveRepository(R.RemoveRepositoryRequest(repository=repo)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    lock.unlink()
    await stub.RemoveRepository(R.RemoveRepositoryRequest(repository=repo))


# ---------------------------------------------------------------- size and info


async def test_repository_size_matches_du(stub, channel, target, workdir) -> None:
    repo, _ = await seeded(channel, target, workdir, binary_size=300_000)
    response = await stub.RepositorySize(R.RepositorySizeRequest(repository=repo))
    path = replica(target, repo)
    assert response.size == du_sk(path)
    assert response.size >= 300  # KiB, and the random blob does not compress


def du_sk(path: Path) -> int:
    proc = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return int(proc.stdout.split()[0])


def count_objects(path: Path) -> dict[str, int]:
    out = git("--git-dir", str(path), "count-objects", "-v")
    return {k: int(v) for k, v in (line.split(": ") for line in out.splitlines())}


async def test_repository_info(stub, channel, target, workdir) -> None:
    repo, local = await seeded(channel, target, workdir)
    path = on_disk(target) / repo.relative_path
    # A loose object and a loose ref next to the bundle's pack.
    blob = git("--git-dir", str(path), "hash-object", "-w", "--stdin", input=b"loose\n").strip()
    git(
        "--git-dir",
        str(path),
        "update-ref",
        "refs/heads/loose",
        git("-C", str(local), "rev-parse", "HEAD").strip(),
    )
    info = await stub.RepositoryInfo(R.RepositoryInfoRequest(repository=repo))
    counts = count_objects(path)
    loose_refs = sum(len(files) for _, _, files in os.walk(path / "refs"))
    packed = path / "packed-refs"
    assert info.references.loose_count == loose_refs
    assert info.references.packed_size == (packed.stat().st_size if packed.exists() else 0)
    assert (
        info.references.reference_backend
        == R.RepositoryInfoResponse.ReferencesInfo.REFERENCE_BACKEND_FILES
    )
    assert info.objects.loose_objects_count == counts["count"] >= 1
    assert info.objects.packfile_count == counts["packs"]
    assert info.objects.size >= (path / "objects" / blob[:2] / blob[2:]).stat().st_size
    total = sum((Path(d) / f).stat().st_size for d, _, files in os.walk(path) for f in files)
    assert info.size == total
    assert info.is_object_pool is False

    await stub.OptimizeRepository(
        R.OptimizeRepositoryRequest(
            repository=repo, strategy=R.OptimizeRepositoryRequest.STRATEGY_EAGER
        )
    )
    info = await stub.RepositoryInfo(R.RepositoryInfoRequest(repository=repo))
    counts = count_objects(path)
    assert info.objects.loose_objects_count == counts["count"] == 0
    assert info.objects.packfile_count == counts["packs"] >= 1
    assert info.references.loose_count == 0
    assert info.references.packed_size == (path / "packed-refs").stat().st_size
    assert info.bitmap.version == 1
    assert info.commit_graph.has_generation_data
    assert info.commit_graph.has_bloom_filters
    assert info.commit_graph.commit_graph_chain_length == 1


# ---------------------------------------------------------------- OptimizeRepository


async def test_optimize_repository(stub, channel, target, workdir) -> None:
    repo, _ = await seeded(channel, target, workdir)
    path = replica(target, repo)
    refs_before = gitrepo.refs(path)
    for strategy in (
        R.OptimizeRepositoryRequest.STRATEGY_UNSPECIFIED,
        R.OptimizeRepositoryRequest.STRATEGY_EAGER,
        R.OptimizeRepositoryRequest.STRATEGY_HEURISTICAL,
    ):
        await stub.OptimizeRepository(
            R.OptimizeRepositoryRequest(repository=repo, strategy=strategy)
        )
        assert gitrepo.refs(path) == refs_before
        git("--git-dir", str(path), "fsck", "--no-progress", "--strict")
    assert count_objects(path)["count"] == 0
    assert list((path / "objects" / "pack").glob("*.bitmap"))
    assert not [f for _, _, files in os.walk(path / "refs") for f in files]
    graph = path / "objects" / "info" / "commit-graphs" / "commit-graph-chain"
    assert graph.exists()


async def test_optimize_empty_repository(stub, target) -> None:
    repo = target.repository()
    await stub.CreateRepository(R.CreateRepositoryRequest(repository=repo))
    for strategy in (R.OptimizeRepositoryRequest.STRATEGY_EAGER, 0):
        await stub.OptimizeRepository(
            R.OptimizeRepositoryRequest(repository=repo, strategy=strategy)
        )


# ---------------------------------------------------------------- CalculateChecksum


async def test_calculate_checksum_matches_git(stub, channel, target, workdir) -> None:
    repo, local = await seeded(channel, target, workdir)
    path = replica(target, repo)
    response = await stub.CalculateChecksum(R.CalculateChecksumRequest(repository=repo))
    assert response.checksum == show_ref_checksum(path)
    # Same refs, same checksum, whatever the packing: a second copy agrees.
    twin = target.repository()
    await gitrepo.seed(channel, twin, local, workdir)
    twin_sum = await stub.CalculateChecksum(R.CalculateChecksumRequest(repository=twin))
    assert twin_sum.checksum == response.checksum
    # Refs outside the counted namespaces do not change it; branches do.
    head = git("--git-dir", str(path), "rev-parse", "HEAD").strip()
    await stub.WriteRef(
        R.WriteRefRequest(repository=repo, ref=b"refs/other/x", revision=head.encode())
    )
    same = await stub.CalculateChecksum(R.CalculateChecksumRequest(repository=repo))
    assert same.checksum == response.checksum
    await stub.WriteRef(
        R.WriteRefRequest(repository=repo, ref=b"refs/heads/new", revision=head.encode())
    )
    changed = await stub.CalculateChecksum(R.CalculateChecksumRequest(repository=repo))
    assert changed.checksum != response.checksum
    assert changed.checksum == show_ref_checksum(path)


async def test_calculate_checksum_empty_repository(stub, target) -> None:
    repo = target.repository()
    await stub.CreateRepository(R.CreateRepositoryRequest(repository=repo))
    response = await stub.CalculateChecksum(R.CalculateChecksumRequest(repository=repo))
    assert response.checksum == ZERO


async def test_calculate_checksum_invalid_repository_is_data_loss(stub, target) -> None:
    repo = target.repository()
    path = on_disk(target) / repo.relative_path
    for entry in ("objects", "refs"):
        (path / entry).mkdir(parents=True)
    (path / "HEAD").write_text("garbage\n")
    error = await expect_code(
        stub.CalculateChecksum(R.CalculateChecksumRequest(repository=repo)),
        grpc.StatusCode.DATA_LOSS,
    )
    assert "not a git repository" in error.details()
    incomplete = target.repository()
    (on_disk(target) / incomplete.relative_path / "objects").mkdir(parents=True)
    await expect_code(
        stub.CalculateChecksum(R.CalculateChecksumRequest(repository=incomplete)),
        grpc.StatusCode.DATA_LOSS,
    )


# ---------------------------------------------------------------- WriteRef


async def test_write_ref_creates_updates_and_deletes(stub, channel, target, workdir) -> None:
    repo, local = await seeded(channel, target, workdir)
    path = replica(target, repo)
    head, parent = (git("-C", str(local), "rev-parse", r).strip() for r in ("main", "main~1"))
    await stub.WriteRef(
        R.WriteRefRequest(repository=repo, ref=b"refs/heads/topic", revision=b"main~1")
    )
    assert gitrepo.refs(path)["refs/heads/topic"] == parent
    await stub.WriteRef(
        R.WriteRefRequest(
            repository=repo,
            ref=b"refs/heads/topic",
            revision=head.encode(),
            old_revision=parent.encode(),
        )
    )
    assert gitrepo.refs(path)["refs/heads/topic"] == head
    # The tag object itself, not what it points to.
    tag = git("-C", str(local), "rev-parse", "refs/tags/v1.1").strip()
    await stub.WriteRef(
        R.WriteRefRequest(repository=repo, ref=b"refs/tags/copy", revision=b"refs/tags/v1.1")
    )
    assert gitrepo.refs(path)["refs/tags/copy"] == tag
    await stub.WriteRef(
        R.WriteRefRequest(repository=repo, ref=b"refs/heads/topic", revision=ZERO.encode())
    )
    assert "refs/heads/topic" not in gitrepo.refs(path)


async def test_write_ref_stale_old_revision(stub, channel, target, workdir) -> None:
    repo, local = await seeded(channel, target, workdir)
    path = replica(target, repo)
    parent = git("-C", str(local), "rev-parse", "main~1").strip()
    before = gitrepo.refs(path)
    await expect_code(
        stub.WriteRef(
            R.WriteRefRequest(
                repository=repo,
                ref=b"refs/heads/main",
                revision=parent.encode(),
                old_revision=parent.encode(),
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    # Creating a ref that exists, with "must not exist" as the old value.
    await expect_code(
        stub.WriteRef(
            R.WriteRefRequest(
                repository=repo,
                ref=b"refs/heads/main",
                revision=parent.encode(),
                old_revision=ZERO.encode(),
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert gitrepo.refs(path) == before


async def test_write_ref_head(stub, channel, target, workdir, votes) -> None:
    servicer, metadata = votes
    repo, _ = await seeded(channel, target, workdir)
    path = on_disk(target) / repo.relative_path
    await stub.WriteRef(
        R.WriteRefRequest(repository=repo, ref=b"HEAD", revision=b"refs/heads/feature"),
        metadata=metadata,
    )
    assert git("--git-dir", str(path), "symbolic-ref", "HEAD").strip() == "refs/heads/feature"
    expected = sha1("symbolic-ref HEAD refs/heads/feature\n")
    assert servicer.votes == [(PREPARED, expected), (COMMITTED, expected)]


async def test_write_ref_votes_on_update(stub, channel, target, workdir, votes) -> None:
    servicer, metadata = votes
    repo, local = await seeded(channel, target, workdir)
    head = git("-C", str(local), "rev-parse", "main").strip()
    await stub.WriteRef(
        R.WriteRefRequest(repository=repo, ref=b"refs/heads/voted", revision=b"main"),
        metadata=metadata,
    )
    expected = sha1(f"{ZERO} {head} refs/heads/voted\n")
    assert servicer.votes == [(PREPARED, expected), (COMMITTED, expected)]
    servicer.answer = transaction_pb2.VoteTransactionResponse.ABORT
    await expect_code(
        stub.WriteRef(
            R.WriteRefRequest(repository=repo, ref=b"refs/heads/refused", revision=b"main"),
            metadata=metadata,
        ),
        grpc.StatusCode.ABORTED,
    )
    if target.storage_path is not None:
        assert "refs/heads/refused" not in gitrepo.refs(target.storage_path / repo.relative_path)


@pytest.mark.parametrize(
    ("ref", "revision", "old"),
    [
        (b"", b"main", b""),
        (b"refs/heads/x", b"", b""),
        (b"main", b"main", b""),
        (b"refs/heads/a..b", b"main", b""),
        (b"refs/heads/x", b"does-not-exist", b""),
        (b"refs/heads/x", b"1" * 40, b""),
        (b"refs/heads/x", b"main", b"no-such-revision"),
        (b"HEAD", b"main", b""),
        (b"HEAD", b"refs/heads/a..b", b""),
        (b"refs/heads/\xff", b"main", b""),
    ],
)
async def test_write_ref_invalid_arguments(
    stub, channel, target, workdir, ref, revision, old
) -> None:
    repo, _ = await seeded(channel, target, workdir, commits=2)
    request = R.WriteRefRequest(repository=repo, ref=ref, revision=revision, old_revision=old)
    await expect_code(stub.WriteRef(request), INVALID)


# ---------------------------------------------------------------- bundles


async def test_create_bundle_round_trip(stub, channel, target, workdir) -> None:
    repo, local = await seeded(channel, target, workdir, binary_size=200_000)
    data = await collect(stub.CreateBundle(R.CreateBundleRequest(repository=repo)))
    bundle = workdir / "out.bundle"
    bundle.write_bytes(data)
    git("bundle", "verify", str(bundle), cwd=local)
    heads = git("bundle", "list-heads", str(bundle))
    listed = {name: oid for oid, name in (line.split(" ", 1) for line in heads.splitlines())}
    assert {k: v for k, v in listed.items() if k != "HEAD"} == gitrepo.refs(local)
    clone = workdir / "clone.git"
    git("clone", "-q", "--mirror", str(bundle), str(clone))
    assert gitrepo.refs(clone) == gitrepo.refs(local)


async def test_create_bundle_empty_repository(stub, target) -> None:
    repo = target.repository()
    await stub.CreateRepository(R.CreateRepositoryRequest(repository=repo))
    error = await expect_code(
        stub.CreateBundle(R.CreateBundleRequest(repository=repo)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "empty bundle" in error.details()


async def test_create_repository_from_bundle(stub, channel, target, workdir) -> None:
    repo, local = await seeded(channel, target, workdir)
    path = replica(target, repo)
    assert gitrepo.refs(path) == gitrepo.refs(local)
    assert git("--git-dir", str(path), "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    git("--git-dir", str(path), "fsck", "--no-progress")
    assert not [n for n in tmp_leftovers(target) if n.startswith("bundle-")]


async def test_create_repository_from_bundle_takes_head(stub, channel, target, workdir) -> None:
    local = gitrepo.make_repo(workdir / "develop")
    git("checkout", "-q", "-b", "develop", "feature", cwd=local)
    repo = target.repository()
    await gitrepo.seed(channel, repo, local, workdir)
    path = replica(target, repo)
    assert git("--git-dir", str(path), "symbolic-ref", "HEAD").strip() == "refs/heads/develop"


async def test_create_repository_from_bundle_sha256(stub, channel, target, workdir) -> None:
    local = workdir / "sha256"
    git("init", "-q", "--object-format=sha256", "-b", "main", str(local))
    git("commit", "-q", "--allow-empty", "-m", "first", cwd=local)
    repo = target.repository()
    await gitrepo.seed(channel, repo, local, workdir)
    path = replica(target, repo)
    assert git("--git-dir", str(path), "rev-parse", "--show-object-format").strip() == "sha256"
    assert gitrepo.refs(path) == gitrepo.refs(local)


async def _from_bundle(  # type: ignore[no-untyped-def]
    stub, messages: list[R.CreateRepositoryFromBundleRequest], metadata=None
):
    async def requests() -> AsyncIterator[R.CreateRepositoryFromBundleRequest]:
        for message in messages:
            yield message

    return await stub.CreateRepositoryFromBundle(requests(), metadata=metadata)


async def test_create_repository_from_bundle_errors(stub, channel, target, workdir) -> None:
    existing, local = await seeded(channel, target, workdir)
    data = gitrepo.bundle(local, workdir / "again.bundle")
    await expect_code(
        _from_bundle(stub, [R.CreateRepositoryFromBundleRequest(repository=existing, data=data)]),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    fresh = target.repository()
    cases: list[tuple[list[R.CreateRepositoryFromBundleRequest], grpc.StatusCode]] = [
        ([], INVALID),
        ([R.CreateRepositoryFromBundleRequest(data=data)], INVALID),
        ([R.CreateRepositoryFromBundleRequest(repository=fresh)], INVALID),
        (
            [R.CreateRepositoryFromBundleRequest(repository=fresh, data=b"not a bundle at all")],
            INVALID,
        ),
        # A valid header followed by garbage.
        ([R.CreateRepositoryFromBundleRequest(repository=fresh, data=data[:200])], INVALID),
    ]
    # An incremental bundle needs commits the new repository cannot have.
    incremental = workdir / "incremental.bundle"
    git("bundle", "create", str(incremental), "main~1..main", cwd=local)
    cases.append(
        (
            [R.CreateRepositoryFromBundleRequest(repository=fresh, data=incremental.read_bytes())],
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    )
    for messages, code in cases:
        await expect_code(_from_bundle(stub, messages), code)
        assert not (await stub.RepositoryExists(R.RepositoryExistsRequest(repository=fresh))).exists
        if target.storage_path is not None:
            assert not (target.storage_path / fresh.relative_path).exists()
    if target.storage_path is not None:
        assert not [n for n in tmp_leftovers(target) if n.startswith("bundle-")]


async def test_create_repository_from_bundle_votes(stub, channel, target, workdir, votes) -> None:
    servicer, metadata = votes
    local = gitrepo.make_repo(workdir / "voted")
    data = gitrepo.bundle(local, workdir / "voted.bundle")

    def message(repo: shared_pb2.Repository) -> list[R.CreateRepositoryFromBundleRequest]:
        return [R.CreateRepositoryFromBundleRequest(repository=repo, data=data)]

    await _from_bundle(stub, message(target.repository()), metadata)
    assert [phase for phase, _ in servicer.votes] == [PREPARED, COMMITTED]
    assert servicer.votes[0][1] == servicer.votes[1][1]
    # Another replica built from the same bundle votes the same.
    first = list(servicer.votes)
    servicer.votes.clear()
    await _from_bundle(stub, message(target.repository()), metadata)
    assert servicer.votes == first
    servicer.votes.clear()
    servicer.answer = transaction_pb2.VoteTransactionResponse.ABORT
    refused = target.repository()
    await expect_code(_from_bundle(stub, message(refused), metadata), grpc.StatusCode.ABORTED)
    assert servicer.votes == first[:1]
    assert not (await stub.RepositoryExists(R.RepositoryExistsRequest(repository=refused))).exists


# ---------------------------------------------------------------- GetSnapshot


async def test_get_snapshot(stub, channel, target, workdir) -> None:
    repo, _ = await seeded(channel, target, workdir, binary_size=400_000)
    path = on_disk(target) / repo.relative_path
    (path / "refs" / "heads" / "stale.lock").write_text("locked\n")
    await stub.WriteRef(
        R.WriteRefRequest(repository=repo, ref=b"refs/heads/loose", revision=b"main")
    )
    chunks = [m.data async for m in stub.GetSnapshot(R.GetSnapshotRequest(repository=repo))]
    assert len(chunks) > 1 and max(len(c) for c in chunks) <= 1 << 20
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:") as tar:
        names = tar.getnames()
        assert "HEAD" in names and "config" in names
        assert not [n for n in names if n.endswith(".lock")]
        assert all(not n.startswith("/") and ".." not in n.split("/") for n in names)
        extracted = workdir / "extracted.git"
        tar.extractall(extracted, filter="data")
    git("--git-dir", str(extracted), "fsck", "--no-progress", "--strict")
    assert gitrepo.refs(extracted) == gitrepo.refs(path)
    assert git("--git-dir", str(extracted), "symbolic-ref", "HEAD") == git(
        "--git-dir", str(path), "symbolic-ref", "HEAD"
    )


async def test_get_snapshot_abandoned_streams(stub, channel, target, workdir) -> None:
    repo, _ = await seeded(channel, target, workdir, commits=1, binary_size=3_000_000)
    for _ in range(3):
        call = stub.GetSnapshot(R.GetSnapshotRequest(repository=repo))
        async for _message in call:
            break
        call.cancel()
    size = await stub.RepositorySize(R.RepositorySizeRequest(repository=repo), timeout=10)
    assert size.size > 2900
    data = await collect(stub.GetSnapshot(R.GetSnapshotRequest(repository=repo), timeout=20))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        assert "HEAD" in tar.getnames()


# ---------------------------------------------------------------- ReplicateRepository


@pytest.fixture(scope="module")
def replica_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("replica")
    node = NodeProcess("replica", base / "storage", base / "logs").start()
    yield node
    node.terminate()


def servers_metadata(storage: str, address: str, token: str = "") -> tuple[str, str]:
    raw = json.dumps({storage: {"address": f"tcp://{address}", "token": token}})
    return ("gitaly-servers", base64.b64encode(raw.encode()).decode())


async def _checksum(stub, repo) -> str:  # type: ignore[no-untyped-def]
    return (await stub.CalculateChecksum(R.CalculateChecksumRequest(repository=repo))).checksum


async def test_replicate_repository_fresh_then_incremental(
    stub, channel, target, workdir, replica_node
) -> None:
    source_root = on_disk(target)
    source, local = await seeded(channel, target, workdir)
    source_path = source_root / source.relative_path
    await stub.WriteRef(
        R.WriteRefRequest(repository=source, ref=b"HEAD", revision=b"refs/heads/feature")
    )
    replica = shared_pb2.Repository(storage_name="replica", relative_path=source.relative_path)
    replica_path = replica_node.storage_path / replica.relative_path
    metadata = [servers_metadata(target.storage, target.address, token="s3cret")]
    async with replica_node.channel() as replica_channel:
        replica_stub = repository_pb2_grpc.RepositoryServiceStub(replica_channel)
        await replica_stub.ReplicateRepository(
            R.ReplicateRepositoryRequest(repository=replica, source=source), metadata=metadata
        )
        assert gitrepo.refs(replica_path) == gitrepo.refs(source_path)
        assert (
            git("--git-dir", str(replica_path), "symbolic-ref", "HEAD").strip()
            == "refs/heads/feature"
        )
        assert await _checksum(replica_stub, replica) == await _checksum(stub, source)
        git("--git-dir", str(replica_path), "fsck", "--no-progress")

        # New commits, a deleted branch, a moved HEAD on the source.
        for i in range(2):
            (local / f"new{i}.txt").write_text(f"new {i}\n")
            git("add", "-A", cwd=local)
            git("commit", "-q", "-m", f"new {i}", cwd=local)
        git("push", "-q", str(source_path), "main", cwd=local)
        await stub.WriteRef(
            R.WriteRefRequest(repository=source, ref=b"refs/heads/feature", revision=ZERO.encode())
        )
        await stub.WriteRef(
            R.WriteRefRequest(repository=source, ref=b"HEAD", revision=b"refs/heads/main")
        )
        await replica_stub.ReplicateRepository(
            R.ReplicateRepositoryRequest(repository=replica, source=source), metadata=metadata
        )
        assert gitrepo.refs(replica_path) == gitrepo.refs(source_path)
        assert "refs/heads/feature" not in gitrepo.refs(replica_path)
        assert (
            git("--git-dir", str(replica_path), "symbolic-ref", "HEAD").strip() == "refs/heads/main"
        )
        assert git("--git-dir", str(replica_path), "rev-list", "--count", "main").strip() == "5"
        assert await _checksum(replica_stub, replica) == await _checksum(stub, source)
        git("--git-dir", str(replica_path), "fsck", "--no-progress")


async def test_replicate_repository_replaces_broken_replica(
    stub, channel, target, workdir, replica_node
) -> None:
    on_disk(target)
    source, _ = await seeded(channel, target, workdir)
    replica = shared_pb2.Repository(storage_name="replica", relative_path=source.relative_path)
    replica_path = replica_node.storage_path / replica.relative_path
    (replica_path / "objects").mkdir(parents=True)
    (replica_path / "junk").write_text("left over\n")
    async with replica_node.channel() as replica_channel:
        replica_stub = repository_pb2_grpc.RepositoryServiceStub(replica_channel)
        await replica_stub.ReplicateRepository(
            R.ReplicateRepositoryRequest(repository=replica, source=source),
            metadata=[servers_metadata(target.storage, target.address)],
        )
        assert await _checksum(replica_stub, replica) == await _checksum(stub, source)
    assert not (replica_path / "junk").exists()


async def test_replicate_repository_refuses_a_superseded_claim(
    stub, channel, target, workdir, replica_node
) -> None:
    """A copy of a claim older than one the node has seen for the replica is
    refused (a worker whose job was taken over), and leaves the replica as it is."""
    on_disk(target)
    source, _ = await seeded(channel, target, workdir)
    replica = shared_pb2.Repository(storage_name="replica", relative_path=source.relative_path)
    replica_path = replica_node.storage_path / replica.relative_path
    servers = servers_metadata(target.storage, target.address)
    request = R.ReplicateRepositoryRequest(repository=replica, source=source)
    async with replica_node.channel() as replica_channel:
        replica_stub = repository_pb2_grpc.RepositoryServiceStub(replica_channel)
        await replica_stub.ReplicateRepository(request, metadata=[servers, claim_metadata(40)])
        copied = gitrepo.refs(replica_path)
        await stub.WriteRef(
            R.WriteRefRequest(repository=source, ref=b"refs/heads/late", revision=b"main")
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await replica_stub.ReplicateRepository(request, metadata=[servers, claim_metadata(39)])
        assert refused.value.code() == grpc.StatusCode.ABORTED
        assert "superseded" in (refused.value.details() or "")
        assert gitrepo.refs(replica_path) == copied
        # The same claim copies again (a catch-up's rounds), and so does a later one.
        await replica_stub.ReplicateRepository(request, metadata=[servers, claim_metadata(40)])
        assert "refs/heads/late" in gitrepo.refs(replica_path)
        await replica_stub.ReplicateRepository(request, metadata=[servers, claim_metadata(41)])
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await replica_stub.ReplicateRepository(
                request, metadata=[servers, ("x-gitquorum-replication-claim", "soon")]
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_replicate_repository_with_transaction_votes_on_fetch(
    stub, channel, target, workdir, replica_node, votes
) -> None:
    servicer, tx_metadata = votes
    source, local = await seeded(channel, target, workdir)
    replica = shared_pb2.Repository(storage_name="replica", relative_path=source.relative_path)
    metadata = [servers_metadata(target.storage, target.address)]
    async with replica_node.channel() as replica_channel:
        replica_stub = repository_pb2_grpc.RepositoryServiceStub(replica_channel)
        await replica_stub.ReplicateRepository(
            R.ReplicateRepositoryRequest(repository=replica, source=source), metadata=metadata
        )
        head = git("-C", str(local), "rev-parse", "main~1").strip()
        await stub.WriteRef(
            R.WriteRefRequest(repository=source, ref=b"refs/heads/extra", revision=head.encode())
        )
        await replica_stub.ReplicateRepository(
            R.ReplicateRepositoryRequest(repository=replica, source=source),
            metadata=[*metadata, *tx_metadata],
        )
        expected = sha1(f"{ZERO} {head} refs/heads/extra\n")
        assert servicer.votes == [(PREPARED, expected), (COMMITTED, expected)]
        assert await _checksum(replica_stub, replica) == await _checksum(stub, source)
        # The cluster refuses the next update: the replica keeps its refs.
        servicer.answer = transaction_pb2.VoteTransactionResponse.ABORT
        await stub.WriteRef(
            R.WriteRefRequest(repository=source, ref=b"refs/heads/refused", revision=head.encode())
        )
        before = await _checksum(replica_stub, replica)
        await expect_code(
            replica_stub.ReplicateRepository(
                R.ReplicateRepositoryRequest(repository=replica, source=source),
                metadata=[*metadata, *tx_metadata],
            ),
            grpc.StatusCode.ABORTED,
        )
        assert await _checksum(replica_stub, replica) == before


async def test_replicate_empty_repository(stub, target, replica_node) -> None:
    on_disk(target)
    source = target.repository()
    await stub.CreateRepository(
        R.CreateRepositoryRequest(repository=source, default_branch=b"trunk")
    )
    replica = shared_pb2.Repository(storage_name="replica", relative_path=source.relative_path)
    replica_path = replica_node.storage_path / replica.relative_path
    metadata = [servers_metadata(target.storage, target.address)]
    async with replica_node.channel() as replica_channel:
        replica_stub = repository_pb2_grpc.RepositoryServiceStub(replica_channel)
        request = R.ReplicateRepositoryRequest(repository=replica, source=source)
        await replica_stub.ReplicateRepository(request, metadata=metadata)
        assert await _checksum(replica_stub, replica) == ZERO
        assert (
            git("--git-dir", str(replica_path), "symbolic-ref", "HEAD").strip()
            == "refs/heads/trunk"
        )
        # A replica with refs the source no longer has loses them.
        local = gitrepo.make_repo(replica_path.parent / "scratch-local", commits=1)
        git("push", "-q", str(replica_path), "main", cwd=local)
        assert gitrepo.refs(replica_path)
        await replica_stub.ReplicateRepository(request, metadata=metadata)
        assert gitrepo.refs(replica_path) == {}


async def test_replicate_repository_errors(stub, channel, target, workdir, replica_node) -> None:
    source, _ = await seeded(channel, target, workdir)
    replica = shared_pb2.Repository(storage_name="replica", relative_path=source.relative_path)
    good = [servers_metadata(target.storage, target.address)]
    bad_b64 = [("gitaly-servers", "%%%not base64")]
    not_object = [("gitaly-servers", base64.b64encode(b"[1, 2]").decode())]
    no_address = [
        ("gitaly-servers", base64.b64encode(json.dumps({target.storage: {}}).encode()).decode())
    ]
    missing_source = shared_pb2.Repository(
        storage_name=target.storage, relative_path="nope/missing.git"
    )
    same_storage = shared_pb2.Repository(storage_name="replica", relative_path="x.git")
    cases = [
        (R.ReplicateRepositoryRequest(repository=replica), good, INVALID),
        (
            R.ReplicateRepositoryRequest(repository=replica, source=shared_pb2.Repository()),
            good,
            INVALID,
        ),
        (R.ReplicateRepositoryRequest(repository=replica, source=same_storage), good, INVALID),
        (R.ReplicateRepositoryRequest(repository=replica, source=source), [], INVALID),
        (R.ReplicateRepositoryRequest(repository=replica, source=source), bad_b64, INVALID),
        (R.ReplicateRepositoryRequest(repository=replica, source=source), not_object, INVALID),
        (R.ReplicateRepositoryRequest(repository=replica, source=source), no_address, INVALID),
        (
            R.ReplicateRepositoryRequest(repository=replica, source=source),
            [servers_metadata("elsewhere", target.address)],
            INVALID,
        ),
        (
            R.ReplicateRepositoryRequest(
                repository=shared_pb2.Repository(storage_name="replica", relative_path="../x"),
                source=source,
            ),
            good,
            INVALID,
        ),
        (
            R.ReplicateRepositoryRequest(
                repository=replica,
                source=shared_pb2.Repository(storage_name=target.storage, relative_path="../x"),
            ),
            good,
            INVALID,
        ),
        (
            R.ReplicateRepositoryRequest(repository=replica, source=missing_source),
            good,
            grpc.StatusCode.NOT_FOUND,
        ),
    ]
    async with replica_node.channel() as replica_channel:
        replica_stub = repository_pb2_grpc.RepositoryServiceStub(replica_channel)
        for request, metadata, code in cases:
            error = await expect_code(
                replica_stub.ReplicateRepository(request, metadata=metadata), code
            )
            if code == grpc.StatusCode.NOT_FOUND:
                assert "invalid source repository" in error.details()
        exists = await replica_stub.RepositoryExists(R.RepositoryExistsRequest(repository=replica))
        assert not exists.exists
