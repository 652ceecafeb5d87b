"""A real node process: health, /metrics, JSON logs, SIGTERM drain, and the config CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gitquorum.cli import main as cli_main
from gitquorum.gitaly import (
    blob_pb2,
    blob_pb2_grpc,
    server_pb2,
    server_pb2_grpc,
    shared_pb2,
    ssh_pb2,
    ssh_pb2_grpc,
)
from tests.harness.gitrepo import git, make_repo
from tests.harness.node import NodeProcess, wait_for

CORRELATION_KEY = "x-gitquorum-correlation-id"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
GRACE = 2.0
PATIENT_GRACE = 120.0


def log_entries(node: NodeProcess) -> list[dict[str, Any]]:
    """Every line of the node's log, each of which must be a JSON object."""
    entries = []
    for number, line in enumerate(node.log_path.read_text().splitlines(), 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"log line {number} is not JSON: {line!r}")
        assert isinstance(entry, dict)
        entries.append(entry)
    return entries


def fetch_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def requests_total(metrics: str, method: str, code: str) -> float:
    for line in metrics.splitlines():
        if (
            line.startswith("gitquorum_rpc_requests_total{")
            and f'method="{method}"' in line
            and f'code="{code}"' in line
            and 'component="node"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def children(pid: int) -> set[int]:
    """Direct child processes of ``pid``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone, or going while read
        return False
    return state != "Z"


async def health(address: str, rpc_timeout: float = 5.0, **kwargs: Any) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=rpc_timeout, **kwargs)
        return int(response.status)


async def server_info(address: str, **kwargs: Any) -> server_pb2.ServerInfoResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = server_pb2_grpc.ServerServiceStub(channel)
        return await stub.ServerInfo(server_pb2.ServerInfoRequest(), timeout=5, **kwargs)


# --- the shared node ---------------------------------------------------------------------------


async def test_health_serving(node_session: NodeProcess) -> None:
    assert await health(node_session.address) == health_pb2.HealthCheckResponse.SERVING


async def test_metrics_endpoint_counts_rpcs(node_session: NodeProcess) -> None:
    before = requests_total(
        await asyncio.to_thread(fetch_metrics, node_session.metrics_port), HEALTH_CHECK, "OK"
    )
    await health(node_session.address)
    await health(node_session.address)

    async def counted() -> str:
        deadline = time.monotonic() + 5
        while True:
            metrics = await asyncio.to_thread(fetch_metrics, node_session.metrics_port)
            if requests_total(metrics, HEALTH_CHECK, "OK") >= before + 2:
                return metrics
            assert time.monotonic() < deadline, "health checks not counted"
            await asyncio.sleep(0.02)

    metrics = await counted()
    assert "# TYPE gitquorum_rpc_requests_total counter" in metrics
    assert "gitquorum_rpc_duration_seconds_bucket{" in metrics
    # Other services are counted under their own method.
    await server_info(node_session.address)
    metrics = await asyncio.to_thread(fetch_metrics, node_session.metrics_port)
    assert requests_total(metrics, "/gitaly.ServerService/ServerInfo", "OK") >= 1


async def test_unknown_path_is_not_found(node_session: NodeProcess) -> None:
    async with grpc.aio.insecure_channel(node_session.address) as channel:
        call = channel.unary_unary(
            "/gitaly.NoSuchService/Nothing",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call(b"", timeout=5)
    assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert await health(node_session.address) == health_pb2.HealthCheckResponse.SERVING


async def test_logs_are_json_with_correlation_id(node_session: NodeProcess) -> None:
    correlation = f"test-{uuid.uuid4().hex}"
    # ServerInfo rather than a health check: successful health probes log at debug.
    await server_info(node_session.address, metadata=((CORRELATION_KEY, correlation),))
    await server_info(node_session.address)

    def logged() -> list[dict[str, Any]]:
        return [e for e in log_entries(node_session) if e.get("correlation_id") == correlation]

    (entry,) = wait_for(logged, 5, what="the RPC's log line")
    assert entry["method"] == "/gitaly.ServerService/ServerInfo"
    assert entry["code"] == "OK"
    assert entry["level"] == "info"
    assert entry["msg"] == "rpc finished"
    assert isinstance(entry["duration_ms"], int | float)
    assert entry["time"].endswith("Z")
    # Every RPC line has a correlation id, made up when the caller sent none.
    rpc_lines = [e for e in log_entries(node_session) if "method" in e]
    assert len(rpc_lines) >= 2
    assert all(e.get("correlation_id") for e in rpc_lines)
    serving = [e for e in log_entries(node_session) if e["msg"] == "node serving"]
    assert serving and serving[0]["listen"] == node_session.address


# --- nodes of our own: drain on SIGTERM ----------------------------------------------------------


@pytest.fixture(scope="module")
def source_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("source") / "repo", commits=2)


def _start_draining_node(tmp_path: Path, source_repo: Path, grace: float) -> NodeProcess:
    """A node with the given grace period and one repository, created on disk."""
    storage = tmp_path / "storage"
    storage.mkdir()
    git("clone", "-q", "--bare", str(source_repo), str(storage / "drain.git"))
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                "storages": [{"name": "drain", "path": str(storage)}],
                "graceful_timeout": f"{grace}s",
            }
        )
    )
    return NodeProcess(
        "drain", storage, tmp_path / "logs", extra_args=["--config", str(config)]
    ).start()


@pytest.fixture
def draining_node(tmp_path: Path, source_repo: Path) -> Iterator[NodeProcess]:
    """A node with a short grace period and one repository, created on disk."""
    node = _start_draining_node(tmp_path, source_repo, GRACE)
    yield node
    node.kill()


@pytest.fixture
def patient_node(tmp_path: Path, source_repo: Path) -> Iterator[NodeProcess]:
    """A node whose grace period outlasts any test: only a second signal ends a drain early."""
    node = _start_draining_node(tmp_path, source_repo, PATIENT_GRACE)
    yield node
    node.kill()


class UploadPackSession:
    """An SSHUploadPack RPC whose client side is driven by the test."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.queue: asyncio.Queue[ssh_pb2.SSHUploadPackRequest | None] = asyncio.Queue()
        self.call = ssh_pb2_grpc.SSHServiceStub(channel).SSHUploadPack(self._requests())

    async def _requests(self) -> AsyncIterator[ssh_pb2.SSHUploadPackRequest]:
        while (request := await self.queue.get()) is not None:
            yield request

    async def start(self, storage: str, relative_path: str) -> bytes:
        """Open the session and return the first chunk of the ref advertisement."""
        await self.queue.put(
            ssh_pb2.SSHUploadPackRequest(
                repository=shared_pb2.Repository(storage_name=storage, relative_path=relative_path)
            )
        )
        response = await asyncio.wait_for(self.call.read(), 10)
        assert response is not grpc.aio.EOF
        return bytes(response.stdout)

    async def finish(self) -> tuple[grpc.StatusCode, bytes]:
        """Send the flush packet that ends the negotiation, then read to the end."""
        await self.queue.put(ssh_pb2.SSHUploadPackRequest(stdin=b"0000"))
        await self.queue.put(None)
        rest = b""
        while (response := await asyncio.wait_for(self.call.read(), 10)) is not grpc.aio.EOF:
            rest += response.stdout
        return await self.call.code(), rest


async def test_sigterm_drains_in_flight_rpc(draining_node: NodeProcess, source_repo: Path) -> None:
    node = draining_node
    assert node.proc is not None
    assert await health(node.address) == health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.insecure_channel(node.address) as channel:
        # A read first, so that long-lived cat-file processes exist at shutdown too.
        oid = git("rev-parse", "HEAD:README.md", cwd=source_repo).strip()
        blob = b"".join(
            [
                r.data
                async for r in blob_pb2_grpc.BlobServiceStub(channel).GetBlob(
                    blob_pb2.GetBlobRequest(
                        repository=shared_pb2.Repository(
                            storage_name="drain", relative_path="drain.git"
                        ),
                        oid=oid,
                        limit=-1,
                    )
                )
            ]
        )
        assert blob == (source_repo / "README.md").read_bytes()
        session = UploadPackSession(channel)
        advertisement = await session.start("drain", "drain.git")
        head = git("rev-parse", "HEAD", cwd=source_repo).strip()
        assert head.encode() in advertisement
        git_processes = children(node.proc.pid)
        assert len(git_processes) >= 2, "upload-pack and cat-file should run under the node"

        node.signal(signal.SIGTERM)
        signalled = time.monotonic()

        # New connections are refused while the in-flight RPC drains.
        async def refused() -> bool:
            try:
                await health(node.address, rpc_timeout=0.5)
            except grpc.aio.AioRpcError as exc:
                return exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
            return False

        deadline = time.monotonic() + GRACE
        while not await refused():
            assert time.monotonic() < deadline, "new connections still accepted while draining"
        assert node.alive(), "the node must wait for the in-flight RPC"

        # The RPC already in flight completes normally.
        code, _ = await session.finish()
        assert code == grpc.StatusCode.OK

    returncode = await asyncio.to_thread(node.proc.wait, GRACE + 5)
    elapsed = time.monotonic() - signalled
    assert returncode == 0
    assert elapsed < GRACE + 1.5, f"drain took {elapsed:.1f}s, grace is {GRACE}s"
    assert not any(alive(pid) for pid in git_processes), "git outlived the node"
    entries = log_entries(node)
    assert not [e for e in entries if e["level"] == "error"]
    assert any(e["msg"] == "draining" for e in entries)
    (upload,) = [e for e in entries if e.get("method") == "/gitaly.SSHService/SSHUploadPack"]
    assert upload["code"] == "OK"


async def test_sigterm_cancels_rpcs_beyond_grace(draining_node: NodeProcess) -> None:
    node = draining_node
    assert node.proc is not None
    async with grpc.aio.insecure_channel(node.address) as channel:
        session = UploadPackSession(channel)
        await session.start("drain", "drain.git")
        git_processes = children(node.proc.pid)
        node.signal(signal.SIGTERM)
        signalled = time.monotonic()
        # The client never finishes its negotiation: the grace period runs out.
        returncode = await asyncio.to_thread(node.proc.wait, GRACE + 5)
        elapsed = time.monotonic() - signalled
        try:
            while await asyncio.wait_for(session.call.read(), 5) is not grpc.aio.EOF:
                pass
            code = await session.call.code()
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        assert code != grpc.StatusCode.OK, "an RPC cut short must not look successful"
    assert returncode == 0
    assert GRACE - 0.5 <= elapsed < GRACE + 2.5, f"exited after {elapsed:.1f}s"
    assert not any(alive(pid) for pid in git_processes), "git outlived the node"
    errors = [e for e in log_entries(node) if e["level"] == "error"]
    assert not errors, errors


async def test_a_second_sigterm_stops_at_once(patient_node: NodeProcess) -> None:
    node = patient_node
    assert node.proc is not None
    async with grpc.aio.insecure_channel(node.address) as channel:
        session = UploadPackSession(channel)
        await session.start("drain", "drain.git")
        node.signal(signal.SIGTERM)

        async def refused() -> bool:
            try:
                await health(node.address, rpc_timeout=0.5)
            except grpc.aio.AioRpcError as exc:
                return exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
            return False

        # Stage one: draining (new calls refused), the call in flight still served.
        deadline = time.monotonic() + 10
        while not await refused():
            assert time.monotonic() < deadline, "new connections still accepted while draining"
        assert node.alive(), "the node must wait for the in-flight RPC"
        assert not session.call.done(), "the in-flight RPC must keep being served"

        # Stage two: stop at once, not after the grace period.
        node.signal(signal.SIGTERM)
        signalled = time.monotonic()
        returncode = await asyncio.to_thread(node.proc.wait, 15)
        elapsed = time.monotonic() - signalled
        try:
            while await asyncio.wait_for(session.call.read(), 5) is not grpc.aio.EOF:
                pass
            code = await session.call.code()
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        assert code != grpc.StatusCode.OK, "an RPC cut short must not look successful"
    assert returncode == 0
    assert elapsed < 10, f"exited {elapsed:.1f}s after the second signal"
    entries = log_entries(node)
    assert any(e["msg"] == "draining" for e in entries)
    assert any(e["msg"] == "stopping at once" for e in entries)
    assert not [e for e in entries if e["level"] == "error"]


# --- bad configuration ---------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gitquorum.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


BAD_NODE = {
    "listen": "nowhere",
    "storages": [{"name": "a", "path": "relative"}, {"name": "a", "path": "/b", "size": 1}],
    "graceful_timeout": "forever",
    "log_level": "chatty",
    "colour": "blue",
}
BAD_NODE_PATHS = [
    "listen",
    "storages.0.path",
    "storages.1.name",
    "storages.1.size",
    "graceful_timeout",
    "log_level",
    "colour",
]


def test_node_with_bad_config_prints_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(BAD_NODE))
    result = run_cli("node", "--config", str(config))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    for path in BAD_NODE_PATHS:
        # Each problem names the file and the option's line.
        where = rf"^config: {re.escape(str(config))}:\d+: {re.escape(path)}: "
        assert any(re.match(where, line) for line in lines), (path, lines)
    assert len(lines) == len(BAD_NODE_PATHS)


