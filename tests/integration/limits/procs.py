"""What a test can learn about a server process from /proc: children, memory, fds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# git commands that run for one RPC (one pack or archive stream): none may
# outlive the call. Long-lived ``cat-file --batch`` processes are a cache.
PER_CALL_GIT = ("upload-pack", "receive-pack", "pack-objects", "index-pack", "upload-archive")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    cmdline: str


def processes() -> list[Proc]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited while we looked
        # The command name in parentheses may hold spaces: split after it.
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] == "Z":
            continue  # a zombie holds no resources worth counting here
        found.append(Proc(int(entry.name), int(fields[1]), cmdline.strip()))
    return found


def descendants(pid: int) -> list[Proc]:
    """Every live process below ``pid`` (git runs in its own session, still a child)."""
    by_parent: dict[int, list[Proc]] = {}
    for proc in processes():
        by_parent.setdefault(proc.ppid, []).append(proc)
    found: list[Proc] = []
    stack = [pid]
    while stack:
        for child in by_parent.get(stack.pop(), []):
            found.append(child)
            stack.append(child.pid)
    return found


def git_processes(pid: int, kinds: tuple[str, ...] = PER_CALL_GIT) -> list[Proc]:
    """Per-call git processes (``kinds``) below ``pid``."""
    return [
        p
        for p in descendants(pid)
        if "git" in p.cmdline and any(kind in p.cmdline for kind in kinds)
    ]


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])  # kB
    raise KeyError(field)


def rss_mb(pid: int) -> float:
    return _status(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the highest resident set size since the process started."""
    return _status(pid, "VmHWM") / 1024


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
