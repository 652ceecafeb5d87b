"""A pooled proxy (``workers: 2``) as a process: the git CLI through it, its keys in
etcd, a worker killed under it, and its port kept from other processes."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gitquorum.cluster.etcd_store import EtcdConfig, EtcdStore
from gitquorum.cluster.keys import Keyspace
from gitquorum.launch.process import free_ports
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.pooled import Worker, alive, fixed_ports, workers_of
from tests.integration.proxy import helpers
from tests.integration.proxy.pooled import extra_proxy, pooled_cluster

SETTINGS: dict[str, object] = {"workers": 2}
RECEIVE_PACK = "/gitaly.SSHService/SSHReceivePack"
# Pushes until both workers have taken one: each git process is one connection,
# which the kernel gives either worker; all on one worker after 24 has odds 2**-23.
MAX_PUSHES = 24


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with pooled_cluster(tmp_path_factory.mktemp("workers-process"), SETTINGS) as cluster:
        yield cluster


def receive_packs(port: int) -> float:
    text = helpers.scrape(port)
    return helpers.sample(text, "gitquorum_rpc_requests_total", method=RECEIVE_PACK, code="OK")


def push_until_every_worker_took_one(workers: list[Worker], push: Callable[[int], None]) -> int:
    """``push(0)``, ``push(1)``, … until every worker has served a push; how many."""
    for i in range(MAX_PUSHES):
        push(i)
        if all(receive_packs(w.metrics_port) > 0 for w in workers):
            return i + 1
    pytest.fail(f"{MAX_PUSHES} pushes, all taken by one worker")


def test_the_git_cli_pushes_and_clones_through_both_workers(
    pooled: Cluster, source: Path, tmp_path: Path
) -> None:
    proxy = pooled.proxies[0]
    workers = workers_of(proxy)
    relative_path = f"workers/{uuid.uuid4().hex}.git"
    helpers.create(proxy.address, relative_path)
    helpers.push(proxy.address, relative_path, source, "HEAD:refs/heads/main")
    work = tmp_path / "work"
    helpers.ok(helpers.run_git("clone", "-q", helpers.url(proxy.address, relative_path), str(work)))
    pushed: dict[str, str] = {}

    def push(i: int) -> None:
        pushed[f"refs/heads/b{i}"] = helpers.commit(work, f"file{i}")
        helpers.push(proxy.address, relative_path, work, f"HEAD:refs/heads/b{i}")

    push_until_every_worker_took_one(workers, push)
    # Every push committed on every replica (their votes reached their workers).
    for node, refs in helpers.replica_refs(pooled, proxy.address, relative_path).items():
        for ref, commit in pushed.items():
            assert refs.get(ref) == commit, (node, ref)
    # A read with the git CLI sees every push, whichever worker serves it.
    copy = tmp_path / "copy"
    helpers.ok(helpers.run_git("clone", "-q", helpers.url(proxy.address, relative_path), str(copy)))
    remote = gitrepo.git("for-each-ref", "--format=%(refname) %(objectname)", cwd=copy)
    cloned = {
        ref.replace("refs/remotes/origin/", "refs/heads/"): commit
        for ref, commit in (line.split() for line in remote.splitlines())
    }
    assert pushed.items() <= cloned.items()
    gitrepo.git("fsck", "--full", cwd=copy)
    # The proxy's scrape counts every push once.
    assert receive_packs(proxy.metrics_port) == sum(receive_packs(w.metrics_port) for w in workers)


async def test_etcd_holds_one_member_one_health_view_and_one_candidate(pooled: Cluster) -> None:
    assert pooled.etcd is not None
    keys = Keyspace()
    helpers.wait_all_healthy(pooled)
    async with EtcdStore(EtcdConfig(endpoints=tuple(pooled.etcd.endpoints))) as store:
        members = (await store.get_prefix(keys.proxies())).kvs
        # One record (membership and health view together) for the proxy, not one per worker.
        assert [kv.key for kv in members] == [keys.proxy("proxy1")]
        leader = await store.get(keys.leader())
        assert leader is not None and b"proxy1" in leader.value
        elections = (await store.get_prefix(keys.leader().rsplit("/", 1)[0] + "/")).kvs
        assert len(elections) == 1, [kv.key for kv in elections]


async def test_a_killed_worker_stops_the_proxy_with_status_1(pooled: Cluster) -> None:
    """Documented choice: no lone restart; the others drain and the parent exits 1."""
    assert pooled.etcd is not None
    proxy = extra_proxy(pooled, "proxy3").start()
    try:
        first, second = workers_of(proxy)
        keys = Keyspace()
        async with EtcdStore(EtcdConfig(endpoints=tuple(pooled.etcd.endpoints))) as store:
            assert await store.get(keys.proxy("proxy3")) is not None
            os.kill(second.pid, signal.SIGKILL)
            assert proxy.proc is not None
            code = await asyncio.to_thread(proxy.proc.wait, 60)
            assert code == 1, proxy.log_tail()
            assert not alive(first.pid) and not alive(second.pid)
            # Worker 0 drained: its membership went with its lease, at once.
            assert await store.get(keys.proxy("proxy3")) is None
        log = proxy.log_tail(400)
        assert "a worker ended while serving" in log and "killed by SIGKILL" in log, log
        assert '"msg": "drained"' in log, log
    finally:
        proxy.terminate(10)


def _run_proxy(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gitquorum.cli.main", "proxy", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_no_other_process_binds_the_proxy_port(
    pooled: Cluster, tmp_path: Path, workers: int
) -> None:
    proxy = pooled.proxies[0]
    host, _, port = proxy.address.rpartition(":")
    with socket.socket() as intruder, pytest.raises(OSError) as refused:
        intruder.bind((host, int(port)))
    assert refused.value.errno == errno.EADDRINUSE
    # Another proxy configured on the same address, pooled or not.
    config = {**pooled.proxy_config("intruder", int(port)), "workers": workers}
    path = tmp_path / "intruder.yaml"
    path.write_text(yaml.safe_dump(config))
    done = _run_proxy(path)
    assert done.returncode == 1, done.stderr
    assert f"proxy: cannot listen on {proxy.address}" in done.stderr
    # The pooled proxy still serves on it.
    with grpc.insecure_channel(proxy.address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_fixed_vote_addresses_are_bound_and_advertised(pooled: Cluster, source: Path) -> None:
    """``vote_listen`` / ``vote_advertise``: each worker takes votes on its own fixed
    port and tells the nodes the address given for it; writes vote through them."""
    listen = fixed_ports(2)
    proxy = extra_proxy(
        pooled,
        "proxy4",
        vote_listen=[f"127.0.0.1:{port}" for port in listen],
        vote_advertise=[f"localhost:{port}" for port in listen],
    ).start()
    try:
        workers = workers_of(proxy)
        assert [w.vote_address for w in workers] == [f"tcp://localhost:{p}" for p in listen]
        for port in listen:
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
        relative_path = f"workers/{uuid.uuid4().hex}.git"
        helpers.create(proxy.address, relative_path)
        commit = gitrepo.git("rev-parse", "HEAD", cwd=source).strip()

        def push(i: int) -> None:
            helpers.push(proxy.address, relative_path, source, f"HEAD:refs/heads/v{i}")

        pushes = push_until_every_worker_took_one(workers, push)
        for node, refs in helpers.replica_refs(pooled, proxy.address, relative_path).items():
            assert {refs.get(f"refs/heads/v{j}") for j in range(pushes)} == {commit}, node
    finally:
        proxy.terminate(10)


def test_a_vote_port_another_process_holds_is_refused(pooled: Cluster, tmp_path: Path) -> None:
    """Even one that listens with SO_REUSEPORT, as the workers do: sharing the port,
    it would take part of a worker's votes, for transactions it does not hold."""
    taken, free = fixed_ports(2)
    with socket.socket() as intruder:
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        intruder.bind(("127.0.0.1", taken))
        intruder.listen()
        config = {
            **pooled.proxy_config("intruded", free_ports(1)[0]),
            "workers": 2,
            "vote_listen": [f"127.0.0.1:{free}", f"127.0.0.1:{taken}"],
        }
        path = tmp_path / "intruded.yaml"
        path.write_text(yaml.safe_dump(config))
        done = _run_proxy(path)
    assert done.returncode == 1, done.stderr
    assert f"proxy: cannot listen on 127.0.0.1:{taken}" in done.stderr, done.stderr
