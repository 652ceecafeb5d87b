"""Readers never see a replica die or stall while an up-to-date replica is alive.

Real etcd, nodes, proxy and git (the module's own cluster, ``faulty``).
Readers call FindCommit and RefExists through the proxy in a loop, one more
clones the repository with ``git clone`` over the ``git-ssh`` helper in a
loop, and one more with ``git clone`` over HTTP through a ``gitquorum http``
gateway in front of the proxy, while (1) the primary and then a secondary are killed with SIGKILL,
(2) a secondary is stopped with SIGSTOP for longer than the readers'
deadline. Every read must succeed with the right answer, with one exception
the retry rule states (docs/failover.md, "What a reader sees"): a clone whose
node is killed after part of its answer went out cannot be moved to another
replica, so a clone in flight at the instant of a kill may fail — at most
one per cloner and kill, and only where the proxy's log line of a clone call
says it was cut mid-stream (``cut_mid_stream``). Clones that start after a
kill, and every unary read, must not fail.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from gitquorum.gitaly import commit_pb2, commit_pb2_grpc, ref_pb2, ref_pb2_grpc
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.gateway import http_gateway as http_gateway_process
from tests.harness.node import NodeProcess, wait_for
from tests.integration.proxy import helpers
from tests.integration.proxy.helpers import repository

# The calls a clone makes through the proxy (git-ssh and smart HTTP).
CLONE_METHODS = ("/SSHUploadPack", "/InfoRefsUploadPack", "/PostUploadPack")

# Shorter than the stall of the SIGSTOP test: a read left waiting on the
# stopped node fails at this deadline.
READ_DEADLINE = 2.0
UNARY_READERS = 3


@dataclass
class Readers:
    """Reader threads through one proxy; every failure is kept with its time."""

    address: str
    relative_path: str
    head: str
    workdir: Path
    http: str  # the gateway's host:port
    stop: threading.Event = field(default_factory=threading.Event)
    reads: int = 0
    clones: int = 0
    http_clones: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)
    # Failed clones as (started, ended, error): judged against the kills.
    failed_clones: list[tuple[float, float, str]] = field(default_factory=list)
    failed_by: dict[str, int] = field(default_factory=dict)  # failed clones per transport
    kills: list[tuple[float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _failed(self, what: str) -> None:
        with self.lock:
            self.failures.append((time.monotonic(), what))

    def killing(self, node: NodeProcess) -> None:
        """SIGKILL ``node``, keeping when (the clones in flight then may fail)."""
        sent = time.monotonic()
        node.kill()
        with self.lock:
            self.kills.append((sent, time.monotonic()))

    def clone_failures_not_at_a_kill(self) -> list[tuple[float, float, str]]:
        """Failed clones that were not in flight while a node was being killed."""
        with self.lock:
            return [
                (started, ended, error)
                for started, ended, error in self.failed_clones
                if not any(started <= killed and ended >= sent for sent, killed in self.kills)
            ]

    def unary(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            commits = commit_pb2_grpc.CommitServiceStub(channel)
            refs = ref_pb2_grpc.RefServiceStub(channel)
            repo = repository(self.relative_path)
            while not self.stop.is_set():
                try:
                    found = commits.FindCommit(
                        commit_pb2.FindCommitRequest(repository=repo, revision=b"main"),
                        timeout=READ_DEADLINE,
                    )
                    exists = refs.RefExists(
                        ref_pb2.RefExistsRequest(repository=repo, ref=b"refs/heads/main"),
                        timeout=READ_DEADLINE,
                    )
                except grpc.RpcError as exc:
                    self._failed(f"{exc.code().name}: {exc.details()}")
                    continue
                if found.commit.id != self.head or not exists.value:
                    self._failed(f"wrong answer: {found.commit.id!r} {exists.value}")
                with self.lock:
                    self.reads += 2

    def cloning(self, over: str = "ssh") -> None:
        n = 0
        if over == "http":
            url = f"http://{self.http}/{self.relative_path}"
        else:
            url = helpers.url(self.address, self.relative_path)
        while not self.stop.is_set():
            n += 1
            target = self.workdir / f"clone-{over}-{n}"
            started = time.monotonic()
            proc = helpers.run_git("clone", "-q", url, str(target))
            if proc.returncode != 0:
                with self.lock:
                    error = f"git clone over {over}: {proc.stderr.strip()}"
                    self.failed_clones.append((started, time.monotonic(), error))
                    self.failed_by[over] = self.failed_by.get(over, 0) + 1
            elif gitrepo.git("rev-parse", "HEAD", cwd=target).strip() != self.head:
                self._failed(f"git clone over {over}: wrong HEAD")
            else:
                with self.lock:
                    self.clones += 1
                    self.http_clones += over == "http"
            shutil.rmtree(target, ignore_errors=True)

    def wait_for_http_clone(self, timeout: float = 60.0) -> None:
        """Until a clone over the HTTP gateway succeeded: the progress waits
        count clones of either transport, and the slower one may not have
        finished one by then."""
        wait_for(lambda: self.http_clones, timeout, 0.05, "a clone over HTTP to succeed")

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return self.reads, self.clones

    @contextmanager
    def running(self) -> Iterator[Readers]:
        threads = [threading.Thread(target=self.unary) for _ in range(UNARY_READERS)]
        threads.append(threading.Thread(target=self.cloning, args=("ssh",)))
        threads.append(threading.Thread(target=self.cloning, args=("http",)))
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=180)

    def wait_for_progress(self, reads: int = 50, clones: int = 1, timeout: float = 60.0) -> None:
        """Until at least this many more reads and clones have succeeded."""
        start_reads, start_clones = self.counts()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done_reads, done_clones = self.counts()
            if done_reads - start_reads >= reads and done_clones - start_clones >= clones:
                return
            self.stop.wait(0.05)
        pytest.fail(f"readers made no progress: {self.counts()} {self.failures[:5]}")


@pytest.fixture
def http_gateway(faulty: Cluster, tmp_path: Path) -> Iterator[str]:
    """``gitquorum http`` in front of the proxy; its host:port."""
    with http_gateway_process(faulty.proxies[0].address, faulty.base / "logs", tmp_path) as address:
        yield address


def _readers(cluster: Cluster, relative_path: str, tmp_path: Path, http: str) -> Readers:
    address = cluster.proxies[0].address
    source = gitrepo.make_repo(tmp_path / "source", commits=3)
    helpers.create(address, relative_path)
    helpers.push(address, relative_path, source, "main", "feature")
    helpers.wait_converged(address, relative_path)
    head = gitrepo.git("rev-parse", "HEAD", cwd=source).strip()
    return Readers(address, relative_path, head, tmp_path, http)


def _failed_clone_calls(cluster: Cluster, relative_path: str) -> list[dict[str, object]]:
    """The proxy's log lines of the clone calls of ``relative_path`` that failed."""
    lines = []
    for text in (cluster.base / "logs" / "proxy1.log").read_text().splitlines():
        if '"rpc failed"' not in text or relative_path not in text:
            continue
        line = json.loads(text)
        if str(line.get("method", "")).endswith(CLONE_METHODS):
            lines.append(line)
    return lines


