"""Helpers shared by the benchmarks.

Machine facts, percentiles, markdown tables, CPU accounting and py-spy sampling of
the processes under test, and the git side: building repositories and speaking
the pack protocol (pkt-lines) to drive upload-pack and receive-pack directly.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.stdout or out.stderr else ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / (1024 * 1024), 1)
    except OSError:
        pass
    return 0.0


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare figures across machines."""
    import grpc

    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "ram_gib": _ram_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "git": _first_line(["git", "--version"]).removeprefix("git version "),
        "etcd": _first_line(["etcd", "--version"]).removeprefix("etcd Version: "),
        "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "executable": sys.executable,
    }


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Latency:
    """Latency summary in milliseconds."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        ms = [s * 1000 for s in seconds]
        return cls(
            count=len(ms),
            p50_ms=round(percentile(ms, 50), 3),
            p90_ms=round(percentile(ms, 90), 3),
            p99_ms=round(percentile(ms, 99), 3),
            mean_ms=round(sum(ms) / len(ms), 3) if ms else float("nan"),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join("---" for _ in headers) + " |",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_table(info: dict[str, Any]) -> str:
    rows = [(key, info[key]) for key in info if key != "executable"]
    return markdown_table(("machine", "value"), rows)


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU time a process has used so far (0 when it is gone).

    ``children`` adds the CPU of the children it has waited for: the git
    commands a node runs.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14 to 17.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by a set of processes between start() and stop()."""

    def __init__(self, pids: dict[str, int], children: bool = False) -> None:
        self.pids = pids
        self.children = children
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {name: cpu_seconds(pid, self.children) for name, pid in self.pids.items()}

    def start(self) -> CpuMeter:
        self._start = self._now()
        return self

    def stop(self) -> dict[str, float]:
        now = self._now()
        self.used = {name: now[name] - self._start[name] for name in self.pids}
        return self.used


class PySpy:
    """Samples one Python process with py-spy while a phase runs.

    Raw (collapsed-stack) output, one file per phase; ``hot_spots`` turns it
    into the functions that used the most samples.
    """

    def __init__(self, pid: int, output: Path, rate: int = 250, native: bool = False) -> None:
        self.pid = pid
        self.output = output
        self.rate = rate
        # Native frames show where time goes inside grpc's Cython and C core.
        self.native = native
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PySpy:
        exe = shutil.which("py-spy")
        if exe is None:
            raise RuntimeError("py-spy not found: pip install py-spy")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.output.with_suffix(".log"), "wb")
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--nolineno",
                "--output",
                str(self.output),
                # Native stacks need the process paused while sampled.
                *(["--native"] if self.native else ["--nonblocking"]),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()  # the child keeps its own copy of the descriptor
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        # py-spy writes its output when interrupted, as after Ctrl-C.
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def hot_spots(collapsed: Path, top: int = 12, focus: str = "gitquorum/") -> dict[str, Any]:
    """Where a py-spy raw (collapsed-stack) profile spends its samples.

    ``self``: functions by own samples, whatever their package. ``focus``:
    functions whose file path contains ``focus`` by inclusive samples, minus
    the entry points every stack passes through, so the project's own costly
    calls stand out from the event loop and grpc internals.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    if not collapsed.exists():
        return {"samples": 0, "self": [], "focus": []}
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # Drop the thread name py-spy may put first; keep "function (file)" frames.
        frames = [f for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if focus in frame and f"{focus}cli/" not in frame:
                inclusive[frame] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(100 * n / total, 1)) for frame, n in counter.most_common(top)]

    return {"samples": total, "self": share(own), "focus": share(inclusive)}


GIT_ENV = {
    "GIT_AUTHOR_NAME": "Bench Author",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "Bench Committer",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}


# -- git and the pack protocol -----------------------------------------------------


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
        len(pack) >= 32 and pack[:4] == b"PACK" and hashlib.sha1(pack[:-20]).digest() == pack[-20:]
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
