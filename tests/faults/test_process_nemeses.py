"""The process, etcd and operations nemeses do what they name.

One real :class:`~tests.faults.cluster.FaultCluster` (3 etcd members, 3 nodes,
3 proxies, replication factor 3, the fault runs' proxy settings) serves the
module; each test seeds a fresh repository, injects one nemesis of
:mod:`tests.faults.processes` through a :class:`~tests.faults.context.RunContext`,
checks what it did with observations of its own -- ``/proc/<pid>/stat``, a TCP
connect to the port, a gRPC health check with a short deadline, etcd's leader
key and repository records read from etcd, etcd's ``/health`` and a put with a
short timeout -- and that the :class:`~tests.faults.base.Fault` it returned
names what it hit, then heals it and checks the fault is undone:

* **kill** (node, proxy, etcd member): the process is gone, its port refuses
  connections; healed, a new process answers on the same port.
* **pause** (SIGSTOP): the process is stopped (state ``T``), its port accepts
  connections but it does not answer within a second; healed, the same process
  answers again.
* **leader proxy**: the one hit held the leader key, another proxy takes it
  while it is away; a resumed leader knows it no longer leads.
* **etcd**: a killed raft leader is replaced; one member lost leaves etcd
  writable, two lost make a put time out.
* **restart storm**: every node restarted twice, one down at a time.
* **switchover / replication factor**: the primary, or the assigned set,
  recorded in etcd changed as named.

A test that fails before its heal leaves the cluster to the next test's
set-up, which starts or resumes whatever is still down.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from functools import partial
from itertools import pairwise
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gitquorum.gitaly import ref_pb2, ref_pb2_grpc
from gitquorum.launch.etcd import EtcdMember, etcd_healthy
from gitquorum.launch.process import ChildProcess
from tests.chaos import nemesis as chaos_nemesis
from tests.chaos.workload import History, Op
from tests.faults import processes
from tests.faults.base import Fault, Nemesis
from tests.faults.cluster import FAULT_PROXY_SETTINGS, FaultCluster
from tests.faults.context import RunContext, read_records, until
from tests.harness import gitrepo
from tests.harness.cluster import HARNESS_PROXY_SETTINGS, WORKERS_ENV, ProxyProcess
from tests.harness.node import NODE_WORKERS_ENV, NodeProcess, wait_for
from tests.harness.pooled import PooledChild, workers_from_env
from tests.integration.proxy import helpers

# Proofs that each process nemesis does what it names: run by make test-long
# (the randomized run of make test uses the same nemeses).
pytestmark = [pytest.mark.long, pytest.mark.timeout(240)]

ZERO_OID = "0" * 40
# A stopped process's port still completes TCP handshakes (the kernel's
# backlog); nothing answers on it within this.
ANSWER_DEADLINE = 1.0
# A killed or paused leader's key outlives it by at most the election TTL.
ELECTION_TTL = float(str(HARNESS_PROXY_SETTINGS["election"]["ttl"]).removesuffix("s"))
RESTART = 60.0  # a process started again (a loaded machine)
SETTLE = 60.0  # the cluster seen whole again after a heal
WRITE_TIMEOUT = 5.0
STOP_DEADLINE = 2.0  # a SIGSTOP delivered to every thread
SAMPLE_INTERVAL = 0.05
PROBE_KEY = "process-nemeses/probe"  # outside the cluster's keyspace


# -- independent observations ---------------------------------------------------------------------


def proc_state(pid: int) -> str:
    """The state letter of process ``pid`` in ``/proc`` (R, S, D, T, Z, ...); "" if none."""
    if pid <= 0:
        return ""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return ""
    return text.rsplit(")", 1)[1].split()[0]


# What a killed process shows in /proc: nothing (reaped), or a zombie.
DEAD = ("", "Z", "X")


def running(pid: int) -> bool:
    """The process exists and is neither stopped nor a zombie."""
    return proc_state(pid) not in ("", "T", "t", "Z", "X")


def refuses(address: str) -> bool:
    """True when a TCP connect to ``address`` is refused (nothing listens)."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=ANSWER_DEADLINE):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def accepts(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=ANSWER_DEADLINE):
            return True
    except OSError:
        return False