def test_node_with_bad_flags_exits_2() -> None:
    result = run_cli("node", "--listen", "nowhere", "--storage", "nopath")
    assert result.returncode == 2
    assert "config: listen: " in result.stderr
    assert "config: storages.0.path: " in result.stderr


# --- gitquorum config validate -----------------------------------------------------------------

GOOD_NODE = {"listen": "127.0.0.1:9075", "storages": [{"name": "n1", "path": "/srv/n1"}]}
GOOD_PROXY = {
    "listen": "127.0.0.1:2305",
    "etcd": {"endpoints": ["127.0.0.1:2379"]},
    "virtual_storages": [
        {"name": "default", "nodes": [{"storage": "n1", "address": "127.0.0.1:9075"}]}
    ],
}


def validate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the real CLI entry point in process."""
    with pytest.raises(SystemExit) as exc:
        cli_main.main(["config", "validate", *args])
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def names(path: Path, problem: str, err: str) -> bool:
    """``err`` has ``problem`` after the file's name (and the line, where the option is)."""
    return (
        re.search(rf"^{re.escape(str(path))}(:\d+)?: {re.escape(problem)}", err, re.M) is not None
    )


def test_config_validate_good_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = tmp_path / "node.yaml"
    node.write_text(yaml.safe_dump(GOOD_NODE))
    proxy = tmp_path / "proxy.yaml"
    proxy.write_text(yaml.safe_dump(GOOD_PROXY))
    assert validate(capsys, str(node)) == (0, f"{node}: ok (node configuration)\n", "")
    assert validate(capsys, str(proxy)) == (0, f"{proxy}: ok (proxy configuration)\n", "")
    assert validate(capsys, "--kind", "node", str(node))[0] == 0
    assert validate(capsys, "--kind", "proxy", str(proxy))[0] == 0


