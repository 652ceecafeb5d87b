"""What a storage node costs per read, against a bare grpc.aio echo server, in one run.

Starts one real storage node (``gitquorum node``, real git) serving two
repositories built for the run: ``bench/read.git``, a small repository with
some history, and ``bench/refs.git``, the same history with 10,000 branches
(packed). Next to it runs a bare grpc.aio echo server (this file,
``--serve-echo``): a generic handler that answers every method with the bytes
the node answered during the warm-up, message for message, and does nothing
else. It serves the node's method names, so the client calls both with the
same stubs and decodes the same answers: the difference between the two is
what the node does beyond the gRPC stack.

Accessors, each at concurrency 1 from a synchronous client, switching between
the node and the echo server every batch so that drift on the machine hits
both alike:

* CommitService/FindCommit (revision ``main``)
* RefService/RefExists (``refs/heads/main``)
* RefService/FindDefaultBranchName
* CommitService/TreeEntry (``main``, ``README.md``, whole blob)
* BlobService/GetBlob (README.md's blob, whole)
* RefService/FindLocalBranches on the 10,000-branch repository: the node does
  not implement FindAllBranches; FindLocalBranches is its listing of branches
  with their commits. Its answer (about 10,000 commits in 100 messages) is not
  a small answer: the echo server returns the same messages, so the ratio
  compares the node with a server that only sends that much data.

For each accessor the report gives p50/p99 of both, the ratio node/echo
(target: at most 1.5 at p50 for small answers) and the CPU per call of the
node process (its own, and with the git commands it waited for) and of the
echo server, read from /proc.

    python bench/node_bench.py             # full run, markdown on stdout (~70 s)
    python bench/node_bench.py --quick     # smoke run (< 40 s)
    python bench/node_bench.py --json      # JSON instead of markdown
    python bench/node_bench.py --render report.json   # markdown of a saved --json run
    python bench/node_bench.py --profile /tmp/prof    # + py-spy of the node

Progress goes to stderr. Figures from a ``--profile`` run include the
sampler's overhead: record figures from a run without it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
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
    build_small_repo,
    git,
    hot_spots,
    machine_info,
    machine_table,
    markdown_table,
    ratio,
)
from gitquorum.gitaly import (  # noqa: E402
    blob_pb2,
    blob_pb2_grpc,
    commit_pb2,
    commit_pb2_grpc,
    ref_pb2,
    ref_pb2_grpc,
    shared_pb2,
)
from gitquorum.wire.options import message_size_options  # noqa: E402

STORAGE = "bench"
READ_REPO = "bench/read.git"
REFS_REPO = "bench/refs.git"
CHANNEL_OPTIONS = message_size_options()
# Node latency at p50 may be this many times the echo server's (small answers).
TARGET_RATIO = 1.5


@dataclass(frozen=True)
class Settings:
    calls: int = 3000  # per accessor and side
    batch: int = 100  # calls per side before switching
    large_calls: int = 20  # FindLocalBranches on 10,000 branches, per side
    large_batch: int = 2
    branches: int = 10_000
    commits: int = 20
    warmup: int = 100
    node_log_level: str = "info"

    @classmethod
    def quick(cls) -> Settings:
        return cls(calls=300, batch=50, large_calls=6, large_batch=3, branches=2_000, warmup=30)


@dataclass(frozen=True)
class Accessor:
    """One accessor: how to call it, on which repository, and whether its answer is small."""

    name: str
    title: str
    repo: str
    streaming: bool
    small: bool
    make: Callable[[grpc.Channel, shared_pb2.Repository, dict[str, str]], Callable[[], Any]]


def _find_commit(channel: grpc.Channel, repo: shared_pb2.Repository, _: dict[str, str]) -> Any:
    stub = commit_pb2_grpc.CommitServiceStub(channel)
    request = commit_pb2.FindCommitRequest(repository=repo, revision=b"main")
    return lambda: stub.FindCommit(request)


def _ref_exists(channel: grpc.Channel, repo: shared_pb2.Repository, _: dict[str, str]) -> Any:
    stub = ref_pb2_grpc.RefServiceStub(channel)
    request = ref_pb2.RefExistsRequest(repository=repo, ref=b"refs/heads/main")
    return lambda: stub.RefExists(request)


def _default_branch(channel: grpc.Channel, repo: shared_pb2.Repository, _: dict[str, str]) -> Any:
    stub = ref_pb2_grpc.RefServiceStub(channel)
    request = ref_pb2.FindDefaultBranchNameRequest(repository=repo)
    return lambda: stub.FindDefaultBranchName(request)


def _tree_entry(channel: grpc.Channel, repo: shared_pb2.Repository, _: dict[str, str]) -> Any:
    stub = commit_pb2_grpc.CommitServiceStub(channel)
    request = commit_pb2.TreeEntryRequest(repository=repo, revision=b"main", path=b"README.md")
    return lambda: list(stub.TreeEntry(request))


def _get_blob(channel: grpc.Channel, repo: shared_pb2.Repository, facts: dict[str, str]) -> Any:
    stub = blob_pb2_grpc.BlobServiceStub(channel)
    request = blob_pb2.GetBlobRequest(repository=repo, oid=facts["readme_blob"], limit=-1)
    return lambda: list(stub.GetBlob(request))


def _local_branches(channel: grpc.Channel, repo: shared_pb2.Repository, _: dict[str, str]) -> Any:
    stub = ref_pb2_grpc.RefServiceStub(channel)
    request = ref_pb2.FindLocalBranchesRequest(repository=repo)
    return lambda: list(stub.FindLocalBranches(request))


ACCESSORS = (
    Accessor(
        "FindCommit",
        "CommitService/FindCommit (revision main)",
        READ_REPO,
        False,
        True,
        _find_commit,
    ),
    Accessor(
        "RefExists",
        "RefService/RefExists (refs/heads/main)",
        READ_REPO,
        False,
        True,
        _ref_exists,
    ),
    Accessor(
        "FindDefaultBranchName",
        "RefService/FindDefaultBranchName",
        READ_REPO,
        False,
        True,
        _default_branch,
    ),
    Accessor(
        "TreeEntry",
        "CommitService/TreeEntry (main, README.md)",
        READ_REPO,
        True,
        True,
        _tree_entry,
    ),
    Accessor(
        "GetBlob",
        "BlobService/GetBlob (README.md's blob, limit -1)",
        READ_REPO,
        True,
        True,
        _get_blob,
    ),
    Accessor(
        "FindLocalBranches",
        "RefService/FindLocalBranches (10,000 branches; stands for FindAllBranches)",
        REFS_REPO,
        True,
        False,
        _local_branches,
    ),
)
# The gRPC method each accessor calls (the echo server answers by method name).
METHODS = {
    "FindCommit": "/gitaly.CommitService/FindCommit",
    "RefExists": "/gitaly.RefService/RefExists",
    "FindDefaultBranchName": "/gitaly.RefService/FindDefaultBranchName",
    "TreeEntry": "/gitaly.CommitService/TreeEntry",
    "GetBlob": "/gitaly.BlobService/GetBlob",
    "FindLocalBranches": "/gitaly.RefService/FindLocalBranches",
}


# -- the echo server ----------------------------------------------------------------------


def serve_echo(canned_file: str) -> None:
    """Answer each method with its canned messages (raw bytes), nothing else; print the port."""
    canned: dict[str, dict[str, Any]] = json.loads(Path(canned_file).read_text())

    async def serve() -> None:
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for method, entry in canned.items():
            messages = [base64.b64decode(m) for m in entry["messages"]]
            if entry["streaming"]:

                def stream_handler(msgs: list[bytes]) -> grpc.RpcMethodHandler:
                    async def stream(request: bytes, context: Any) -> Any:
                        for message in msgs:
                            yield message

                    return grpc.unary_stream_rpc_method_handler(stream)

                handlers[method] = stream_handler(messages)
            else:

                def unary_handler(answer: bytes) -> grpc.RpcMethodHandler:
                    async def unary(request: bytes, context: Any) -> bytes:
                        return answer

                    return grpc.unary_unary_rpc_method_handler(unary)

                handlers[method] = unary_handler(messages[0])

        class Echo(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                return handlers.get(details.method)

        server = grpc.aio.server(options=CHANNEL_OPTIONS)
        server.add_generic_rpc_handlers((Echo(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await server.wait_for_termination()

    asyncio.run(serve())


class Child:
    """A server process of the bench: the node or the echo server."""

    def __init__(self, proc: subprocess.Popen[bytes], address: str) -> None:
        self.proc = proc
        self.address = address

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_echo(canned_file: Path) -> Child:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-echo", str(canned_file)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.isdigit():
        proc.kill()
        raise RuntimeError("the echo server did not start")
    return Child(proc, f"127.0.0.1:{int(line)}")


def start_node(storage: Path, run_dir: Path, log_level: str) -> Child:
    config = run_dir / "node.yaml"
    config.write_text(
        json.dumps(
            {
                "listen": "127.0.0.1:0",
                "metrics_listen": "127.0.0.1:0",
                "log_level": log_level,
                "storages": [{"name": STORAGE, "path": str(storage)}],
            }
        )
    )
    ready = run_dir / "node.ready"
    log = open(run_dir / "node.log", "wb")
    env = {k: v for k, v in os.environ.items() if k != "GITQUORUM_NODE_TOKEN"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gitquorum.cli.main",
            "node",
            "--config",
            str(config),
            "--ready-file",
            str(ready),
        ],
        stdout=log,
        stderr=log,
        env=env,
    )
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ready.exists() and ready.read_text().strip():
            return Child(proc, ready.read_text().split()[0])
        if proc.poll() is not None:
            raise RuntimeError(f"the node exited: {(run_dir / 'node.log').read_text()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the node did not start within 60 s")


# -- repositories ---------------------------------------------------------------------------


def build_repositories(workdir: Path, s: Settings) -> tuple[Path, dict[str, str]]:
    """The storage root with both repositories, and facts the requests need."""
    source = workdir / "source"
    build_small_repo(source, commits=s.commits)
    storage = workdir / "storage"
    (storage / "bench").mkdir(parents=True)
    read = storage / READ_REPO
    git("clone", "-q", "--bare", str(source), str(read))
    refs = storage / REFS_REPO
    git("clone", "-q", "--bare", str(source), str(refs))
    commits = git("rev-list", "main", cwd=refs).decode().split()
    lines = [
        f"create refs/heads/branch-{i:05d} {commits[i % len(commits)]}\n"
        for i in range(s.branches - 1)  # main is the 10,000th
    ]
    git("update-ref", "--stdin", cwd=refs, stdin="".join(lines).encode())
    git("pack-refs", "--all", cwd=refs)
    blob = git("rev-parse", "main:README.md", cwd=read).decode().strip()
    return storage, {"readme_blob": blob}


# -- the measurement ------------------------------------------------------------------------


def _messages(answer: Any) -> list[Any]:
    return answer if isinstance(answer, list) else [answer]


def _serialized(answer: Any) -> list[bytes]:
    return [m.SerializeToString() for m in _messages(answer)]


@dataclass
class Bench:
    settings: Settings
    workdir: Path
    profile_dir: Path | None = None
    only: Sequence[str] = ()

    @property
    def accessors(self) -> list[Accessor]:
        return [a for a in ACCESSORS if not self.only or a.name in self.only]

    def run(self) -> dict[str, Any]:
        s = self.settings
        results: dict[str, Any] = {}
        started = time.perf_counter()
        storage, facts = build_repositories(self.workdir, s)
        results["setup_s"] = round(time.perf_counter() - started, 1)
        run_dir = self.workdir / "run"
        run_dir.mkdir()
        node = start_node(storage, run_dir, s.node_log_level)
        echo: Child | None = None
        channels: list[grpc.Channel] = []
        try:
            node_channel = grpc.insecure_channel(node.address, options=CHANNEL_OPTIONS)
            channels.append(node_channel)
            node_calls = self._calls(node_channel, facts)
            # The node's answers, once warm, become the echo server's.
            canned: dict[str, Any] = {}
            answers: dict[str, list[bytes]] = {}
            for a in self.accessors:
                warmup = s.warmup if a.small else 3
                for _ in range(warmup):
                    answer = node_calls[a.name]()
                answers[a.name] = _serialized(answer)
                canned[METHODS[a.name]] = {
                    "streaming": a.streaming,
                    "messages": [base64.b64encode(m).decode() for m in answers[a.name]],
                }
            canned_file = run_dir / "canned.json"
            canned_file.write_text(json.dumps(canned))
            echo = start_echo(canned_file)
            echo_channel = grpc.insecure_channel(echo.address, options=CHANNEL_OPTIONS)
            channels.append(echo_channel)
            echo_calls = self._calls(echo_channel, facts)
            for a in self.accessors:
                for _ in range(s.warmup if a.small else 2):
                    answer = echo_calls[a.name]()
                if _serialized(answer) != answers[a.name]:
                    raise RuntimeError(f"the echo server's {a.name} differs from the node's")
            results["answers"] = {
                a.name: {
                    "messages": len(answers[a.name]),
                    "bytes": sum(len(m) for m in answers[a.name]),
                }
                for a in self.accessors
            }
            spy = None
            if self.profile_dir is not None:
                spy = PySpy(node.pid, self.profile_dir / "node.txt").start()
            try:
                results["accessors"] = self._measure(node, echo, node_calls, echo_calls)
            finally:
                if spy is not None:
                    spy.stop()
                    results["profile"] = {"file": str(spy.output), **hot_spots(spy.output)}
        finally:
            for channel in channels:
                channel.close()
            if echo is not None:
                echo.close()
            node.close()
        return results

    def _calls(self, channel: grpc.Channel, facts: dict[str, str]) -> dict[str, Callable[[], Any]]:
        """One ready-made call per accessor on ``channel``."""
        return {
            a.name: a.make(
                channel, shared_pb2.Repository(storage_name=STORAGE, relative_path=a.repo), facts
            )
            for a in self.accessors
        }

    def _measure(
        self,
        node: Child,
        echo: Child,
        node_calls: dict[str, Callable[[], Any]],
        echo_calls: dict[str, Callable[[], Any]],
    ) -> dict[str, Any]:
        s = self.settings
        sides = {"node": node_calls, "echo": echo_calls}
        out: dict[str, Any] = {}
        for a in self.accessors:
            total = s.calls if a.small else s.large_calls
            batch = s.batch if a.small else s.large_batch
            samples: dict[str, list[float]] = {side: [] for side in sides}
            # Own CPU of each server, and the node's with the git commands it waited for.
            cpu = {"node": 0.0, "node_with_git": 0.0, "echo": 0.0}
            own = CpuMeter({"node": node.pid, "echo": echo.pid})
            with_git = CpuMeter({"node_with_git": node.pid}, children=True)
            done = 0
            while done < total:
                n = min(batch, total - done)
                for side, calls in sides.items():
                    call, times = calls[a.name], samples[side]
                    own.start()
                    with_git.start()
                    for _ in range(n):
                        t0 = time.perf_counter()
                        call()
                        times.append(time.perf_counter() - t0)
                    used = own.stop()
                    cpu[side] += used[side]
                    if side == "node":
                        cpu["node_with_git"] += with_git.stop()["node_with_git"]
                done += n
            node_lat, echo_lat = Latency.of(samples["node"]), Latency.of(samples["echo"])
            p50_ratio = ratio(node_lat.p50_ms, echo_lat.p50_ms)
            out[a.name] = {
                "title": a.title,
                "small": a.small,
                "calls_per_side": total,
                "node": node_lat.as_dict(),
                "echo": echo_lat.as_dict(),
                "ratio_p50": p50_ratio,
                "ratio_p99": ratio(node_lat.p99_ms, echo_lat.p99_ms),
                "met": p50_ratio <= TARGET_RATIO if a.small else None,
                "cpu_us_per_call": {k: round(1e6 * v / total, 1) for k, v in cpu.items()},
            }
            _progress(
                f"{a.name}: node p50 {node_lat.p50_ms:.3f} ms, echo {echo_lat.p50_ms:.3f} ms,"
                f" ratio {p50_ratio:.2f}"
            )
        return out


# -- reporting ------------------------------------------------------------------------------


def render_markdown(report: dict[str, Any]) -> str:
    r = report["results"]
    lines = [
        "### Storage node against a bare grpc.aio echo server",
        "",
        machine_table(report["machine"]),
        "",
        f"Settings: `{json.dumps(report['settings'])}`",
        "",
    ]
    rows = []
    for name, a in r["accessors"].items():
        cpu = a["cpu_us_per_call"]
        target = ("met" if a["met"] else "**missed**") if a["small"] else "n/a (large answer)"
        rows.append(
            [
                name,
                a["calls_per_side"],
                f"{a['node']['p50_ms']:.3f} / {a['node']['p99_ms']:.3f}",
                f"{a['echo']['p50_ms']:.3f} / {a['echo']['p99_ms']:.3f}",
                f"{a['ratio_p50']:.2f}",
                f"{a['ratio_p99']:.2f}",
                target,
                f"{cpu['node']:.0f} ({cpu['node_with_git']:.0f})",
                f"{cpu['echo']:.0f}",
            ]
        )
    lines.append(
        markdown_table(
            (
                "accessor",
                "calls/side",
                "node p50 / p99 ms",
                "echo p50 / p99 ms",
                "ratio p50",
                "ratio p99",
                f"p50 ratio <= {TARGET_RATIO}",
                "node CPU µs/call (with git)",
                "echo CPU µs/call",
            ),
            rows,
        )
    )
    lines += ["", "Answers (what the echo server returns for each):", ""]
    lines.append(
        markdown_table(
            ("accessor", "messages", "bytes"),
            [[n, v["messages"], v["bytes"]] for n, v in r["answers"].items()],
        )
    )
    if "profile" in r:
        p = r["profile"]
        lines += ["", f"py-spy of the node ({p['samples']} samples), own time:", ""]
        lines.append(markdown_table(("function", "% samples"), p["self"]))
        lines += ["", "Project functions, inclusive:", ""]
        lines.append(markdown_table(("function", "% samples"), p["focus"]))
    lines += ["", f"Total: {report['total_s']} s."]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="node_bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 40 s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--calls", type=int, help="calls per small accessor and side")
    parser.add_argument(
        "--only", help=f"comma-separated subset of {','.join(a.name for a in ACCESSORS)}"
    )
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the node into DIR")
    parser.add_argument(
        "--node-log-level", default="info", help="the node's log level (default info)"
    )
    parser.add_argument("--workdir", type=Path, help="repositories and logs (default: temporary)")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="print the markdown of a saved --json report"
    )
    parser.add_argument("--serve-echo", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.calls is not None and args.calls < 1:
        parser.error("--calls must be at least 1")
    names = {a.name for a in ACCESSORS}
    args.only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else []
    unknown = [n for n in args.only if n not in names]
    if unknown:
        parser.error(f"unknown accessor(s): {', '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return 0
    if args.render:
        print(render_markdown(json.loads(args.render.read_text())))
        return 0
    base = Settings.quick() if args.quick else Settings()
    overrides: dict[str, Any] = {"node_log_level": args.node_log_level}
    if args.calls:
        overrides["calls"] = args.calls
    settings = Settings(**{**asdict(base), **overrides})
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gitquorum-node-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": machine_info(), "settings": asdict(settings)}
    started = time.perf_counter()
    try:
        report["results"] = Bench(settings, workdir, args.profile, args.only).run()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report["machine"]["loadavg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2) if args.json else render_markdown(report))
    return 0


def _progress(message: str) -> None:
    print(f"[node_bench] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
