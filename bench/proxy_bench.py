"""What the proxy costs: the same node, directly and through the proxy, in one run.

Starts a real cluster (one etcd member, three storage nodes, one proxy: the
launcher behind ``gitquorum up``, with its HTTP gateway only when the bulk
phase runs) and measures, switching sides every batch so that drift on the
machine hits every side alike:

1. unary accessor latency: FindCommit and RefExists at concurrency 1,
   p50/p99, and CPU per call of each process;
2. accessor throughput: FindCommit calls/s at concurrency 16;
3. clone of a >= 50 MB repository of incompressible blobs over SSHUploadPack,
   driven by a gRPC client with a canned upload-pack request (want every ref,
   done) that only counts response bytes; and a real ``git clone`` through
   ``gitquorum git-ssh``;
4. push: ``git push`` of a few small commits through the proxy (three
   replicas, voting) against ``git push`` straight to one node; and the same
   push as one SSHReceivePack call with a canned command and pack;
5. bulk: the same large repository cloned with the real ``git`` CLI three
   ways, interleaved, after an untimed warm-up round: ``git clone --bare
   --no-local`` of the primary's replica directory on disk (git's own speed,
   the reference), through the proxy with ``gitquorum git-ssh``, and through
   the HTTP gateway; each clone is checked (ref tips equal to the source's,
   ``git fsck`` clean). Then ``git push`` via ``git-ssh`` to three voting
   replicas against one node alone. CPU of the client (git and what it runs)
   and of every server process (the proxy's workers and the nodes' git
   children included) per clone and per push. ``--proxy-workers N`` runs the
   proxy with N worker processes.

Sides. ``direct``: the repository's primary node, called with its storage
name and replica path (from PraefectInfoService.GetRepositoryMetadata).
``proxy``: the virtual storage and relative path, with
``gitaly-route-repository-accessor-policy: primary-only`` so that reads reach
that same node. ``hop``: the smallest raw-bytes grpc.aio forwarder (this file,
``--serve-hop``) in front of the same node: what any Python gRPC hop costs on
the machine, so the rest of the proxy's overhead is its own. ``git clone``
through ``git-ssh`` cannot set the policy header, so the proxy spreads it
over the three up-to-date replicas, identical node processes on this machine.
The direct push goes to a repository created directly on the primary node,
outside the cluster's records, so the cluster state stays true.

Each phase also reads the CPU time of the client, hop, proxy and node
processes from /proc and reports CPU per call: steadier than latency on a
shared machine. The bare hop is the floor of the proxy's stack: for each
accessor the report gives what the proxy adds over direct and over the hop
(p50, p99) and its CPU per call against the hop's. Background work (health
checks, lease keep-alives, watches) goes on whether calls come or not: its
rate is measured over a quiet stretch without calls (``idle_seconds``),
billed to each side's calls by wall time, reported on its own and left out
of the "own" CPU per call. docs/benchmarks.md records results and how to
read them.

    python bench/proxy_bench.py            # full run, markdown on stdout (~6 min)
    python bench/proxy_bench.py --quick    # smoke run (< 60 s, small clone)
    python bench/proxy_bench.py --json     # JSON instead of markdown
    python bench/proxy_bench.py --profile /tmp/prof   # + py-spy of the proxy per phase
    python bench/proxy_bench.py --phases bulk         # bulk transfer against git (~2 min)

Progress goes to stderr. Figures from a ``--profile`` run include the
sampler's overhead: record figures from a run without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    # Run as a script: bench.common imports from the repo root.
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from bench.common import (  # noqa: E402
    CpuMeter,
    Latency,
    PySpy,
    build_large_repo,
    build_small_repo,
    git,
    hot_spots,
    machine_info,
    machine_table,
    make_bundle,
    markdown_table,
    pack_from_upload_pack,
    pack_is_whole,
    percentile,
    ratio,
    receive_pack_request,
    ref_tips,
    upload_pack_request,
)
from gitquorum.gitaly import (  # noqa: E402
    commit_pb2,
    commit_pb2_grpc,
    praefect_pb2,
    praefect_pb2_grpc,
    ref_pb2,
    ref_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
    ssh_pb2,
    ssh_pb2_grpc,
)
from gitquorum.wire.options import message_size_options  # noqa: E402

VIRTUAL_STORAGE = "default"
PRIMARY_ONLY = (("gitaly-route-repository-accessor-policy", "primary-only"),)
CHANNEL_OPTIONS = message_size_options()
# The proxy timings every recorded figure was measured with (docs/benchmarks.md:
# the background work billed to each call comes from health checks every 250 ms).
PROXY_SETTINGS: dict[str, Any] = {
    "health": {"interval": "250ms", "timeout": "500ms"},
    "election": {"ttl": "3s"},
    "vote_timeout": "5s",
    "write_timeout": "5s",
    "replication": {"reconcile_interval": "2s"},
}
PHASES = ("unary", "throughput", "clone", "push", "bulk")
SIDES = ("direct", "hop", "proxy")
SIDE_TITLES = {"direct": "direct", "hop": "bare grpc.aio hop", "proxy": "proxy"}
# Hot unary accessors measured side by side: FindCommit first (the headline figure).
UNARY_RPCS = ("FindCommit", "RefExists")
UNARY_RPC_TITLES = {
    "FindCommit": "CommitService/FindCommit (revision main)",
    "RefExists": "RefService/RefExists (refs/heads/main)",
}
# The proxy's own work may add this much p50 latency above the bare hop's, and
# use this many times the bare hop's CPU per call (background left out).
FLOOR_P50_MARGIN_MS = 0.3
FLOOR_CPU_FACTOR = 1.25
# Bulk transfer: a whole clone through either front end keeps this share of
# git's own speed on the same replica; a git push to three voting replicas takes
# at most this many times as long as one to a single node.
BULK_CLONE_SHARE = 0.85
BULK_PUSH_FACTOR = 1.3
BULK_WAY_TITLES = {"ssh": "proxy (git-ssh)", "http": "HTTP gateway"}


@dataclass(frozen=True)
class Settings:
    unary_calls: int = 4000  # per side
    unary_batch: int = 100  # calls per side before switching sides
    throughput_seconds: float = 1.0  # per segment
    throughput_rounds: int = 8  # segments per side, interleaved with the other sides
    concurrency: int = 16
    clone_mb: int = 52
    clone_rounds: int = 4
    git_clone_rounds: int = 2
    pushes: int = 25  # per side and per method
    push_commits: int = 3  # new commits in each push
    bulk_rounds: int = 4  # timed git clones per way (after one untimed warm-up each)
    proxy_log_level: str = "info"
    proxy_workers: int = 1  # the proxy's worker processes (its ``workers`` setting)
    idle_seconds: float = 10.0  # no calls: the processes' background CPU

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            unary_calls=400,
            unary_batch=100,
            throughput_seconds=0.75,
            throughput_rounds=2,
            clone_mb=12,
            clone_rounds=1,
            git_clone_rounds=1,
            pushes=3,
            push_commits=1,
            bulk_rounds=1,
            idle_seconds=2.0,
        )


# -- targets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    target: str
    measured: str
    met: bool


def checks(results: dict[str, Any]) -> list[Check]:
    out: list[Check] = []
    if "unary" in results:
        added = results["unary"]["proxy_added_p50_ms"]
        out.append(
            Check(
                "FindCommit p50 at concurrency 1: proxy adds",
                "<= 0.5 ms",
                f"{added:.2f} ms",
                added <= 0.5,
            )
        )
    for rpc, floor in results.get("unary", {}).get("by_rpc", {}).items():
        over = floor["proxy_over_hop_p50_ms"]
        out.append(
            Check(
                f"{rpc} p50 at concurrency 1: proxy's addition above the bare hop's",
                f"<= {FLOOR_P50_MARGIN_MS} ms",
                f"{over:.2f} ms",
                over <= FLOOR_P50_MARGIN_MS,
            )
        )
        factor = floor["proxy_cpu_vs_hop"]
        out.append(
            Check(
                f"{rpc} CPU per call, background left out: proxy / bare hop",
                f"<= {FLOOR_CPU_FACTOR}x",
                f"{factor:.2f}x",
                factor <= FLOOR_CPU_FACTOR,
            )
        )
    if "throughput" in results:
        share = results["throughput"]["proxy_vs_direct"]
        out.append(
            Check(
                "FindCommit calls/s at concurrency 16: proxy / direct",
                ">= 60%",
                f"{share:.0%}",
                share >= 0.6,
            )
        )
    if "clone" in results:
        c = results["clone"]
        share = c["grpc"]["proxy_vs_direct"]
        name = f"clone of {c['pack_mb']:.0f} MB over SSHUploadPack: proxy / direct MB/s"
        out.append(Check(name, ">= 80%", f"{share:.0%}", share >= 0.8))
    if "push" in results:
        factor = results["push"]["git"]["proxy_vs_direct_p50"]
        out.append(
            Check(
                "git push p50: 3 replicas with voting / one node",
                "<= 2x",
                f"{factor:.2f}x",
                factor <= 2.0,
            )
        )
    if "bulk" in results:
        b = results["bulk"]
        for way, share in b["clone"]["vs_git"].items():
            out.append(
                Check(
                    f"git clone of {b['pack_mb']:.0f} MB through the {BULK_WAY_TITLES[way]}: "
                    "MB/s / git clone --no-local of the replica",
                    f">= {BULK_CLONE_SHARE:.0%}",
                    f"{share:.0%}",
                    share >= BULK_CLONE_SHARE,
                )
            )
        factor = b["push"]["proxy_vs_direct_p50"]
        out.append(
            Check(
                "git push p50 via git-ssh (bulk phase): 3 voting replicas / one node",
                f"<= {BULK_PUSH_FACTOR}x",
                f"{factor:.2f}x",
                factor <= BULK_PUSH_FACTOR,
            )
        )
    return out


# -- the bare hop --------------------------------------------------------------------------


def serve_hop(target: str) -> None:
    """Forward every call to ``target`` as raw bytes, nothing else; print the port."""

    async def serve() -> None:
        channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        # One method handler per method, built on its first call: the cheapest
        # forwarder a generic handler allows, so that the floor is a floor.
        handlers: dict[str, grpc.RpcMethodHandler] = {}

        def handler_for(method: str) -> grpc.RpcMethodHandler:
            if method.startswith("/gitaly.SSHService/"):
                relay_stream = channel.stream_stream(method)

                async def stream(requests: Any, context: Any) -> Any:
                    async for response in relay_stream(requests):
                        yield response

                return grpc.stream_stream_rpc_method_handler(stream)
            relay = channel.unary_unary(method)

            async def unary(request: bytes, context: Any) -> Any:
                return await relay(request)

            return grpc.unary_unary_rpc_method_handler(unary)

        def cached(method: str) -> grpc.RpcMethodHandler:
            handler = handlers.get(method)
            if handler is None:
                handler = handlers[method] = handler_for(method)
            return handler

        await serve_generic(cached)

    asyncio.run(serve())


async def serve_generic(handler_for: Callable[[str], grpc.RpcMethodHandler]) -> None:
    """A grpc.aio server on a free loopback port that answers every method with
    ``handler_for(method)``; prints the port, then serves until killed."""

    class Generic(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return handler_for(details.method)

    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    server.add_generic_rpc_handlers((Generic(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


class Hop:
    """The bare forwarder as a child process."""

    def __init__(self, target: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-hop", target],
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError("the bare hop did not start")
        self.address = f"127.0.0.1:{int(line)}"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


# -- the cluster and the sides --------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One repository as the proxy names it and as its primary node names it."""

    relative_path: str
    node: str
    node_address: str
    replica_path: str

    @property
    def via_proxy(self) -> shared_pb2.Repository:
        return shared_pb2.Repository(storage_name=VIRTUAL_STORAGE, relative_path=self.relative_path)

    @property
    def direct(self) -> shared_pb2.Repository:
        return shared_pb2.Repository(storage_name=self.node, relative_path=self.replica_path)


