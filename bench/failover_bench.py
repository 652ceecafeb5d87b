"""Failover and repair timings, over several trials, with the proxies' default settings.

Measures, against targets from the failover issue:

* **kill**: ``kill -9`` of a repository's primary node while a client writes
  in a loop (retrying at once, alternating proxies) -> the next acknowledged
  write: p50 <= 0.5 s, max <= 1.5 s (passive health and the retried write;
  it was 3 s and 5 s with the periodic checks alone). Also when the cluster saw
  the node unhealthy.
* **catchup**: a node misses 100 writes (10 repositories x 10 ref updates)
  and comes back -> every one of its replicas up to date: <= 10 s (from the
  node serving again; the restart itself is reported separately).
* **switchover**: ``gitquorum switchover`` moves the primary while four
  clients write -> zero failed writes.
* **busy**: a secondary misses about 2 s of writes to a repository that takes
  50 writes/s (started on schedule, concurrently) and comes back while they
  go on -> its replica up to date within 10 s of the node serving again, no
  write failed; also what writes waited for the catch-up's hold
  (``gitquorum_write_hold_seconds``).

Every trial runs against a real cluster started by ``gitquorum up``'s launcher
(``gitquorum.localcluster``, without the HTTP gateway: etcd, three nodes, two
proxies, all separate processes on loopback) with the proxies' documented defaults:
health checks every 1 s with a 1 s timeout, election TTL 5 s, vote and write
timeouts 10 s.

Usage::

    python bench/failover_bench.py [--trials 7] [--phases kill,catchup,switchover,busy]
        [--rate 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import grpc  # noqa: E402

from bench.common import (  # noqa: E402
    build_small_repo,
    machine_info,
    machine_table,
    make_bundle,
    markdown_table,
    percentile,
    ref_tips,
)
from gitquorum.gitaly import (  # noqa: E402
    praefect_pb2,
    praefect_pb2_grpc,
    ref_pb2,
    ref_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
)
from gitquorum.launch.proxy_config import VIRTUAL_STORAGE  # noqa: E402
from gitquorum.localcluster import LocalCluster, Settings  # noqa: E402

PHASES = ("kill", "catchup", "switchover", "busy")
# The proxies' documented defaults (gitquorum up and the tests use faster ones).
DEFAULTS: dict[str, object] = {
    "health": {"interval": "1s", "timeout": "1s"},
    "election": {"ttl": "5s"},
    "vote_timeout": "10s",
    "write_timeout": "10s",
    "replication": {"reconcile_interval": "30s", "verify_interval": "5m"},
}
TARGETS = {
    "kill_p50_s": 0.5,
    "kill_max_s": 1.5,
    "catchup_max_s": 10.0,
    "busy_max_s": 10.0,
    "busy_failed_writes": 0,
    "switchover_failed_writes": 0,
}
OP_TIMEOUT = 15.0


def repository(relative_path: str) -> shared_pb2.Repository:
    return shared_pb2.Repository(storage_name=VIRTUAL_STORAGE, relative_path=relative_path)


def metadata(address: str, relative_path: str) -> praefect_pb2.GetRepositoryMetadataResponse:
    with grpc.insecure_channel(address) as channel:
        return praefect_pb2_grpc.PraefectInfoServiceStub(channel).GetRepositoryMetadata(
            praefect_pb2.GetRepositoryMetadataRequest(
                path=praefect_pb2.GetRepositoryMetadataRequest.Path(
                    virtual_storage=VIRTUAL_STORAGE, relative_path=relative_path
                )
            ),
            timeout=10,
        )


def up_to_date(address: str, relative_path: str, nodes: int = 3) -> bool:
    try:
        meta = metadata(address, relative_path)
    except grpc.RpcError:
        return False
    assigned = [r for r in meta.replicas if r.assigned]
    return len(assigned) == nodes and all(
        r.generation == meta.generation and r.healthy for r in assigned
    )


def node_up_to_date(address: str, relative_path: str, node: str) -> bool:
    meta = metadata(address, relative_path)
    return any(r.storage == node and r.generation == meta.generation for r in meta.replicas)


# -- the writer --------------------------------------------------------------------------


@dataclass
class Write:
    start: float
    end: float
    ok: bool
    detail: str = ""


@dataclass
class Writer:
    """Unique-ref writes in a loop; after a failure, the next proxy at once."""

    proxies: list[str]
    relative_path: str
    oid: str
    name: str = "writer"
    writes: list[Write] = field(default_factory=list)
    pause: float = 0.0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    # Cleared to hold the writer (between trials: a replica that misses every
    # write while it is repaired would never catch up).
    running: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.running.set()

    async def run(self) -> None:
        channels = [grpc.aio.insecure_channel(p) for p in self.proxies]
        index, seq = random.randrange(len(channels)), 0
        try:
            while not self._stop.is_set():
                await self.running.wait()
                seq += 1
                stub = ref_pb2_grpc.RefServiceStub(channels[index % len(channels)])
                request = ref_pb2.UpdateReferencesRequest(
                    repository=repository(self.relative_path),
                    updates=[
                        ref_pb2.UpdateReferencesRequest.Update(
                            reference=f"refs/heads/{self.name}/{uuid.uuid4().hex}/{seq}".encode(),
                            new_object_id=self.oid.encode(),
                        )
                    ],
                )
                start = time.monotonic()

                async def one(request: ref_pb2.UpdateReferencesRequest = request) -> Any:
                    yield request

                try:
                    await stub.UpdateReferences(one(), timeout=OP_TIMEOUT)
                    self.writes.append(Write(start, time.monotonic(), True))
                except grpc.aio.AioRpcError as exc:
                    detail = f"{exc.code().name}: {exc.details()}"
                    self.writes.append(Write(start, time.monotonic(), False, detail))
                    index += 1
                    await asyncio.sleep(0.02)
                    continue
                if self.pause:
                    await asyncio.sleep(self.pause)
        finally:
            for channel in channels:
                await channel.close()

    def stop(self) -> None:
        self._stop.set()
        self.running.set()

    def first_ok_after(self, at: float) -> float | None:
        ends = [w.end for w in self.writes if w.ok and w.start >= at]
        return min(ends) - at if ends else None


async def until(predicate: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


# -- set-up ------------------------------------------------------------------------------


async def seed(address: str, relative_path: str, source: Path, scratch: Path) -> None:
    """CreateRepositoryFromBundle of ``source`` through the proxy at ``address``."""
    data = make_bundle(source, scratch / "seed.bundle")
    chunk = 1 << 20

    async def requests() -> Any:
        yield repository_pb2.CreateRepositoryFromBundleRequest(
            repository=repository(relative_path), data=data[:chunk]
        )
        for offset in range(chunk, len(data), chunk):
            yield repository_pb2.CreateRepositoryFromBundleRequest(
                data=data[offset : offset + chunk]
            )

    async with grpc.aio.insecure_channel(address) as channel:
        await repository_pb2_grpc.RepositoryServiceStub(channel).CreateRepositoryFromBundle(
            requests(), timeout=OP_TIMEOUT
        )


async def create_repository(
    cluster: LocalCluster, relative_path: str, source: Path, scratch: Path
) -> None:
    await seed(cluster.proxies[0].address, relative_path, source, scratch)
    address = cluster.proxies[0].address
    await until(lambda: up_to_date(address, relative_path), 60, f"{relative_path} everywhere")


def live_proxies(cluster: LocalCluster) -> list[str]:
    return [p.address for p in cluster.proxies if p.alive()]


# -- phases --------------------------------------------------------------------------------


async def phase_kill(
    cluster: LocalCluster, source: Path, scratch: Path, trials: int
) -> dict[str, Any]:
    relative_path = f"bench/failover-{uuid.uuid4().hex}.git"
    await create_repository(cluster, relative_path, source, scratch)
    oid = ref_tips(source)["refs/heads/main"]
    writer = Writer(live_proxies(cluster), relative_path, oid)
    task = asyncio.create_task(writer.run())
    address = cluster.proxies[0].address
    samples: list[dict[str, Any]] = []
    try:
        for trial in range(trials):
            # Steady state: every replica is up to date, the writer succeeds.
            writer.running.clear()
            await until(lambda: up_to_date(address, relative_path), 60, "a converged repository")
            writer.running.set()
            floor = time.monotonic()
            await until(
                lambda floor=floor: sum(1 for w in writer.writes if w.ok and w.start >= floor) >= 5,
                30,
                "steady writes",
            )
            await asyncio.sleep(random.uniform(0, 1.0))  # a random phase of the health checks
            # The primary as every proxy sees it (they agree once their caches caught up).
            primary = await until(
                lambda: (
                    len(seen := {metadata(p, relative_path).primary for p in live_proxies(cluster)})
                    == 1
                    and seen.pop()
                ),
                10,
                "the proxies to agree on the primary",
            )
            node = cluster.node(primary)
            killed = time.monotonic()
            await asyncio.to_thread(node.kill)
            unhealthy = await until(
                lambda primary=primary: (
                    not any(
                        r.storage == primary and r.healthy
                        for r in metadata(address, relative_path).replicas
                    )
                    and time.monotonic()
                ),
                30,
                f"{primary} unhealthy",
            )
            recovered = await until(
                lambda killed=killed: writer.first_ok_after(killed), 60, "a write after the kill"
            )
            new_primary = metadata(address, relative_path).primary
            failed = sum(1 for w in writer.writes if not w.ok and w.start >= killed)
            samples.append(
                {
                    "trial": trial + 1,
                    "killed": primary,
                    "new_primary": new_primary,
                    "detected_unhealthy_s": round(unhealthy - killed, 3),
                    "next_write_s": round(recovered, 3),
                    "failed_writes_meanwhile": failed,
                }
            )
            print(f"  kill trial {trial + 1}: {samples[-1]}", flush=True)
            await asyncio.to_thread(node.start, 60)
    finally:
        writer.stop()
        await task
    values = [s["next_write_s"] for s in samples]
    return {
        "trials": samples,
        "next_write_p50_s": percentile(values, 50),
        "next_write_max_s": max(values),
        "detected_p50_s": percentile([s["detected_unhealthy_s"] for s in samples], 50),
    }


async def phase_catchup(
    cluster: LocalCluster, source: Path, scratch: Path, trials: int, repositories: int, writes: int
) -> dict[str, Any]:
    paths = [f"bench/catchup-{uuid.uuid4().hex[:8]}-{i}.git" for i in range(repositories)]
    for relative_path in paths:
        await create_repository(cluster, relative_path, source, scratch)
    oid = ref_tips(source)["refs/heads/main"]
    address = cluster.proxies[0].address
    samples: list[dict[str, Any]] = []
    for trial in range(trials):
        for relative_path in paths:
            await until(lambda rp=relative_path: up_to_date(address, rp), 60, "convergence")
        node = cluster.nodes[trial % len(cluster.nodes)]
        await asyncio.to_thread(node.kill)
        # Every write must succeed without the node (failover first if it was a primary).
        done = 0
        started = time.monotonic()
        while done < writes:
            relative_path = paths[done % len(paths)]
            ok = await single_write(live_proxies(cluster), relative_path, oid, f"c{trial}/{done}")
            if ok:
                done += 1
            elif time.monotonic() - started > 120:
                raise TimeoutError("writes without the node keep failing")
        missed = sum(1 for rp in paths if not node_up_to_date(address, rp, node.name))
        spawned = time.monotonic()
        await asyncio.to_thread(node.start, 60)
        serving = time.monotonic()
        await until(
            lambda node=node: all(node_up_to_date(address, rp, node.name) for rp in paths),
            120,
            f"every replica on {node.name} up to date",
        )
        caught_up = time.monotonic()
        samples.append(
            {
                "trial": trial + 1,
                "node": node.name,
                "writes_missed": writes,
                "replicas_outdated": missed,
                "restart_s": round(serving - spawned, 3),
                "up_to_date_after_serving_s": round(caught_up - serving, 3),
                "up_to_date_after_restart_s": round(caught_up - spawned, 3),
            }
        )
        print(f"  catchup trial {trial + 1}: {samples[-1]}", flush=True)
    values = [s["up_to_date_after_serving_s"] for s in samples]
    return {
        "trials": samples,
        "up_to_date_p50_s": percentile(values, 50),
        "up_to_date_max_s": max(values),
        "with_restart_max_s": max(s["up_to_date_after_restart_s"] for s in samples),
    }


async def single_write(proxies: Sequence[str], relative_path: str, oid: str, name: str) -> bool:
    for address in proxies:
        async with grpc.aio.insecure_channel(address) as channel:
            request = ref_pb2.UpdateReferencesRequest(
                repository=repository(relative_path),
                updates=[
                    ref_pb2.UpdateReferencesRequest.Update(
                        reference=f"refs/heads/{name}".encode(), new_object_id=oid.encode()
                    )
                ],
            )

            async def one(request: ref_pb2.UpdateReferencesRequest = request) -> Any:
                yield request

            try:
                await ref_pb2_grpc.RefServiceStub(channel).UpdateReferences(
                    one(), timeout=OP_TIMEOUT
                )
                return True
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
    return False


def switchover(cluster: LocalCluster, relative_path: str, target: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gitquorum.cli.main",
            "switchover",
            "--repository",
            relative_path,
            "--to",
            target,
            "--config",
            str(cluster.proxy_config_path(0)),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"switchover failed: {proc.stdout}{proc.stderr}")


async def phase_switchover(
    cluster: LocalCluster, source: Path, scratch: Path, trials: int
) -> dict[str, Any]:
    relative_path = f"bench/switchover-{uuid.uuid4().hex}.git"
    await create_repository(cluster, relative_path, source, scratch)
    oid = ref_tips(source)["refs/heads/main"]
    writers = [Writer(live_proxies(cluster), relative_path, oid, name=f"s{i}") for i in range(4)]
    tasks = [asyncio.create_task(w.run()) for w in writers]
    address = cluster.proxies[0].address
    samples: list[dict[str, Any]] = []
    try:
        for trial in range(trials):
            floor = time.monotonic()
            await until(
                lambda floor=floor: (
                    sum(1 for w in writers for x in w.writes if x.ok and x.start >= floor) >= 20
                ),
                60,
                "steady writes",
            )
            old = metadata(address, relative_path).primary
            target = next(n.name for n in cluster.nodes if n.name != old)
            moved = time.monotonic()
            await asyncio.to_thread(switchover, cluster, relative_path, target)
            took = time.monotonic() - moved
            await asyncio.sleep(1.0)  # writes keep flowing through the move
            samples.append(
                {"trial": trial + 1, "from": old, "to": target, "command_s": round(took, 3)}
            )
            print(f"  switchover trial {trial + 1}: {samples[-1]}", flush=True)
    finally:
        for w in writers:
            w.stop()
        await asyncio.gather(*tasks)
    writes = [x for w in writers for x in w.writes]
    failed = [x for x in writes if not x.ok]
    return {
        "trials": samples,
        "writes": len(writes),
        "failed_writes": len(failed),
        "failures": sorted({x.detail for x in failed})[:10],
        "write_max_s": round(max(x.end - x.start for x in writes), 3),
    }


# -- report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    target: str
    met: bool


def checks(results: dict[str, Any]) -> list[Check]:
    found: list[Check] = []
    if "kill" in results:
        kill = results["kill"]
        found.append(
            Check(
                "kill -9 primary -> next write, p50",
                kill["next_write_p50_s"],
                f"<= {TARGETS['kill_p50_s']} s",
                kill["next_write_p50_s"] <= TARGETS["kill_p50_s"],
            )
        )
        found.append(
            Check(
                "kill -9 primary -> next write, max",
                kill["next_write_max_s"],
                f"<= {TARGETS['kill_max_s']} s",
                kill["next_write_max_s"] <= TARGETS["kill_max_s"],
            )
        )
    if "catchup" in results:
        catchup = results["catchup"]
        found.append(
            Check(
                "node back after missing 100 writes -> up to date, max",
                catchup["up_to_date_max_s"],
                f"<= {TARGETS['catchup_max_s']} s",
                catchup["up_to_date_max_s"] <= TARGETS["catchup_max_s"],
            )
        )
    if "switchover" in results:
        failed = results["switchover"]["failed_writes"]
        found.append(Check("planned switchover -> failed writes", failed, "0", failed == 0))
    if "busy" in results:
        busy = results["busy"]
        found.append(
            Check(
                f"secondary back under {busy['rate']:g} writes/s -> up to date, max",
                busy["up_to_date_max_s"],
                f"<= {TARGETS['busy_max_s']} s",
                busy["up_to_date_max_s"] <= TARGETS["busy_max_s"],
            )
        )
        failed = busy["failed_writes"]
        found.append(Check("writes failed while it caught up", failed, "0", failed == 0))
    return found


def report(results: dict[str, Any]) -> str:
    rows = [[c.name, c.value, c.target, "yes" if c.met else "NO"] for c in checks(results)]
    text = markdown_table(["measure", "value", "target", "met"], rows)
    if "kill" in results:
        text += "\n\nkill -9 of the primary, per trial:\n\n" + markdown_table(
            [
                "trial",
                "killed",
                "new primary",
                "seen unhealthy (s)",
                "next write (s)",
                "failed writes",
            ],
            [
                [
                    s["trial"],
                    s["killed"],
                    s["new_primary"],
                    s["detected_unhealthy_s"],
                    s["next_write_s"],
                    s["failed_writes_meanwhile"],
                ]
                for s in results["kill"]["trials"]
            ],
        )
    if "catchup" in results:
        text += "\n\nnode back after missing writes, per trial:\n\n" + markdown_table(
            [
                "trial",
                "node",
                "writes missed",
                "replicas outdated",
                "restart (s)",
                "up to date after serving (s)",
            ],
            [
                [
                    s["trial"],
                    s["node"],
                    s["writes_missed"],
                    s["replicas_outdated"],
                    s["restart_s"],
                    s["up_to_date_after_serving_s"],
                ]
                for s in results["catchup"]["trials"]
            ],
        )
    if "busy" in results:
        text += "\n\nsecondary back under a steady write load, per trial:\n\n" + markdown_table(
            [
                "trial",
                "node",
                "up to date after serving (s)",
                "writes meanwhile",
                "writes/s",
                "write p50 (ms)",
                "write max (ms)",
                "writes held",
                "mean hold (ms)",
                "failed writes",
            ],
            [
                [
                    s["trial"],
                    s["node"],
                    s["up_to_date_after_serving_s"],
                    s["writes_during"],
                    s["write_rate"],
                    s["write_p50_ms"],
                    s["write_max_ms"],
                    s["writes_held"],
                    s["hold_mean_ms"],
                    s["failed_writes"],
                ]
                for s in results["busy"]["trials"]
            ],
        )
    if "switchover" in results:
        sw = results["switchover"]
        text += (
            f"\n\nswitchover: {len(sw['trials'])} moves, {sw['writes']} writes by 4 clients, "
            f"{sw['failed_writes']} failed, slowest write {sw['write_max_s']} s"
        )
    return text


@dataclass
class PacedWriter:
    """Starts a write every ``1 / rate`` seconds whatever the earlier ones do
    (open loop, at most ``in_flight`` at once), through the proxies in turn,
    each moving one of 50 branches among a few commits (a busy repository that
    keeps its size; a branch is written about once a second at 50 writes/s)."""

    proxies: list[str]
    relative_path: str
    oids: list[str]
    rate: float
    in_flight: int = 16
    writes: list[Write] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _one(
        self, stub: ref_pb2_grpc.RefServiceStub, count: int, slots: asyncio.Semaphore
    ) -> None:
        update = ref_pb2.UpdateReferencesRequest.Update(
            reference=f"refs/heads/busy/{count % 50}".encode(),
            new_object_id=self.oids[count % len(self.oids)].encode(),
        )
        request = ref_pb2.UpdateReferencesRequest(
            repository=repository(self.relative_path), updates=[update]
        )

        async def one() -> Any:
            yield request

        start = time.monotonic()
        try:
            await stub.UpdateReferences(one(), timeout=OP_TIMEOUT)
            self.writes.append(Write(start, time.monotonic(), True))
        except grpc.aio.AioRpcError as exc:
            detail = f"{exc.code().name}: {exc.details()}"
            self.writes.append(Write(start, time.monotonic(), False, detail))
        finally:
            slots.release()

    async def run(self) -> None:
        channels = [grpc.aio.insecure_channel(p) for p in self.proxies]
        slots = asyncio.Semaphore(self.in_flight)
        tasks: set[asyncio.Task[None]] = set()
        next_start, count = time.monotonic(), 0
        try:
            while not self._stop.is_set():
                await slots.acquire()
                count += 1
                stub = ref_pb2_grpc.RefServiceStub(channels[count % len(channels)])
                task = asyncio.get_running_loop().create_task(self._one(stub, count, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_start += 1 / self.rate
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._stop.wait(), max(0.0, next_start - time.monotonic())
                    )
            await asyncio.gather(*tasks)
        finally:
            for channel in channels:
                await channel.close()

    def stop(self) -> None:
        self._stop.set()


def hold_seconds(cluster: LocalCluster) -> tuple[float, float]:
    """(count, sum) of gitquorum_write_hold_seconds over the live proxies."""
    count = total = 0.0
    for proxy in cluster.proxies:
        if not proxy.alive():
            continue
        with urllib.request.urlopen(cluster.metrics_url(proxy), timeout=5) as response:
            text = response.read().decode()
        for line in text.splitlines():
            if line.startswith("gitquorum_write_hold_seconds_count"):
                count += float(line.split()[-1])
            elif line.startswith("gitquorum_write_hold_seconds_sum"):
                total += float(line.split()[-1])
    return count, total


async def phase_busy(
    cluster: LocalCluster, source: Path, scratch: Path, trials: int, rate: float
) -> dict[str, Any]:
    relative_path = f"bench/busy-{uuid.uuid4().hex[:8]}.git"
    await create_repository(cluster, relative_path, source, scratch)
    listed = await asyncio.to_thread(
        subprocess.run,
        ["git", "rev-list", "main"],
        cwd=source,
        capture_output=True,
        text=True,
        check=True,
    )
    oids = listed.stdout.split()
    address = cluster.proxies[0].address
    samples: list[dict[str, Any]] = []
    for trial in range(trials):
        await until(lambda: up_to_date(address, relative_path), 60, "convergence")
        meta = await asyncio.to_thread(metadata, address, relative_path)
        secondaries = sorted(r.storage for r in meta.replicas if r.storage != meta.primary)
        node = next(n for n in cluster.nodes if n.name == secondaries[trial % len(secondaries)])
        writer = PacedWriter(live_proxies(cluster), relative_path, oids, rate)
        task = asyncio.get_running_loop().create_task(writer.run())
        try:
            await until(lambda w=writer: len(w.writes) >= rate, 30, "writes before the kill")
            await asyncio.to_thread(node.kill)
            before = len(writer.writes)
            await until(
                lambda w=writer, n=before: len(w.writes) >= n + 2 * rate, 30, "writes missed"
            )
            holds_before = await asyncio.to_thread(hold_seconds, cluster)
            await asyncio.to_thread(node.start, 60)
            serving = time.monotonic()
            await until(
                lambda n=node.name: node_up_to_date(address, relative_path, n),
                60,
                f"{node.name} up to date under writes",
            )
            caught_up = time.monotonic()
            holds_after = await asyncio.to_thread(hold_seconds, cluster)
            await until(
                lambda w=writer, t=caught_up: w.writes[-1].start > t + 1, 30, "writes after"
            )
        finally:
            writer.stop()
            await task
        during = [w for w in writer.writes if serving <= w.start <= caught_up]
        latencies = sorted(w.end - w.start for w in during if w.ok)
        held = holds_after[0] - holds_before[0]
        samples.append(
            {
                "trial": trial + 1,
                "node": node.name,
                "up_to_date_after_serving_s": round(caught_up - serving, 3),
                "writes_during": len(during),
                "write_rate": round(len(during) / max(caught_up - serving, 1e-9), 1),
                "failed_writes": sum(1 for w in writer.writes if not w.ok),
                "failed_while_catching_up": sum(1 for w in during if not w.ok),
                "failures": sorted({w.detail[:120] for w in writer.writes if not w.ok})[:3],
                "write_p50_ms": round(percentile(latencies, 50) * 1000, 1) if latencies else None,
                "write_max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
                "writes_held": int(held),
                "hold_mean_ms": round((holds_after[1] - holds_before[1]) / held * 1000, 1)
                if held
                else 0.0,
            }
        )
        print(f"  busy trial {trial + 1}: {samples[-1]}", flush=True)
    values = [s["up_to_date_after_serving_s"] for s in samples]
    return {
        "trials": samples,
        "rate": rate,
        "up_to_date_p50_s": percentile(values, 50),
        "up_to_date_max_s": max(values),
        "failed_writes": sum(s["failed_writes"] for s in samples),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--trials", type=int, default=7, help="trials per phase (>= 5)")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated phases")
    parser.add_argument("--repositories", type=int, default=10, help="catchup: repositories")
    parser.add_argument("--writes", type=int, default=100, help="catchup: writes missed")
    parser.add_argument("--rate", type=float, default=50.0, help="busy: writes a second")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's directory")
    args = parser.parse_args(argv)
    args.phases = [p for p in args.phases.split(",") if p]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if args.trials < 1:
        parser.error("--trials must be >= 1")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="failover-bench-"))
    source = base / "source"
    build_small_repo(source, commits=3)
    results: dict[str, Any] = {"machine": machine_info(), "settings": DEFAULTS}
    cluster = LocalCluster(
        Settings(nodes=3, proxies=2, http=False, proxy_settings=DEFAULTS), base / "cluster"
    )
    # On this thread, which outlives the cluster: its children die with it.
    cluster.start(timeout=120)
    try:
        if "kill" in args.phases:
            print("phase kill", flush=True)
            results["kill"] = await phase_kill(cluster, source, base, args.trials)
        if "catchup" in args.phases:
            print("phase catchup", flush=True)
            results["catchup"] = await phase_catchup(
                cluster, source, base, args.trials, args.repositories, args.writes
            )
        if "switchover" in args.phases:
            print("phase switchover", flush=True)
            results["switchover"] = await phase_switchover(cluster, source, base, args.trials)
        if "busy" in args.phases:
            print("phase busy", flush=True)
            results["busy"] = await phase_busy(cluster, source, base, args.trials, args.rate)
    finally:
        cluster.close()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    results = asyncio.run(run(args))
    print(machine_table(results["machine"]))
    print()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
