"""Hostile first messages and traversal paths through a real proxy, end to end.

A real cluster (etcd, three nodes, one proxy) and a gateway in front of the
proxy. Random bytes and random well-formed requests of every routed RPC go
through the proxy as raw first messages: each ends with a clear status and
the proxy keeps serving. Then hypothesis-generated repository paths (``..``,
absolute, encoded, Unicode look-alikes, symlink names) are used to create,
query and push to repositories through the proxy's RPCs and the gateway: the
nodes' storage roots only ever gain replica directories, and nothing appears
outside them.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from google.protobuf import message as _message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gitquorum.gitaly import repository_pb2, repository_pb2_grpc, shared_pb2
from gitquorum.wire.registry import MethodInfo, MethodRegistry, Op, Shape
from tests.fuzz.background import LoopThread
from tests.fuzz.strategies import messages, relative_paths, valid_paths
from tests.harness.cluster import VIRTUAL_STORAGE, Cluster
from tests.integration.limits import procs

REGISTRY = MethodRegistry.from_descriptors()
ROUTED = sorted(n for n, i in REGISTRY.methods.items() if i.op is not Op.INTERCEPTED)
# A clear status: the request was judged. UNKNOWN, INTERNAL, UNAVAILABLE (the
# proxy or a node fell over) and DEADLINE_EXCEEDED (a hang) are not.
CLEAR = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.CANCELLED,
}
SEEDED = "fuzz/proxy-seeded.git"
_REPOSITORY_EXISTS = "/gitaly.RepositoryService/RepositoryExists"


def _seeded_exists() -> bytes:
    return repository_pb2.RepositoryExistsRequest(
        repository=shared_pb2.Repository(storage_name=VIRTUAL_STORAGE, relative_path=SEEDED)
    ).SerializeToString()


TIMEOUT = 20.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("proxy-fuzz"), nodes_count=3).start()
    try:
        with grpc.insecure_channel(cluster.proxies[0].address) as channel:
            repository_pb2_grpc.RepositoryServiceStub(channel).CreateRepository(
                repository_pb2.CreateRepositoryRequest(
                    repository=shared_pb2.Repository(
                        storage_name=VIRTUAL_STORAGE, relative_path=SEEDED
                    )
                ),
                timeout=TIMEOUT,
            )
        yield cluster
    except BaseException:
        print(cluster.log_tail())
        raise
    finally:
        cluster.close()


def _call(channel: grpc.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    """One raw call whose first (and only) request message is ``payload``."""
    info = REGISTRY.methods[method]
    try:
        if info.shape is Shape.UNARY_UNARY:
            channel.unary_unary(method)(payload, timeout=TIMEOUT)
        elif info.shape is Shape.UNARY_STREAM:
            for _ in channel.unary_stream(method)(payload, timeout=TIMEOUT):
                pass
        elif info.shape is Shape.STREAM_UNARY:
            channel.stream_unary(method)(iter([payload]), timeout=TIMEOUT)
        else:
            for _ in channel.stream_stream(method)(iter([payload]), timeout=TIMEOUT):
                pass
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        assert code in CLEAR, (method, payload, code, exc.details())  # type: ignore[attr-defined]
        assert code is grpc.StatusCode.CANCELLED or exc.details()  # type: ignore[attr-defined]
        return code
    return grpc.StatusCode.OK


@st.composite
def first_messages(draw: st.DrawFn) -> tuple[str, bytes]:
    method = draw(st.sampled_from(ROUTED))
    info = REGISTRY.methods[method]
    if draw(st.booleans()):
        return method, draw(st.binary(max_size=300))
    request = draw(messages(info.request_class.DESCRIPTOR))
    if draw(st.booleans()):
        # Aim at the virtual storage, often at a repository that exists.
        target = info.target_repository(_with_target(info, request))
        target.storage_name = VIRTUAL_STORAGE
        target.relative_path = draw(st.one_of(st.just(SEEDED), relative_paths))
    return method, request.SerializeToString()


def _with_target(info: MethodInfo, request: _message.Message) -> _message.Message:
    """Make sure the target field exists (so it can be aimed)."""
    node: Any = request
    for name in info.target_paths[0]:
        node = getattr(node, name)
    node.SetInParent()
    return request


def test_random_first_messages_get_clear_statuses(cluster: Cluster) -> None:
    proxy = cluster.proxies[0]
    seen: dict[str, int] = {}
    with grpc.insecure_channel(proxy.address) as channel:

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        # Random requests reach an OK answer in about one call of fifty: the two
        # explicit examples make sure both kinds of answer are among those
        # judged, whatever this run draws.
        @example(call=(_REPOSITORY_EXISTS, _seeded_exists()))
        @example(call=(_REPOSITORY_EXISTS, b"\x0a\x02\x0a\x00"))
        @given(call=first_messages())
        def one(call: tuple[str, bytes]) -> None:
            code = _call(channel, *call)
            seen[code.name] = seen.get(code.name, 0) + 1

        one()
    print("statuses seen:", seen)
    assert "OK" in seen and "INVALID_ARGUMENT" in seen, seen
    assert proxy.alive() and all(node.alive() for node in cluster.nodes)
    # The proxy still routes (a drawn RemoveRepository may have removed the
    # seeded repository, so only the answer is checked, not its value).
    with grpc.insecure_channel(proxy.address) as channel:
        repository_pb2_grpc.RepositoryServiceStub(channel).RepositoryExists(
            repository_pb2.RepositoryExistsRequest(
                repository=shared_pb2.Repository(storage_name=VIRTUAL_STORAGE, relative_path=SEEDED)
            ),
            timeout=TIMEOUT,
        )
    for node in cluster.nodes:
        assert node.proc is not None
        pid = node.proc.pid
        assert _eventually_no_git(pid), procs.git_processes(pid)


def _eventually_no_git(pid: int) -> bool:
    from tests.harness.node import wait_for

    try:
        wait_for(lambda: not procs.git_processes(pid), 15, 0.1, "per-call git to exit")
    except TimeoutError:
        return False
    return True


def _tree(base: Path, skip: set[Path]) -> set[str]:
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        found.update(str(here / n) for n in [*dirnames, *filenames])
    return found


def test_traversal_paths_through_the_proxy_and_gateway(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from gitquorum.gateway.http import GatewayConfig, GatewayServer

    roots = {node.storage_path for node in cluster.nodes}
    # Bait: a symlink in every storage root leading out of it.
    outside = cluster.base / "outside"
    outside.mkdir(exist_ok=True)
    for root in roots:
        link = root / "link"
        if not link.exists():
            link.symlink_to(outside)
    skip = {*roots, cluster.base / "logs", cluster.base / "etcd"}
    before = _tree(cluster.base, skip)
    loop = LoopThread()

    async def start() -> GatewayServer:
        gateway = GatewayServer(
            GatewayConfig(proxy=cluster.proxies[0].address, create_on_push=True, timeout=20)
        )
        await gateway.start()
        return gateway

    gateway = loop.run(start())
    created: list[str] = []
    try:
        with grpc.insecure_channel(cluster.proxies[0].address) as channel:
            stub = repository_pb2_grpc.RepositoryServiceStub(channel)

            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
            @given(path=st.one_of(relative_paths, valid_paths.map(lambda p: "fuzz/" + p)))
            def one(path: str) -> None:
                repository = shared_pb2.Repository(storage_name=VIRTUAL_STORAGE, relative_path=path)
                for call in (
                    lambda: stub.CreateRepository(
                        repository_pb2.CreateRepositoryRequest(repository=repository),
                        timeout=TIMEOUT,
                    ),
                    lambda: stub.RepositoryExists(
                        repository_pb2.RepositoryExistsRequest(repository=repository),
                        timeout=TIMEOUT,
                    ),
                ):
                    try:
                        call()
                    except grpc.RpcError as exc:
                        assert exc.code() in CLEAR, (path, exc)  # type: ignore[attr-defined]
                    else:
                        created.append(path)
                # The same path as a URL: create on push through the gateway.
                raw = quote(path, safe="/%" + string.ascii_letters)
                status = loop.run(_info_refs(gateway.url, raw))
                assert 200 <= status < 600 and not 300 <= status < 400

            one()
    finally:
        loop.run(gateway.close())
        loop.close()
    assert created, "no generated path was accepted: the check below would be vacuous"
    assert _tree(cluster.base, skip) == before
    assert not any(outside.iterdir())
    for root in roots:
        # The proxy maps every client path to a replica path: nothing else appears.
        assert {p.name for p in root.iterdir()} <= {"@cluster", "+gitquorum", "link"}


async def _info_refs(base_url: str, raw: str) -> int:
    import aiohttp
    from yarl import URL

    url = URL(f"{base_url}/{raw.lstrip('/')}/info/refs?service=git-receive-pack", encoded=True)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session,
        session.get(url) as response,
    ):
        await response.read()
        return response.status