@dataclass(frozen=True)
class LargeRepo:
    """The clone phases' repository: its source on disk and its copy in the cluster."""

    source: Path
    target: Target
    tips: dict[str, str]
    build_s: float
    seed_s: float
    bundle_bytes: int


@dataclass(frozen=True)
class CloneWay:
    """One way of cloning with the real git CLI: a URL, and how to tag the clone so that
    the cluster's log lines of it can be found."""

    title: str
    url: str
    env: dict[str, str] = field(default_factory=dict)
    correlation_env: str = ""
    correlation_header: str = ""


@dataclass(frozen=True)
class Side:
    """One way of reaching a repository."""

    name: str
    address: str
    repository: shared_pb2.Repository
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass
class Bench:
    settings: Settings
    workdir: Path
    profile_dir: Path | None = None
    profile_native: bool = False
    # The HTTP gateway, as ``gitquorum up`` starts it: only the bulk phase uses it.
    gateway: bool = False
    cluster: Any = None
    results: dict[str, Any] = field(default_factory=dict)
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)
    _hops: dict[str, Hop] = field(default_factory=dict)
    _read_target: Target | None = None
    _idle_rates: dict[str, float] = field(default_factory=dict)
    _large: LargeRepo | None = None

    def start(self) -> None:
        from gitquorum.localcluster import LocalCluster
        from gitquorum.localcluster import Settings as ClusterSettings

        started = time.perf_counter()
        proxy_settings = {**PROXY_SETTINGS, "log_level": self.settings.proxy_log_level}
        if self.settings.proxy_workers > 1:
            proxy_settings["workers"] = self.settings.proxy_workers
        cluster = LocalCluster(
            ClusterSettings(
                nodes=3,
                proxies=1,
                replication_factor=3,
                http=self.gateway,
                proxy_settings=proxy_settings,
            ),
            self.workdir / "cluster",
        )
        # On the main thread, which outlives the cluster: its children die with it.
        self.cluster = cluster.start(timeout=120)
        self.results["cluster"] = {
            "etcd_members": 1,
            "nodes": 3,
            "proxies": 1,
            "replication_factor": 3,
            "proxy_log_level": self.settings.proxy_log_level,
            "proxy_workers": self.settings.proxy_workers,
            "http_gateway": self.gateway,
            "start_s": round(time.perf_counter() - started, 2),
        }

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        for hop in self._hops.values():
            hop.close()
        if self.cluster is not None:
            self.cluster.close()

    @property
    def proxy_address(self) -> str:
        return str(self.cluster.proxies[0].address)

    def channel(self, address: str) -> grpc.Channel:
        if address not in self._channels:
            self._channels[address] = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        return self._channels[address]

    def hop(self, node_address: str) -> Hop:
        if node_address not in self._hops:
            self._hops[node_address] = Hop(node_address)
        return self._hops[node_address]

    def sides(self, target: Target) -> list[Side]:
        return [
            Side("direct", target.node_address, target.direct),
            Side("hop", self.hop(target.node_address).address, target.direct),
            Side("proxy", self.proxy_address, target.via_proxy, PRIMARY_ONLY),
        ]

    def pids(self, target: Target) -> dict[str, int]:
        return {
            "client": os.getpid(),
            "hop": self.hop(target.node_address).proc.pid,
            "proxy": self.cluster.proxies[0].proc.pid,
            "node": self.cluster.node(target.node).proc.pid,
        }

    def seed(self, address: str, repository: shared_pb2.Repository, bundle: bytes) -> float:
        """CreateRepositoryFromBundle; returns the seconds it took."""
        stub = repository_pb2_grpc.RepositoryServiceStub(self.channel(address))
        chunk = 1 << 20

        def requests() -> Iterator[repository_pb2.CreateRepositoryFromBundleRequest]:
            yield repository_pb2.CreateRepositoryFromBundleRequest(
                repository=repository, data=bundle[:chunk]
            )
            for offset in range(chunk, len(bundle), chunk):
                yield repository_pb2.CreateRepositoryFromBundleRequest(
                    data=bundle[offset : offset + chunk]
                )

        started = time.perf_counter()
        stub.CreateRepositoryFromBundle(requests(), timeout=300)
        return time.perf_counter() - started

    def metadata(self, relative_path: str) -> praefect_pb2.GetRepositoryMetadataResponse:
        stub = praefect_pb2_grpc.PraefectInfoServiceStub(self.channel(self.proxy_address))
        query = praefect_pb2.GetRepositoryMetadataRequest.Path(
            virtual_storage=VIRTUAL_STORAGE, relative_path=relative_path
        )
        request = praefect_pb2.GetRepositoryMetadataRequest(path=query)
        return stub.GetRepositoryMetadata(request, timeout=10)

    def seed_through_proxy(self, relative_path: str, source: Path) -> tuple[Target, float, int]:
        bundle = make_bundle(source, self.workdir / f"{relative_path.replace('/', '_')}.bundle")
        repository = shared_pb2.Repository(
            storage_name=VIRTUAL_STORAGE, relative_path=relative_path
        )
        seconds = self.seed(self.proxy_address, repository, bundle)
        md = self.metadata(relative_path)
        node = self.cluster.node(md.primary)
        return (
            Target(relative_path, md.primary, node.address, md.replica_path),
            seconds,
            len(bundle),
        )

    def read_target(self) -> Target:
        """The small repository the accessor phases read."""
        if self._read_target is None:
            source = self.workdir / "read-src"
            build_small_repo(source)
            self._read_target, _, _ = self.seed_through_proxy("bench/read.git", source)
        return self._read_target

    @contextlib.contextmanager
    def profiled(self, phase: str, hop: Hop | None = None) -> Iterator[None]:
        """py-spy the proxy (and the bare hop, the floor to compare with) during a phase."""
        if self.profile_dir is None:
            yield
            return
        processes = {"proxy": self.cluster.proxies[0].proc.pid}
        if hop is not None:
            processes["hop"] = hop.proc.pid
        spies = {
            name: PySpy(pid, self.profile_dir / f"{name}-{phase}.txt", native=self.profile_native)
            for name, pid in processes.items()
        }
        for spy in spies.values():
            spy.start()
        try:
            yield
        finally:
            for spy in spies.values():
                spy.stop()
            profile = self.results.setdefault("profile", {})
            for name, spy in spies.items():
                key = phase if name == "proxy" else f"{phase} (bare hop)"
                profile[key] = {"file": str(spy.output), **hot_spots(spy.output)}

    # -- 1. unary latency --------------------------------------------------------------------

    def idle_cpu(self, target: Target, seconds: float) -> dict[str, float]:
        """CPU seconds per wall second of each process while no call is made.

        What the proxy spends on its own (health checks, lease keep-alives,
        watches, replication workers) goes on whether calls come or not; a
        phase bills it to its calls. Measured over a quiet stretch, it is
        subtracted from a phase's CPU per call to leave the request path's.
        """
        meter = CpuMeter(self.pids(target)).start()
        started = time.perf_counter()
        time.sleep(seconds)
        used = meter.stop()
        wall = time.perf_counter() - started
        return {name: value / wall for name, value in used.items()}

    def background(self, target: Target) -> dict[str, float]:
        """Idle CPU rates, measured once per run (before the first read phase)."""
        if "background" not in self.results:
            self._idle_rates = self.idle_cpu(target, self.settings.idle_seconds)
            self.results["background"] = {
                "idle_seconds": self.settings.idle_seconds,
                "cpu_ms_per_s": {
                    name: round(1000 * rate, 2) for name, rate in self._idle_rates.items()
                },
            }
        return self._idle_rates

    def unary(self) -> None:
        s = self.settings
        target = self.read_target()
        sides = self.sides(target)
        for rpc in UNARY_RPCS:
            answers = set()
            for side in sides:
                call, request = _accessor(self.channel(side.address), rpc, side)
                for _ in range(200):  # warm connections, caches and cat-file processes
                    answers.add(_answer(rpc, call(request, metadata=side.metadata)))
            if len(answers) != 1:
                raise RuntimeError(f"the sides disagree on {rpc}: {answers}")
        rates = self.background(target)
        samples = {(rpc, side.name): [] for rpc in UNARY_RPCS for side in sides}
        meter = CpuMeter(self.pids(target))
        cpu = {key: dict.fromkeys(meter.pids, 0.0) for key in samples}
        wall = dict.fromkeys(samples, 0.0)
        calls = {
            (rpc, side.name): _accessor(self.channel(side.address), rpc, side)
            for rpc in UNARY_RPCS
            for side in sides
        }
        with self.profiled("unary", self.hop(target.node_address)):
            done = 0
            while done < s.unary_calls:
                batch = min(s.unary_batch, s.unary_calls - done)
                for rpc in UNARY_RPCS:
                    for side in sides:
                        key = (rpc, side.name)
                        (call, request), out = calls[key], samples[key]
                        meter.start()
                        batch_started = time.perf_counter()
                        for _ in range(batch):
                            started = time.perf_counter()
                            call(request, metadata=side.metadata)
                            out.append(time.perf_counter() - started)
                        wall[key] += time.perf_counter() - batch_started
                        _add(cpu[key], meter.stop())
                done += batch
        by_rpc = {}
        for rpc in UNARY_RPCS:
            latency = {side.name: Latency.of(samples[(rpc, side.name)]) for side in sides}
            used = {side.name: cpu[(rpc, side.name)] for side in sides}
            seconds = {side.name: wall[(rpc, side.name)] for side in sides}
            by_rpc[rpc] = _floor_summary(
                latency, used, seconds, dict.fromkeys(used, s.unary_calls), rates
            )
        # FindCommit's figures stay at the top level, as earlier reports had them.
        main = by_rpc[UNARY_RPCS[0]]
        self.results["unary"] = {
            "rpc": "CommitService/FindCommit (revision main), sync client",
            "rpcs": {rpc: UNARY_RPC_TITLES[rpc] for rpc in UNARY_RPCS},
            "node": target.node,
            "calls_per_side": s.unary_calls,
            **{key: main[key] for key in _TOP_LEVEL_KEYS},
            "by_rpc": by_rpc,
        }

    # -- 2. throughput -----------------------------------------------------------------------

    def throughput(self) -> None:
        s = self.settings
        target = self.read_target()
        sides = self.sides(target)
        rates = self.background(target)
        calls = dict.fromkeys(SIDES, 0)
        seconds = dict.fromkeys(SIDES, 0.0)
        wall = dict.fromkeys(SIDES, 0.0)
        latencies: dict[str, list[float]] = {name: [] for name in SIDES}
        meter = CpuMeter(self.pids(target))
        cpu = {name: dict.fromkeys(meter.pids, 0.0) for name in SIDES}
        with self.profiled("throughput", self.hop(target.node_address)):
            for _ in range(s.throughput_rounds):
                for side in sides:
                    meter.start()
                    segment_started = time.perf_counter()
                    n, elapsed, lat = asyncio.run(
                        _drive_concurrently(side, s.concurrency, s.throughput_seconds)
                    )
                    wall[side.name] += time.perf_counter() - segment_started
                    _add(cpu[side.name], meter.stop())
                    calls[side.name] += n
                    seconds[side.name] += elapsed
                    latencies[side.name] += lat
        rate = {name: calls[name] / seconds[name] for name in SIDES}
        floor = _floor_summary(
            {name: Latency.of(values) for name, values in latencies.items()},
            cpu,
            wall,
            calls,
            rates,
        )
        self.results["throughput"] = {
            "rpc": "CommitService/FindCommit (revision main), grpc.aio client, one channel",
            "concurrency": s.concurrency,
            "seconds_per_side": round(seconds["direct"], 1),
            "calls_per_s": {name: round(value, 1) for name, value in rate.items()},
            "proxy_vs_direct": ratio(rate["proxy"], rate["direct"]),
            "hop_vs_direct": ratio(rate["hop"], rate["direct"]),
            "proxy_vs_hop": ratio(rate["proxy"], rate["hop"]),
            **{key: floor[key] for key in _TOP_LEVEL_KEYS},
            # A ceiling that the load of other processes cannot move: with the machine to
            # itself, the calls could go no faster than the shared cores allow, nor than the
            # busiest single-threaded process (one core) allows.
            "cpu_ceiling_calls_per_s": {
                name: round(_ceiling(cpu[name], calls[name]), 1) for name in SIDES if calls[name]
            },
        }

    # -- 3. clone --------------------------------------------------------------------------

    def large_repo(self) -> LargeRepo:
        """The repository of incompressible blobs that the clone phases read, built once."""
        if self._large is None:
            source = self.workdir / "clone-src.git"
            started = time.perf_counter()
            build_large_repo(source, self.settings.clone_mb)
            build_s = time.perf_counter() - started
            target, seed_s, bundle_bytes = self.seed_through_proxy("bench/clone.git", source)
            self._large = LargeRepo(source, target, ref_tips(source), build_s, seed_s, bundle_bytes)
        return self._large

    def clone(self) -> None:
        s = self.settings
        large = self.large_repo()
        target, tips = large.target, large.tips
        build_s, seed_s, bundle_bytes = large.build_s, large.seed_s, large.bundle_bytes
        request = upload_pack_request(list(tips.values()))
        sides = self.sides(target)
        rates: dict[str, list[float]] = {name: [] for name in SIDES}
        messages: dict[str, list[int]] = {name: [] for name in SIDES}
        pack_bytes = 0
        meter = CpuMeter(self.pids(target))
        cpu = {name: dict.fromkeys(meter.pids, 0.0) for name in SIDES}
        with self.profiled("clone", self.hop(target.node_address)):
            for _ in range(s.clone_rounds):
                for side in sides:
                    meter.start()
                    seconds, chunks = self._upload_pack(side, request)
                    _add(cpu[side.name], meter.stop())
                    messages[side.name].append(len(chunks))
                    stdout = b"".join(chunks)
                    pack = pack_from_upload_pack(stdout)
                    if not pack_is_whole(pack):
                        raise RuntimeError(f"{side.name} clone returned a broken pack")
                    pack_bytes = len(pack)
                    rates[side.name].append(len(stdout) / seconds / 1e6)
        git_rates: dict[str, list[float]] = {"direct": [], "proxy": []}
        by_name = {side.name: side for side in sides}
        for i in range(s.git_clone_rounds):
            for name in git_rates:
                dest = self.workdir / f"git-clone-{name}-{i}.git"
                seconds = self._git_clone(by_name[name], target, dest)
                if ref_tips(dest) != tips:
                    raise RuntimeError(f"git clone {name}: refs differ from the source")
                git_rates[name].append(pack_bytes / seconds / 1e6)
                shutil.rmtree(dest)
        # Equal bytes each round: the harmonic mean is total bytes over total time.
        grpc_rate = {name: _harmonic(values) for name, values in rates.items()}
        git_rate = {name: _harmonic(values) for name, values in git_rates.items()}
        self.results["clone"] = {
            "node": target.node,
            "pack_mb": round(pack_bytes / 1e6, 1),
            "refs": len(tips),
            "build_s": round(build_s, 2),
            "seed_through_proxy_s": round(seed_s, 2),
            "seed_through_proxy_mb_per_s": round(bundle_bytes / seed_s / 1e6, 1),
            "grpc": {
                "rounds": s.clone_rounds,
                "rate": "total bytes / total seconds over the rounds",
                "mb_per_s": {name: round(value, 1) for name, value in grpc_rate.items()},
                "proxy_vs_direct": ratio(grpc_rate["proxy"], grpc_rate["direct"]),
                "hop_vs_direct": ratio(grpc_rate["hop"], grpc_rate["direct"]),
                "samples": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
                # The node sends each pipe read as one message: fewer means cheaper hops.
                "messages_per_clone": messages,
                "cpu_ms_per_clone": {
                    side: {
                        name: round(1e3 * used / s.clone_rounds, 1) for name, used in per.items()
                    }
                    for side, per in cpu.items()
                },
            },
            "git_clone": {
                "rounds": s.git_clone_rounds,
                "mb_per_s": {name: round(value, 1) for name, value in git_rate.items()},
                "proxy_vs_direct": ratio(git_rate["proxy"], git_rate["direct"]),
                "proxy_routing": "distributed over 3 up-to-date replicas (git-ssh sends no policy)",
            },
        }

    def _upload_pack(self, side: Side, request: bytes) -> tuple[float, list[bytes]]:
        """Seconds for one whole clone, and the stdout of each response message."""
        stub = ssh_pb2_grpc.SSHServiceStub(self.channel(side.address))
        first = ssh_pb2.SSHUploadPackRequest(repository=side.repository)

        def requests() -> Iterator[ssh_pb2.SSHUploadPackRequest]:
            yield first
            yield ssh_pb2.SSHUploadPackRequest(stdin=request)

        out: list[bytes] = []
        started = time.perf_counter()
        for response in stub.SSHUploadPack(requests(), metadata=side.metadata, timeout=300):
            if response.stdout:
                out.append(response.stdout)
            if response.HasField("exit_status") and response.exit_status.value:
                raise RuntimeError(f"upload-pack exited {response.exit_status.value}")
        return time.perf_counter() - started, out

    def _git_clone(self, side: Side, target: Target, dest: Path) -> float:
        url = f"ssh://{side.address}/{side.repository.relative_path}"
        started = time.perf_counter()
        git("clone", "-q", "--bare", "--no-local", url, str(dest), env=_ssh_env(side))
        return time.perf_counter() - started

    # -- 4. push --------------------------------------------------------------------------

    def push_pair(self, name: str) -> tuple[Target, tuple[Side, Side], dict[str, Path]]:
        """A small repository through the proxy (three replicas) and alone on its primary
        node, and a work tree of each whose origin is that side over ``git-ssh``."""
        source = self.workdir / f"{name}-src"
        build_small_repo(source)
        target, _, _ = self.seed_through_proxy(f"bench/{name}.git", source)
        # One node alone: a repository of its own on the same node, outside the cluster's records.
        alone = shared_pb2.Repository(
            storage_name=target.node, relative_path=f"bench-direct/{name}.git"
        )
        bundle = make_bundle(source, self.workdir / f"{name}-alone.bundle")
        self.seed(target.node_address, alone, bundle)
        pair = (
            Side("direct", target.node_address, alone),
            Side("proxy", self.proxy_address, target.via_proxy),
        )
        clones: dict[str, Path] = {}
        for side in pair:
            clones[side.name] = self.workdir / f"{name}-{side.name}"
            git("clone", "-q", str(source), str(clones[side.name]))
            url = f"ssh://{side.address}/{side.repository.relative_path}"
            git("remote", "set-url", "origin", url, cwd=clones[side.name])
        return target, pair, clones

    def push(self) -> None:
        s = self.settings
        target, pair, clones = self.push_pair("push")
        git_samples: dict[str, list[float]] = {side.name: [] for side in pair}
        grpc_samples: dict[str, list[float]] = {side.name: [] for side in pair}
        # Server-side CPU of the gRPC pushes, git children of the nodes included.
        servers = {"proxy": self.cluster.proxies[0].proc.pid}
        servers |= {n.name: n.proc.pid for n in self.cluster.nodes}
        servers |= {"etcd": self.cluster.etcd.pid}
        meter = CpuMeter(servers, children=True)
        cpu = {side.name: dict.fromkeys(servers, 0.0) for side in pair}
        with self.profiled("push"):
            for i in range(s.pushes):
                # Alternate which side goes first so that neither always follows the other.
                for side in pair if i % 2 == 0 else pair[::-1]:
                    work = clones[side.name]
                    _commit(work, f"git-{i}", s.push_commits)
                    started = time.perf_counter()
                    git("push", "-q", "origin", "HEAD:main", cwd=work, env=_ssh_env(side))
                    git_samples[side.name].append(time.perf_counter() - started)
                    old = git("rev-parse", "HEAD", cwd=work).decode().strip()
                    _commit(work, f"grpc-{i}", s.push_commits)
                    tag = f"bench-push-{side.name}-{i}"
                    meter.start()
                    grpc_samples[side.name].append(self._receive_pack(side, work, old, tag))
                    _add(cpu[side.name], meter.stop())
        md, up_to_date = self.replicas_agree(target)
        results: dict[str, Any] = {
            "node": target.node,
            "pushes_per_side_and_method": s.pushes,
            "commits_per_push": s.push_commits,
            "generation_after": md.generation,
            "writes_through_proxy": 2 * s.pushes,
            "replicas_up_to_date": f"{up_to_date}/{len(md.replicas)}",
            "replica_checksums_equal": True,
        }
        for method, samples in (("git", git_samples), ("grpc", grpc_samples)):
            direct, proxy = Latency.of(samples["direct"]), Latency.of(samples["proxy"])
            results[method] = {
                "latency": {"direct": direct.as_dict(), "proxy": proxy.as_dict()},
                "proxy_vs_direct_p50": ratio(proxy.p50_ms, direct.p50_ms),
                "proxy_vs_direct_p99": ratio(proxy.p99_ms, direct.p99_ms),
            }
        results["grpc"]["breakdown_p50_ms"] = self._push_breakdown(target.node, grpc_samples)
        results["grpc"]["server_cpu_ms_per_push"] = {
            side: {
                "proxy": round(1e3 * per["proxy"] / s.pushes, 1),
                "primary node": round(1e3 * per[target.node] / s.pushes, 1),
                "other nodes": round(
                    1e3
                    * sum(per[n.name] for n in self.cluster.nodes if n.name != target.node)
                    / s.pushes,
                    1,
                ),
                "etcd": round(1e3 * per["etcd"] / s.pushes, 1),
            }
            for side, per in cpu.items()
        }
        self.results["push"] = results

    def logged_durations(
        self, marker: str, messages: Sequence[str] = ("rpc finished",)
    ) -> dict[str, dict[str, list[float]]]:
        """Milliseconds of each logged request whose correlation id holds ``marker``:
        by correlation id, then by process (the log file's name)."""
        durations: dict[str, dict[str, list[float]]] = {}
        for path in self.cluster.logs_dir.glob("*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if marker not in line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if "duration_ms" in entry and entry.get("msg") in messages:
                    per = durations.setdefault(entry.get("correlation_id", ""), {})
                    per.setdefault(path.stem, []).append(float(entry["duration_ms"]))
        return durations

    def replicas_agree(
        self, target: Target
    ) -> tuple[praefect_pb2.GetRepositoryMetadataResponse, int]:
        """The repository's metadata and how many replicas are up to date; raises
        unless every replica has the same checksum."""
        md = self.metadata(target.relative_path)
        up_to_date = sum(1 for r in md.replicas if r.generation == md.generation)
        checksums = {
            r.storage: self._checksum(
                self.cluster.node(r.storage).address,
                shared_pb2.Repository(storage_name=r.storage, relative_path=md.replica_path),
            )
            for r in md.replicas
        }
        if len(set(checksums.values())) != 1:
            raise RuntimeError(f"replicas differ after the pushes: {checksums}")
        return md, up_to_date

    def _push_breakdown(
        self, primary: str, client: dict[str, list[float]], prefix: str = "bench-push-"
    ) -> dict[str, Any]:
        """Median milliseconds per process for the pushes, from the cluster's logs."""
        # The push's own call is the longest line a process logs under its id (the
        # votes the nodes make while it runs may carry the same id).
        durations = {
            cid: {name: max(values) for name, values in per.items()}
            for cid, per in self.logged_durations(prefix).items()
        }

        def p50(side: str, pick: Callable[[dict[str, float]], float | None]) -> float:
            values = [
                v
                for cid, per in durations.items()
                if cid.startswith(f"{prefix}{side}-") and (v := pick(per)) is not None
            ]
            return round(percentile(values, 50), 1) if values else float("nan")

        def slowest_secondary(per: dict[str, float]) -> float | None:
            others = [v for name, v in per.items() if name.startswith("node") and name != primary]
            return max(others) if others else None

        return {
            "direct": {
                "client": round(1000 * _median(client["direct"]), 1),
                "node": p50("direct", lambda per: per.get(primary)),
            },
            "proxy": {
                "client": round(1000 * _median(client["proxy"]), 1),
                "proxy": p50("proxy", lambda per: per.get("proxy1")),
                "primary": p50("proxy", lambda per: per.get(primary)),
                "slowest_secondary": p50("proxy", slowest_secondary),
            },
        }

    def _receive_pack(self, side: Side, work: Path, old: str, correlation_id: str) -> float:
        new = git("rev-parse", "HEAD", cwd=work).decode().strip()
        revs = f"{new}\n^{old}\n".encode()
        pack = git("pack-objects", "--stdout", "--revs", "-q", cwd=work, stdin=revs)
        stdin = receive_pack_request(old, new, "refs/heads/main", pack)
        stub = ssh_pb2_grpc.SSHServiceStub(self.channel(side.address))
        first = ssh_pb2.SSHReceivePackRequest(repository=side.repository, gl_id="user-1")

        def requests() -> Iterator[ssh_pb2.SSHReceivePackRequest]:
            yield first
            yield ssh_pb2.SSHReceivePackRequest(stdin=stdin)

        out = bytearray()
        started = time.perf_counter()
        # The proxy passes the id on to the nodes: their log lines show where the time went.
        metadata = (("x-gitlab-correlation-id", correlation_id),)
        for response in stub.SSHReceivePack(requests(), metadata=metadata, timeout=60):
            out += response.stdout
        elapsed = time.perf_counter() - started
        if b"ok refs/heads/main" not in out:
            raise RuntimeError(f"{side.name} push was not accepted: {bytes(out)[-300:]!r}")
        return elapsed

    def _checksum(self, address: str, repository: shared_pb2.Repository) -> str:
        stub = repository_pb2_grpc.RepositoryServiceStub(self.channel(address))
        request = repository_pb2.CalculateChecksumRequest(repository=repository)
        return str(stub.CalculateChecksum(request, timeout=30).checksum)

    # -- 5. bulk transfer against git's own speed ------------------------------------------

    def bulk(self) -> None:
        """Whole clones with the real git CLI three ways, and git pushes to three voting
        replicas against one node, each against git's own figure in the same run."""
        s = self.settings
        load_start = _loadavg()
        large = self.large_repo()
        ways = self._clone_ways(large.target)
        samples: dict[str, list[float]] = {way: [] for way in ways}
        rates: dict[str, list[float]] = {way: [] for way in ways}
        servers = self._bulk_servers()
        meter = CpuMeter(servers, children=True)
        cpu = {way: dict.fromkeys([*servers, "client"], 0.0) for way in ways}
        pack_bytes = 0
        names = list(ways)
        # Round 0 warms every way (page cache, connections, the nodes' first upload-pack)
        # and is not counted; the rounds after it rotate the order of the ways.
        for i in range(s.bulk_rounds + 1):
            order = names[i % len(names) :] + names[: i % len(names)]
            for way in order:
                dest = self.workdir / f"bulk-clone-{way}-{i}.git"
                correlation = f"bulk-clone-{way}-{i}" if i else f"bulk-warm-up-clone-{way}"
                meter.start()
                seconds, client_cpu = self._timed_clone(ways[way], dest, correlation)
                # The nodes reap their git children just after the last byte went out.
                time.sleep(0.2)
                used = meter.stop()
                size = self._verified_clone(dest, large.tips, way)
                shutil.rmtree(dest)
                if i == 0:
                    continue
                pack_bytes = size
                samples[way].append(seconds)
                rates[way].append(size / seconds / 1e6)
                _add(cpu[way], {**used, "client": client_cpu})
        rate = {way: _harmonic(values) for way, values in rates.items()}
        logged = self._clone_logs(ways)
        clone_results = {
            "ways": {way: spec.title for way, spec in ways.items()},
            "rounds": s.bulk_rounds,
            "rate": "total bytes / total seconds over the rounds (warm-up round left out)",
            "mb_per_s": {way: round(value, 1) for way, value in rate.items()},
            "vs_git": {way: ratio(rate[way], rate["git"]) for way in ways if way != "git"},
            "samples_mb_per_s": {way: [round(v, 1) for v in vs] for way, vs in rates.items()},
            "samples_s": {way: [round(v, 3) for v in vs] for way, vs in samples.items()},
            # Per round: the way's seconds against git's in the same round.
            "round_vs_git": {
                way: [round(g / t, 3) for g, t in zip(samples["git"], vs, strict=True)]
                for way, vs in samples.items()
                if way != "git"
            },
            "cpu_ms_per_clone": {
                way: _cpu_summary(per, s.bulk_rounds, self._node_names())
                for way, per in cpu.items()
            },
            "logged_ms_p50": logged,
            "checked": "ref tips equal to the source's and git fsck clean, every clone",
        }
        push_results = self._bulk_pushes()
        self.results["bulk"] = {
            "pack_mb": round(pack_bytes / 1e6, 1),
            "refs": len(large.tips),
            "node": large.target.node,
            "loadavg_start": load_start,
            "loadavg_end": _loadavg(),
            "clone": clone_results,
            "push": push_results,
        }

    def _clone_ways(self, target: Target) -> dict[str, CloneWay]:
        """git's own clone of the primary's replica on disk, and the two front ends."""
        replica = Path(self.cluster.node(target.node).extra["storage_path"]) / target.replica_path
        proxy = Side("proxy", self.proxy_address, target.via_proxy)
        ways = {
            "git": CloneWay("git clone --no-local of the replica directory", str(replica)),
            "ssh": CloneWay(
                "git clone through the proxy with gitquorum git-ssh",
                f"ssh://{self.proxy_address}/{target.relative_path}",
                env=_ssh_env(proxy),
                correlation_env="GITQUORUM_CORRELATION_ID",
            ),
        }
        if self.cluster.http is not None:
            ways["http"] = CloneWay(
                "git clone through the HTTP gateway",
                f"http://{self.cluster.http.address}/{target.relative_path}",
                correlation_header="X-Request-Id",
            )
        return ways

    def _bulk_servers(self) -> dict[str, int]:
        """Every server process a clone or a push can use (the proxy's workers too)."""
        proxy = self.cluster.proxies[0].proc.pid
        servers = {"proxy": proxy}
        servers |= {f"proxy worker {n}": pid for n, pid in enumerate(_children(proxy), 1)}
        servers |= {n.name: n.proc.pid for n in self.cluster.nodes}
        if self.cluster.http is not None:
            servers["http"] = self.cluster.http.proc.pid
        servers["etcd"] = self.cluster.etcd.pid
        return servers

    def _node_names(self) -> list[str]:
        return [n.name for n in self.cluster.nodes]

    def _timed_clone(self, way: CloneWay, dest: Path, correlation: str) -> tuple[float, float]:
        """Seconds of one ``git clone``, and the CPU seconds of git and what it ran."""
        env = dict(way.env)
        options: list[str] = []
        if way.correlation_env:
            env[way.correlation_env] = correlation
        if way.correlation_header:
            options = ["-c", f"http.extraHeader={way.correlation_header}: {correlation}"]
        before = _children_cpu()
        started = time.perf_counter()
        git(*options, "clone", "-q", "--bare", "--no-local", way.url, str(dest), env=env)
        seconds = time.perf_counter() - started
        return seconds, _children_cpu() - before

    @staticmethod
    def _verified_clone(dest: Path, tips: dict[str, str], way: str) -> int:
        """The clone's pack bytes, once its refs and objects are checked."""
        if ref_tips(dest) != tips:
            raise RuntimeError(f"bulk clone {way}: refs differ from the source")
        git("fsck", "--no-progress", "--no-dangling", cwd=dest)
        packs = list((dest / "objects" / "pack").glob("*.pack"))
        if len(packs) != 1:
            raise RuntimeError(f"bulk clone {way}: {len(packs)} packs, expected one")
        return packs[0].stat().st_size

    def _clone_logs(self, ways: dict[str, CloneWay]) -> dict[str, dict[str, float]]:
        """Median milliseconds per process and clone, from the cluster's logs: the
        requests of one HTTP clone are summed, the RPCs of one process too."""
        durations = self.logged_durations("bulk-clone-", ("rpc finished", "http request"))
        out: dict[str, dict[str, float]] = {}
        for way in ways:
            per_process: dict[str, list[float]] = {}
            for cid, per in durations.items():
                if not cid.startswith(f"bulk-clone-{way}-"):
                    continue
                for name, values in per.items():
                    per_process.setdefault(name, []).append(sum(values))
            out[way] = {
                name: round(_median(values), 1) for name, values in sorted(per_process.items())
            }
        return out

    def _bulk_pushes(self) -> dict[str, Any]:
        """git push via git-ssh: three voting replicas through the proxy, one node alone."""
        s = self.settings
        target, pair, clones = self.push_pair("bulk-push")
        servers = self._bulk_servers()
        meter = CpuMeter(servers, children=True)
        latency: dict[str, list[float]] = {side.name: [] for side in pair}
        cpu = {side.name: dict.fromkeys([*servers, "client"], 0.0) for side in pair}
        # Push 0 of each side warms connections and caches and is not counted.
        for i in range(s.pushes + 1):
            for side in pair if i % 2 == 0 else pair[::-1]:
                work = clones[side.name]
                _commit(work, f"bulk-{i}", s.push_commits)
                correlation = f"bulk-push-{side.name}-{i}" if i else f"bulk-warm-up-{side.name}"
                env = {**_ssh_env(side), "GITQUORUM_CORRELATION_ID": correlation}
                meter.start()
                before = _children_cpu()
                started = time.perf_counter()
                git("push", "-q", "origin", "HEAD:main", cwd=work, env=env)
                seconds = time.perf_counter() - started
                client_cpu = _children_cpu() - before
                time.sleep(0.05)
                used = meter.stop()
                if i == 0:
                    continue
                latency[side.name].append(seconds)
                _add(cpu[side.name], {**used, "client": client_cpu})
        md, up_to_date = self.replicas_agree(target)
        direct, proxy = Latency.of(latency["direct"]), Latency.of(latency["proxy"])
        return {
            "method": "git push via gitquorum git-ssh",
            "node": target.node,
            "pushes_per_side": s.pushes,
            "commits_per_push": s.push_commits,
            "latency": {"direct": direct.as_dict(), "proxy": proxy.as_dict()},
            "proxy_vs_direct_p50": ratio(proxy.p50_ms, direct.p50_ms),
            "proxy_vs_direct_p99": ratio(proxy.p99_ms, direct.p99_ms),
            "proxy_vs_direct_mean": ratio(proxy.mean_ms, direct.mean_ms),
            "cpu_ms_per_push": {
                side: _cpu_summary(per, s.pushes, self._node_names(), primary=target.node)
                for side, per in cpu.items()
            },
            "breakdown_p50_ms": self._push_breakdown(target.node, latency, "bulk-push-"),
            "generation_after": md.generation,
            "replicas_up_to_date": f"{up_to_date}/{len(md.replicas)}",
            "replica_checksums_equal": True,
        }


async def _drive_concurrently(
    side: Side, concurrency: int, seconds: float
) -> tuple[int, float, list[float]]:
    """FindCommit from ``concurrency`` loops sharing one channel, for ``seconds``."""
    async with grpc.aio.insecure_channel(side.address, options=CHANNEL_OPTIONS) as channel:
        stub = commit_pb2_grpc.CommitServiceStub(channel)
        request = commit_pb2.FindCommitRequest(repository=side.repository, revision=b"main")
        for _ in range(concurrency):
            await stub.FindCommit(request, metadata=side.metadata)
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await stub.FindCommit(request, metadata=side.metadata)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return len(latencies), time.perf_counter() - started, latencies


def _accessor(channel: grpc.Channel, rpc: str, side: Side) -> tuple[Callable[..., Any], Any]:
    """The stub method and request of one unary accessor, as one side names the repository."""
    if rpc == "FindCommit":
        stub = commit_pb2_grpc.CommitServiceStub(channel)
        return stub.FindCommit, commit_pb2.FindCommitRequest(
            repository=side.repository, revision=b"main"
        )
    if rpc == "RefExists":
        ref_stub = ref_pb2_grpc.RefServiceStub(channel)
        return ref_stub.RefExists, ref_pb2.RefExistsRequest(
            repository=side.repository, ref=b"refs/heads/main"
        )
    raise ValueError(f"unknown accessor {rpc}")


def _answer(rpc: str, response: Any) -> object:
    return response.commit.id if rpc == "FindCommit" else response.value


# Keys of a floor summary that the unary phase also keeps at its top level (FindCommit's).
_TOP_LEVEL_KEYS = (
    "latency",
    "proxy_added_p50_ms",
    "proxy_added_p99_ms",
    "hop_added_p50_ms",
    "hop_added_p99_ms",
    "proxy_over_hop_p50_ms",
    "proxy_over_hop_p99_ms",
    "cpu_us_per_call",
    "background_us_per_call",
    "own_cpu_us_per_call",
    "proxy_cpu_vs_hop",
    "proxy_cpu_vs_hop_raw",
)


def _floor_summary(
    latency: dict[str, Latency],
    cpu: dict[str, dict[str, float]],
    wall: dict[str, float],
    calls: dict[str, int],
    idle_rates: dict[str, float],
) -> dict[str, Any]:
    """One accessor's sides against each other: what the proxy adds over direct,
    over the bare hop (the floor), and its CPU per call against the hop's.

    Background CPU billed to a side's calls is each process's idle rate times
    the side's wall time, spread over its calls; ``own`` is what is left: the
    request path's CPU.
    """
    direct, hop, proxy = latency["direct"], latency["hop"], latency["proxy"]
    raw = _per_call(cpu, calls)
    background = {
        side: {
            name: round(1e6 * idle_rates.get(name, 0.0) * wall[side] / max(1, calls[side]), 1)
            for name in per
        }
        for side, per in cpu.items()
    }
    own = {
        side: {name: round(raw[side][name] - background[side][name], 1) for name in per}
        for side, per in cpu.items()
    }
    return {
        "latency": {name: value.as_dict() for name, value in latency.items()},
        "proxy_added_p50_ms": round(proxy.p50_ms - direct.p50_ms, 3),
        "proxy_added_p99_ms": round(proxy.p99_ms - direct.p99_ms, 3),
        "hop_added_p50_ms": round(hop.p50_ms - direct.p50_ms, 3),
        "hop_added_p99_ms": round(hop.p99_ms - direct.p99_ms, 3),
        "proxy_over_hop_p50_ms": round(proxy.p50_ms - hop.p50_ms, 3),
        "proxy_over_hop_p99_ms": round(proxy.p99_ms - hop.p99_ms, 3),
        "cpu_us_per_call": raw,
        "background_us_per_call": background,
        "own_cpu_us_per_call": own,
        "proxy_cpu_vs_hop": ratio(own["proxy"]["proxy"], own["hop"]["hop"]),
        "proxy_cpu_vs_hop_raw": ratio(raw["proxy"]["proxy"], raw["hop"]["hop"]),
    }


def _ssh_env(side: Side) -> dict[str, str]:
    return {
        "GIT_SSH_COMMAND": f"{sys.executable} -m gitquorum.cli.main git-ssh",
        "GIT_SSH_VARIANT": "ssh",
        "GITQUORUM_STORAGE": side.repository.storage_name,
    }


def _commit(work: Path, tag: str, commits: int) -> None:
    for j in range(commits):
        (work / f"{tag}-{j}.txt").write_text(f"{tag} {j} {time.time_ns()}\n")
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", f"{tag} {j}", cwd=work)


def _add(total: dict[str, float], used: dict[str, float]) -> None:
    for name, seconds in used.items():
        total[name] += seconds


def _per_call(cpu: dict[str, dict[str, float]], calls: dict[str, int]) -> dict[str, Any]:
    return {
        side: {name: round(1e6 * used / max(1, calls[side]), 1) for name, used in per.items()}
        for side, per in cpu.items()
    }


def _ceiling(cpu: dict[str, float], calls: int) -> float:
    """Calls/s that the CPU used per call allows on this machine's cores."""
    per_call = [seconds / calls for seconds in cpu.values() if seconds > 0]
    if not per_call:
        return float("nan")
    cores = len(os.sched_getaffinity(0))
    return min(cores / sum(per_call), 1 / max(per_call))


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (a pooled proxy's workers)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(word) for word in (task / "children").read_text().split()]
    return found


def _children_cpu() -> float:
    """CPU seconds of this process's children that have been waited for: the git
    commands the benchmark runs and everything they ran."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_summary(
    per: dict[str, float], count: int, nodes: Sequence[str], primary: str = ""
) -> dict[str, float]:
    """Milliseconds per clone or push: client, proxy (workers included), nodes, the rest."""

    def ms(seconds: float) -> float:
        return round(1e3 * seconds / max(1, count), 1)

    proxy = sum(v for name, v in per.items() if name.startswith("proxy"))
    out = {"client": ms(per.get("client", 0.0)), "proxy": ms(proxy)}
    if primary:
        out["primary node"] = ms(per.get(primary, 0.0))
        out["other nodes"] = ms(sum(per.get(n, 0.0) for n in nodes if n != primary))
    else:
        out["nodes"] = ms(sum(per.get(n, 0.0) for n in nodes))
    for name in ("http", "etcd"):
        if name in per:
            out[name] = ms(per[name])
    server = sum(v for name, v in per.items() if name != "client")
    out["servers"] = ms(server)
    return out


def _harmonic(values: Sequence[float]) -> float:
    return len(values) / sum(1 / v for v in values) if values and all(values) else float("nan")


def _median(values: Sequence[float]) -> float:
    return percentile(values, 50)


# -- report ------------------------------------------------------------------------------------


def _row(label: str, values: dict[str, Any], versus: str, key: str = "") -> list[object]:
    cells = [values.get(name, "") for name in SIDES]
    if key:
        cells = [cell[key] if isinstance(cell, dict) else cell for cell in cells]
    return [label, *cells, versus]


def render_markdown(report: dict[str, Any]) -> str:
    r = report["results"]
    rows: list[Sequence[object]] = []
    if "unary" in r:
        u = r["unary"]
        for q in ("p50", "p99"):
            proxy_added, hop_added = u[f"proxy_added_{q}_ms"], u[f"hop_added_{q}_ms"]
            versus = f"+{proxy_added:.2f} ms (bare hop +{hop_added:.2f} ms)"
            rows.append(
                _row(f"FindCommit {q}, concurrency 1 (ms)", u["latency"], versus, f"{q}_ms")
            )
    if "throughput" in r:
        t = r["throughput"]
        c = t["concurrency"]
        versus = f"{t['proxy_vs_direct']:.0%} (bare hop {t['hop_vs_direct']:.0%})"
        rows.append(_row(f"FindCommit calls/s, concurrency {c}", t["calls_per_s"], versus))
        ceiling = t.get("cpu_ceiling_calls_per_s", {})
        if len(ceiling) == len(SIDES):
            share = ratio(ceiling["proxy"], ceiling["direct"])
            label = "FindCommit calls/s, ceiling from CPU per call (model)"
            rows.append(_row(label, ceiling, f"{share:.0%}"))
        for q in ("p50", "p99"):
            rows.append(
                _row(f"FindCommit {q} at concurrency {c} (ms)", t["latency"], "", f"{q}_ms")
            )
    if "clone" in r:
        c = r["clone"]
        g = c["grpc"]
        versus = f"{g['proxy_vs_direct']:.0%} (bare hop {g['hop_vs_direct']:.0%})"
        rows.append(
            _row(
                f"clone {c['pack_mb']} MB, SSHUploadPack gRPC client (MB/s)", g["mb_per_s"], versus
            )
        )
        gc = c["git_clone"]
        rows.append(
            _row(
                f"clone {c['pack_mb']} MB, git clone via git-ssh (MB/s)",
                gc["mb_per_s"],
                f"{gc['proxy_vs_direct']:.0%}",
            )
        )
    if "push" in r:
        p = r["push"]
        for method, label in (
            ("git", "git push via git-ssh"),
            ("grpc", "SSHReceivePack gRPC client"),
        ):
            for q in ("p50", "p99"):
                versus = f"x{p[method][f'proxy_vs_direct_{q}']:.2f}"
                rows.append(
                    _row(f"push, {label}, {q} (ms)", p[method]["latency"], versus, f"{q}_ms")
                )
    headers = ["measurement", *(SIDE_TITLES[name] for name in SIDES), "proxy vs direct"]
    parts = ["### Machine", "", machine_table(report["machine"]), ""]
    if rows:
        parts += ["### Results", "", markdown_table(headers, rows), ""]
    targets = report["targets"]
    if targets:
        target_rows = [
            (t["name"], t["target"], t["measured"], "yes" if t["met"] else "**no**")
            for t in targets
        ]
        parts += [
            "### Targets",
            "",
            markdown_table(("target", "goal", "measured", "met"), target_rows),
            "",
        ]
    parts += _bulk_section(r)
    parts += _floor_section(r)
    parts += _cpu_section(r)
    parts += ["### Details", "", *_details(report), ""]
    for phase, prof in r.get("profile", {}).items():
        parts += [f"### Profile: {phase} ({prof['samples']} samples, `{prof['file']}`)", ""]
        own = [(v, f) for f, v in prof["self"]]
        parts += [markdown_table(("self %", "function (file)"), own), ""]
        if prof["focus"]:
            mine = [(v, f) for f, v in prof["focus"]]
            parts += [markdown_table(("inclusive %", "gitquorum function (file)"), mine), ""]
    return "\n".join(parts)


def _bulk_section(r: dict[str, Any]) -> list[str]:
    """Whole clones and pushes with the real git CLI against git's own figures."""
    if "bulk" not in r:
        return []
    b = r["bulk"]
    c, p = b["clone"], b["push"]
    rows: list[Sequence[object]] = []
    for way, title in c["ways"].items():
        samples = ", ".join(f"{v}" for v in c["samples_mb_per_s"][way])
        if way == "git":
            rows.append((title, c["mb_per_s"][way], samples, "100% (reference)", "", ""))
            continue
        share = c["vs_git"][way]
        rounds = ", ".join(f"{v:.0%}" for v in c["round_vs_git"][way])
        rows.append(
            (
                title,
                c["mb_per_s"][way],
                samples,
                f"{share:.0%} (rounds: {rounds})",
                f">= {BULK_CLONE_SHARE:.0%}",
                "yes" if share >= BULK_CLONE_SHARE else "**no**",
            )
        )
    clone_headers = ("clone", "MB/s", "MB/s per round", "vs git", "target", "met")
    parts = [
        f"### Bulk transfer against git's own speed ({b['pack_mb']} MB pack, "
        f"{c['rounds']} rounds after a warm-up, load average {b['loadavg_start']} at the "
        f"start of the phase, {b['loadavg_end']} at its end)",
        "",
        markdown_table(clone_headers, rows),
        "",
    ]
    factor = p["proxy_vs_direct_p50"]
    push_rows = []
    for side, title in (("direct", "one node"), ("proxy", "3 voting replicas (proxy)")):
        lat = p["latency"][side]
        cells = [title, lat["p50_ms"], lat["p90_ms"], lat["p99_ms"], lat["mean_ms"]]
        if side == "direct":
            push_rows.append((*cells, "", "", ""))
        else:
            met = "yes" if factor <= BULK_PUSH_FACTOR else "**no**"
            push_rows.append((*cells, f"{factor:.2f}x", f"<= {BULK_PUSH_FACTOR}x", met))
    push_headers = (
        "git push",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "mean ms",
        "p50 vs one node",
        "target",
        "met",
    )
    parts += [markdown_table(push_headers, push_rows), ""]
    cpu_rows: list[Sequence[object]] = []
    for way, per in c["cpu_ms_per_clone"].items():
        cpu_rows.append(
            (
                f"clone: {c['ways'][way]}",
                per["client"],
                per["proxy"],
                per["nodes"],
                per.get("http", ""),
                per.get("etcd", ""),
                per["servers"],
            )
        )
    for side, per in p["cpu_ms_per_push"].items():
        nodes = f"{per['primary node']} + {per['other nodes']}"
        cpu_rows.append(
            (
                f"push: {'one node' if side == 'direct' else '3 voting replicas'}",
                per["client"],
                per["proxy"],
                nodes,
                per.get("http", ""),
                per.get("etcd", ""),
                per["servers"],
            )
        )
    cpu_headers = (
        "CPU ms per clone or push",
        "client (git, git-ssh)",
        "proxy",
        "nodes (git included; push: primary + others)",
        "HTTP gateway",
        "etcd",
        "all servers",
    )
    parts += [markdown_table(cpu_headers, cpu_rows), ""]
    logged = "; ".join(
        f"{c['ways'][way]}: " + ", ".join(f"{name} {ms}" for name, ms in per.items())
        for way, per in c["logged_ms_p50"].items()
        if per
    )
    bd = p["breakdown_p50_ms"]
    parts += [
        f"- clone, median ms per process from the cluster's logs (summed over a clone's "
        f"requests): {logged or 'none logged'}",
        f"- push, p50 ms from the logs: one node alone: client {bd['direct']['client']}, node "
        f"{bd['direct']['node']}; 3 replicas: client {bd['proxy']['client']}, proxy "
        f"{bd['proxy']['proxy']}, primary {bd['proxy']['primary']}, slowest secondary "
        f"{bd['proxy']['slowest_secondary']}",
        f"- {p['pushes_per_side']} pushes per side of {p['commits_per_push']} commits "
        f"after a warm-up push; afterwards generation {p['generation_after']}, "
        f"{p['replicas_up_to_date']} replicas up to date, replica checksums equal; "
        f"every clone checked: {c['checked']}",
        "",
    ]
    return parts


def _floor_section(r: dict[str, Any]) -> list[str]:
    """Each accessor through the proxy against the bare hop, the floor of its stack."""
    summaries: list[tuple[str, dict[str, Any]]] = [
        (f"{rpc}, concurrency 1", floor)
        for rpc, floor in r.get("unary", {}).get("by_rpc", {}).items()
    ]
    if "own_cpu_us_per_call" in r.get("throughput", {}):
        t = r["throughput"]
        summaries.append((f"FindCommit, concurrency {t['concurrency']}", t))
    if not summaries:
        return []
    rows = []
    for label, f in summaries:
        lat, own, bg = f["latency"], f["own_cpu_us_per_call"], f["background_us_per_call"]
        rows.append(
            (
                label,
                " / ".join(f"{lat[side]['p50_ms']:.2f}" for side in SIDES),
                " / ".join(f"{lat[side]['p99_ms']:.2f}" for side in SIDES),
                f"+{f['hop_added_p50_ms']:.2f} / +{f['proxy_added_p50_ms']:.2f}",
                f"{f['proxy_over_hop_p50_ms']:+.2f} ({f['proxy_over_hop_p99_ms']:+.2f})",
                f"{own['hop']['hop']:.0f} / {own['proxy']['proxy']:.0f}",
                f"{f['proxy_cpu_vs_hop']:.2f}x ({f['proxy_cpu_vs_hop_raw']:.2f}x)",
                f"{bg['proxy']['proxy']:.0f}",
            )
        )
    headers = (
        "accessor",
        "p50 ms: direct / hop / proxy",
        "p99 ms: direct / hop / proxy",
        "p50 added vs direct: hop / proxy",
        "proxy above hop, p50 (p99) ms",
        "own CPU µs per call: hop / proxy",
        "CPU proxy / hop (with background)",
        "proxy background µs per call",
    )
    parts = ["### Against the floor: bare grpc.aio hop", "", markdown_table(headers, rows), ""]
    bg_rates = r.get("background", {}).get("cpu_ms_per_s")
    if bg_rates:
        rates = ", ".join(f"{name} {value} ms/s" for name, value in bg_rates.items())
        parts += [
            f"Idle CPU over {r['background']['idle_seconds']} s without calls: {rates}; "
            "billed to each side's calls by its wall time and subtracted for the own CPU.",
            "",
        ]
    if "proxy_vs_hop" in r.get("throughput", {}):
        t = r["throughput"]
        calls = t["calls_per_s"]
        parts += [
            f"Calls/s at concurrency {t['concurrency']}: direct {calls['direct']}, "
            f"hop {calls['hop']}, proxy {calls['proxy']} (proxy / hop "
            f"{t['proxy_vs_hop']:.0%}).",
            "",
        ]
    return parts


def _cpu_section(r: dict[str, Any]) -> list[str]:
    rows = []
    for phase in ("unary", "throughput"):
        for side, per in r.get(phase, {}).get("cpu_us_per_call", {}).items():
            rows.append(
                (phase, SIDE_TITLES[side], per["client"], per["hop"], per["proxy"], per["node"])
            )
    for side, per in r.get("clone", {}).get("grpc", {}).get("cpu_ms_per_clone", {}).items():
        rows.append(
            (
                "clone (ms per clone)",
                SIDE_TITLES[side],
                per["client"],
                per["hop"],
                per["proxy"],
                per["node"],
            )
        )
    if not rows:
        return []
    headers = ("phase", "side", "client", "bare hop process", "proxy process", "node process")
    return ["### CPU per call (microseconds unless noted)", "", markdown_table(headers, rows), ""]


def _details(report: dict[str, Any]) -> list[str]:
    r = report["results"]
    lines = []
    if "cluster" in r:
        c = r["cluster"]
        lines.append(
            f"- cluster: {c['etcd_members']} etcd member, {c['nodes']} nodes, "
            f"{c['proxies']} proxy, replication factor {c['replication_factor']}, "
            f"proxy log level {c['proxy_log_level']}, "
            f"proxy workers {c.get('proxy_workers', 1)}, "
            f"HTTP gateway {'on' if c.get('http_gateway') else 'off'} "
            f"(PROXY_SETTINGS of bench/proxy_bench.py otherwise); started in {c['start_s']} s"
        )
    if "unary" in r:
        lines.append(
            f"- unary: {r['unary']['calls_per_side']} calls per side, node {r['unary']['node']}"
        )
    if "clone" in r:
        c = r["clone"]
        lines.append(
            f"- clone: {c['pack_mb']} MB pack, {c['refs']} refs, built in {c['build_s']} s; "
            f"seeded through the proxy (3 replicas) in {c['seed_through_proxy_s']} s "
            f"({c['seed_through_proxy_mb_per_s']} MB/s); gRPC samples MB/s {c['grpc']['samples']}, "
            f"response messages per clone {c['grpc']['messages_per_clone']}"
        )
    if "push" in r:
        p = r["push"]
        lines.append(
            f"- push: {p['pushes_per_side_and_method']} pushes per side and method, "
            f"{p['commits_per_push']} commits each; afterwards generation {p['generation_after']}, "
            f"{p['replicas_up_to_date']} replicas up to date, replica checksums equal"
        )
        b = p["grpc"]["breakdown_p50_ms"]
        lines.append(
            f"- gRPC push, p50 ms per process (from the cluster's logs): one node alone: client "
            f"{b['direct']['client']}, node {b['direct']['node']}; through the proxy: client "
            f"{b['proxy']['client']}, proxy {b['proxy']['proxy']}, primary "
            f"{b['proxy']['primary']}, slowest secondary {b['proxy']['slowest_secondary']}"
        )
        lines.append(
            "- gRPC push, server CPU ms per push (git children included): "
            + "; ".join(
                f"{side}: {per}" for side, per in p["grpc"]["server_cpu_ms_per_push"].items()
            )
        )
    lines.append(f"- settings: `{json.dumps(report['settings'])}`; total {report['total_s']} s")
    return lines


# -- command line ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="proxy_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 60 s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"subset of {','.join(PHASES)}")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy the proxy per phase into DIR"
    )
    parser.add_argument(
        "--profile-native", action="store_true", help="with --profile: C/Cython frames too"
    )
    parser.add_argument(
        "--proxy-log-level", default="info", help="the proxy's log level (default info)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="cluster and repositories (default: a temporary dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--clone-mb", type=int, help="size of the clone repository in MB")
    parser.add_argument("--pushes", type=int, help="pushes per side and method")
    parser.add_argument(
        "--proxy-workers", type=int, default=1, help="the proxy's worker processes (default 1)"
    )
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="print the markdown of a saved --json report"
    )
    parser.add_argument("--serve-hop", metavar="TARGET", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(unknown)}")
    if args.clone_mb is not None and args.clone_mb < 1:
        parser.error("--clone-mb must be at least 1")
    if args.pushes is not None and args.pushes < 1:
        parser.error("--pushes must be at least 1")
    if args.proxy_workers < 1:
        parser.error("--proxy-workers must be at least 1")
    args.phases = phases
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    base = Settings.quick() if args.quick else Settings()
    overrides: dict[str, Any] = {
        "proxy_log_level": args.proxy_log_level,
        "proxy_workers": args.proxy_workers,
    }
    if args.clone_mb:
        overrides["clone_mb"] = args.clone_mb
    if args.pushes:
        overrides["pushes"] = args.pushes
    return Settings(**{**asdict(base), **overrides})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_hop:
        serve_hop(args.serve_hop)
        return 0
    if args.render:
        print(render_markdown(json.loads(args.render.read_text())))
        return 0
    settings = settings_from(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gitquorum-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": machine_info(), "settings": asdict(settings)}
    bench = Bench(settings, workdir, args.profile, args.profile_native, "bulk" in args.phases)
    started = time.perf_counter()
    steps: dict[str, Callable[[], None]] = {
        "unary": bench.unary,
        "throughput": bench.throughput,
        "clone": bench.clone,
        "push": bench.push,
        "bulk": bench.bulk,
    }
    try:
        gateway = ", HTTP gateway" if bench.gateway else ""
        _progress(f"starting the cluster: etcd, 3 nodes, 1 proxy{gateway}")
        bench.start()
        for phase in args.phases:
            phase_started = time.perf_counter()
            _progress(f"{phase} ...")
            steps[phase]()
            _progress(f"{phase} done in {time.perf_counter() - phase_started:.1f} s")
    except BaseException:
        if bench.cluster is not None:
            print(bench.cluster.log_tail(), file=sys.stderr)
        raise
    finally:
        bench.close()
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report["machine"]["loadavg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report["results"] = bench.results
    report["targets"] = [asdict(c) for c in checks(bench.results)]
    report["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2) if args.json else render_markdown(report))
    return 0


def _progress(message: str) -> None:
    print(f"[proxy_bench] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
