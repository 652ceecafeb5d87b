"""What a failed fault run prints about each violation: what is around its cause.

A violation found at the end of the run (a lost write, a repository that did
not converge, a phantom in the final refs) is stamped with the end of the run;
the operations of the run's last seconds say nothing about it. What does is
named in its detail: the ref (``create of refs/heads/w1/3=... acknowledged at
123.45 via ...``, ``refs/heads/shared at position ...``) and the time the
write was acknowledged or the read ran. :func:`cause` finds the operations on
that ref of that repository -- the one the detail names and those around it --
and the faults whose window overlaps them; without a ref, the repository's
last writes and the faults that touched it. :class:`Logs` picks the log lines
of the processes about that repository: a proxy's lines name its relative
path, a node's carry the correlation id of the proxy's call.

Everything here is pure: operations, faults and log lines in, lines of text out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tests.chaos.workload import Op
from tests.faults.base import Fault
from tests.faults.checker import Violation

# Operations shown per violation, about two thirds of them up to the one the
# detail names, the rest after it.
OPS_SHOWN = 15
# Seconds around the time a detail names within which the repository's
# operations are shown when it names no ref, and around the operations shown
# within which log lines are.
NEAR = 5.0
# Seconds before and after the operations shown within which a fault is listed.
FAULT_MARGIN = 10.0
LOG_LINES = 20
# Operations shown when the run stopped on an exception.
LAST_OPS = 30

_REF = re.compile(r"refs/[^\s=,;:'\"()\[\]]+")
_ACKNOWLEDGED = re.compile(r"acknowledged at (\d+\.\d+)")
_SPAN = re.compile(r"\[(\d+\.\d+)-(\d+\.\d+)\]")
_RELATIVE = re.compile(r'"relative_path": "([^"]*)"')
_CORRELATION = re.compile(r'"correlation_id": "([^"]*)"')
_TIME = re.compile(r'"time": "([^"]*)"')


@dataclass
class Cause:
    """The operations and faults around one violation's cause."""

    ref: str  # the ref its detail names ("" when none of the repository's ops is on one)
    ops: list[Op] = field(default_factory=list)  # by start
    faults: list[Fault] = field(default_factory=list)  # by start
    anchor: Op | None = None  # the operation the detail names, when found
    total: int = 0  # operations there were to choose from

    def window(self) -> tuple[float, float] | None:
        if not self.ops:
            return None
        return (
            min(o.start for o in self.ops),
            max(max(o.end, o.start) for o in self.ops),
        )


def named_ref(detail: str) -> str:
    found = _REF.search(detail)
    return found.group(0) if found else ""


def _named_time(detail: str) -> tuple[str, float] | None:
    """("ack", end) for an acknowledged write, ("span", start) for a read."""
    found = _ACKNOWLEDGED.search(detail)
    if found:
        return "ack", float(found.group(1))
    span = _SPAN.search(detail)
    if span:
        return "span", float(span.group(1))
    return None


def _anchor(on_ref: Sequence[Op], violation: Violation) -> int:
    named = _named_time(violation.detail)
    if named is not None:
        kind, at = named
        for i, op in enumerate(on_ref):
            acknowledged = op.is_write and op.outcome == "ok"
            if kind == "ack" and acknowledged and f"{op.end:.2f}" == f"{at:.2f}":
                return i
            if kind == "span" and f"{op.start:.2f}" == f"{at:.2f}":
                return i
    before = [i for i, o in enumerate(on_ref) if o.start <= violation.at]
    acked = [i for i in before if on_ref[i].is_write and on_ref[i].outcome == "ok"]
    if acked:
        return acked[-1]
    return before[-1] if before else len(on_ref) - 1


