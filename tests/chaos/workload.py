"""The chaos workload and its recorder.

Concurrent writers and readers go through the proxies (round robin; after a
failure a client retries against the next proxy) and every operation lands in
a :class:`History` with its start and end time and an outcome:

* ``ok`` -- acknowledged;
* ``failed`` -- refused before anything could apply (a compare-and-swap
  whose old value no longer matched, a bad argument);
* ``unknown`` -- anything else once the request was sent (timeout,
  UNAVAILABLE, a dropped connection, a failed ``git push``): it may or may
  not have been applied.

Writes:

* **create**: ``UpdateReferences`` of a ref no one else writes,
  ``refs/heads/w<client>/<seq>``, to a commit of the seed chain, with the zero
  old value (the ref must not exist yet);
* **cas**: read ``refs/heads/shared`` and move it one step along the seed
  chain with ``old_object_id`` set (compare-and-swap): the chain position is
  the branch's monotonic counter, so reads can be ordered against writes;
* **push**: a real ``git push`` over ``gitquorum git-ssh`` of a new commit to
  ``refs/heads/p<client>/<seq>``;
* **writeref / branch / tag** (``other_kinds_ratio``): a ref nobody else writes
  created with ``WriteRef``, ``UserCreateBranch`` or a lightweight
  ``UserCreateTag``.

Reads (``FindBranch``) of the shared branch and of unique refs acknowledged
earlier feed the stale-read check.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from gitquorum.gitaly import (
    operations_pb2,
    operations_pb2_grpc,
    ref_pb2,
    ref_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
)
from tests.harness import gitrepo
from tests.harness.cluster import VIRTUAL_STORAGE

SHARED = "refs/heads/shared"
ZERO_OID = "0" * 40
GIT_SSH = f"{shlex.quote(sys.executable)} -m gitquorum.cli.main git-ssh"

# A client of a highly available service reconnects to a proxy that came back
# within a second, rather than after gRPC's default backoff (up to minutes):
# failures while the channel backs off would be the client's, not the cluster's.
CLIENT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

USER = shared_pb2.User(
    gl_id="user-1", name=b"Cy Committer", email=b"cy@example.com", gl_username="cy"
)

# Refused before anything could apply: a definite failure.
DEFINITE_FAILURES = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.NOT_FOUND,
    }
)


# -- the seed ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    """A bare repository with a linear history: commit ``i`` is counter value ``i``."""

    path: Path
    oids: tuple[str, ...]
    index: dict[str, int] = field(default_factory=dict, compare=False)

    def counter(self, oid: str) -> int | None:
        return self.index.get(oid)


def build_chain(path: Path, length: int) -> Chain:
    """``length`` empty-tree commits on ``main``; ``shared`` at the first one."""
    path.mkdir(parents=True, exist_ok=True)
    gitrepo.git("init", "-q", "--bare", "-b", "main", str(path))
    lines: list[str] = []
    for i in range(length):
        message = f"chain {i}\n".encode()
        lines.append("commit refs/heads/main")
        lines.append(f"mark :{i + 1}")
        lines.append(f"committer Cy Committer <cy@example.com> {1_700_000_000 + i} +0000")
        lines.append(f"data {len(message)}\n{message.decode()}")
        if i:
            lines.append(f"from :{i}")
        lines.append("")
    lines += ["reset " + SHARED, "from :1", ""]
    marks = path / "marks"
    gitrepo.git(
        "fast-import",
        "--quiet",
        f"--export-marks={marks}",
        cwd=path,
        input="\n".join(lines).encode(),
    )
    by_mark = dict(line.split() for line in marks.read_text().splitlines())
    oids = tuple(by_mark[f":{i + 1}"] for i in range(length))
    return Chain(path, oids, {oid: i for i, oid in enumerate(oids)})


# -- the history ---------------------------------------------------------------------------


@dataclass
class Op:
    process: str
    kind: str  # create | cas | push | read
    key: str  # full ref name
    value: str  # written oid, or the oid read ("" = absent)
    start: float
    end: float = 0.0
    outcome: str = ""  # ok | failed | unknown
    proxy: str = ""
    detail: str = ""
    # For reads: the write this read must see (an acknowledged create), if any.
    expects: str = ""
    # The repository's relative path (runs over many repositories).
    repo: str = ""
    # A write's correlation id, sent with it: its log lines, and the intent a
    # verdict settled on (the fault suite matches the two).
    correlation: str = field(default_factory=lambda: os.urandom(8).hex())

    @property
    def is_write(self) -> bool:
        return self.kind != "read"


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)

    def add(self, op: Op) -> Op:
        self.ops.append(op)
        return op

    def writes(self, outcome: str | None = None) -> list[Op]:
        return [o for o in self.ops if o.is_write and (outcome is None or o.outcome == outcome)]

    def reads(self) -> list[Op]:
        return [o for o in self.ops if o.kind == "read" and o.outcome == "ok"]

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            key = f"{op.kind}:{op.outcome}"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def first_ok_write_after(self, at: float) -> float | None:
        """Seconds from ``at`` to the first acknowledged write that started after it."""
        ends = [o.end for o in self.writes("ok") if o.start >= at]
        return min(ends) - at if ends else None


def _tagged(op: Op) -> tuple[tuple[str, str]]:
    return (("x-gitquorum-correlation-id", op.correlation),)


def classify(exc: grpc.aio.AioRpcError) -> str:
    return "failed" if exc.code() in DEFINITE_FAILURES else "unknown"


# -- the workload --------------------------------------------------------------------------


@dataclass
class Settings:
    writers: int = 4
    readers: int = 2
    cas_ratio: float = 0.2
    # Share of writer 0's operations that are real git pushes.
    push_ratio: float = 0.25
    op_timeout: float = 10.0
    # Share of creates sent with a deadline short enough to expire mid-write: the
    # client hangs up while replicas vote and commit (test_client_hangups).
    impatient_ratio: float = 0.0
    impatient_timeout: tuple[float, float] = (0.02, 0.3)
    # Pause after a failed operation before retrying against the next proxy.
    retry_pause: float = 0.05
    read_pause: float = 0.02
    # Pause after every write (paces runs over many repositories).
    write_pause: float = 0.0
    # Each write goes to the next proxy (else a writer stays on one until it fails).
    rotate: bool = False
    # Share of writes made with WriteRef, UserCreateBranch or UserCreateTag (a
    # third each) instead of UpdateReferences, each creating a ref nobody else writes.
    other_kinds_ratio: float = 0.0


class Workload:
    def __init__(
        self,
        proxies: Sequence[str],
        relative_path: str,
        chain: Chain,
        history: History,
        scratch: Path,
        settings: Settings | None = None,
        seed: int = 0,
    ) -> None:
        self.proxies = list(proxies)
        self.relative_path = relative_path
        self.chain = chain
        self.history = history
        self.scratch = scratch
        self.settings = settings or Settings()
        self.rng = random.Random(seed)
        self.repository = shared_pb2.Repository(
            storage_name=VIRTUAL_STORAGE, relative_path=relative_path
        )
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stop = asyncio.Event()
        # Cleared to hold the writers (readers go on): see ``Scenario.steady``.
        self.writing = asyncio.Event()
        self.writing.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._acked_creates: list[Op] = []

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> Workload:
        for address in self.proxies:
            self._channels[address] = grpc.aio.insecure_channel(address, options=CLIENT_OPTIONS)
        loop = asyncio.get_running_loop()
        for i in range(self.settings.writers):
            self._tasks.append(loop.create_task(self._writer(i), name=f"writer-{i}"))
        for i in range(self.settings.readers):
            self._tasks.append(loop.create_task(self._reader(i), name=f"reader-{i}"))
        return self

    async def stop(self) -> None:
        """Stop issuing operations; in-flight ones finish (bounded by their timeouts)."""
        self._stop.set()
        self.writing.set()
        _done, pending = await asyncio.wait(self._tasks, timeout=self.settings.op_timeout * 3)
        for task in pending:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels.values():
            await channel.close()
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]

    async def stop_quietly(self) -> None:
        """Stop after a failed test: nothing may keep running, errors no longer matter."""
        if self._tasks and not self._stop.is_set():
            with contextlib.suppress(Exception):
                await self.stop()

    def acknowledged(self) -> int:
        return len(self.history.writes("ok"))

    # -- writers ---------------------------------------------------------------------------

    async def _writer(self, index: int) -> None:
        rng = random.Random(self.rng.random())
        name = f"w{index}"
        proxy = index % len(self.proxies)
        clone: Path | None = None
        seq = 0
        while not self._stop.is_set():
            await self.writing.wait()
            seq += 1
            address = self.proxies[proxy % len(self.proxies)]
            roll = rng.random()
            if index == 0 and roll < self.settings.push_ratio:
                if clone is None:
                    clone = await asyncio.to_thread(self._clone, name)
                op = await self._push(name, seq, address, clone, rng)
            elif roll < self.settings.push_ratio + self.settings.cas_ratio:
                op = await self._cas(name, address)
            elif (
                roll
                < self.settings.push_ratio
                + self.settings.cas_ratio
                + self.settings.other_kinds_ratio
            ):
                op = await self._other_kind(name, seq, address, rng)
            else:
                op = await self._create(name, seq, address, rng)
            if op.outcome != "ok" or self.settings.rotate:
                proxy += 1
            if op.outcome != "ok":
                await asyncio.sleep(self.settings.retry_pause)
            elif self.settings.write_pause:
                await asyncio.sleep(self.settings.write_pause)

    def _stub(self, address: str) -> ref_pb2_grpc.RefServiceStub:
        return ref_pb2_grpc.RefServiceStub(self._channels[address])

    async def _update(
        self, op: Op, address: str, ref: str, new: str, old: str, deadline: float | None = None
    ) -> Op:
        request = ref_pb2.UpdateReferencesRequest(
            repository=self.repository,
            updates=[
                ref_pb2.UpdateReferencesRequest.Update(
                    reference=ref.encode(), old_object_id=old.encode(), new_object_id=new.encode()
                )
            ],
        )

        async def requests():  # type: ignore[no-untyped-def]
            yield request

        try:
            await self._stub(address).UpdateReferences(
                requests(), timeout=deadline or self.settings.op_timeout, metadata=_tagged(op)
            )
            op.outcome = "ok"
        except grpc.aio.AioRpcError as exc:
            op.outcome = classify(exc)
            op.detail = f"{exc.code().name}: {exc.details()}"
        op.end = time.monotonic()
        return op

    async def _create(self, name: str, seq: int, address: str, rng: random.Random) -> Op:
        ref = f"refs/heads/{name}/{seq}"
        value = rng.choice(self.chain.oids)
        op = self.history.add(
            Op(name, "create", ref, value, time.monotonic(), proxy=address, repo=self.relative_path)
        )
        timeout = None
        if rng.random() < self.settings.impatient_ratio:
            timeout = rng.uniform(*self.settings.impatient_timeout)
        await self._update(op, address, ref, value, ZERO_OID, timeout)
        if op.outcome == "ok":
            self._acked_creates.append(op)
        return op

    async def _cas(self, name: str, address: str) -> Op:
        read = await self._read(name, address, SHARED)
        current = self.chain.counter(read.value) if read.outcome == "ok" else None
        if current is None or current + 1 >= len(self.chain.oids):
            # Nothing sensible to swap (unreadable, or the chain is used up).
            return read
        new = self.chain.oids[current + 1]
        op = self.history.add(
            Op(name, "cas", SHARED, new, time.monotonic(), proxy=address, repo=self.relative_path)
        )
        return await self._update(op, address, SHARED, new, read.value)

    async def _other_kind(self, name: str, seq: int, address: str, rng: random.Random) -> Op:
        """A unique ref created by WriteRef, UserCreateBranch or a lightweight
        UserCreateTag: the checker treats it as a create (its ref, its value)."""
        kind = rng.choice(("writeref", "branch", "tag"))
        value = rng.choice(self.chain.oids)
        channel = self._channels[address]
        if kind == "writeref":
            ref = f"refs/heads/{name}/r{seq}"
        elif kind == "branch":
            ref = f"refs/heads/{name}/b{seq}"
        else:
            ref = f"refs/tags/{name}-t{seq}"
        op = self.history.add(
            Op(name, kind, ref, value, time.monotonic(), proxy=address, repo=self.relative_path)
        )
        timeout = self.settings.op_timeout
        try:
            if kind == "writeref":
                await repository_pb2_grpc.RepositoryServiceStub(channel).WriteRef(
                    repository_pb2.WriteRefRequest(
                        repository=self.repository, ref=ref.encode(), revision=value.encode()
                    ),
                    timeout=timeout,
                    metadata=_tagged(op),
                )
            elif kind == "branch":
                await operations_pb2_grpc.OperationServiceStub(channel).UserCreateBranch(
                    operations_pb2.UserCreateBranchRequest(
                        repository=self.repository,
                        branch_name=ref.removeprefix("refs/heads/").encode(),
                        user=USER,
                        start_point=value.encode(),
                    ),
                    timeout=timeout,
                    metadata=_tagged(op),
                )
            else:
                await operations_pb2_grpc.OperationServiceStub(channel).UserCreateTag(
                    operations_pb2.UserCreateTagRequest(
                        repository=self.repository,
                        tag_name=ref.removeprefix("refs/tags/").encode(),
                        user=USER,
                        target_revision=value.encode(),
                    ),
                    timeout=timeout,
                    metadata=_tagged(op),
                )
            op.outcome = "ok"
        except grpc.aio.AioRpcError as exc:
            op.outcome = classify(exc)
            op.detail = f"{exc.code().name}: {exc.details()}"
        op.end = time.monotonic()
        if op.outcome == "ok" and ref.startswith("refs/heads/"):
            # Readers read branches (FindBranch); tags are checked on the replicas.
            self._acked_creates.append(op)
        return op

    def _clone(self, name: str) -> Path:
        clone = self.scratch / f"clone-{name}"
        if not clone.exists():
            gitrepo.git("clone", "-q", "--bare", str(self.chain.path), str(clone))
        return clone

    async def _push(self, name: str, seq: int, address: str, clone: Path, rng: random.Random) -> Op:
        parent = rng.choice(self.chain.oids)
        commit = (
            await _git(
                clone,
                "commit-tree",
                "4b825dc642cb6eb9a060e54bf8d69288fbee4904",  # the empty tree
                "-p",
                parent,
                "-m",
                f"push {name} {seq}",
            )
        ).strip()
        ref = f"refs/heads/p{name[1:]}/{seq}"
        op = self.history.add(
            Op(name, "push", ref, commit, time.monotonic(), proxy=address, repo=self.relative_path)
        )
        env = {k: v for k, v in os.environ.items() if k not in ("GIT_SSH", "GIT_SSH_VARIANT")}
        env.update(
            gitrepo.GIT_ENV,
            GIT_SSH_COMMAND=GIT_SSH,
            GITQUORUM_STORAGE=VIRTUAL_STORAGE,
            GITQUORUM_CORRELATION_ID=op.correlation,
        )
        proc = await asyncio.create_subprocess_exec(
            "git",
            "push",
            "--quiet",
            f"ssh://{address}/{self.relative_path}",
            f"{commit}:{ref}",
            cwd=clone,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # A group of its own: git and its git-ssh helper are stopped together.
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(self.settings.op_timeout * 2):
                _, stderr = await proc.communicate()
        except (TimeoutError, asyncio.CancelledError) as exc:
            # Timed out, or cancelled by ``stop``: the push must not outlive its
            # operation (a test's loop closed on its unread pipes warns later).
            await _reap(proc)
            if not isinstance(exc, TimeoutError):
                raise
            op.outcome, op.detail = "unknown", "git push timed out"
        else:
            if proc.returncode == 0:
                op.outcome = "ok"
            else:
                # A failed push may still have updated the ref on the nodes.
                op.outcome = "unknown"
                op.detail = stderr.decode(errors="replace").strip()[-300:]
        op.end = time.monotonic()
        return op

    # -- readers ---------------------------------------------------------------------------

    async def _read(self, name: str, address: str, ref: str, expects: str = "") -> Op:
        op = self.history.add(
            Op(
                name,
                "read",
                ref,
                "",
                time.monotonic(),
                proxy=address,
                expects=expects,
                repo=self.relative_path,
            )
        )
        branch = ref.removeprefix("refs/heads/")
        try:
            response = await self._stub(address).FindBranch(
                ref_pb2.FindBranchRequest(repository=self.repository, name=branch.encode()),
                timeout=self.settings.op_timeout,
            )
            op.value = response.branch.target_commit.id if response.HasField("branch") else ""
            op.outcome = "ok"
        except grpc.aio.AioRpcError as exc:
            op.outcome = "failed"  # reads change nothing
            op.detail = f"{exc.code().name}: {exc.details()}"
        op.end = time.monotonic()
        return op

    async def _reader(self, index: int) -> None:
        rng = random.Random(self.rng.random())
        name = f"r{index}"
        proxy = index
        while not self._stop.is_set():
            address = self.proxies[proxy % len(self.proxies)]
            if self._acked_creates and rng.random() < 0.5:
                target = rng.choice(self._acked_creates[-50:])
                op = await self._read(name, address, target.key, expects=target.value)
            else:
                op = await self._read(name, address, SHARED)
            proxy += 1
            if op.outcome != "ok":
                await asyncio.sleep(self.settings.retry_pause)
            else:
                await asyncio.sleep(self.settings.read_pause)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc``'s process group (git and its ``git-ssh`` helper, whose
    call to the proxy has no deadline: left alive, it could still apply the
    push later) and read its pipes to their end, within a bound."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        async with asyncio.timeout(10):
            await proc.communicate()


async def _git(cwd: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env={**os.environ, **gitrepo.GIT_ENV},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {err.decode(errors='replace')}")
    return out.decode()
