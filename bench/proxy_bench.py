"""What the proxy costs: the same node, directly and through the proxy, in one run.

Starts a real cluster (one etcd member, three storage nodes, one proxy; the
test harness's ``Cluster``) and measures, alternating direct and proxied
rounds so that drift on the machine hits both sides alike:

1. unary accessor latency: FindCommit at concurrency 1, p50/p99;
2. accessor throughput: FindCommit calls/s at concurrency 16;
3. clone of a >= 50 MB repository of incompressible blobs over SSHUploadPack,
   driven by a gRPC client with a canned upload-pack request (want every ref,
   done) that only counts response bytes; and a real ``git clone`` through
   ``gitquorum git-ssh``;
4. push: ``git push`` of a few small commits through the proxy (three
   replicas, voting) against ``git push`` straight to one node; and the same
   push as one SSHReceivePack call with a canned command and pack.

How reads reach the same node: proxied calls carry
``gitaly-route-repository-accessor-policy: primary-only``, and the direct
path calls the repository's primary node with its storage name and replica
path (from PraefectInfoService.GetRepositoryMetadata). ``git clone`` through
``git-ssh`` cannot set that header, so the proxy spreads it over the three
up-to-date replicas, identical node processes on the same machine. The
direct push goes to a repository created directly on that primary node, not
to a replica the cluster tracks, so the cluster state stays true.

    python bench/proxy_bench.py            # full run, markdown on stdout (~3 min)
    python bench/proxy_bench.py --quick    # smoke run (< 60 s, small clone)
    python bench/proxy_bench.py --json     # JSON instead of markdown
    python bench/proxy_bench.py --profile /tmp/prof   # + py-spy of the proxy per phase

Progress goes to stderr. Figures from a ``--profile`` run include the
sampler's overhead; record figures from a run without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
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
    # Run as a script: the harness (tests/) and bench.common import from the repo root.
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from bench.common import (  # noqa: E402
    CpuMeter,
    Latency,
    PySpy,
    hot_spots,
    machine_info,
    machine_table,
    markdown_table,
    percentile,
    ratio,
)
from gitquorum.gitaly import (  # noqa: E402
    commit_pb2,
    commit_pb2_grpc,
    praefect_pb2,
    praefect_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
    ssh_pb2,
    ssh_pb2_grpc,
)

VIRTUAL_STORAGE = "default"
PRIMARY_ONLY = (("gitaly-route-repository-accessor-policy", "primary-only"),)
MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Bench Author",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "Bench Committer",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}
PHASES = ("unary", "throughput", "clone", "push")


@dataclass(frozen=True)
class Settings:
    unary_calls: int = 5000  # per side
    unary_batch: int = 250  # calls per side before switching sides
    throughput_seconds: float = 5.0  # per segment
    throughput_rounds: int = 2  # direct+proxy segment pairs
    concurrency: int = 16
    clone_mb: int = 52
    clone_rounds: int = 3
    git_clone_rounds: int = 2
    pushes: int = 25  # per side and per method
    push_commits: int = 3  # new commits in each push

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            unary_calls=600,
            unary_batch=150,
            throughput_seconds=1.5,
            throughput_rounds=1,
            clone_mb=12,
            clone_rounds=1,
            git_clone_rounds=1,
            pushes=5,
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
        added = results["unary"]["added_p50_ms"]
        out.append(
            Check("unary FindCommit p50, proxy adds", "<= 0.5 ms", f"{added:.3f} ms", added <= 0.5)
        )
    if "throughput" in results:
        share = results["throughput"]["proxy_vs_direct"]
        out.append(
            Check(
                "FindCommit throughput at concurrency 16, proxy / direct",
                ">= 60%",
                f"{share:.0%}",
                share >= 0.6,
            )
        )
    if "clone" in results:
        share = results["clone"]["grpc"]["proxy_vs_direct"]
        out.append(
            Check(
                f"clone of {results['clone']['pack_mb']:.0f} MB over SSHUploadPack, proxy / direct",
                ">= 80%",
                f"{share:.0%}",
                share >= 0.8,
            )
        )
    if "push" in results:
        factor = results["push"]["git"]["proxy_vs_direct_p50"]
        out.append(
            Check(
                "git push p50, 3 replicas with voting / one node",
                "<= 2x",
                f"{factor:.2f}x",
                factor <= 2.0,
            )
        )
    return out


# -- git and the pack protocol ------------------------------------------------------------------


def git(
    *args: str,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
) -> bytes:
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        env={**os.environ, **GIT_ENV, **(env or {})},
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def pkt(data: bytes) -> bytes:
    return b"%04x" % (len(data) + 4) + data


FLUSH = b"0000"


def pkt_lines(data: bytes) -> Iterator[bytes | None]:
    """Payloads of a pkt-line stream; None for a flush packet."""
    offset = 0
    while offset + 4 <= len(data):
        size = int(data[offset : offset + 4], 16)
        if size == 0:
            yield None
            offset += 4
            continue
        yield data[offset + 4 : offset + size]
        offset += size


def pack_from_upload_pack(stdout: bytes) -> bytes:
    """The pack in a protocol-v0 upload-pack answer: advertisement, NAK, side band 1."""
    lines = pkt_lines(stdout)
    for line in lines:  # the ref advertisement ends with the first flush
        if line is None:
            break
    pack = bytearray()
    for line in lines:
        if line is None:
            break
        if line.startswith((b"NAK", b"ACK")):
            continue
        if line[:1] == b"\x01":
            pack += line[1:]
        elif line[:1] == b"\x03":
            raise RuntimeError(f"upload-pack error: {line[1:]!r}")
    return bytes(pack)


def pack_is_whole(pack: bytes) -> bool:
    """A pack ends with the SHA-1 of everything before it."""
    return (
        len(pack) > 32 and pack[:4] == b"PACK" and hashlib.sha1(pack[:-20]).digest() == pack[-20:]
    )


def upload_pack_request(oids: Sequence[str]) -> bytes:
    """want every ref tip, done: a whole clone without reading the advertisement first."""
    unique = list(dict.fromkeys(oids))
    lines = [pkt(f"want {unique[0]} side-band-64k ofs-delta no-progress\n".encode())]
    lines += [pkt(f"want {oid}\n".encode()) for oid in unique[1:]]
    return b"".join(lines) + FLUSH + pkt(b"done\n")


def receive_pack_request(old: str, new: str, ref: str, pack: bytes) -> bytes:
    command = f"{old} {new} {ref}\0report-status side-band-64k quiet agent=gitquorum-bench\n"
    return pkt(command.encode()) + FLUSH + pack


def fast_import_stream(blobs: int, blob_size: int) -> Iterator[bytes]:
    """Commits that each add one random (incompressible) blob; main plus a tag halfway."""
    for i in range(blobs):
        data = os.urandom(blob_size)
        message = f"add blob {i}\n".encode()
        yield b"blob\nmark :%d\ndata %d\n" % (i + 1, len(data)) + data + b"\n"
        header = b"commit refs/heads/main\nmark :%d\n" % (100_000 + i)
        header += b"committer Bench <bench@example.com> %d +0000\n" % (1_700_000_000 + i)
        header += b"data %d\n" % len(message) + message
        if i:
            header += b"from :%d\n" % (100_000 + i - 1)
        header += b"M 100644 :%d blobs/%03d.bin\n\n" % (i + 1, i)
        yield header
        if i == blobs // 2:
            yield b"reset refs/tags/half\nfrom :%d\n\n" % (100_000 + i)


def build_large_repo(path: Path, megabytes: int, blob_mb: int = 2) -> None:
    git("init", "-q", "--bare", str(path))
    blobs = max(1, -(-megabytes // blob_mb))
    proc = subprocess.Popen(
        ["git", "fast-import", "--quiet"],
        cwd=path,
        stdin=subprocess.PIPE,
        env={**os.environ, **GIT_ENV},
    )
    assert proc.stdin is not None
    for chunk in fast_import_stream(blobs, blob_mb * 1024 * 1024):
        proc.stdin.write(chunk)
    proc.stdin.close()
    if proc.wait(300) != 0:
        raise RuntimeError("git fast-import failed")
    git("symbolic-ref", "HEAD", "refs/heads/main", cwd=path)


def build_small_repo(path: Path, commits: int = 5) -> None:
    git("init", "-q", "-b", "main", str(path))
    for i in range(commits):
        (path / "README.md").write_text(f"# bench\n\nrevision {i}\n")
        (path / f"file{i}.txt").write_text(f"content {i}\n" * 20)
        git("add", "-A", cwd=path)
        git("commit", "-q", "-m", f"commit {i}", cwd=path)


def ref_tips(path: Path) -> dict[str, str]:
    out = git("for-each-ref", "--format=%(objectname) %(refname)", cwd=path).decode()
    return {name: oid for oid, name in (line.split(" ", 1) for line in out.splitlines())}


def make_bundle(path: Path, out: Path) -> bytes:
    # No delta search: the blobs are random, so it would only burn CPU.
    git("-c", "pack.window=0", "bundle", "create", str(out), "--all", cwd=path)
    return out.read_bytes()


# -- the cluster ------------------------------------------------------------------------------


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


@dataclass
class Side:
    """One way of reaching a repository: directly or through the proxy."""

    name: str
    address: str
    repository: shared_pb2.Repository
    metadata: tuple[tuple[str, str], ...] = ()


def sides(target: Target, proxy_address: str) -> tuple[Side, Side]:
    return (
        Side("direct", target.node_address, target.direct),
        Side("proxy", proxy_address, target.via_proxy, PRIMARY_ONLY),
    )


@dataclass
class Bench:
    settings: Settings
    workdir: Path
    profile_dir: Path | None = None
    profile_native: bool = False
    cluster: Any = None
    results: dict[str, Any] = field(default_factory=dict)
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)

    # -- setup ---------------------------------------------------------------------------

    def start(self) -> None:
        from tests.harness.cluster import Cluster

        started = time.perf_counter()
        self.cluster = Cluster(
            self.workdir / "cluster", nodes_count=3, proxies_count=1, replication_factor=3
        ).start()
        self.results["cluster"] = {
            "etcd_members": 1,
            "nodes": 3,
            "proxies": 1,
            "replication_factor": 3,
            "proxy_config": "tests/harness/cluster.py defaults (log_level info, health 250ms)",
            "start_s": round(time.perf_counter() - started, 2),
        }

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        if self.cluster is not None:
            self.cluster.close()

    @property
    def proxy_address(self) -> str:
        return str(self.cluster.proxies[0].address)

    def channel(self, address: str) -> grpc.Channel:
        if address not in self._channels:
            self._channels[address] = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        return self._channels[address]

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
        return stub.GetRepositoryMetadata(
            praefect_pb2.GetRepositoryMetadataRequest(path=query), timeout=10
        )

    def target(self, relative_path: str) -> Target:
        md = self.metadata(relative_path)
        return Target(
            relative_path, md.primary, self.cluster.node(md.primary).address, md.replica_path
        )

    def seed_through_proxy(self, relative_path: str, source: Path) -> tuple[Target, float, int]:
        bundle = make_bundle(source, self.workdir / f"{relative_path.replace('/', '_')}.bundle")
        seconds = self.seed(
            self.proxy_address,
            shared_pb2.Repository(storage_name=VIRTUAL_STORAGE, relative_path=relative_path),
            bundle,
        )
        return self.target(relative_path), seconds, len(bundle)

    def pids(self, target: Target) -> dict[str, int]:
        return {
            "client": os.getpid(),
            "proxy": self.cluster.proxies[0].proc.pid,
            "node": self.cluster.node(target.node).proc.pid,
        }

    @contextlib.contextmanager
    def profiled(self, phase: str) -> Iterator[None]:
        if self.profile_dir is None:
            yield
            return
        output = self.profile_dir / f"proxy-{phase}.txt"
        spy = PySpy(self.cluster.proxies[0].proc.pid, output, native=self.profile_native).start()
        try:
            yield
        finally:
            spy.stop()
            self.results.setdefault("profile", {})[phase] = {
                "file": str(output),
                **hot_spots(output),
            }

    # -- 1. unary latency --------------------------------------------------------------------

    def unary(self) -> None:
        s = self.settings
        source = self.workdir / "unary-src"
        build_small_repo(source)
        target, _, _ = self.seed_through_proxy("bench/unary.git", source)
        pair = sides(target, self.proxy_address)
        stubs = {
            side.name: commit_pb2_grpc.CommitServiceStub(self.channel(side.address))
            for side in pair
        }
        samples: dict[str, list[float]] = {side.name: [] for side in pair}
        answers = set()
        for side in pair:
            request = commit_pb2.FindCommitRequest(repository=side.repository, revision=b"main")
            for _ in range(200):  # warm connections, caches and cat-file processes
                answers.add(stubs[side.name].FindCommit(request, metadata=side.metadata).commit.id)
        if len(answers) != 1:
            raise RuntimeError(f"direct and proxied FindCommit disagree: {answers}")
        meter = CpuMeter(self.pids(target)).start()
        cpu: dict[str, dict[str, float]] = {
            side.name: dict.fromkeys(meter.pids, 0.0) for side in pair
        }
        with self.profiled("unary"):
            done = 0
            while done < s.unary_calls:
                batch = min(s.unary_batch, s.unary_calls - done)
                for side in pair:
                    request = commit_pb2.FindCommitRequest(
                        repository=side.repository, revision=b"main"
                    )
                    call = stubs[side.name].FindCommit
                    out = samples[side.name]
                    meter.start()
                    for _ in range(batch):
                        started = time.perf_counter()
                        call(request, metadata=side.metadata)
                        out.append(time.perf_counter() - started)
                    for name, used in meter.stop().items():
                        cpu[side.name][name] += used
                done += batch
        direct, proxy = Latency.of(samples["direct"]), Latency.of(samples["proxy"])
        self.results["unary"] = {
            "rpc": "CommitService/FindCommit (revision main)",
            "node": target.node,
            "calls_per_side": s.unary_calls,
            "direct": direct.as_dict(),
            "proxy": proxy.as_dict(),
            "added_p50_ms": round(proxy.p50_ms - direct.p50_ms, 3),
            "added_p99_ms": round(proxy.p99_ms - direct.p99_ms, 3),
            "p50_ratio": ratio(proxy.p50_ms, direct.p50_ms),
            "p99_ratio": ratio(proxy.p99_ms, direct.p99_ms),
            "cpu_us_per_call": {
                side: {name: round(1e6 * used / s.unary_calls, 1) for name, used in per.items()}
                for side, per in cpu.items()
            },
        }
        self._unary_target = target

    # -- 2. throughput -----------------------------------------------------------------------

    def throughput(self) -> None:
        s = self.settings
        target = getattr(self, "_unary_target", None)
        if target is None:
            source = self.workdir / "unary-src"
            build_small_repo(source)
            target, _, _ = self.seed_through_proxy("bench/unary.git", source)
        pair = sides(target, self.proxy_address)
        calls = {side.name: 0 for side in pair}
        seconds = {side.name: 0.0 for side in pair}
        latencies: dict[str, list[float]] = {side.name: [] for side in pair}
        meter = CpuMeter(self.pids(target))
        cpu: dict[str, dict[str, float]] = {
            side.name: dict.fromkeys(meter.pids, 0.0) for side in pair
        }
        with self.profiled("throughput"):
            for _ in range(s.throughput_rounds):
                for side in pair:
                    meter.start()
                    n, elapsed, lat = asyncio.run(
                        _drive_concurrently(side, s.concurrency, s.throughput_seconds)
                    )
                    for name, used in meter.stop().items():
                        cpu[side.name][name] += used
                    calls[side.name] += n
                    seconds[side.name] += elapsed
                    latencies[side.name] += lat
        rate = {name: calls[name] / seconds[name] for name in calls}
        self.results["throughput"] = {
            "rpc": "CommitService/FindCommit (revision main)",
            "concurrency": s.concurrency,
            "seconds_per_side": round(seconds["direct"], 1),
            "direct_calls_per_s": round(rate["direct"], 1),
            "proxy_calls_per_s": round(rate["proxy"], 1),
            "proxy_vs_direct": ratio(rate["proxy"], rate["direct"]),
            "direct_latency": Latency.of(latencies["direct"]).as_dict(),
            "proxy_latency": Latency.of(latencies["proxy"]).as_dict(),
            "cpu_us_per_call": {
                side: {name: round(1e6 * used / calls[side], 1) for name, used in per.items()}
                for side, per in cpu.items()
            },
        }

    # -- 3. clone --------------------------------------------------------------------------

    def clone(self) -> None:
        s = self.settings
        source = self.workdir / "clone-src.git"
        started = time.perf_counter()
        build_large_repo(source, s.clone_mb)
        build_s = time.perf_counter() - started
        target, seed_s, bundle_bytes = self.seed_through_proxy("bench/clone.git", source)
        tips = ref_tips(source)
        request = upload_pack_request(list(tips.values()))
        pair = sides(target, self.proxy_address)
        rates: dict[str, list[float]] = {side.name: [] for side in pair}
        pack_bytes = 0
        with self.profiled("clone"):
            for _ in range(s.clone_rounds):
                for side in pair:
                    seconds, stdout = self._upload_pack(side, request)
                    pack = pack_from_upload_pack(stdout)
                    if not pack_is_whole(pack):
                        raise RuntimeError(f"{side.name} clone returned a broken pack")
                    pack_bytes = len(pack)
                    rates[side.name].append(len(stdout) / seconds / 1e6)
        git_rates: dict[str, list[float]] = {side.name: [] for side in pair}
        for i in range(s.git_clone_rounds):
            for side in pair:
                dest = self.workdir / f"git-clone-{side.name}-{i}.git"
                seconds = self._git_clone(side, target, dest)
                cloned = ref_tips(dest)
                if cloned != tips:
                    raise RuntimeError(f"git clone {side.name}: refs differ from the source")
                git_rates[side.name].append(pack_bytes / seconds / 1e6)
                shutil.rmtree(dest)
        grpc_direct, grpc_proxy = _median(rates["direct"]), _median(rates["proxy"])
        git_direct, git_proxy = _median(git_rates["direct"]), _median(git_rates["proxy"])
        self.results["clone"] = {
            "node": target.node,
            "pack_mb": round(pack_bytes / 1e6, 1),
            "refs": len(tips),
            "build_s": round(build_s, 2),
            "seed_through_proxy_s": round(seed_s, 2),
            "seed_through_proxy_mb_per_s": round(bundle_bytes / seed_s / 1e6, 1),
            "grpc": {
                "rounds": s.clone_rounds,
                "direct_mb_per_s": round(grpc_direct, 1),
                "proxy_mb_per_s": round(grpc_proxy, 1),
                "proxy_vs_direct": ratio(grpc_proxy, grpc_direct),
                "samples": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
            },
            "git_clone": {
                "rounds": s.git_clone_rounds,
                "direct_mb_per_s": round(git_direct, 1),
                "proxy_mb_per_s": round(git_proxy, 1),
                "proxy_vs_direct": ratio(git_proxy, git_direct),
                "proxy_routing": "distributed over 3 up-to-date replicas (git-ssh sends no policy)",
            },
        }

    def _upload_pack(self, side: Side, request: bytes) -> tuple[float, bytes]:
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
        return time.perf_counter() - started, b"".join(out)

    def _git_clone(self, side: Side, target: Target, dest: Path) -> float:
        path = target.replica_path if side.name == "direct" else target.relative_path
        url = f"ssh://{side.address}/{path}"
        started = time.perf_counter()
        git("clone", "-q", "--bare", "--no-local", url, str(dest), env=self._ssh_env(side))
        return time.perf_counter() - started

    def _ssh_env(self, side: Side) -> dict[str, str]:
        return {
            "GIT_SSH_COMMAND": f"{sys.executable} -m gitquorum.cli.main git-ssh",
            "GIT_SSH_VARIANT": "ssh",
            "GITQUORUM_STORAGE": side.repository.storage_name,
        }

    # -- 4. push --------------------------------------------------------------------------

    def push(self) -> None:
        s = self.settings
        source = self.workdir / "push-src"
        build_small_repo(source)
        target, _, _ = self.seed_through_proxy("bench/push.git", source)
        # The one-node side: a repository of its own on the same node, outside the cluster's records.
        direct_path = "bench-direct/push.git"
        self.seed(
            target.node_address,
            shared_pb2.Repository(storage_name=target.node, relative_path=direct_path),
            make_bundle(source, self.workdir / "push-direct.bundle"),
        )
        direct = Side(
            "direct",
            target.node_address,
            shared_pb2.Repository(storage_name=target.node, relative_path=direct_path),
        )
        proxy = Side("proxy", self.proxy_address, target.via_proxy)
        pair = (direct, proxy)
        clones: dict[str, Path] = {}
        for side in pair:
            clones[side.name] = self.workdir / f"push-{side.name}"
            git("clone", "-q", str(source), str(clones[side.name]))
            url = f"ssh://{side.address}/{side.repository.relative_path}"
            git("remote", "set-url", "origin", url, cwd=clones[side.name])
        git_samples: dict[str, list[float]] = {side.name: [] for side in pair}
        grpc_samples: dict[str, list[float]] = {side.name: [] for side in pair}
        with self.profiled("push"):
            for i in range(s.pushes):
                # Alternate which side goes first so neither always follows the other.
                for side in pair if i % 2 == 0 else pair[::-1]:
                    work = clones[side.name]
                    self._commit(work, f"git-{i}", s.push_commits)
                    started = time.perf_counter()
                    git("push", "-q", "origin", "HEAD:main", cwd=work, env=self._ssh_env(side))
                    git_samples[side.name].append(time.perf_counter() - started)
                    old = git("rev-parse", "HEAD", cwd=work).decode().strip()
                    self._commit(work, f"grpc-{i}", s.push_commits)
                    grpc_samples[side.name].append(self._receive_pack(side, work, old))
        pushed = 2 * s.pushes
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
        git_direct, git_proxy = Latency.of(git_samples["direct"]), Latency.of(git_samples["proxy"])
        rpc_direct, rpc_proxy = (
            Latency.of(grpc_samples["direct"]),
            Latency.of(grpc_samples["proxy"]),
        )
        self.results["push"] = {
            "node": target.node,
            "pushes_per_side_and_method": s.pushes,
            "commits_per_push": s.push_commits,
            "git": {
                "direct": git_direct.as_dict(),
                "proxy": git_proxy.as_dict(),
                "proxy_vs_direct_p50": ratio(git_proxy.p50_ms, git_direct.p50_ms),
            },
            "grpc": {
                "direct": rpc_direct.as_dict(),
                "proxy": rpc_proxy.as_dict(),
                "proxy_vs_direct_p50": ratio(rpc_proxy.p50_ms, rpc_direct.p50_ms),
            },
            "generation_after": md.generation,
            "writes_through_proxy": pushed,
            "replicas_up_to_date": f"{up_to_date}/{len(md.replicas)}",
            "replica_checksums_equal": True,
        }

    def _commit(self, work: Path, tag: str, commits: int) -> None:
        for j in range(commits):
            (work / f"{tag}-{j}.txt").write_text(f"{tag} {j} {time.time_ns()}\n")
            git("add", "-A", cwd=work)
            git("commit", "-q", "-m", f"{tag} {j}", cwd=work)

    def _receive_pack(self, side: Side, work: Path, old: str) -> float:
        new = git("rev-parse", "HEAD", cwd=work).decode().strip()
        pack = git(
            "pack-objects", "--stdout", "--revs", "-q", cwd=work, stdin=f"{new}\n^{old}\n".encode()
        )
        stdin = receive_pack_request(old, new, "refs/heads/main", pack)
        stub = ssh_pb2_grpc.SSHServiceStub(self.channel(side.address))
        first = ssh_pb2.SSHReceivePackRequest(repository=side.repository, gl_id="user-1")

        def requests() -> Iterator[ssh_pb2.SSHReceivePackRequest]:
            yield first
            yield ssh_pb2.SSHReceivePackRequest(stdin=stdin)

        out = bytearray()
        started = time.perf_counter()
        for response in stub.SSHReceivePack(requests(), timeout=60):
            out += response.stdout
        elapsed = time.perf_counter() - started
        if b"ok refs/heads/main" not in out:
            raise RuntimeError(f"{side.name} push was not accepted: {bytes(out)[-300:]!r}")
        return elapsed

    def _checksum(self, address: str, repository: shared_pb2.Repository) -> str:
        stub = repository_pb2_grpc.RepositoryServiceStub(self.channel(address))
        request = repository_pb2.CalculateChecksumRequest(repository=repository)
        return str(stub.CalculateChecksum(request, timeout=30).checksum)


async def _drive_concurrently(
    side: Side, concurrency: int, seconds: float
) -> tuple[int, float, list[float]]:
    """FindCommit from ``concurrency`` loops on one channel for ``seconds``."""
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


def _median(values: Sequence[float]) -> float:
    return percentile(values, 50)


# -- report ------------------------------------------------------------------------------------


def render_markdown(report: dict[str, Any]) -> str:
    r = report["results"]
    parts = ["## Machine", "", machine_table(report["machine"]), ""]
    rows: list[Sequence[object]] = []
    if "unary" in r:
        u = r["unary"]
        rows.append(
            (
                "FindCommit p50, concurrency 1 (ms)",
                u["direct"]["p50_ms"],
                u["proxy"]["p50_ms"],
                f"+{u['added_p50_ms']:.3f} ms (x{u['p50_ratio']:.2f})",
            )
        )
        rows.append(
            (
                "FindCommit p99, concurrency 1 (ms)",
                u["direct"]["p99_ms"],
                u["proxy"]["p99_ms"],
                f"+{u['added_p99_ms']:.3f} ms (x{u['p99_ratio']:.2f})",
            )
        )
    if "throughput" in r:
        t = r["throughput"]
        rows.append(
            (
                f"FindCommit calls/s, concurrency {t['concurrency']}",
                t["direct_calls_per_s"],
                t["proxy_calls_per_s"],
                f"{t['proxy_vs_direct']:.0%}",
            )
        )
        rows.append(
            (
                f"FindCommit p50 / p99 at concurrency {t['concurrency']} (ms)",
                f"{t['direct_latency']['p50_ms']} / {t['direct_latency']['p99_ms']}",
                f"{t['proxy_latency']['p50_ms']} / {t['proxy_latency']['p99_ms']}",
                "",
            )
        )
    if "clone" in r:
        c = r["clone"]
        rows.append(
            (
                f"clone {c['pack_mb']} MB, SSHUploadPack gRPC client (MB/s)",
                c["grpc"]["direct_mb_per_s"],
                c["grpc"]["proxy_mb_per_s"],
                f"{c['grpc']['proxy_vs_direct']:.0%}",
            )
        )
        rows.append(
            (
                f"clone {c['pack_mb']} MB, git clone via git-ssh (MB/s)",
                c["git_clone"]["direct_mb_per_s"],
                c["git_clone"]["proxy_mb_per_s"],
                f"{c['git_clone']['proxy_vs_direct']:.0%}",
            )
        )
    if "push" in r:
        p = r["push"]
        for key, label in (("git", "git push via git-ssh"), ("grpc", "SSHReceivePack gRPC client")):
            d, x = p[key]["direct"], p[key]["proxy"]
            rows.append(
                (
                    f"push, {label}, p50 (ms)",
                    d["p50_ms"],
                    x["p50_ms"],
                    f"x{p[key]['proxy_vs_direct_p50']:.2f}",
                )
            )
            rows.append(
                (
                    f"push, {label}, p99 (ms)",
                    d["p99_ms"],
                    x["p99_ms"],
                    f"x{ratio(x['p99_ms'], d['p99_ms']):.2f}",
                )
            )
    parts += [
        "## Results",
        "",
        markdown_table(("measurement", "direct", "proxy", "proxy vs direct"), rows),
        "",
    ]
    targets = [asdict(c) for c in checks(r)]
    if targets:
        parts += [
            "## Targets",
            "",
            markdown_table(
                ("target", "goal", "measured", "met"),
                [
                    (t["name"], t["target"], t["measured"], "yes" if t["met"] else "**no**")
                    for t in targets
                ],
            ),
            "",
        ]
    cpu_rows = []
    for phase in ("unary", "throughput"):
        if phase in r:
            for side, per in r[phase]["cpu_us_per_call"].items():
                cpu_rows.append((phase, side, per["client"], per["proxy"], per["node"]))
    if cpu_rows:
        parts += [
            "## CPU per call (microseconds)",
            "",
            markdown_table(("phase", "side", "client", "proxy", "node"), cpu_rows),
            "",
        ]
    details = []
    if "clone" in r:
        c = r["clone"]
        details.append(
            f"- clone repository: {c['pack_mb']} MB pack, {c['refs']} refs; built in {c['build_s']} s; seeded through the proxy (3 replicas) in {c['seed_through_proxy_s']} s ({c['seed_through_proxy_mb_per_s']} MB/s); gRPC samples MB/s {c['grpc']['samples']}"
        )
    if "push" in r:
        p = r["push"]
        details.append(
            f"- push: {p['pushes_per_side_and_method']} pushes per side and method, {p['commits_per_push']} commits each; after them the repository is at generation {p['generation_after']} with {p['replicas_up_to_date']} replicas up to date and equal checksums"
        )
    if "cluster" in r:
        c = r["cluster"]
        details.append(
            f"- cluster: {c['etcd_members']} etcd member, {c['nodes']} nodes, {c['proxies']} proxy, replication factor {c['replication_factor']}; {c['proxy_config']}; started in {c['start_s']} s"
        )
    details.append(f"- settings: {report['settings']}")
    parts += ["## Details", "", *details, ""]
    for phase, prof in r.get("profile", {}).items():
        parts += [f"## Proxy profile: {phase} ({prof['samples']} samples, {prof['file']})", ""]
        parts += [
            markdown_table(
                ("self %", "function (file)"), [(share, frame) for frame, share in prof["self"]]
            ),
            "",
        ]
        parts += [
            markdown_table(
                ("inclusive %", "function (file)"),
                [(share, frame) for frame, share in prof["inclusive"]],
            ),
            "",
        ]
    return "\n".join(parts)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="proxy_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 60 s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the proxy with py-spy per phase into DIR",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where the cluster and repositories live (default: a temporary directory)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--clone-mb", type=int, help="size of the clone repository in MB")
    parser.add_argument("--pushes", type=int, help="pushes per side and method")
    args = parser.parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(unknown)}")
    args.phases = phases
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    base = Settings.quick() if args.quick else Settings()
    overrides: dict[str, Any] = {}
    if args.clone_mb:
        overrides["clone_mb"] = args.clone_mb
    if args.pushes:
        overrides["pushes"] = args.pushes
    return Settings(**{**asdict(base), **overrides})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gitquorum-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": machine_info(), "settings": asdict(settings)}
    bench = Bench(settings, workdir, args.profile, args.profile_native)
    started = time.perf_counter()
    try:
        _progress("starting cluster (etcd, 3 nodes, 1 proxy)")
        bench.start()
        steps: dict[str, Callable[[], None]] = {
            "unary": bench.unary,
            "throughput": bench.throughput,
            "clone": bench.clone,
            "push": bench.push,
        }
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
    report["results"] = bench.results
    report["targets"] = [asdict(c) for c in checks(bench.results)]
    report["total_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_markdown(report))
        print(f"\n(total {report['total_s']} s)")
    return 0


def _progress(message: str) -> None:
    print(f"[proxy_bench] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
