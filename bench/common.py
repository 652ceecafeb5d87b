"""Helpers shared by the benchmarks: machine facts, percentiles, markdown tables."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # Fields after the command name start at field 3 (state); utime and stime are 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by a set of processes between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        self.used = {name: cpu_seconds(pid) - self._start[name] for name, pid in self.pids.items()}
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
                "--nonblocking",
                "--output",
                str(self.output),
                *(["--native"] if self.native else []),
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


def hot_spots(collapsed: Path, top: int = 12) -> dict[str, Any]:
    """Top functions by own samples and by inclusive samples from py-spy raw output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    if not collapsed.exists():
        return {"samples": 0, "self": [], "inclusive": []}
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
            inclusive[frame] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(100 * n / total, 1)) for frame, n in counter.most_common(top)]

    return {"samples": total, "self": share(own), "inclusive": share(inclusive)}
