"""One fault run: a cluster, twenty repositories, the workload, a schedule of
faults, the checker during the run and at its end, and the report.

:func:`run_and_check` is what the tests call. The run prints its seed first; on
a violation it prints the seed again, every violation with the operations and
faults around its cause and the log lines about it (:mod:`tests.faults.explain`),
the tails of the processes' logs, and fails. A run that raises (a recovery
that timed out) prints its seed, its faults so far, its last operations and the
logs' tails before the exception goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import random
import signal
import statistics
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from gitquorum.gitaly import ref_pb2, ref_pb2_grpc
from tests.chaos import checker as chaos_checker
from tests.chaos import nemesis as chaos_nemesis
from tests.chaos.workload import ZERO_OID, Chain, History, Op
from tests.faults import checker, explain
from tests.faults.base import Fault, Nemesis
from tests.faults.checker import Violation
from tests.faults.cluster import FAULT_PROXY_SETTINGS, FaultCluster
from tests.faults.context import RunContext, read_records, read_records_at, record_versions
from tests.faults.schedule import Step, expected_steps, fits, may_start, plan
from tests.faults.workload import Fleet, FleetSettings
from tests.harness import gitrepo
from tests.harness.cluster import WORKERS_ENV
from tests.harness.node import NODE_WORKERS_ENV
from tests.harness.pooled import workers_from_env

START_ATTEMPTS = 3
SEED_CONCURRENCY = 4
# The window before and after each fault whose reads the table's latency
# columns take (successful reads only).
LATENCY_WINDOW = 10.0
# The during-run check pauses at least this share of its interval between rounds.
MIN_PAUSE = 0.25


@dataclass
class RunSettings:
    seed: int
    duration: float
    nemeses: Sequence[type[Nemesis]]
    repos: int = 20
    fleet: FleetSettings = field(default_factory=FleetSettings)
    gap: tuple[float, float] = (3.0, 6.0)
    monitor_interval: float = 3.0
    # The schedule's wall-clock time (default: the duration): steps are taken
    # from a plan longer than it until it is spent.
    budget: float | None = None
    # Steps the run takes even past its budget (by at most ``overrun`` seconds)
    # when slow recoveries left fewer (``schedule.may_start``).
    min_steps: int = 0
    overrun: float = 0.0

    def __post_init__(self) -> None:
        if self.budget is None:
            self.budget = self.duration


@dataclass
class Report:
    seed: int
    # The steps the budget holds at the planned recovery time
    # (``schedule.expected_steps``); a run whose recoveries are faster runs more.
    steps_planned: int
    steps_run: int  # faults injected (past the budget only to reach ``min_steps``)
    operations: dict[str, int]
    violations: list[Violation]
    faults: list[dict[str, Any]]
    table: list[dict[str, Any]]
    figures: dict[str, Any]


def _describe(fault: Fault) -> dict[str, Any]:
    return {k: v for k, v in asdict(fault).items() if v not in ((), "", None)}


class FaultRun:
    def __init__(self, base: Path, chain: Chain, settings: RunSettings) -> None:
        self.base = base
        self.chain = chain
        self.settings = settings
        self.history = History()
        self.cluster: FaultCluster | None = None
        self.fleet: Fleet | None = None
        self.repos = [f"faults/{uuid.uuid4().hex[:8]}-{i:02d}.git" for i in range(settings.repos)]
        self.seed_refs: dict[str, str] = {}
        self.violations: list[Violation] = []
        # Each process's task dump, asked for when repositories did not converge.
        self.task_dumps: dict[str, str] = {}
        self.monitor_errors = 0
        # How long each completed round of the during-run check took (one
        # entry per round: their count is the report's monitor_rounds).
        self.monitor_round_seconds: list[float] = []
        self.lost_to_disk = 0
        self.timeline: list[tuple[float, dict[str, frozenset[str]]]] = []
        # The etcd revision of each sample of the timeline, and when it came.
        self.timeline_revisions: list[int] = []
        self.timeline_answered: list[float] = []
        # Record versions between samples, read back for failed reads.
        self.between: dict[str, list[tuple[float, float, frozenset[str]]]] = {}
        # Verdicts found in etcd's history and in the proxies' logs.
        self.verdicts_recorded = 0
        self.verdicts_logged = 0
        self.skipped: set[str] = set()  # nemeses not applicable on this machine
        self.unreadable = 0
        self.ctx: RunContext | None = None
        # wall clock - monotonic clock, to place log lines on the run's clock.
        self.wall_offset = time.time() - time.monotonic()

    # -- set-up ----------------------------------------------------------------------------

    async def _start_cluster(self) -> FaultCluster:
        for attempt in range(1, START_ATTEMPTS + 1):
            cluster = FaultCluster(
                self.base / f"cluster{attempt}",
                nodes_count=3,
                proxies_count=3,
                replication_factor=3,
                etcd_size=3,
                proxy_settings=dict(FAULT_PROXY_SETTINGS),
            )
            try:
                await asyncio.to_thread(cluster.start)
                return cluster
            except RuntimeError as exc:
                # A free port picked by the harness can be taken by another process first.
                if "Address already in use" not in str(exc) or attempt == START_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def _seed(self) -> None:
        assert self.cluster is not None
        proxies = [p.address for p in self.cluster.proxies]
        limit = asyncio.Semaphore(SEED_CONCURRENCY)

        async def one(i: int, repo: str) -> None:
            scratch = self.base / f"seed-{i}"
            scratch.mkdir(exist_ok=True)
            async with limit, grpc.aio.insecure_channel(proxies[i % len(proxies)]) as channel:
                await gitrepo.seed(
                    channel, chaos_checker.repository(repo), self.chain.path, scratch
                )

        await asyncio.gather(*(one(i, r) for i, r in enumerate(self.repos)))
        self.seed_refs = gitrepo.refs(self.chain.path)
        await self._until_converged(90.0, "the seeded repositories on every node")

    def _unconverged(self) -> dict[str, str]:
        """Repositories not converged, each with why (``_divergence``)."""
        assert self.cluster is not None
        records = read_records(self.cluster)
        left = {}
        for repo in self.repos:
            record = records.get(repo)
            why = "no record" if record is None else self._divergence(record)
            if why:
                left[repo] = why
        return left

    def _divergence(self, record: Any) -> str:
        """Why the assigned replicas of ``record`` are not converged ("" if
        they are): generations behind, checksums that differ (with the refs
        that differ), or lock files left behind."""
        assert self.cluster is not None
        assigned = sorted(record.assigned)
        behind = [
            f"{n} at generation {record.replica_generation(n)} of {record.generation}"
            for n in assigned
            if record.replica_generation(n) != record.generation
        ]
        if behind:
            return "; ".join(behind)
        sums: dict[str, str] = {}
        for node in assigned:
            replica = chaos_checker.Replica(
                node, self.cluster.node(node).address, record.replica_path, 0, True
            )
            try:
                sums[node] = chaos_checker.checksum(replica)
            except grpc.RpcError as exc:
                return f"checksum of {node} unreadable ({exc.code().name})"
        if len(set(sums.values())) != 1:
            return "checksums differ: " + self._refs_differing(record, assigned)
        for node in assigned:
            root = self.cluster.replica_dir(node, record.replica_path)
            locks = sorted(str(p.relative_to(root)) for p in root.rglob("*.lock"))
            if locks:
                return f"lock files on {node}: {', '.join(locks[:5])}"
        return ""

    def _refs_differing(self, record: Any, nodes: Sequence[str]) -> str:
        assert self.cluster is not None
        try:
            refs = {
                n: gitrepo.refs(self.cluster.replica_dir(n, record.replica_path)) for n in nodes
            }
        except (OSError, RuntimeError) as exc:
            return f"refs unreadable ({exc})"
        names = sorted({name for r in refs.values() for name in r})
        differing = [n for n in names if len({r.get(n, "") for r in refs.values()}) > 1]
        shown = [
            n + " " + " ".join(f"{node}={refs[node].get(n, '-')[:10]}" for node in nodes)
            for n in differing[:5]
        ]
        return f"{len(differing)} refs, e.g. " + "; ".join(shown) if differing else "no ref"

    async def _until_converged(self, within: float, what: str) -> dict[str, str]:
        deadline = time.monotonic() + within
        while True:
            left = await asyncio.to_thread(self._unconverged)
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(1.0)

    # -- during the run --------------------------------------------------------------------

    def _acks(self) -> dict[str, checker.Acks]:
        """The history indexed, writes a disk fault took from every holder no
        longer required (still allowed: they are no phantoms)."""
        assert self.ctx is not None
        ops = list(self.history.ops)
        lost = checker.lost_to_disk(ops, self.ctx.faults.faults, self.timeline)
        self.lost_to_disk = max(self.lost_to_disk, len(lost))
        return checker.index(ops, self.chain, lost)

    def _violation(self, found: Sequence[Violation]) -> None:
        for violation in found:
            print(f"VIOLATION (seed {self.settings.seed}): {violation}", flush=True)
        self.violations += found

    def _read_replicas(self, records: dict[str, Any]) -> dict[tuple[str, str], Any]:
        assert self.cluster is not None
        refs: dict[tuple[str, str], Any] = {}
        for repo, record in records.items():
            for node in checker.up_to_date_replicas(record):
                try:
                    refs[(repo, node)] = gitrepo.refs(
                        self.cluster.replica_dir(node, record.replica_path)
                    )
                except Exception:  # a copy replacing it, a wiped disk: judged at the end
                    refs[(repo, node)] = None
                    self.unreadable += 1
        return refs

    async def _monitor(self) -> None:
        assert self.cluster is not None and self.ctx is not None
        interval = self.settings.monitor_interval
        started = time.monotonic()
        while True:
            # One round per interval, start to start: on a loaded machine a
            # round's reads (etcd, git in every replica) take seconds, and a
            # sleep of a whole interval after each made the check look blind
            # (half as many rounds as due) while it looked all the time. A
            # short pause is kept: the round's checks share the workload's loop.
            took = time.monotonic() - started
            await asyncio.sleep(max(interval * MIN_PAUSE, interval - took))
            started = read_at = time.monotonic()
            try:
                records, revision = await asyncio.to_thread(read_records_at, self.cluster)
                answered_at = time.monotonic()
            except (RuntimeError, OSError, ValueError, http.client.HTTPException):
                # etcd has no quorum, or a member died mid-answer: nothing
                # recorded to check against this round (rounds are counted).
                self.monitor_errors += 1
                continue
            records = {r: rec for r, rec in records.items() if r in self.repos}
            self.timeline.append(
                (
                    read_at,
                    {r: frozenset(checker.up_to_date_replicas(rec)) for r, rec in records.items()},
                )
            )
            self.timeline_revisions.append(revision)
            self.timeline_answered.append(answered_at)
            refs = await asyncio.to_thread(self._read_replicas, records)
            now = time.monotonic()
            exempt = {
                (repo, node)
                for f in self.ctx.faults.faults
                for node in f.disk_nodes
                for repo in f.disk_repos
                if f.start <= now and (f.end is None or now <= f.end + checker.DISK_EXEMPTION)
            }
            acks = self._acks()
            self._violation(
                checker.check_up_to_date(
                    records, read_at, refs, acks, self.chain, self.seed_refs, exempt, now
                )
            )
            self.monitor_round_seconds.append(time.monotonic() - started)

    async def _step(self, step: Step, nemesis: Nemesis) -> Fault | None:
        assert self.ctx is not None
        await asyncio.sleep(step.gap)
        print(f"fault: {step.nemesis} for {step.hold}s", flush=True)
        fault = await nemesis.inject(self.ctx)
        try:
            await asyncio.sleep(step.hold)
        finally:
            await nemesis.heal(self.ctx)
            fault.end = time.monotonic()
        await self._recovered()
        return fault

    async def _recovered(self, within: float = 60.0) -> None:
        """Every process up again (a heal that left one down is the nemesis's bug)."""
        assert self.cluster is not None

        def up() -> bool:
            assert self.cluster is not None and self.cluster.etcd is not None
            return (
                all(n.alive() for n in self.cluster.nodes)
                and all(p.alive() for p in self.cluster.proxies)
                and all(m.alive() for m in self.cluster.etcd.members)
            )

        await self.ctx.until(up, within, "every process to run again")  # type: ignore[union-attr]

    # -- the end ---------------------------------------------------------------------------

    async def _probe_writes(self) -> None:
        """Every repository takes a write within STUCK_BOUND of the last heal."""
        assert self.cluster is not None
        healed = time.monotonic()
        proxies = [p.address for p in self.cluster.proxies]

        async def probe(i: int, repo: str) -> None:
            ref = f"refs/heads/probe/{i}"
            value = self.chain.oids[i % len(self.chain.oids)]
            attempt = 0
            while time.monotonic() - healed < checker.STUCK_BOUND:
                address = proxies[(i + attempt) % len(proxies)]
                attempt += 1
                op = self.history.add(
                    Op("probe", "create", ref, value, time.monotonic(), proxy=address, repo=repo)
                )
                request = ref_pb2.UpdateReferencesRequest(
                    repository=chaos_checker.repository(repo),
                    updates=[
                        ref_pb2.UpdateReferencesRequest.Update(
                            reference=ref.encode(),
                            old_object_id=ZERO_OID.encode(),
                            new_object_id=value.encode(),
                        )
                    ],
                )
                async with grpc.aio.insecure_channel(address) as channel:
                    stub = ref_pb2_grpc.RefServiceStub(channel)
                    try:
                        await stub.UpdateReferences(
                            _once(request),
                            timeout=5,
                            # Its intent carries it: a verdict taken on it is matched.
                            metadata=(("x-gitquorum-correlation-id", op.correlation),),
                        )
                        op.outcome = "ok"
                    except grpc.aio.AioRpcError as exc:
                        op.outcome = "unknown"
                        op.detail = f"{exc.code().name}: {exc.details()}"
                op.end = time.monotonic()
                if op.outcome == "ok":
                    return
                if "already exists" in op.detail.lower() or "reference" in op.detail.lower():
                    # An earlier attempt landed after all: a new name for the next one.
                    ref = f"refs/heads/probe/{i}-{attempt}"
                await asyncio.sleep(0.5)
            self._violation(
                [
                    Violation(
                        checker.STUCK,
                        repo,
                        f"no write acknowledged within {checker.STUCK_BOUND}s of the last heal",
                        time.monotonic(),
                    )
                ]
            )

        await asyncio.gather(*(probe(i, r) for i, r in enumerate(self.repos)))

    def _known_conflicts(
        self, left: Collection[str], repairs: Sequence[checker.Repair]
    ) -> set[str]:
        """Repositories left unconverged by a verifier conflict between replicas
        that differ only by writes of unknown outcome (``checker.KNOWN_CONFLICT``)."""
        assert self.cluster is not None
        acks = self._acks()
        records = read_records(self.cluster)
        known: set[str] = set()
        for repo in left:
            nodes = {n for r in repairs if r.conflict and r.repo == repo for n in r.nodes}
            record = records.get(repo)
            if not nodes or record is None or record.conflict == ():
                continue
            try:
                replicas = {
                    n: gitrepo.refs(self.cluster.replica_dir(n, record.replica_path))
                    for n in record.conflict
                }
            except (OSError, RuntimeError):
                continue  # a replica gone from its disk: not a known conflict
            if checker.abandoned_only(
                replicas, acks.get(repo, checker.Acks()), self.chain, self.seed_refs
            ):
                known.add(repo)
        return known

    def _final_refs(self, skip: Collection[str] = ()) -> list[Violation]:
        assert self.cluster is not None
        found: list[Violation] = []
        acks = self._acks()
        records = read_records(self.cluster)
        now = time.monotonic()
        for repo in self.repos:
            if repo in skip:
                continue
            record = records[repo]
            entry = acks.get(repo, checker.Acks())
            places: list[tuple[str, dict[str, str]]] = []
            for node in record.assigned:
                root = self.cluster.replica_dir(node, record.replica_path)
                places.append((f"replica on {node}", gitrepo.refs(root)))
            for proxy in self.cluster.proxies:
                places.append(
                    (f"read through {proxy.name}", chaos_checker.proxy_refs(proxy.address, repo))
                )
            for where, refs in places:
                lost, phantoms = checker.check_refs(
                    refs, entry, self.chain, self.seed_refs, None, where
                )
                found += [Violation(checker.LOST, repo, d, now) for d in lost]
                found += [Violation(checker.PHANTOM, repo, d, now) for d in phantoms]
        return found

    def _history_entries(self) -> list[dict[str, Any]]:
        """The history log's entries in etcd (primary changes and verdicts)."""
        assert self.cluster is not None
        entries = []
        for key, value in chaos_nemesis.etcd_range(self.cluster, "history/").items():
            try:
                entry = json.loads(value)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append({**entry, "entry": key.rsplit("/", 1)[-1]})
        return entries

    def _read_back_between(self, faults: Sequence[Fault], names: Mapping[str, str]) -> None:
        """For each failed read the samples alone do not excuse, the versions
        of its repository's record between the samples around it, from etcd's
        history: a replica demoted and repaired within one sampling interval
        leaves a window with fewer up-to-date replicas that no sample shows
        (seed 569553780, open item 15)."""
        assert self.cluster is not None
        named = checker.with_proxy_addresses(faults, names)
        times = [t for t, _ in self.timeline]
        if not times:
            return
        windows: set[tuple[str, int, int]] = set()
        for read in self.history.ops:
            if read.kind != "read" or read.outcome != "failed":
                continue
            if checker.excused(read, named, self.timeline, names.get(read.proxy, "")):
                continue
            first, last = checker.sample_window(times, read.start, read.end)
            # From the sample before: a version written while the read's first
            # sample was being answered lies between that one and the one before.
            first = max(first - 1, 0)
            if first < last:
                windows.add((read.repo, first, last))
        if not windows:
            return
        records = read_records(self.cluster)
        seen: dict[str, set[int]] = {}
        for repo, first, last in sorted(windows):
            record = records.get(repo)
            if record is None:
                continue
            versions = record_versions(
                self.cluster,
                record,
                self.timeline_revisions[first],
                self.timeline_revisions[last],
            )
            known = seen.setdefault(repo, set())
            fresh = [(mod, rec) for mod, rec in versions if mod not in known]
            known.update(mod for mod, _ in fresh)
            self.between.setdefault(repo, []).extend(
                checker.transients(
                    repo, times, self.timeline_revisions, fresh, self.timeline_answered
                )
            )

    def _table(
        self,
        faults: Sequence[Fault],
        repairs: Sequence[checker.Repair],
        proxy_names: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """One row per nemesis: its operations from each fault's start to
        ``HEAL_GRACE`` after its end, its failed reads by the excuse that took
        them (``failed_reads_<excuse>``; any left over are violations), and
        read latency (successful reads) in the ``LATENCY_WINDOW`` before each
        fault, during it, and in the window after it."""
        names = proxy_names or {}
        named = checker.with_proxy_addresses(faults, names)
        rows: dict[str, dict[str, Any]] = {}
        latencies: dict[str, dict[str, list[float]]] = {}
        for fault in faults:
            end = fault.end or fault.start
            healed = end + checker.HEAL_GRACE
            window = [o for o in self.history.ops if fault.start <= o.start <= healed]
            writes = [o for o in window if o.is_write]
            reads = [o for o in window if o.kind == "read"]
            row = rows.setdefault(
                fault.nemesis,
                {
                    "nemesis": fault.nemesis,
                    "faults": 0,
                    "operations": 0,
                    "acknowledged": 0,
                    "unknown": 0,
                    "failed_writes": 0,
                    "failed_reads": 0,
                    **{f"failed_reads_{e}": 0 for e in (*checker.EXCUSES, "unexcused")},
                    "read_p99_ms": 0.0,
                    "longest_write_gap_s": 0.0,
                    "repairs": 0,
                },
            )
            row["faults"] += 1
            row["operations"] += len(window)
            row["acknowledged"] += sum(1 for o in writes if o.outcome == "ok")
            row["unknown"] += sum(1 for o in writes if o.outcome in ("unknown", ""))
            row["failed_writes"] += sum(1 for o in writes if o.outcome == "failed")
            for read in reads:
                if read.outcome != "failed":
                    continue
                row["failed_reads"] += 1
                reason = checker.excuse_reason(
                    read, named, self.timeline, names.get(read.proxy, ""), self.between
                )
                row[f"failed_reads_{reason or 'unexcused'}"] += 1
            spans = latencies.setdefault(fault.nemesis, {"before": [], "during": [], "after": []})
            for span, (start, until) in {
                "before": (fault.start - LATENCY_WINDOW, fault.start),
                "during": (fault.start, healed),
                "after": (healed, healed + LATENCY_WINDOW),
            }.items():
                spans[span] += [
                    1000 * (o.end - o.start)
                    for o in self.history.ops
                    if o.kind == "read" and o.outcome == "ok" and start <= o.start < until
                ]
            gap = checker.longest_write_gap(self.history, fault.start, healed)
            row["longest_write_gap_s"] = round(max(row["longest_write_gap_s"], gap), 2)
            row["repairs"] += sum(
                len(r.nodes) for r in repairs if fault.start <= r.at <= end + 30.0
            )
        for nemesis, row in rows.items():
            for span, values in latencies[nemesis].items():
                for q in (50, 99):
                    value = checker.percentile(values, q)
                    row[f"read_p{q}_{span}_ms"] = round(value, 1) if value is not None else None
            row["read_p99_ms"] = row["read_p99_during_ms"] or 0.0
        return sorted(rows.values(), key=lambda r: str(r["nemesis"]))

    def _latency(self, start: float, end: float) -> dict[str, float | None]:
        values = [
            1000 * (o.end - o.start)
            for o in self.history.ops
            if o.kind == "read" and o.outcome == "ok" and start <= o.start < end
        ]
        p50, p99 = checker.percentile(values, 50), checker.percentile(values, 99)
        return {
            "p50_ms": round(p50, 1) if p50 is not None else None,
            "p99_ms": round(p99, 1) if p99 is not None else None,
        }

    # -- the run ---------------------------------------------------------------------------

    async def execute(self) -> Report:
        settings = self.settings
        print(
            f"fault run: seed {settings.seed}, {settings.duration}s, workers per proxy "
            f"{workers_from_env(WORKERS_ENV)}, per node {workers_from_env(NODE_WORKERS_ENV)}",
            flush=True,
        )
        budget = settings.budget if settings.budget is not None else settings.duration
        # More steps than the budget (and its overrun) can take: the run stops
        # when it is spent. A longer plan only adds steps at its end.
        steps = plan(settings.seed, settings.nemeses, budget + settings.overrun, settings.gap)
        print(
            f"schedule (taken until {budget:.0f}s have passed): "
            + ", ".join(f"{s.nemesis}({s.hold}s)" for s in steps),
            flush=True,
        )
        by_name = {n.name: n for n in settings.nemeses}
        self.cluster = await self._start_cluster()
        self.ctx = RunContext(
            self.cluster, random.Random(settings.seed + 1), self.repos, self.history
        )
        await self._seed()
        self.fleet = await Fleet(
            [p.address for p in self.cluster.proxies],
            self.repos,
            self.chain,
            self.history,
            self.base / "clients",
            settings.fleet,
            settings.seed,
        ).start()
        if not await self.ctx.acknowledged(40, 90.0):
            raise TimeoutError(f"the workload did not warm up: {self.history.summary()}")
        monitor = asyncio.get_running_loop().create_task(self._monitor())
        began = time.monotonic()
        run_steps = 0
        try:
            for step in steps:
                # The wall clock, not an estimate of recoveries, ends the
                # schedule: a step starts only if its gap and hold end within
                # the budget (the first always does), or within the overrun
                # while the run holds fewer than its ``min_steps``.
                elapsed = time.monotonic() - began
                if not may_start(
                    step, elapsed, budget, run_steps, settings.min_steps, settings.overrun
                ):
                    if run_steps < settings.min_steps:
                        print(
                            f"stopped at {elapsed:.0f}s with {run_steps} of the "
                            f"{settings.min_steps} steps the run must hold: the next "
                            f"({step.nemesis}) would end past the {settings.overrun:.0f}s "
                            "overrun",
                            flush=True,
                        )
                    break
                nemesis = by_name[step.nemesis]()
                if not nemesis.applicable(self.ctx):
                    # Said, not silent: a machine without what a nemesis needs
                    # (root for tmpfs, cc, libfaketime) runs without it.
                    print(f"skipped (not applicable here): {step.nemesis}", flush=True)
                    self.skipped.add(step.nemesis)
                    continue
                if run_steps and not fits(step, elapsed, budget):
                    print(
                        f"past the budget at {elapsed:.0f}s: step {run_steps + 1} of the "
                        f"{settings.min_steps} the run must hold",
                        flush=True,
                    )
                await self._step(step, nemesis)
                run_steps += 1
            await asyncio.sleep(settings.gap[0])
            self.ctx.note("last fault healed")
            await self._probe_writes()
        finally:
            await self.fleet.stop()
            monitor.cancel()
            # A monitor that died on its own must fail the run, not go unnoticed.
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
        ended = time.monotonic()
        self._violation(
            checker.check_blind(
                began,
                ended,
                [at for at, _ in self.timeline if at >= began],
                settings.monitor_interval,
                f"{self.monitor_errors} rounds could not read etcd; a round took "
                f"{_seconds_summary(self.monitor_round_seconds)}",
            )
        )
        left = await self._until_converged(checker.CONVERGE_BOUND, "convergence")
        if left:
            # What every process waits on, while the cluster is still up.
            self.task_dumps = await asyncio.to_thread(self._ask_task_dumps)
        faults = self.ctx.faults.faults
        logged = checker.verifier_repairs(
            [p.log_path for p in self.cluster.proxies], self.wall_offset
        )
        try:
            entries = await asyncio.to_thread(self._history_entries)
        except (RuntimeError, OSError, ValueError) as exc:
            print(f"verdicts not read from etcd's history: {exc}", flush=True)
            entries = []
        recorded = checker.history_repairs(entries, self.wall_offset)
        repairs = checker.unskew(checker.merge_repairs(recorded, logged), faults)
        self.verdicts_recorded, self.verdicts_logged = len(recorded), len(logged)
        known = await asyncio.to_thread(self._known_conflicts, left, repairs)
        now = time.monotonic()
        self._violation(
            [
                Violation(checker.KNOWN_CONFLICT, r, "verifier conflict of unknown writes", now)
                if r in known
                else Violation(checker.NOT_CONVERGED, r, why, now)
                for r, why in left.items()
            ]
        )
        # Unconverged repositories are checked only when a known conflict is why.
        unchecked = set(left) - known
        self._violation(await asyncio.to_thread(self._final_refs, unchecked))
        acks = self._acks()
        reads = checker.check_reads(self.history, acks, self.chain, self.seed_refs, faults)
        self._violation(reads.violations)
        names = {p.address: p.name for p in self.cluster.proxies}
        try:
            await asyncio.to_thread(self._read_back_between, faults, names)
        except (RuntimeError, OSError, ValueError) as exc:
            # Then the failed reads are judged by the samples alone (stricter).
            print(f"record history not read back: {exc}", flush=True)
        self._violation(
            checker.check_failed_reads(self.history, faults, names, self.timeline, self.between)
        )
        repairs = [r for r in repairs if not (r.conflict and r.repo in known)]
        self._violation(checker.check_repairs(repairs, faults, self.history.ops, self.chain))
        missing = checker.unskew(
            checker.missing_replicas([p.log_path for p in self.cluster.proxies], self.wall_offset),
            faults,
        )
        self._violation(
            checker.check_missing_replicas(missing, faults, self.timeline, self.timeline_answered)
        )
        write_history(self.history, faults, self.base / "history.jsonl")
        write_timeline(self.timeline, self.base / "timeline.jsonl")
        first = min((f.start for f in faults), default=ended)
        figures = {
            "monitor_rounds": len(self.monitor_round_seconds),
            "monitor_errors": self.monitor_errors,
            "monitor_round_seconds": _seconds_summary(self.monitor_round_seconds),
            "acknowledged_writes_lost_to_disk_faults": self.lost_to_disk,
            "unreadable_replica_reads": self.unreadable,
            "cross_proxy_lag_reads": reads.cross_proxy_lag,
            "stale_reads_from_restored_replicas": reads.from_restored_replica,
            "verifier_repairs": sum(len(r.nodes) for r in repairs),
            # Every logged verdict should be in etcd's history (its txn): a
            # difference is a line without an entry (a trimmed entry).
            "verdicts_recorded_in_etcd": self.verdicts_recorded,
            "verdicts_logged": self.verdicts_logged,
            "replicas_found_missing": len(missing),
            "unfinished_write_settlements": sum(
                1
                for r in repairs
                if r.unfinished
                or checker.explained_by_unknown_write(r, self.history.ops, self.chain)
            ),
            # Verdicts whose references the verifier could not list: excused
            # by one unacknowledged write, without the reference check.
            "verdicts_without_references": sum(
                1 for r in repairs if r.refs is None and not r.conflict
            ),
            "known_conflicts_after_abandoned_writes": sorted(known),
            "converged_within_s": round(time.monotonic() - ended, 1),
            "reads_before_faults": self._latency(0.0, first),
            "reads_after_faults": self._latency(
                max((f.end or 0.0) for f in faults) if faults else ended, ended
            ),
            "run_s": round(ended - began, 1),
            "nemeses_run": sorted({f.nemesis for f in faults}),
            "nemeses_skipped": sorted(self.skipped),
            # Processes per proxy and per node (GITQUORUM_TEST_*_WORKERS; 1: one process).
            "proxy_workers": workers_from_env(WORKERS_ENV),
            "node_workers": workers_from_env(NODE_WORKERS_ENV),
        }
        return Report(
            settings.seed,
            expected_steps(steps, budget),
            run_steps,
            self.history.summary(),
            self.violations,
            [_describe(f) for f in faults],
            self._table(faults, repairs, names),
            figures,
        )

    # -- failure output --------------------------------------------------------------------

    def _ask_task_dumps(self, within: float = 5.0) -> dict[str, str]:
        """SIGUSR1 to every live proxy and node (and each one's workers); the
        ``task dump`` log lines (``gitquorum.task_dump``) they wrote, by
        process name, one per process."""
        assert self.cluster is not None
        processes = [p for p in [*self.cluster.proxies, *self.cluster.nodes] if p.alive()]
        before = {p.name: len(_dump_lines(p.log_path)) for p in processes}
        expected: dict[str, int] = {}
        for process in processes:
            # Run with workers, the parent and each worker write a dump of their own.
            pids = process.server_pids()
            expected[process.name] = len(pids)
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGUSR1)
        dumps: dict[str, str] = {}
        deadline = time.monotonic() + within
        while len(dumps) < len(processes) and time.monotonic() < deadline:
            for process in processes:
                lines = _dump_lines(process.log_path)[before[process.name] :]
                if len(lines) >= expected[process.name]:
                    dumps[process.name] = "\n".join(lines)
            time.sleep(0.1)
        # Late or missing ones: what arrived is better than nothing.
        for process in processes:
            if process.name not in dumps:
                if lines := _dump_lines(process.log_path)[before[process.name] :]:
                    dumps[process.name] = "\n".join(lines)
        return dumps

    def _logs(self, repos: Collection[str]) -> explain.Logs | None:
        """The log lines of every proxy and node about ``repos``."""
        if self.cluster is None:
            return None
        paths = {p.name: p.log_path for p in [*self.cluster.proxies, *self.cluster.nodes]}
        try:
            return explain.Logs.read(paths, repos, self.wall_offset)
        except Exception as exc:  # the output must not hide the failure it explains
            print(f"log lines not read: {exc!r}", flush=True)
            return None

    def explain(self, report: Report) -> str:
        """Each violation with the operations and faults around its cause
        (:mod:`tests.faults.explain`) and the log lines about it, then every
        fault and the tail of every process's log."""
        lines = [f"seed {report.seed}: {len(report.violations)} violation(s)"]
        shown = report.violations[:20]
        faults = self.ctx.faults.faults if self.ctx is not None else []
        logs = self._logs({v.repo for v in shown})
        for violation in shown:
            lines.append(str(violation))
            found = explain.cause(violation, self.history.ops, faults)
            lines += explain.around(violation, self.history.ops, faults, found)
            if logs is not None:
                entries = logs.around(violation.repo, found)
                lines.append(f"  log lines about it ({len(entries)}):")
                lines += explain.log_lines(entries)
        for name, dump in sorted(self.task_dumps.items()):
            tasks = explain.dumped_tasks(dump)
            lines.append(f"{name}: {len(tasks)} task(s) of repairs and verification at the end")
            lines += tasks
        for fault in report.faults:
            lines.append(f"fault {json.dumps(fault)}")
        if self.cluster is not None:
            lines.append(self.cluster.log_tail())
        return "\n".join(lines)

    def interrupted(self, error: BaseException) -> str:
        """The seed, the faults injected so far, the last operations and the
        tail of every process's log, for a run that raised."""
        try:
            faults = self.ctx.faults.faults if self.ctx is not None else []
            lines = explain.interrupted(self.settings.seed, error, faults, self.history.ops)
            if self.cluster is not None:
                lines.append(self.cluster.log_tail())
            return "\n".join(lines)
        except Exception as exc:  # never hide the exception this reports
            return f"seed {self.settings.seed}: the run stopped on {error!r} ({exc!r})"

    async def close(self) -> None:
        if self.fleet is not None:
            await self.fleet.stop_quietly()
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.close)


