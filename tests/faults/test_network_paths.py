"""The network nemeses cut, slow and degrade exactly the path they name.

First the relays alone, against a local echo server: a cut is a blackhole
(timeouts on open and new connections, no refusal), a heal resumes frozen
connections or resets them, layers of different owners compose, latency and
loss show in round-trip times. Then one real
:class:`~tests.faults.cluster.FaultCluster` (3 etcd members, 3 nodes, 3
proxies, every proxy path relayed) and each nemesis of
:mod:`tests.faults.network` injected through a
:class:`~tests.faults.context.RunContext`, with what the proxies do about it:
a cut proxy->node path marks the node unhealthy in that proxy's own view only;
all proxies cut from a node see it dead; a cut dial-back fails that proxy's
writes while the others write; a proxy cut from etcd refuses reads after the
stale-read limit while the others serve; added latency shows in a call over
the path, loss in stalls.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gitquorum.config import ProxyConfig
from gitquorum.gitaly import ref_pb2, ref_pb2_grpc
from tests.chaos.workload import History
from tests.faults import network
from tests.faults.cluster import FaultCluster
from tests.faults.context import RunContext
from tests.faults.relay import Hub, Shape, open_hub
from tests.harness import gitrepo
from tests.harness.cluster import HARNESS_PROXY_SETTINGS, WORKERS_ENV
from tests.harness.pooled import workers_from_env, workers_of
from tests.integration.proxy import helpers

# Proofs that each network nemesis does what it names: run by make test-long
# (the randomized run of make test uses the same nemeses).
pytestmark = [pytest.mark.long, pytest.mark.timeout(180)]

ZERO_OID = "0" * 40
STALE_READ_LIMIT = ProxyConfig.stale_read_limit
# The proxy hears from etcd at least every second: reads are served at least
# until LIMIT - 1 s after the cut (less a margin), refused by LIMIT + a margin.
PROGRESS_INTERVAL = 1.0
UPDATE_REFERENCES = "/gitaly.RefService/UpdateReferences"
# Writes to the cut proxy when it runs workers: 16 connections all landing on
# one of two workers has odds 2**-15.
DIAL_BACK_WRITES = 16
VOTE_TIMEOUT = float(str(HARNESS_PROXY_SETTINGS["vote_timeout"]).removesuffix("s"))


# -- the relays alone -----------------------------------------------------------------------------


def _echo_server() -> tuple[str, socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return f"127.0.0.1:{server.getsockname()[1]}", server


@pytest.fixture(params=["process"])
def hub(request: pytest.FixtureRequest) -> Iterator[tuple[Hub, str]]:
    upstream, server = _echo_server()
    opened = open_hub(request.param)
    try:
        address = opened.call({"op": "add", "name": "p", "upstream": upstream})["address"]
        yield opened, address
    finally:
        opened.close()
        server.close()


def _connect(address: str, timeout: float = 2.0) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def _round_trip(conn: socket.socket, data: bytes = b"x") -> float:
    started = time.monotonic()
    conn.sendall(data)
    got = b""
    while len(got) < len(data):
        got += conn.recv(65536)
    assert got == data
    return time.monotonic() - started


def _set(hub: Hub, reset: bool = False, **shape: object) -> None:
    hub.call({"op": "set", "names": ["p"], "shape": shape, "reset": reset})


def test_a_cut_is_a_blackhole_and_a_heal_resumes(hub: tuple[Hub, str]) -> None:
    relay, address = hub
    old = _connect(address)
    _round_trip(old)
    _set(relay, cut=True)
    old.settimeout(0.5)
    old.sendall(b"held")
    with pytest.raises(TimeoutError):
        old.recv(16)
    # A new connection is accepted, not refused, and then nothing comes back.
    new = _connect(address)
    new.settimeout(0.5)
    new.sendall(b"late")
    with pytest.raises(TimeoutError):
        new.recv(16)
    _set(relay)
    old.settimeout(2)
    new.settimeout(2)
    assert old.recv(16) == b"held"
    assert new.recv(16) == b"late"
    assert _round_trip(old) < 0.5


def test_a_heal_with_reset_aborts_the_frozen_connections(hub: tuple[Hub, str]) -> None:
    relay, address = hub
    old = _connect(address)
    _round_trip(old)
    _set(relay, cut=True)
    _set(relay, reset=True)
    old.settimeout(2)
    with pytest.raises((ConnectionResetError, BrokenPipeError, AssertionError)):
        old.sendall(b"x")
        assert old.recv(16) != b""  # an abort: reset, or end of stream
        raise ConnectionResetError
    fresh = _connect(address)
    assert _round_trip(fresh) < 0.5


@pytest.mark.parametrize("hub", ["process", "thread"], indirect=True)
def test_latency_and_loss_show_in_round_trips(hub: tuple[Hub, str]) -> None:
    relay, address = hub
    conn = _connect(address)
    assert _round_trip(conn) < 0.1
    _set(relay, latency=0.1)
    # One round trip crosses the path twice.
    slow = _round_trip(conn)
    assert 0.2 <= slow < 0.6, slow
    _set(relay, loss=0.5, stall=0.2)
    total = sum(_round_trip(conn) for _ in range(10))
    stalls = relay.call({"op": "stats"})["relays"]["p"]["stalls"]
    assert stalls >= 3, stalls
    assert total >= stalls * 0.2 * 0.9, (total, stalls)
    _set(relay)
    assert _round_trip(conn) < 0.1
    # Big transfers go through whole and in order under latency.
    _set(relay, latency=0.02)
    blob = bytes(random.Random(1).randbytes(3 << 20))
    assert _round_trip(conn, blob) < 5


def test_layers_of_different_owners_compose() -> None:
    assert network.merge([]) == Shape()
    both = network.merge([Shape(cut=True), Shape(latency=0.1, loss=0.5)])
    assert both.cut and both.latency == 0.1 and both.loss == 0.5
    assert network.merge([Shape(loss=0.5), Shape(loss=0.5)]).loss == 0.75
    assert network.merge([Shape(latency=0.05), Shape(latency=0.1)]).latency == pytest.approx(0.15)


# -- a real cluster ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    base = tmp_path_factory.mktemp("network-paths")
    started = FaultCluster(
        base / "cluster", proxy_settings={"replication": {"reconcile_interval": "1s"}}
    )
    with started.start().reporting():
        helpers.wait_all_healthy(started)
        yield started


@pytest.fixture
async def run(cluster: FaultCluster, tmp_path: Path) -> AsyncIterator[RunContext]:
    relative_path = f"faults/{uuid.uuid4().hex}.git"
    source = gitrepo.make_repo(tmp_path / "source", commits=2)
    async with grpc.aio.insecure_channel(cluster.proxies[0].address) as channel:
        await gitrepo.seed(channel, helpers.repository(relative_path), source, tmp_path)
    await asyncio.to_thread(
        helpers.wait_converged, cluster.proxies[0].address, relative_path, 3, 30
    )
    context = RunContext(cluster, random.Random(7), [relative_path], History())
    context.notes.append(gitrepo.refs(source)["refs/heads/main"])
    yield context
    await asyncio.to_thread(cluster.paths.remove, "manual")
    await asyncio.to_thread(helpers.wait_all_healthy, cluster, 30)


def local_view(cluster: FaultCluster, proxy: str) -> dict[str, bool]:
    """node -> healthy, as ``proxy``'s own health checks see it."""
    text = helpers.scrape(cluster.proxy(proxy).metrics_port)
    return {
        dict(k)["storage"]: v == 1.0
        for k, v in helpers.samples(text, "gitquorum_node_healthy").items()
        if dict(k).get("view") == "local"
    }


