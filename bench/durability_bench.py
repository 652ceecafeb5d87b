"""What the node's durability settings cost a push, side by side in one run.

Two bare repositories on the same disk, one with the node's git durability
settings (``gitquorum.storage.git.DURABILITY_CONFIG``: loose objects, packs,
derived metadata and references fsynced) in its configuration, one with git's
defaults. One work tree pushes a new small commit to each in turn, interleaved,
so both see the same machine state; the script reports the push latency of
each and their ratio. (A local push strips configuration passed through the
environment, so the settings go into the receiving repository's own config:
the same settings the node passes to every git it runs.)

Usage::

    python bench/durability_bench.py [--pushes 200] [--files 3] [--dir /path/on/the/disk/to/test]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from gitquorum.storage.git import DURABILITY_CONFIG

ENV = {
    **os.environ,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=ENV, check=True, capture_output=True, text=True
    ).stdout


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=200, help="pushes to each repository")
    parser.add_argument("--files", type=int, default=3, help="new files per commit")
    parser.add_argument("--dir", default=None, help="where to create the repositories")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="durability-bench-", dir=args.dir) as scratch:
        root = Path(scratch)
        targets = {"durable": root / "durable.git", "git defaults": root / "plain.git"}
        for path in targets.values():
            git("init", "-q", "--bare", str(path), cwd=root)
        for key, value in DURABILITY_CONFIG.items():
            git("config", key, value, cwd=targets["durable"])
        work = root / "work"
        git("init", "-q", "-b", "main", str(work), cwd=root)
        timings: dict[str, list[float]] = {name: [] for name in targets}
        for round_number in range(args.pushes):
            for name, path in targets.items():
                for i in range(args.files):
                    (work / f"f{i}.txt").write_text(f"{name} {round_number} {i}\n")
                git("add", "-A", cwd=work)
                git("commit", "-q", "-m", f"{name} {round_number}", cwd=work)
                started = time.perf_counter()
                git("push", "-q", "--force", str(path), "HEAD:refs/heads/main", cwd=work)
                timings[name].append((time.perf_counter() - started) * 1000)

    figures = {
        name: {
            "p50_ms": round(statistics.median(values), 2),
            "p99_ms": round(percentile(values, 0.99), 2),
            "mean_ms": round(statistics.fmean(values), 2),
        }
        for name, values in timings.items()
    }
    ratio = figures["durable"]["p50_ms"] / figures["git defaults"]["p50_ms"]
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "pushes": args.pushes,
        "files_per_commit": args.files,
        "figures": figures,
        "p50_ratio_durable_to_defaults": round(ratio, 2),
        "git": git("version", cwd=Path.cwd()).strip(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