def _bounded(ops: Sequence[Op], anchor: int, shown: int) -> list[Op]:
    lo = max(0, anchor + 1 - (shown - shown // 3))
    hi = min(len(ops), lo + shown)
    lo = max(0, hi - shown)
    return list(ops[lo:hi])


def touches(fault: Fault, repo: str) -> bool:
    """Whether the fault hit this repository itself (its replica on a disk, or
    every up-to-date replica of it down)."""
    return repo in fault.disk_repos or repo in fault.repos_down


def _overlaps(fault: Fault, start: float, end: float) -> bool:
    over = (fault.end if fault.end is not None else float("inf")) + fault.recovery
    return fault.start <= end and start <= over


def cause(
    violation: Violation,
    ops: Iterable[Op],
    faults: Iterable[Fault],
    shown: int = OPS_SHOWN,
) -> Cause:
    """The operations and faults around what ``violation`` names.

    A ref in its detail: the operations on that ref of the repository, around
    the write acknowledged at the time the detail names (or the read whose
    span it names; else the last acknowledged write on the ref before
    ``violation.at``), at most ``shown``; the faults whose window (to their
    recovery) overlaps them give or take ``FAULT_MARGIN``, and those that hit
    the repository after them. No ref (or no operation on it): the
    repository's operations within ``NEAR`` of the time the detail names, or
    else its last writes up to ``violation.at``; the faults overlapping them
    and every fault that hit the repository."""
    faults = list(faults)
    repo_ops = sorted((o for o in ops if o.repo == violation.repo), key=lambda o: o.start)
    ref = named_ref(violation.detail)
    on_ref = [o for o in repo_ops if o.key == ref] if ref else []
    if on_ref:
        i = _anchor(on_ref, violation)
        chosen = _bounded(on_ref, i, shown)
        found = Cause(ref, chosen, anchor=on_ref[i], total=len(on_ref))
        start, end = found.window() or (violation.at, violation.at)
        found.faults = [
            f
            for f in faults
            if _overlaps(f, start - FAULT_MARGIN, end + FAULT_MARGIN)
            or (touches(f, violation.repo) and _overlaps(f, start - FAULT_MARGIN, float("inf")))
        ]
    else:
        named = _named_time(violation.detail)
        if named is not None:
            at = named[1]
            near = [o for o in repo_ops if abs(o.start - at) <= NEAR]
            found = Cause("", near[-shown:], total=len(near))
        else:
            writes = [o for o in repo_ops if o.is_write and o.start <= violation.at + NEAR]
            found = Cause("", writes[-shown:], total=len(writes))
        window = found.window()
        found.faults = [
            f
            for f in faults
            if touches(f, violation.repo)
            or (
                window is not None
                and _overlaps(f, window[0] - FAULT_MARGIN, window[1] + FAULT_MARGIN)
            )
        ]
    found.faults.sort(key=lambda f: f.start)
    return found


def op_line(op: Op, mark: str = " ") -> str:
    return (
        f"  {mark} {op.process} {op.kind} {op.key} {op.value[:10]} {op.outcome or 'in flight'} "
        f"[{op.start:.2f}-{op.end:.2f}] via {op.proxy} cid {op.correlation} {op.detail[:100]}"
    )


def fault_line(fault: Fault) -> str:
    end = f"{fault.end:.2f}" if fault.end is not None else "not healed"
    extra = [
        f"{name} {','.join(value)}"
        for name, value in (
            ("disk", fault.disk_nodes),
            ("repos", fault.disk_repos),
            ("nodes down", fault.nodes_down),
            ("proxies down", fault.proxies_down),
            ("repos down", fault.repos_down),
        )
        if value
    ]
    return (
        f"    {fault.nemesis} ({fault.kind}) on {fault.target} [{fault.start:.2f}-{end}] "
        + " ".join([*extra, fault.detail[:100]]).strip()
    )


def around(
    violation: Violation, ops: Iterable[Op], faults: Iterable[Fault], found: Cause | None = None
) -> list[str]:
    """The lines the failure output prints under ``violation``: the
    operations of :func:`cause` (the one its detail names marked ``>``) and
    the faults around them (``found``: that cause, already found)."""
    if found is None:
        found = cause(violation, ops, faults)
    if found.ref:
        head = f"  operations on {found.ref} ({len(found.ops)} of {found.total}):"
    else:
        head = f"  operations of the repository, no ref named ({len(found.ops)} of {found.total}):"
    lines = [head]
    lines += [op_line(o, ">" if o is found.anchor else " ") for o in found.ops]
    lines.append(f"  faults around them ({len(found.faults)}):")
    lines += [fault_line(f) for f in found.faults]
    return lines


# -- log lines ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LogLine:
    at: float  # on the run's monotonic clock
    process: str
    correlation: str
    text: str


def _monotonic(line: str, wall_offset: float) -> float | None:
    found = _TIME.search(line)
    if not found:
        return None
    try:
        wall = (
            datetime.strptime(found.group(1), "%Y-%m-%dT%H:%M:%S.%fZ")
            .replace(tzinfo=UTC)
            .timestamp()
        )
    except ValueError:
        return None
    return wall - wall_offset


class Logs:
    """The JSON log lines about some repositories, from every process's log:
    the lines that name a repository's relative path (the proxies'), and the
    lines that carry the correlation id of one of those (the nodes' part of
    the same call)."""

    def __init__(
        self, texts: Mapping[str, Sequence[str]], repos: Collection[str], wall_offset: float
    ) -> None:
        wanted = set(repos)
        self.by_repo: dict[str, list[LogLine]] = {}
        ids: dict[str, str] = {}
        for process, lines in texts.items():
            for line in lines:
                if '"relative_path"' not in line:
                    continue
                path = _RELATIVE.search(line)
                if path is None or path.group(1) not in wanted:
                    continue
                cid = _CORRELATION.search(line)
                correlation = cid.group(1) if cid else ""
                self._add(path.group(1), process, correlation, line, wall_offset)
                if correlation:
                    ids[correlation] = path.group(1)
        for process, lines in texts.items():
            for line in lines:
                if '"relative_path"' in line or '"correlation_id"' not in line:
                    continue
                cid = _CORRELATION.search(line)
                if cid is not None and cid.group(1) in ids:
                    self._add(ids[cid.group(1)], process, cid.group(1), line, wall_offset)
        for entries in self.by_repo.values():
            entries.sort(key=lambda e: e.at)

    def _add(self, repo: str, process: str, correlation: str, line: str, offset: float) -> None:
        at = _monotonic(line, offset)
        if at is not None:
            self.by_repo.setdefault(repo, []).append(LogLine(at, process, correlation, line))

    @classmethod
    def read(cls, paths: Mapping[str, Path], repos: Collection[str], wall_offset: float) -> Logs:
        texts: dict[str, list[str]] = {}
        for process, path in paths.items():
            try:
                texts[process] = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
        return cls(texts, repos, wall_offset)

    def around(self, repo: str, found: Cause, last: int = LOG_LINES) -> list[LogLine]:
        """At most ``last`` lines about ``repo`` within ``NEAR`` of the
        operations of ``found`` (all of the run when it has none): the lines of
        those very operations first, then the latest others."""
        entries = self.by_repo.get(repo, [])
        window = found.window()
        if window is not None:
            entries = [e for e in entries if window[0] - NEAR <= e.at <= window[1] + NEAR]
        ids = {o.correlation for o in found.ops}
        own = [e for e in entries if e.correlation in ids][-last:]
        room = last - len(own)
        rest = [e for e in entries if e.correlation not in ids]
        chosen = own + (rest[-room:] if room > 0 else [])
        return sorted(chosen, key=lambda e: e.at)


def log_lines(entries: Iterable[LogLine]) -> list[str]:
    return [f"    {e.process} {e.text[:400]}" for e in entries]


# -- a run that stopped on an exception -----------------------------------------------------


def interrupted(
    seed: int,
    error: BaseException,
    faults: Sequence[Fault],
    ops: Sequence[Op],
    last: int = LAST_OPS,
) -> list[str]:
    """What a run that raised prints before the exception goes on: the seed
    to replay it, every fault injected so far, the last operations."""
    lines = [
        f"seed {seed}: the run stopped on {type(error).__name__}: {error}",
        f"  faults injected so far ({len(faults)}):",
        *[fault_line(f) for f in faults],
        f"  last operations ({min(last, len(ops))} of {len(ops)}):",
        *[op_line(o) for o in list(ops)[-last:]],
    ]
    return lines


# Tasks of a process that a repository left unconverged may be waiting on.
STUCK_TASK_WORDS = ("replication", "verifier", "catch", "hold")


def dumped_tasks(line: str, words: Sequence[str] = STUCK_TASK_WORDS) -> list[str]:
    """From a process's ``task dump`` log line (SIGUSR1), the tasks whose name
    or await chain mentions one of ``words``, one line each (innermost last)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return []
    tasks = entry.get("fields", entry).get("tasks", [])
    shown = []
    for task in tasks:
        chain = [str(frame) for frame in task.get("waits", [])]
        text = " ".join([str(task.get("task", "")), *chain])
        if any(word in text for word in words):
            shown.append(f"    {task.get('task')}: " + " > ".join(chain))
    return shown