async def test_one_proxy_to_node_cut_is_seen_by_that_proxy_only(
    cluster: FaultCluster, run: RunContext
) -> None:
    nemesis = network.OneProxyToNodeCut()
    fault = await nemesis.inject(run)
    ((proxy, node),) = fault.unreachable
    assert fault.target == f"{proxy}->{node}"
    try:
        await run.until(
            lambda: not local_view(cluster, proxy)[node], 10, f"{proxy} sees {node} down"
        )
        # Several health rounds later the other proxies still reach it.
        await asyncio.sleep(1.0)
        for other in (p.name for p in cluster.proxies if p.name != proxy):
            assert local_view(cluster, other)[node], f"{other} lost {node} too"
    finally:
        await nemesis.heal(run)
    await run.until(lambda: local_view(cluster, proxy)[node], 10, f"{proxy} sees {node} again")


async def test_proxy_to_node_cut_makes_the_node_look_dead(
    cluster: FaultCluster, run: RunContext
) -> None:
    nemesis = network.ProxyToNodeCut()
    fault = await nemesis.inject(run)
    node = fault.target
    assert sorted(fault.unreachable) == [(p.name, node) for p in cluster.proxies]
    assert cluster.node(node).alive()
    try:
        await run.until(
            lambda: node not in helpers.healthy_nodes(cluster), 10, f"{node} unhealthy by consensus"
        )
        await run.until(
            lambda: all(not local_view(cluster, p.name)[node] for p in cluster.proxies),
            5,
            f"every proxy's own view of {node} unhealthy",
        )
    finally:
        await nemesis.heal(run)
    await run.until(lambda: node in helpers.healthy_nodes(cluster), 15, f"{node} healthy again")