def test_config_validate_reports_each_dotted_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(BAD_NODE))
    code, out, err = validate(capsys, str(config))
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    for path in BAD_NODE_PATHS:
        assert names(config, f"{path}: ", err), path
    assert lines[-1] == f"{config}: {len(BAD_NODE_PATHS)} problems in node configuration"


def test_config_validate_proxy_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "proxy.yaml"
    bad = {
        **GOOD_PROXY,
        "etcd": {"endpoints": [], "cluster": "a/b"},
        "virtual_storages": [{"name": "default", "nodes": [{"storage": "n1"}]}],
        "health": {"interval": "often"},
    }
    config.write_text(yaml.safe_dump(bad))
    code, _, err = validate(capsys, str(config))
    assert code == 1
    for path in (
        "etcd.endpoints",
        "etcd.cluster",
        "virtual_storages.0.nodes.0.address",
        "health.interval",
    ):
        assert names(config, f"{path}: ", err), path
    # A node file checked as a proxy fails on the proxy's required options.
    node = tmp_path / "node.yaml"
    node.write_text(yaml.safe_dump(GOOD_NODE))
    code, _, err = validate(capsys, "--kind", "proxy", str(node))
    assert code == 1
    assert names(node, "etcd.endpoints: ", err)
    assert names(node, "storages: unknown option", err)


def test_config_validate_unreadable_and_bad_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.yaml"
    code, _, err = validate(capsys, str(missing))
    assert code == 1
    assert f"{missing}: cannot read" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("listen: [unclosed\n")
    code, _, err = validate(capsys, str(broken))
    assert code == 1
    assert names(broken, "not valid YAML", err)


def test_config_validate_cli_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "node.yaml"
    good.write_text(yaml.safe_dump(GOOD_NODE))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(BAD_NODE))
    ok = run_cli("config", "validate", str(good))
    assert (ok.returncode, ok.stdout.strip()) == (0, f"{good}: ok (node configuration)")
    failed = run_cli("config", "validate", "--kind", "node", str(bad))
    assert failed.returncode == 1
    assert names(bad, "storages.0.path: expected an absolute path", failed.stderr)
    usage = run_cli("config", "validate")
    assert usage.returncode == 2  # argparse: FILE missing