def test_reads_survive_the_primary_then_a_secondary_being_killed(
    faulty: Cluster, relative_path: str, tmp_path: Path, http_gateway: str
) -> None:
    readers = _readers(faulty, relative_path, tmp_path, http_gateway)
    address = readers.address
    primary = helpers.metadata(address, relative_path).primary
    with readers.running():
        readers.wait_for_progress()  # every node has served reads
        readers.killing(faulty.node(primary))
        readers.wait_for_progress()
        helpers.wait_unhealthy(faulty, primary)
        meta = helpers.metadata(address, relative_path)
        secondary = next(n.name for n in faulty.nodes if n.name not in (primary, meta.primary))
        readers.killing(faulty.node(secondary))
        readers.wait_for_progress()
        helpers.wait_unhealthy(faulty, secondary)
        readers.wait_for_progress()  # served by the one replica left
        readers.wait_for_http_clone()
    assert readers.failures == []
    assert readers.clone_failures_not_at_a_kill() == []
    # At most the clone each cloner had in flight at each of the two kills.
    assert all(n <= 2 for n in readers.failed_by.values()), readers.failed_clones
    # Each failed clone is a call the proxy could not move: cut mid-stream.
    failed_calls = _failed_clone_calls(faulty, relative_path)
    assert all(line.get("cut_mid_stream") is True for line in failed_calls), failed_calls
    assert len(readers.failed_clones) <= len(failed_calls), readers.failed_clones
    assert readers.http_clones >= 1


def test_reads_survive_a_stalled_secondary(
    faulty: Cluster, relative_path: str, tmp_path: Path, http_gateway: str
) -> None:
    readers = _readers(faulty, relative_path, tmp_path, http_gateway)
    primary = helpers.metadata(readers.address, relative_path).primary
    stalled = faulty.node(next(n.name for n in faulty.nodes if n.name != primary))
    with readers.running():
        readers.wait_for_progress(reads=200)  # latency history for the hedge delay
        stalled.pause()
        try:
            # Longer than READ_DEADLINE: a read left waiting on it would fail.
            stall_ends = time.monotonic() + 2 * READ_DEADLINE
            while time.monotonic() < stall_ends:
                readers.wait_for_progress(reads=20, clones=0)
        finally:
            stalled.resume()
        helpers.wait_healthy(faulty, stalled.name)
        readers.wait_for_progress()
        readers.wait_for_http_clone()
    assert readers.failures == []
    assert readers.failed_clones == []  # nothing was killed: no clone may fail
    assert readers.http_clones >= 1
