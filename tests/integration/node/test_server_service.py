"""ServerService.ServerInfo on a real node, checked against git, findmnt and the disk."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import grpc
import pytest

import gitquorum
from gitquorum.gitaly import server_pb2, server_pb2_grpc
from gitquorum.storage import server_service
from tests.conftest import THROUGH_PROXY, Target
from tests.harness.node import NodeProcess

direct = pytest.mark.skipif(THROUGH_PROXY, reason="the proxy answers ServerInfo itself")


def command_output(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()


async def server_info(channel: grpc.aio.Channel) -> server_pb2.ServerInfoResponse:
    stub = server_pb2_grpc.ServerServiceStub(channel)
    return await stub.ServerInfo(server_pb2.ServerInfoRequest(), timeout=10)


@direct
async def test_versions(channel: grpc.aio.Channel) -> None:
    info = await server_info(channel)
    assert info.server_version == gitquorum.__version__
    assert info.git_version == command_output("git", "version").removeprefix("git version ")


@direct
async def test_storage_status(channel: grpc.aio.Channel, target: Target) -> None:
    info = await server_info(channel)
    assert [s.storage_name for s in info.storage_statuses] == [target.storage]
    status = info.storage_statuses[0]
    assert status.readable and status.writeable
    assert status.replication_factor == 0
    assert target.storage_path is not None
    findmnt = command_output("findmnt", "-n", "-o", "FSTYPE", "--target", str(target.storage_path))
    assert status.fs_type == findmnt
    # The writeability probe leaves nothing behind.
    tmp = target.storage_path / "+gitquorum" / "tmp"
    assert not list(tmp.glob("writeable-*"))


@direct
async def test_filesystem_id_is_stable_and_stored(
    channel: grpc.aio.Channel, target: Target, node_session: NodeProcess
) -> None:
    first = (await server_info(channel)).storage_statuses[0].filesystem_id
    assert str(uuid.UUID(first)) == first
    assert (await server_info(channel)).storage_statuses[0].filesystem_id == first
    assert target.storage_path is not None
    stored = (target.storage_path / "+gitquorum" / "filesystem_id").read_text().strip()
    assert stored == first
    # Survives a restart of the node.
    node_session.terminate()
    node_session.start()
    async with grpc.aio.insecure_channel(node_session.address) as fresh:
        assert (await server_info(fresh)).storage_statuses[0].filesystem_id == first


async def test_every_storage_of_a_multi_storage_node(tmp_path: Path) -> None:
    node = NodeProcess(
        "alpha",
        tmp_path / "alpha",
        tmp_path / "logs",
        extra_args=["--storage", f"beta={tmp_path / 'beta'}"],
    ).start()
    try:
        async with grpc.aio.insecure_channel(node.address) as channel:
            info = await server_info(channel)
    finally:
        node.terminate()
    statuses = {s.storage_name: s for s in info.storage_statuses}
    assert set(statuses) == {"alpha", "beta"}
    assert all(s.readable and s.writeable for s in statuses.values())
    # Two storages, two identities, even on one filesystem.
    assert statuses["alpha"].filesystem_id != statuses["beta"].filesystem_id


# The probes themselves, on conditions a root-run test can still create.


def test_unwriteable_storage_is_reported(tmp_path: Path) -> None:
    # A file where the internal directory should be: nothing can be created under it.
    (tmp_path / "+gitquorum").write_text("in the way")
    status = server_service.storage_status("blocked", tmp_path)
    assert status.readable
    assert not status.writeable
    assert status.filesystem_id == ""


def test_missing_storage_is_neither_readable_nor_writeable(tmp_path: Path) -> None:
    status = server_service.storage_status("gone", tmp_path / "does-not-exist")
    assert not status.readable
    assert not status.writeable


def test_fs_type_takes_the_longest_mount_point() -> None:
    mounts = (
        "rootfs / ext4 rw 0 0\n"
        "tmpfs /srv tmpfs rw 0 0\n"
        "nfs:/x /srv/git\\040data nfs4 rw 0 0\n"
        "other /srv/gitother xfs rw 0 0\n"
    )
    assert server_service.fs_type(Path("/srv/git data/repos"), mounts) == "nfs4"
    assert server_service.fs_type(Path("/srv/gitx"), mounts) == "tmpfs"
    assert server_service.fs_type(Path("/home"), mounts) == "ext4"