async def _create_ref(address: str, repo: str, oid: str, timeout: float) -> tuple[str, float]:
    """Create a new branch at ``oid`` through ``address``: (status name, seconds)."""
    request = ref_pb2.UpdateReferencesRequest(
        repository=helpers.repository(repo),
        updates=[
            ref_pb2.UpdateReferencesRequest.Update(
                reference=f"refs/heads/n-{uuid.uuid4().hex[:8]}".encode(),
                old_object_id=ZERO_OID.encode(),
                new_object_id=oid.encode(),
            )
        ],
    )

    async def requests():  # type: ignore[no-untyped-def]
        yield request

    started = time.monotonic()
    # A connection of its own: with workers, each call may land on any of them.
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        try:
            await ref_pb2_grpc.RefServiceStub(channel).UpdateReferences(requests(), timeout=timeout)
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
    return code, time.monotonic() - started


async def test_dial_back_cut_fails_that_proxys_writes_only(
    cluster: FaultCluster, run: RunContext
) -> None:
    repo, oid = run.repos[0], run.notes[0]
    nemesis = network.DialBackCut()
    fault = await nemesis.inject(run)
    cut = fault.target
    # With workers, every worker's vote path must be cut: enough writes, each on
    # a connection of its own, that every worker takes some (checked below).
    count = workers_from_env(WORKERS_ENV)
    workers = workers_of(cluster.proxy(cut), count) if count > 1 else []
    before = [_updates(w.metrics_port) for w in workers]
    writes = DIAL_BACK_WRITES if workers else 1
    others = [p for p in cluster.proxies if p.name != cut]
    try:
        results = await asyncio.gather(
            *(_create_ref(p.address, repo, oid, VOTE_TIMEOUT + 3) for p in others),
            *(
                _create_ref(cluster.proxy(cut).address, repo, oid, VOTE_TIMEOUT + 3)
                for _ in range(writes)
            ),
        )
    finally:
        await nemesis.heal(run)
    by_proxy = {p.name: r for p, r in zip(others, results, strict=False)}
    # No vote reaches the proxy at all, so no vote starts its vote timeout: the
    # write holds until the client's deadline (DEADLINE_EXCEEDED), not UNAVAILABLE.
    assert all(code != "OK" for code, _ in results[len(others) :]), results
    for name, (code, _) in by_proxy.items():
        assert code == "OK", (name, by_proxy)
    for worker, counted in zip(workers, before, strict=True):
        await run.until(
            lambda w=worker, c=counted: _updates(w.metrics_port) > c,
            10,
            f"worker {worker.pid} of {cut} to have taken one of the {writes} writes",
        )
    # Once healed the proxy gets its votes again.
    address = cluster.proxy(cut).address

    async def written() -> bool:
        return (await _create_ref(address, repo, oid, 10))[0] == "OK"

    deadline = time.monotonic() + 30
    while not await written():
        assert time.monotonic() < deadline, f"{cut} never wrote again after the heal"
        await asyncio.sleep(0.5)


def _updates(metrics_port: int) -> float:
    """UpdateReferences calls one proxy process has finished, whatever their status."""
    text = helpers.scrape(metrics_port)
    return helpers.sample(text, "gitquorum_rpc_requests_total", method=UPDATE_REFERENCES)


def _read(address: str, repo: str) -> str:
    with grpc.insecure_channel(address) as channel:
        try:
            ref_pb2_grpc.RefServiceStub(channel).FindDefaultBranchName(
                ref_pb2.FindDefaultBranchNameRequest(repository=helpers.repository(repo)),
                timeout=2,
            )
            return "OK"
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"