def health(address: str, timeout: float = ANSWER_DEADLINE) -> str:
    """One ``grpc.health.v1`` Check over a new channel: SERVING, NOT_SERVING, or the code."""
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def etcd_put(member: EtcdMember, timeout: float) -> bool:
    """A put through ``member``'s JSON gateway answered OK within ``timeout`` seconds."""
    body = json.dumps(
        {
            "key": base64.b64encode(PROBE_KEY.encode()).decode(),
            "value": base64.b64encode(uuid.uuid4().hex.encode()).decode(),
        }
    ).encode()
    request = urllib.request.Request(f"{member.client_url}/v3/kv/put", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except (OSError, ValueError):
        return False
    return "header" in answer and "error" not in answer


def leader_metrics(cluster: FaultCluster) -> dict[str, float | None]:
    """proxy -> its own ``gitquorum_leader`` gauge (None: its metrics did not answer)."""
    found: dict[str, float | None] = {}
    for proxy in cluster.proxies:
        try:
            text = helpers.scrape(proxy.metrics_port)
        except OSError:
            found[proxy.name] = None
            continue
        found[proxy.name] = helpers.sample(text, "gitquorum_leader", proxy=proxy.name)
    return found


def etcd_leader(cluster: FaultCluster) -> str | None:
    try:
        return chaos_nemesis.leader(cluster)
    except RuntimeError:
        return None


class Sampler:
    """Calls ``probe`` every ``SAMPLE_INTERVAL`` seconds in a thread of its own
    (apart from the event loop and from the nemesis) and keeps each answer with
    its time on the run's monotonic clock; a probe that raises is kept as its
    exception."""

    def __init__(self, probe: Callable[[], Any]) -> None:
        self.probe = probe
        self.samples: list[tuple[float, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            try:
                value = self.probe()
            except Exception as exc:
                value = exc
            self.samples.append((at, value))
            self._stop.wait(SAMPLE_INTERVAL)

    def values(self) -> list[tuple[float, Any]]:
        return [(at, v) for at, v in self.samples if not isinstance(v, Exception)]


# -- load ---------------------------------------------------------------------------------------


async def create_ref(channel: grpc.aio.Channel, repo: str, ref: str, oid: str) -> bool:
    request = ref_pb2.UpdateReferencesRequest(
        repository=helpers.repository(repo),
        updates=[
            ref_pb2.UpdateReferencesRequest.Update(
                reference=ref.encode(), old_object_id=ZERO_OID.encode(), new_object_id=oid.encode()
            )
        ],
    )

    async def requests():  # type: ignore[no-untyped-def]
        yield request

    try:
        await ref_pb2_grpc.RefServiceStub(channel).UpdateReferences(
            requests(), timeout=WRITE_TIMEOUT
        )
    except grpc.aio.AioRpcError:
        return False
    return True


class Writers:
    """Clients creating new branches of ``repo`` through every proxy in turn;
    each write goes in the run's history (what ``run.acknowledged`` counts)."""

    def __init__(self, run: RunContext, repo: str, oid: str, count: int = 2) -> None:
        self.run, self.repo, self.oid, self.count = run, repo, oid, count
        self.stop = asyncio.Event()
        self.channels: list[grpc.aio.Channel] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Writers:
        self.channels = [grpc.aio.insecure_channel(p.address) for p in self.run.cluster.proxies]
        self.tasks = [asyncio.create_task(self._write(i)) for i in range(self.count)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for channel in self.channels:
            await channel.close()

    async def _write(self, index: int) -> None:
        turn = index
        while not self.stop.is_set():
            channel = self.channels[turn % len(self.channels)]
            turn += 1
            ref = f"refs/heads/w{index}/{uuid.uuid4().hex[:8]}"
            op = self.run.history.add(
                Op(f"writer{index}", "create", ref, self.oid, time.monotonic(), repo=self.repo)
            )
            ok = await create_ref(channel, self.repo, ref, self.oid)
            op.end = time.monotonic()
            op.outcome = "ok" if ok else "unknown"
            # Paced, and a failed write backs off (its proxy may be down).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.05 if ok else 0.3)


# -- the cluster ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    base = tmp_path_factory.mktemp("process-nemeses")
    started = FaultCluster(base / "cluster", proxy_settings=dict(FAULT_PROXY_SETTINGS))
    with started.start().reporting():
        helpers.wait_all_healthy(started, SETTLE)
        yield started


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gitrepo.make_repo(tmp_path_factory.mktemp("process-source") / "source", commits=2)


@pytest.fixture
def head(source: Path) -> str:
    return gitrepo.refs(source)["refs/heads/main"]


def restore(cluster: FaultCluster) -> None:
    """Every process running and resumed, etcd healthy, every node healthy by
    consensus, a live proxy leading."""
    etcd = cluster.etcd
    assert etcd is not None
    for index, member in enumerate(etcd.members):
        if not member.alive():
            etcd.restart(index, RESTART)
        elif member.paused or proc_state(member.pid) == "T":
            etcd.resume(index)
    children: list[ChildProcess] = [*cluster.nodes, *cluster.proxies]
    for child in children:
        if not child.alive():
            child.start(RESTART)
        elif proc_state(child.pid) == "T":
            child.resume()
    etcd.wait_healthy(timeout=SETTLE)
    helpers.wait_all_healthy(cluster, SETTLE)
    live = {p.name for p in cluster.proxies}
    wait_for(lambda: etcd_leader(cluster) in live, SETTLE, 0.1, "a live proxy to lead")


async def seed(cluster: FaultCluster, source: Path, scratch: Path) -> str:
    """A new repository from ``source``, every replica up to date; its relative path."""
    deadline = time.monotonic() + SETTLE
    while True:
        relative_path = f"process/{uuid.uuid4().hex}.git"
        address = cluster.proxies[0].address
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                await gitrepo.seed(channel, helpers.repository(relative_path), source, scratch)
            break
        except grpc.aio.AioRpcError:
            # Just after an etcd fault the proxies may still be reconnecting.
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)
    await asyncio.to_thread(helpers.wait_converged, address, relative_path, 3, SETTLE)
    return relative_path


@pytest.fixture
async def run(cluster: FaultCluster, source: Path, tmp_path: Path) -> AsyncIterator[RunContext]:
    await asyncio.to_thread(restore, cluster)
    relative_path = await seed(cluster, source, tmp_path)
    yield RunContext(cluster, random.Random(7), [relative_path], History())
    await asyncio.to_thread(restore, cluster)


def server_pids(child: ChildProcess) -> tuple[int, ...]:
    """``child``'s process and, run with workers, every worker's."""
    return tuple(child.server_pids()) if isinstance(child, PooledChild) else (child.pid,)


def vote_addresses(child: ChildProcess) -> list[str]:
    """A proxy's fixed vote ports (``vote_listen``: its workers'), none for others."""
    if not isinstance(child, ProxyProcess):
        return []
    config = yaml.safe_load(child.config_path.read_text())
    return list(config.get("vote_listen") or [])


def pids(children: Sequence[ChildProcess]) -> dict[str, tuple[int, ...]]:
    """Each child's processes: the parent first, then its workers (if any)."""
    found = {c.name: server_pids(c) for c in children}
    for child in children:
        # Run with workers (GITQUORUM_TEST_*_WORKERS), every check below covers them too.
        variable = NODE_WORKERS_ENV if isinstance(child, NodeProcess) else WORKERS_ENV
        workers = workers_from_env(variable)
        assert len(found[child.name]) == (1 + workers if workers > 1 else 1), (
            child.name,
            found[child.name],
        )
    return found


async def answering(address: str, what: str) -> None:
    await until(lambda: health(address) == "SERVING", RESTART, f"{what} answering")


def assert_no_process_taken(fault: Fault) -> None:
    assert fault.nodes_down == () and fault.nodes_down_during == {}, fault
    assert fault.proxies_down == () and fault.proxies_down_during == [], fault


async def assert_killed(child: ChildProcess, pids: tuple[int, ...]) -> None:
    """``pids`` (``child``'s processes before the fault) are gone; its port refuses."""
    # SIGKILL takes effect when the process next runs: soon, not at once. A killed
    # worker stays a zombie until whoever inherits it (its parent died first) reaps it.
    for pid in pids:
        await until(
            lambda pid=pid: proc_state(pid) in DEAD, STOP_DEADLINE, f"{child.name} ({pid}) dead"
        )
    # A connect racing the listeners' teardown can fail otherwise than refused.
    for address in (child.address, *vote_addresses(child)):
        await until(
            lambda a=address: refuses(a), STOP_DEADLINE, f"{child.name}'s {address} refusing"
        )


async def assert_paused(child: ChildProcess, pids: tuple[int, ...]) -> None:
    """``pids`` are ``child``'s processes, every one stopped: connections accepted, no answer."""
    assert child.pid == pids[0], f"{child.name} was restarted, not paused"
    # SIGSTOP takes effect once every thread of the process has stopped: soon, not at once.
    for pid in pids:
        await until(
            lambda pid=pid: proc_state(pid) == "T", STOP_DEADLINE, f"{child.name} ({pid}) stopped"
        )
    assert await asyncio.to_thread(accepts, child.address), f"{child.name}'s port refuses"
    started = time.monotonic()
    answer = await asyncio.to_thread(health, child.address)
    assert answer == "DEADLINE_EXCEEDED", f"{child.name} answered {answer} while stopped"
    assert time.monotonic() - started < ANSWER_DEADLINE + 1.0


async def assert_restarted(child: ChildProcess, pids: tuple[int, ...]) -> None:
    """New processes of ``child`` (as many as before) run and answer on the old port."""
    await answering(child.address, f"{child.name} restarted")
    for address in vote_addresses(child):
        assert await asyncio.to_thread(accepts, address), f"{child.name}'s {address} refuses"
    now = server_pids(child)
    assert len(now) == len(pids) and not set(now) & set(pids), (child.name, pids, now)
    assert all(running(pid) for pid in now), (child.name, now)
    for pid in pids:
        assert proc_state(pid) in DEAD, f"{child.name}'s old process {pid} is still there"


async def assert_resumed(child: ChildProcess, pids: tuple[int, ...]) -> None:
    """The same processes of ``child`` run again and answer."""
    assert child.pid == pids[0], f"{child.name} was restarted, not resumed"
    for pid in pids:
        await until(lambda pid=pid: running(pid), 10, f"{child.name} ({pid}) running again")
    await answering(child.address, f"{child.name} resumed")
    assert server_pids(child) == pids, (child.name, pids)


# -- nodes ----------------------------------------------------------------------------------------


def _names_its_replica(kind: type[Nemesis], fault: Fault, record: Any) -> None:
    """The fault of a node nemesis names the node of the role it claims, down
    for the whole fault, and no proxy."""
    node = fault.target
    if getattr(kind, "role", "") == "primary":
        assert node == record.primary, (node, record)
    else:
        assert node in record.assigned and node != record.primary, (node, record)
    assert fault.kind == "process" and fault.nemesis == kind.name
    assert fault.nodes_down == (node,) and fault.nodes_down_during == {}, fault
    assert fault.proxies_down == (), fault


@pytest.mark.parametrize(
    "kind", [processes.KillPrimary, processes.KillSecondary], ids=lambda k: k.name
)
async def test_a_node_kill_takes_the_named_replica_away_until_the_heal(
    cluster: FaultCluster, run: RunContext, kind: type[processes.KillPrimary]
) -> None:
    repo = run.repos[0]
    record = await asyncio.to_thread(run.record, repo)
    before = pids(cluster.nodes)
    nemesis = kind()
    fault = await nemesis.inject(run)
    node = fault.target
    try:
        _names_its_replica(kind, fault, record)
        await assert_killed(cluster.node(node), before[node])
        for other in cluster.nodes:
            if other.name != node:
                assert server_pids(other) == before[other.name], other.name
                assert all(running(pid) for pid in before[other.name]), other.name
        await run.until(lambda: node not in helpers.healthy_nodes(cluster), 15, f"{node} unhealthy")
    finally:
        await nemesis.heal(run)
    await assert_restarted(cluster.node(node), before[node])
    await run.until(lambda: node in helpers.healthy_nodes(cluster), SETTLE, f"{node} healthy")


@pytest.mark.parametrize(
    "kind", [processes.PausePrimary, processes.PauseSecondary], ids=lambda k: k.name
)
async def test_a_node_pause_stops_the_named_replica_until_the_heal(
    cluster: FaultCluster, run: RunContext, kind: type[processes.PausePrimary]
) -> None:
    repo = run.repos[0]
    record = await asyncio.to_thread(run.record, repo)
    before = pids(cluster.nodes)
    nemesis = kind()
    fault = await nemesis.inject(run)
    node = fault.target
    try:
        _names_its_replica(kind, fault, record)
        await assert_paused(cluster.node(node), before[node])
        for other in cluster.nodes:
            if other.name != node:
                assert running(other.pid), other.name
        await run.until(lambda: node not in helpers.healthy_nodes(cluster), 15, f"{node} unhealthy")
    finally:
        await nemesis.heal(run)
    await assert_resumed(cluster.node(node), before[node])
    await run.until(lambda: node in helpers.healthy_nodes(cluster), SETTLE, f"{node} healthy")


async def test_kill_primary_while_secondary_outdated(
    cluster: FaultCluster, run: RunContext, head: str
) -> None:
    repo = run.repos[0]
    record = await asyncio.to_thread(run.record, repo)
    before = pids(cluster.nodes)

    def observe() -> tuple[dict[str, str], dict[str, int], int]:
        """Every node's process state, and the repository's generations in etcd."""
        states = {n.name: proc_state(n.pid) for n in cluster.nodes}
        current = read_records(cluster)[repo]
        return states, dict(current.replicas), current.generation

    nemesis = processes.KillPrimaryWhileSecondaryOutdated()
    async with Writers(run, repo, head):
        with Sampler(observe) as sampler:
            fault = await nemesis.inject(run)
            returned = time.monotonic()
    try:
        primary, outdated = nemesis.node, nemesis.outdated
        assert primary == record.primary, (primary, record)
        assert outdated in record.assigned and outdated != primary, (outdated, record)
        assert fault.target == f"{primary} (outdated: {outdated})", fault.target
        assert fault.nodes_down == (primary, outdated), fault
        assert fault.proxies_down == (), fault
        # The secondary was stopped for one window, and running again before the kill.
        ((paused, resumed),) = fault.nodes_down_during[outdated]
        assert fault.start <= paused < resumed < returned, fault.nodes_down_during
        assert primary not in fault.nodes_down_during, "the primary's window is set at the heal"
        samples = sampler.values()
        stopped = [at for at, (states, _, _) in samples if states[outdated] == "T"]
        assert stopped, f"{outdated} never seen stopped"
        assert paused - 0.2 <= min(stopped) and max(stopped) <= resumed + 0.2, (stopped, paused)
        assert server_pids(cluster.node(outdated)) == before[outdated], f"{outdated} restarted"
        assert all(map(running, before[outdated])), f"{outdated} is not running at the kill"
        # It missed acknowledged writes: etcd recorded its replica behind.
        behind = [
            at for at, (_, gens, gen) in samples if at <= resumed and gens.get(outdated, -1) < gen
        ]
        assert behind, f"{outdated}'s replica never recorded behind while it was stopped"
        acknowledged = [o for o in run.history.writes("ok") if paused <= o.end <= resumed]
        assert acknowledged, "no write acknowledged while the secondary was stopped"
        await assert_killed(cluster.node(primary), before[primary])
    finally:
        await nemesis.heal(run)
    ((down, up),) = fault.nodes_down_during[primary]
    assert resumed <= down <= returned < up, (down, up, returned)
    # Where the secondary's replica stood from its resume to the kill: outdated
    # and catching up is what the kill is meant to hit.
    between = [(at, gens.get(outdated, -1), gen) for at, (_, gens, gen) in samples]
    between = [b for b in between if resumed <= b[0] <= down]
    lagging = [b for b in between if b[1] < b[2]]
    print(
        f"kill-primary-secondary-outdated: {outdated} stopped {resumed - paused:.1f}s, "
        f"{len(acknowledged)} writes acknowledged meanwhile; resumed {down - resumed:.1f}s "
        f"before the kill; recorded behind in {len(lagging)} of {len(between)} looks from "
        f"its resume to the kill (last: {between[-1][1:] if between else None}); "
        f"repos_down={fault.repos_down}"
    )
    await assert_restarted(cluster.node(primary), before[primary])


async def test_restart_storm_restarts_every_node_twice_one_at_a_time(
    cluster: FaultCluster, run: RunContext
) -> None:
    before = pids(cluster.nodes)

    def observe() -> dict[str, tuple[int, str, bool]]:
        """node -> (its pid, that process's state, its port refusing)."""
        return {n.name: (n.pid, proc_state(n.pid), refuses(n.address)) for n in cluster.nodes}

    nemesis = processes.RestartStorm()
    with Sampler(observe) as sampler:
        fault = await nemesis.inject(run)
    faults = [f for f in run.faults.faults if f.nemesis == nemesis.name]
    names = [n.name for n in cluster.nodes]
    assert [f.target for f in faults] == names * 2, [f.target for f in faults]
    assert fault is faults[-1]
    for one in faults:
        assert one.kind == "process" and one.nodes_down == (one.target,), one
        assert one.end is not None and one.start < one.end, one
    for earlier, later in pairwise(faults):
        assert earlier.end is not None and earlier.end <= later.start, (earlier, later)
    samples = sampler.values()
    for name in names:
        seen = {states[name][0] for _, states in samples if states[name][1]}
        assert len(seen) >= 3, f"{name} ran as {sorted(seen)}: not restarted twice"
        # Refused in two separate windows: down twice, up in between.
        refused = [states[name][2] for _, states in samples]
        windows = sum(1 for a, b in pairwise([False, *refused]) if b and not a)
        assert windows >= 2, f"{name}'s port refused in {windows} windows"
        assert cluster.node(name).pid not in before[name]
        assert all(proc_state(pid) in DEAD for pid in before[name]), (
            f"{name}'s first processes remain"
        )
    # Never two nodes down at once.
    for at, states in samples:
        down = [name for name, (_, _, refusing) in states.items() if refusing]
        assert len(down) <= 1, f"{down} down together at {at - faults[0].start:.1f}s"
    await nemesis.heal(run)
    for node in cluster.nodes:
        assert running(node.pid), node.name
        await answering(node.address, node.name)


# -- proxies --------------------------------------------------------------------------------------


async def test_kill_leader_proxy_kills_the_elected_leader_and_another_takes_over(
    cluster: FaultCluster, run: RunContext
) -> None:
    leader = await asyncio.to_thread(run.leader)
    assert leader is not None
    before = pids(cluster.proxies)
    nemesis = processes.KillLeaderProxy()
    fault = await nemesis.inject(run)
    try:
        assert fault.target == leader, (fault.target, leader)
        assert fault.kind == "process" and fault.proxies_down == (leader,), fault
        assert fault.nodes_down == () and fault.proxies_down_during == [], fault
        await assert_killed(cluster.proxy(leader), before[leader])
        successor = await run.until(
            lambda: (name := etcd_leader(cluster)) not in (None, leader) and name,
            ELECTION_TTL + 15,
            f"a proxy other than {leader} to lead",
        )
        print(f"kill-leader-proxy: {leader} killed, {successor} leads")
    finally:
        await nemesis.heal(run)
    await assert_restarted(cluster.proxy(leader), before[leader])


async def test_kill_follower_proxy_kills_a_proxy_that_does_not_lead(
    cluster: FaultCluster, run: RunContext
) -> None:
    leader = await asyncio.to_thread(run.leader)
    assert leader is not None
    before = pids(cluster.proxies)
    nemesis = processes.KillFollowerProxy()
    fault = await nemesis.inject(run)
    proxy = fault.target
    try:
        assert proxy != leader and proxy in before, (proxy, leader)
        assert fault.kind == "process" and fault.proxies_down == (proxy,), fault
        assert fault.nodes_down == () and fault.proxies_down_during == [], fault
        await assert_killed(cluster.proxy(proxy), before[proxy])
        # The leader is not disturbed: it keeps the key past an election TTL.
        deadline = time.monotonic() + ELECTION_TTL + 1.0
        while time.monotonic() < deadline:
            assert await asyncio.to_thread(etcd_leader, cluster) == leader
            await asyncio.sleep(0.2)
    finally:
        await nemesis.heal(run)
    await assert_restarted(cluster.proxy(proxy), before[proxy])


async def test_pause_leader_proxy_outlasts_its_lease(
    cluster: FaultCluster, run: RunContext
) -> None:
    leader = await asyncio.to_thread(run.leader)
    assert leader is not None
    before = pids(cluster.proxies)
    nemesis = processes.PauseLeaderProxyPastLease()
    fault = await nemesis.inject(run)
    try:
        assert fault.target == leader, (fault.target, leader)
        assert fault.kind == "process" and fault.proxies_down == (leader,), fault
        assert fault.nodes_down == () and fault.proxies_down_during == [], fault
        await assert_paused(cluster.proxy(leader), before[leader])
        successor = await run.until(
            lambda: (name := etcd_leader(cluster)) not in (None, leader) and name,
            ELECTION_TTL + 15,
            f"a proxy other than the stopped {leader} to lead",
        )
        took = time.monotonic() - fault.start
        assert all(proc_state(pid) == "T" for pid in before[leader]), "resumed before another led"
        print(f"pause-leader-proxy: {successor} leads {took:.1f}s after {leader} stopped")
        # "Past its lease": even the shortest hold outlasts the lease.
        assert took < nemesis.hold[0], f"the lease outlived the shortest hold ({took:.1f}s)"
    finally:
        await nemesis.heal(run)
    await assert_resumed(cluster.proxy(leader), before[leader])

    def one_leader() -> bool:
        holder = etcd_leader(cluster)
        gauges = leader_metrics(cluster)
        return (
            holder is not None
            and holder != leader
            and gauges[leader] == 0.0
            and all(v == (1.0 if n == holder else 0.0) for n, v in gauges.items())
        )

    await run.until(one_leader, 20, f"{leader} resumed knowing it no longer leads")


async def test_pause_proxy_mid_repair_stops_a_proxy_holding_a_replication_job(
    cluster: FaultCluster, run: RunContext, head: str
) -> None:
    repo = run.repos[0]
    nodes_before = pids(cluster.nodes)
    before = pids(cluster.proxies)

    def observe() -> tuple[dict[str, str], dict[str, str], dict[str, int], int]:
        """Node states, replication locks (key -> worker), the repository's generations."""
        states = {n.name: proc_state(n.pid) for n in cluster.nodes}
        locks = chaos_nemesis.locks(cluster)
        current = read_records(cluster)[repo]
        return states, locks, dict(current.replicas), current.generation

    nemesis = processes.PauseProxyMidRepair()
    async with Writers(run, repo, head):
        with Sampler(observe) as sampler:
            fault = await nemesis.inject(run)
        # Read at once: a lock of the stopped proxy outlives it by its lease.
        locks_now = await asyncio.to_thread(chaos_nemesis.locks, cluster)
    proxy = fault.target
    try:
        (node,) = fault.nodes_down
        assert fault.kind == "process" and proxy in before, fault
        assert fault.proxies_down == (proxy,) and fault.proxies_down_during == [], fault
        ((paused, resumed),) = fault.nodes_down_during[node]
        assert fault.start <= paused < resumed, fault.nodes_down_during
        samples = sampler.values()
        stopped = [at for at, (states, *_) in samples if states[node] == "T"]
        assert stopped, f"{node} never seen stopped"
        assert paused - 0.2 <= min(stopped) and max(stopped) <= resumed + 0.2, (stopped, paused)
        assert server_pids(cluster.node(node)) == nodes_before[node]
        assert all(map(running, nodes_before[node])), node
        behind = [at for at, (_, _, gens, gen) in samples if gens.get(node, -1) < gen]
        assert behind, f"{node}'s replica never recorded behind: no repair to interrupt"
        await assert_paused(cluster.proxy(proxy), before[proxy])
        held = sorted({w for _, (_, locks, _, _) in samples for w in locks.values() if w})
        print(
            f"pause-proxy-mid-repair: {node} stopped {resumed - paused:.1f}s; workers seen "
            f"holding locks: {held}; paused {proxy} ({fault.detail}); locks now: {locks_now}"
        )
        # What it names: the proxy stopped is one whose worker holds a replication job.
        assert "proxy held a replication job" in fault.detail, fault.detail
        mine = [k for k, w in locks_now.items() if w.split("/")[0] == proxy]
        assert mine, f"{proxy} held no replication lock once stopped: {locks_now}"
    finally:
        await nemesis.heal(run)
    await assert_resumed(cluster.proxy(proxy), before[proxy])


# -- etcd -----------------------------------------------------------------------------------------


def member_index(target: str) -> int:
    """``etcd1 (raft leader)`` -> 1."""
    return int(target.split()[0].removeprefix("etcd"))


def seed_drawing(leader_branch: bool, avoid: int | None) -> int:
    """A seed whose first draws in ``KillEtcdMember.inject`` (``random()``, then
    ``randrange(3)``) take the raft leader, or a member other than ``avoid``."""
    for seed in range(1, 1000):
        rng = random.Random(seed)
        if (rng.random() < 0.5) == leader_branch and (leader_branch or rng.randrange(3) != avoid):
            return seed
    raise AssertionError("no such seed")


@pytest.mark.parametrize("raft_leader", [True, False], ids=["raft-leader", "raft-follower"])
async def test_kill_etcd_member_kills_the_named_member(
    cluster: FaultCluster, run: RunContext, raft_leader: bool
) -> None:
    etcd = cluster.etcd
    assert etcd is not None
    leader = await asyncio.to_thread(etcd.leader_index)
    assert leader is not None
    run.rng = random.Random(seed_drawing(raft_leader, leader))
    before = [m.pid for m in etcd.members]
    nemesis = processes.KillEtcdMember()
    fault = await nemesis.inject(run)
    index = member_index(fault.target)
    member = etcd.members[index]
    try:
        assert fault.kind == "etcd" and nemesis.members == [index], fault
        assert_no_process_taken(fault)
        assert (index == leader) == raft_leader, (index, leader)
        assert fault.target == f"etcd{index}" + (" (raft leader)" if raft_leader else "")
        await assert_killed(member, (before[index],))
        others = [m for i, m in enumerate(etcd.members) if i != index]
        for other in others:
            assert other.pid == before[etcd.members.index(other)] and running(other.pid)
        # Two of three members keep a quorum: a raft leader among them, writes go through.
        new_leader = await run.until(
            lambda: (i := etcd.leader_index()) is not None and i != index and str(i),
            10,
            "a raft leader among the remaining members",
        )
        await run.until(lambda: etcd_put(others[0], 2.0), 10, "a put through a remaining member")
        print(f"kill-etcd-member: {fault.target} killed, etcd{new_leader} leads the raft")
    finally:
        await nemesis.heal(run)
    assert member.pid != before[index] and running(member.pid)
    await run.until(lambda: etcd_healthy(member.client_url), 30, f"{member.name} healthy")
    await run.until(lambda: etcd_put(member, 2.0), 30, f"a put through {member.name}")


async def test_pause_etcd_member_stops_the_named_member(
    cluster: FaultCluster, run: RunContext
) -> None:
    etcd = cluster.etcd
    assert etcd is not None
    before = [m.pid for m in etcd.members]
    nemesis = processes.PauseEtcdMember()
    fault = await nemesis.inject(run)
    index = member_index(fault.target)
    member = etcd.members[index]
    try:
        assert fault.target == f"etcd{index}" and nemesis.members == [index], fault
        assert fault.kind == "etcd"
        assert_no_process_taken(fault)
        assert member.pid == before[index], f"{member.name} was restarted, not paused"
        await run.until(lambda: proc_state(member.pid) == "T", STOP_DEADLINE, "etcd stopped")
        assert await asyncio.to_thread(accepts, member.endpoint)
        assert not await asyncio.to_thread(etcd_healthy, member.client_url, None, ANSWER_DEADLINE)
        assert not await asyncio.to_thread(etcd_put, member, ANSWER_DEADLINE)
        other = next(m for i, m in enumerate(etcd.members) if i != index)
        await run.until(lambda: etcd_put(other, 2.0), 15, "a put through a running member")
    finally:
        await nemesis.heal(run)
    assert member.pid == before[index], f"{member.name} was restarted, not resumed"
    await run.until(lambda: running(member.pid), 10, f"{member.name} running")
    await run.until(lambda: etcd_healthy(member.client_url), 30, f"{member.name} healthy")
    await run.until(lambda: etcd_put(member, 2.0), 30, f"a put through {member.name}")


async def test_etcd_quorum_loss_kills_two_members_and_puts_fail(
    cluster: FaultCluster, run: RunContext, head: str
) -> None:
    etcd = cluster.etcd
    assert etcd is not None
    repo = run.repos[0]
    before = [m.pid for m in etcd.members]
    nemesis = processes.EtcdQuorumLoss()
    fault = await nemesis.inject(run)
    killed = sorted(nemesis.members)
    try:
        assert len(killed) == 2 and fault.target == ",".join(f"etcd{i}" for i in killed)
        assert fault.kind == "etcd" and not fault.reads_available and fault.excuse_after == 3.0
        assert_no_process_taken(fault)
        for index in killed:
            await assert_killed(etcd.members[index], (before[index],))
        (left,) = [m for i, m in enumerate(etcd.members) if i not in killed]
        assert running(left.pid)
        started = time.monotonic()
        assert not await asyncio.to_thread(etcd_put, left, 2.0), "a put with no quorum"
        assert time.monotonic() - started < 4.0
        # The proxies fail writes closed.
        async with grpc.aio.insecure_channel(cluster.proxies[0].address) as channel:
            wrote = await create_ref(channel, repo, f"refs/heads/q-{uuid.uuid4().hex[:8]}", head)
        assert not wrote, "a write acknowledged without etcd"
    finally:
        await nemesis.heal(run)
    for index in killed:
        member = etcd.members[index]
        assert member.pid != before[index] and running(member.pid), member.name
    for member in etcd.members:
        await run.until(partial(etcd_healthy, member.client_url), 30, f"{member.name} healthy")
    await run.until(lambda: etcd_put(etcd.members[killed[0]], 2.0), 30, "a put with quorum back")


# -- operations -----------------------------------------------------------------------------------


async def test_switchover_moves_the_primary_to_the_named_node(
    cluster: FaultCluster, run: RunContext
) -> None:
    repo = run.repos[0]
    record = await asyncio.to_thread(run.record, repo)
    nemesis = processes.Switchover()
    fault = await nemesis.inject(run)
    assert fault.kind == "operations" and fault.detail == "", fault.detail
    assert_no_process_taken(fault)
    moved, _, named = fault.target.partition(": ")
    old, _, new = named.partition(" -> ")
    assert moved == repo and old == record.primary, (fault.target, record)
    assert new in record.assigned and new != old, (fault.target, record)
    after = await asyncio.to_thread(run.record, repo)
    assert after.primary == new, f"primary {after.primary} after a switchover to {new}"
    assert after.replica_generation(new) == after.generation
    await nemesis.heal(run)
    assert (await asyncio.to_thread(run.record, repo)).primary == new


async def test_replication_factor_change_shrinks_then_restores_the_assigned_set(
    cluster: FaultCluster, run: RunContext
) -> None:
    repo = run.repos[0]
    record = await asyncio.to_thread(run.record, repo)
    assert len(record.assigned) == 3, record
    nemesis = processes.ReplicationFactorChange()
    fault = await nemesis.inject(run)
    try:
        assert fault.kind == "operations" and fault.target == f"{repo}: 3 -> 2 -> 3"
        assert_no_process_taken(fault)
        shrunk = await asyncio.to_thread(run.record, repo)
        assert len(shrunk.assigned) == 2 and set(shrunk.assigned) < set(record.assigned), shrunk
        assert shrunk.primary in shrunk.assigned, shrunk
    finally:
        await nemesis.heal(run)
    grown = await asyncio.to_thread(run.record, repo)
    assert set(grown.assigned) == {n.name for n in cluster.nodes}, grown
    await asyncio.to_thread(helpers.wait_converged, cluster.proxies[0].address, repo, 3, SETTLE)


# -- coverage -------------------------------------------------------------------------------------

PROVEN_HERE = {
    "kill-primary",
    "kill-secondary",
    "pause-primary",
    "pause-secondary",
    "kill-primary-secondary-outdated",
    "node-restart-storm",
    "kill-leader-proxy",
    "kill-follower-proxy",
    "pause-leader-proxy",
    "pause-proxy-mid-repair",
    "kill-etcd-member",
    "pause-etcd-member",
    "etcd-quorum-loss",
    "switchover",
    "replication-factor-change",
}


def test_every_process_nemesis_has_a_proof_here() -> None:
    nemeses: list[type[Nemesis]] = list(processes.NEMESES)
    assert {n.name for n in nemeses} == PROVEN_HERE
    assert {n.kind for n in nemeses} == {"process", "etcd", "operations"}