def _seconds_summary(seconds: Sequence[float]) -> str:
    """'median 0.4 s, longest 2.1 s' of some durations, for a report line."""
    if not seconds:
        return "no round completed"
    return f"median {statistics.median(seconds):.1f} s, longest {max(seconds):.1f} s"


def _dump_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if '"task dump"' in line]


def write_history(history: History, faults: Sequence[Fault], path: Path) -> None:
    """Every operation and fault, one JSON line each, next to the cluster's logs."""
    with open(path, "w") as out:
        for op in history.ops:
            out.write(json.dumps(op.__dict__) + "\n")
        for fault in faults:
            out.write(json.dumps({"fault": _describe(fault)}) + "\n")


def write_timeline(timeline: Sequence[tuple[float, dict[str, frozenset[str]]]], path: Path) -> None:
    """The replicas recorded up to date at every round of the during-run check."""
    with open(path, "w") as out:
        for at, sets in timeline:
            entry = {"at": at, "up_to_date": {r: sorted(n) for r, n in sets.items()}}
            out.write(json.dumps(entry) + "\n")


def write_report(report: Report, path: Path) -> None:
    data = asdict(report)
    data["violations"] = [str(v) for v in report.violations]
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    results = os.environ.get("GITQUORUM_FAULTS_RESULTS")
    if results:
        with open(results, "a") as out:
            out.write(json.dumps(data, sort_keys=True) + "\n")


def seed_from_env() -> int:
    value = os.environ.get("GITQUORUM_FAULTS_SEED")
    return int(value) if value else random.SystemRandom().randrange(1 << 31)


async def _once(request: ref_pb2.UpdateReferencesRequest):  # type: ignore[no-untyped-def]
    yield request


async def run_and_check(base: Path, chain: Chain, settings: RunSettings) -> Report:
    """One run, its report written and printed; fails on any violation."""
    run = FaultRun(base, chain, settings)
    try:
        try:
            report = await run.execute()
        except BaseException as exc:
            # A run that raised (a recovery that timed out) says what it had
            # done, then fails with its exception.
            print(run.interrupted(exc), flush=True)
            raise
        write_report(report, base / "report.json")
        print(f"report: {base / 'report.json'}")
        for row in report.table:
            print(row)
        print(report.figures)
        if report.violations:
            print(run.explain(report))
        assert not report.violations, f"seed {settings.seed}: " + "; ".join(
            str(v) for v in report.violations[:10]
        )
        return report
    finally:
        await run.close()