async def test_proxy_etcd_cut_refuses_reads_past_the_limit_others_serve(
    cluster: FaultCluster, run: RunContext
) -> None:
    repo = run.repos[0]
    nemesis = network.ProxyEtcdCut()
    fault = await nemesis.inject(run)
    cut = fault.target
    assert fault.proxies_down == (cut,)
    others = [p for p in cluster.proxies if p.name != cut]
    refused_at = None
    try:
        while refused_at is None:
            at = time.monotonic() - fault.start
            assert at < STALE_READ_LIMIT + 3.0, f"{cut} still served {at:.1f}s after the cut"
            answer = await asyncio.to_thread(_read, cluster.proxy(cut).address, repo)
            if answer != "OK":
                assert "stale" in answer, answer
                refused_at = at
            for other in others:
                assert await asyncio.to_thread(_read, other.address, repo) == "OK", other.name
            await asyncio.sleep(0.2)
        assert refused_at >= STALE_READ_LIMIT - PROGRESS_INTERVAL - 0.5, refused_at
    finally:
        await nemesis.heal(run)
    address = cluster.proxy(cut).address
    await run.until(lambda: _read(address, repo) == "OK", 20, f"{cut} serving again")


def _check(address: str) -> float:
    """Seconds of one health check over a new channel to ``address`` (connect excluded)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=True)
        started = time.monotonic()
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        return time.monotonic() - started


async def test_slow_path_adds_its_latency_to_calls_over_it(
    cluster: FaultCluster, run: RunContext
) -> None:
    nemesis = network.SlowPath()
    fault = await nemesis.inject(run)
    try:
        shape = cluster.paths.shape(fault.target)
        assert 0.05 <= shape.latency <= 0.2
        relayed = cluster.paths.addresses[fault.target]
        slow = await asyncio.to_thread(_check, relayed)
        assert 2 * shape.latency <= slow < 2 * shape.latency + 0.3, (slow, shape.latency)
    finally:
        await nemesis.heal(run)
    assert await asyncio.to_thread(_check, relayed) < 0.1


async def test_slowing_the_path_to_the_primary_slows_primary_reads_through_that_proxy(
    cluster: FaultCluster, run: RunContext
) -> None:
    repo = run.repos[0]
    primary = await asyncio.to_thread(run.primary, repo)
    proxy = cluster.proxies[1]

    def primary_read() -> float:
        with grpc.insecure_channel(proxy.address) as channel:
            stub = ref_pb2_grpc.RefServiceStub(channel)
            request = ref_pb2.FindDefaultBranchNameRequest(repository=helpers.repository(repo))
            header = (("gitaly-route-repository-accessor-policy", "primary-only"),)
            stub.FindDefaultBranchName(request, timeout=5, metadata=header)
            started = time.monotonic()
            stub.FindDefaultBranchName(request, timeout=5, metadata=header)
            return time.monotonic() - started

    before = await asyncio.to_thread(primary_read)
    path = network.node_path(proxy.name, primary)
    await asyncio.to_thread(cluster.paths.slow, path, latency=0.15)
    during = await asyncio.to_thread(primary_read)
    await asyncio.to_thread(cluster.paths.heal)
    assert during >= 0.3 > before, (before, during)


async def test_lossy_path_stalls_calls_over_it(cluster: FaultCluster, run: RunContext) -> None:
    nemesis = network.LossyPath()
    fault = await nemesis.inject(run)
    relayed = cluster.paths.addresses[fault.target]
    try:
        shape = cluster.paths.shape(fault.target)
        assert 0.02 <= shape.loss <= 0.1 and 0.2 <= shape.stall <= 0.4
    finally:
        await nemesis.heal(run)
    # The nemesis's share of loss is too small to show reliably in a few calls:
    # a heavy one on the same path shows what loss does.
    before = cluster.paths.stats()["relays"][fault.target]["stalls"]
    await asyncio.to_thread(cluster.paths.lossy, fault.target, loss=0.5, stall=0.2)
    took = await asyncio.to_thread(lambda: sum(_check(relayed) for _ in range(5)))
    stalls = cluster.paths.stats()["relays"][fault.target]["stalls"] - before
    await asyncio.to_thread(cluster.paths.heal)
    assert stalls >= 2, stalls
    assert took >= 0.2, took


def test_every_nemesis_is_exported() -> None:
    assert {n.__name__ for n in network.NEMESES} == {
        "ProxyToNodeCut",
        "OneProxyToNodeCut",
        "DialBackCut",
        "ProxyEtcdCut",
        "SlowPath",
        "LossyPath",
    }
    assert all(n.kind == "network" for n in network.NEMESES)
