"""The real git CLI over http:// through ``gitquorum http`` and a real cluster.

One cluster (etcd, three nodes, one proxy) and one gateway process (started
with the CLI, ``--create-on-push``) serve the whole module. git pushes a
repository of 1,000 commits with branches, both kinds of tags and a 20 MB
binary, clones it back over protocol v2 and v0, shallow and partial, fetches,
deletes a branch, is refused a non-fast-forward push with git's own words,
and eight pushers write one repository at once. After every write all three
replicas hold the same refs and pass ``git fsck``. Then the failures a user
meets: missing repository, bad path, credentials, the proxy going away.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from gitquorum.gitaly import (
    praefect_pb2,
    praefect_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
)
from tests.harness import gitrepo
from tests.harness.cluster import VIRTUAL_STORAGE, Cluster
from tests.harness.node import wait_for

COMMITS = 1000
BINARY_SIZE = 20 * 1024 * 1024
LIGHT_TAGS = 30
ANNOTATED_TAGS = 10
BRANCHES = ("feature", "release/1.x", "old")


@dataclass
class GatewayProcess:
    """``gitquorum http`` as a child process."""

    proc: subprocess.Popen[bytes]
    address: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def _status_kib(self, field: str) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith(f"{field}:"))
        return int(line.split()[1])

    def peak_rss_kib(self) -> int:
        return self._status_kib("VmHWM")

    def reset_peak_rss(self) -> int:
        """Start a new peak-RSS measurement; the current RSS, its baseline."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        return self._status_kib("VmRSS")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise
        return self.proc.returncode


def start_gateway(workdir: Path, name: str, proxy: str, *extra: str) -> GatewayProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / f"{name}.ready"
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gitquorum.cli.main",
                "http",
                "--listen",
                "127.0.0.1:0",
                "--proxy",
                proxy,
                "--virtual-storage",
                VIRTUAL_STORAGE,
                "--ready-file",
                str(ready),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def is_ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {log_path.read_text()}")
        return ready.exists() and ready.read_text().endswith("\n")

    wait_for(is_ready, 20, what=f"gateway {name} to serve")
    address, metrics_port = ready.read_text().split()
    assert address.endswith(f":{metrics_port}")
    return GatewayProcess(proc, address, log_path)


def git_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        and not k.startswith("GIT_TRACE")
    }
    env.update(gitrepo.GIT_ENV)
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="", SSH_ASKPASS="", **extra)
    return env


def run_git(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=git_env(**env), capture_output=True, text=True, timeout=180
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"{proc.args}: {proc.stderr[-3000:]}"
    return proc


def heads_and_tags(path: Path) -> dict[str, str]:
    return {
        name: oid
        for name, oid in gitrepo.refs(path).items()
        if name.startswith(("refs/heads/", "refs/tags/"))
    }


def fast_import_source(path: Path) -> Path:
    """1,000 commits, branches, lightweight and annotated tags, a 20 MB binary."""
    gitrepo.git("init", "-q", "-b", "main", str(path))
    rng = random.Random(7)
    stream: list[bytes] = []

    def data(payload: bytes) -> None:
        stream.append(b"data %d\n" % len(payload))
        stream.append(payload + b"\n")

    when = 1_700_000_000
    for i in range(1, COMMITS + 1):
        stream.append(b"commit refs/heads/main\nmark :%d\n" % i)
        stream.append(b"committer Cy Committer <cy@example.com> %d +0000\n" % (when + i))
        data(b"commit %d\n\nbody of commit %d" % (i, i))
        if i > 1:
            stream.append(b"from :%d\n" % (i - 1))
        stream.append(b"M 100644 inline src/file%d.txt\n" % (i % 97))
        data(b"revision %d of file %d\n" % (i, i % 97))
    binary = COMMITS + 1
    stream.append(b"commit refs/heads/main\nmark :%d\n" % binary)
    stream.append(b"committer Cy Committer <cy@example.com> %d +0000\n" % (when + binary))
    data(b"add a binary")
    stream.append(b"from :%d\nM 100644 inline blob.bin\n" % COMMITS)
    data(rng.randbytes(BINARY_SIZE))
    for number, branch in enumerate(BRANCHES):
        stream.append(b"reset refs/heads/%s\nfrom :%d\n\n" % (branch.encode(), 900 - 100 * number))
    for t in range(LIGHT_TAGS):
        stream.append(b"reset refs/tags/light-%d\nfrom :%d\n\n" % (t, 30 * (t + 1)))
    for t in range(ANNOTATED_TAGS):
        stream.append(b"tag v%d.0\nfrom :%d\n" % (t, 95 * (t + 1)))
        stream.append(b"tagger Ada Author <ada@example.com> %d +0000\n" % (when + t))
        data(b"release %d" % t)
    gitrepo.git("fast-import", "--quiet", cwd=path, input=b"".join(stream))
    gitrepo.git("checkout", "-q", "main", cwd=path)
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("http-cluster"), nodes_count=3).start()
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def gateway(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("gateway"),
        "gateway",
        cluster.proxies[0].address,
        "--create-on-push",
    )
    yield gateway
    gateway.terminate()


@pytest.fixture(autouse=True)
def _logs_on_failure(
    request: pytest.FixtureRequest, cluster: Cluster, gateway: GatewayProcess
) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- gateway ---\n{gateway.log_tail()}\n{cluster.log_tail()}")


def metadata(cluster: Cluster, relative: str) -> praefect_pb2.GetRepositoryMetadataResponse:
    with grpc.insecure_channel(cluster.proxies[0].address) as channel:
        return praefect_pb2_grpc.PraefectInfoServiceStub(channel).GetRepositoryMetadata(
            praefect_pb2.GetRepositoryMetadataRequest(
                path=praefect_pb2.GetRepositoryMetadataRequest.Path(
                    virtual_storage=VIRTUAL_STORAGE, relative_path=relative
                )
            ),
            timeout=10,
        )


def replica_dirs(cluster: Cluster, relative: str) -> list[Path]:
    found = metadata(cluster, relative)
    return [cluster.replica_dir(r.storage, found.replica_path) for r in found.replicas]


def assert_replicas_hold(
    cluster: Cluster, relative: str, expected: dict[str, str], full: bool = True
) -> None:
    """Every replica converges on ``expected`` and passes fsck (``--full --strict``
    or, for a repository checked in full before, ``--connectivity-only``)."""
    dirs = replica_dirs(cluster, relative)
    assert len(dirs) == 3

    def converged() -> bool:
        return all(d.exists() and heads_and_tags(d) == expected for d in dirs)

    wait_for(converged, 30, interval=0.1, what=f"replicas of {relative} to hold the pushed refs")
    checks = ("--full", "--strict") if full else ("--connectivity-only",)
    for replica in dirs:
        gitrepo.git("fsck", *checks, "--no-progress", cwd=replica)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fast_import_source(tmp_path_factory.mktemp("big") / "source")


@dataclass
class Pushed:
    relative: str
    url: str
    seconds: float
    rss_growth_kib: int


@pytest.fixture(scope="module")
def pushed(gateway: GatewayProcess, source: Path) -> Pushed:
    """The big repository, pushed to a path that did not exist (create on push)."""
    relative = "big/project.git"
    url = f"{gateway.url}/{relative}"
    # Warm up (imports, channel) so the peak-memory baseline is the idle gateway.
    run_git("ls-remote", f"{gateway.url}/not/there.git")
    baseline = gateway.peak_rss_kib()
    started = time.monotonic()
    ok(run_git("push", url, "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*", cwd=source))
    seconds = time.monotonic() - started
    return Pushed(relative, url, seconds, gateway.peak_rss_kib() - baseline)


def test_clone_of_an_empty_repository(
    cluster: Cluster, gateway: GatewayProcess, tmp_path: Path
) -> None:
    relative = "empty/project.git"
    with grpc.insecure_channel(cluster.proxies[0].address) as channel:
        repository_pb2_grpc.RepositoryServiceStub(channel).CreateRepository(
            repository_pb2.CreateRepositoryRequest(
                repository=shared_pb2.Repository(
                    storage_name=VIRTUAL_STORAGE, relative_path=relative
                )
            ),
            timeout=10,
        )
    clone = tmp_path / "empty"
    proc = ok(run_git("clone", f"{gateway.url}/{relative}", str(clone)))
    assert "You appear to have cloned an empty repository" in proc.stderr
    assert heads_and_tags(clone) == {}
    assert_replicas_hold(cluster, relative, {})


def test_push_of_a_large_repository_reaches_every_replica(
    cluster: Cluster, source: Path, pushed: Pushed
) -> None:
    expected = heads_and_tags(source)
    assert len(expected) == 1 + len(BRANCHES) + LIGHT_TAGS + ANNOTATED_TAGS
    assert_replicas_hold(cluster, pushed.relative, expected)
    found = metadata(cluster, pushed.relative)
    # One write: git's probe before the large pack did not count as another.
    assert found.generation == 1
    # Every replica at that generation. Not asserted at the instant of the
    # push: the verifier's first check of the new repository can coincide
    # with the push's commit phase and flag a replica that is then repaired
    # (docs/failover.md, known limits); what must hold is that they converge.
    wait_for(
        lambda: all(r.generation == 1 for r in metadata(cluster, pushed.relative).replicas),
        30,
        interval=0.2,
        what="every replica at generation 1",
    )
    print(f"push of {COMMITS} commits + 20 MB binary: {pushed.seconds:.2f}s")
    # Streamed, never held: the push did not grow the gateway by its size.
    print(f"gateway peak RSS growth during the push: {pushed.rss_growth_kib} KiB")
    assert pushed.rss_growth_kib < BINARY_SIZE // 1024 // 2


def test_clone_over_protocol_v2_and_v0(
    gateway: GatewayProcess, source: Path, pushed: Pushed, tmp_path: Path
) -> None:
    expected = heads_and_tags(source)
    baseline = gateway.reset_peak_rss()
    v2 = tmp_path / "v2.git"
    proc = ok(
        run_git(
            "-c",
            "protocol.version=2",
            "clone",
            "--mirror",
            pushed.url,
            str(v2),
            GIT_TRACE_CURL="1",
            GIT_TRACE_CURL_NO_DATA="1",
        )
    )
    assert "Git-Protocol: version=2" in proc.stderr
    # The clone's fetch request wants ~45 tips: git gzips bodies over 1 KiB.
    assert "Content-Encoding: gzip" in proc.stderr
    assert heads_and_tags(v2) == expected
    # The 20 MB pack streamed through, it was never held.
    growth = gateway.peak_rss_kib() - baseline
    print(f"gateway peak RSS growth during a 20 MB clone: {growth} KiB")
    assert growth < BINARY_SIZE // 1024 // 2
    gitrepo.git("fsck", "--full", "--strict", "--no-progress", cwd=v2)

    v0 = tmp_path / "v0"
    proc = ok(
        run_git(
            "-c",
            "protocol.version=0",
            "clone",
            pushed.url,
            str(v0),
            GIT_TRACE_CURL="1",
            GIT_TRACE_CURL_NO_DATA="1",
        )
    )
    assert "Git-Protocol" not in proc.stderr
    assert "Content-Encoding: gzip" in proc.stderr
    remote_branches = {
        name.removeprefix("refs/remotes/origin/")
        for name in gitrepo.refs(v0)
        if name.startswith("refs/remotes/origin/") and name != "refs/remotes/origin/HEAD"
    }
    assert remote_branches == {"main", *BRANCHES}
    assert (v0 / "blob.bin").read_bytes() == (source / "blob.bin").read_bytes()
    assert gitrepo.git("rev-list", "--count", "HEAD", cwd=v0).strip() == str(COMMITS + 1)
    gitrepo.git("fsck", "--full", "--strict", "--no-progress", cwd=v0)


def test_fetch_brings_new_commits(
    cluster: Cluster, pushed: Pushed, source: Path, tmp_path: Path
) -> None:
    mirror = tmp_path / "mirror.git"
    ok(run_git("clone", "--mirror", pushed.url, str(mirror)))
    work = tmp_path / "work"
    ok(run_git("clone", "-q", "--branch", "feature", pushed.url, str(work)))
    for i in range(3):
        (work / f"new{i}.txt").write_text(f"new {i}\n")
        gitrepo.git("add", "-A", cwd=work)
        gitrepo.git("commit", "-q", "-m", f"after clone {i}", cwd=work)
    gitrepo.git("tag", "-a", "v99.0", "-m", "v99", cwd=work)
    ok(run_git("push", "origin", "feature", "v99.0", cwd=work))

    proc = ok(run_git("fetch", "--prune", cwd=mirror))
    assert "feature" in proc.stderr
    tip = gitrepo.git("rev-parse", "HEAD", cwd=work).strip()
    assert heads_and_tags(mirror)["refs/heads/feature"] == tip
    assert "refs/tags/v99.0" in heads_and_tags(mirror)
    assert_replicas_hold(cluster, pushed.relative, heads_and_tags(mirror), full=False)
    gitrepo.git("fsck", "--connectivity-only", "--no-progress", cwd=mirror)


def test_shallow_clone_and_deepen(pushed: Pushed, source: Path, tmp_path: Path) -> None:
    shallow = tmp_path / "shallow"
    ok(run_git("clone", "--depth", "1", "--branch", "main", pushed.url, str(shallow)))
    assert gitrepo.git("rev-parse", "--is-shallow-repository", cwd=shallow).strip() == "true"
    assert gitrepo.git("rev-list", "--count", "HEAD", cwd=shallow).strip() == "1"
    assert (shallow / "blob.bin").read_bytes() == (source / "blob.bin").read_bytes()
    ok(run_git("fetch", "--deepen", "10", cwd=shallow))
    assert gitrepo.git("rev-list", "--count", "HEAD", cwd=shallow).strip() == "11"


def test_partial_clone_without_blobs(pushed: Pushed, source: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    ok(run_git("clone", "--filter=blob:none", "--no-checkout", pushed.url, str(partial)))
    missing = gitrepo.git("rev-list", "--objects", "--missing=print", "--all", cwd=partial)
    missing_blobs = [line for line in missing.splitlines() if line.startswith("?")]
    assert len(missing_blobs) > 1000
    packs = sum(p.stat().st_size for p in (partial / ".git" / "objects").rglob("*.pack"))
    assert packs < BINARY_SIZE // 4
    # Checking out fetches the blobs it needs, lazily, over the gateway.
    ok(run_git("checkout", "-q", "main", cwd=partial))
    assert (partial / "blob.bin").read_bytes() == (source / "blob.bin").read_bytes()


@pytest.fixture
def small(gateway: GatewayProcess, tmp_path: Path, request: pytest.FixtureRequest) -> Pushed:
    """A small repository pushed to a fresh path of its own."""
    source = gitrepo.make_repo(tmp_path / "small", commits=5, branches=("feature", "topic"))
    relative = f"small/{request.node.name}.git"
    url = f"{gateway.url}/{relative}"
    ok(run_git("push", url, "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*", cwd=source))
    return Pushed(relative, url, 0.0, 0)


def test_rejected_push_shows_gits_own_error(
    cluster: Cluster, small: Pushed, tmp_path: Path
) -> None:
    for replica in replica_dirs(cluster, small.relative):
        gitrepo.git("config", "receive.denyNonFastForwards", "true", cwd=replica)
    before = heads_and_tags(replica_dirs(cluster, small.relative)[0])
    work = tmp_path / "work"
    ok(run_git("clone", "-q", small.url, str(work)))
    gitrepo.git("reset", "-q", "--hard", "HEAD~3", cwd=work)
    (work / "rewrite.txt").write_text("history rewritten\n")
    gitrepo.git("add", "rewrite.txt", cwd=work)
    gitrepo.git("commit", "-q", "-m", "rewrite", cwd=work)

    proc = run_git("push", "--force", "origin", "main", cwd=work)
    assert proc.returncode != 0
    assert "remote: error: denying non-fast-forward refs/heads/main" in proc.stderr
    assert "[remote rejected] main -> main (non-fast-forward)" in proc.stderr
    assert_replicas_hold(cluster, small.relative, before)


def test_deleting_a_branch(cluster: Cluster, small: Pushed, tmp_path: Path) -> None:
    work = tmp_path / "work"
    ok(run_git("clone", "-q", small.url, str(work)))
    proc = ok(run_git("push", "origin", "--delete", "topic", cwd=work))
    assert "[deleted]         topic" in proc.stderr
    expected = {
        name: oid for name, oid in heads_and_tags(work).items() if name != "refs/heads/topic"
    }
    expected.update(
        {
            name.replace("refs/remotes/origin/", "refs/heads/"): oid
            for name, oid in gitrepo.refs(work).items()
            if name.startswith("refs/remotes/origin/") and not name.endswith("/HEAD")
        }
    )
    assert "refs/heads/topic" not in expected
    assert_replicas_hold(cluster, small.relative, expected)


def test_eight_concurrent_pushers(cluster: Cluster, small: Pushed, tmp_path: Path) -> None:
    work = tmp_path / "work"
    ok(run_git("clone", "-q", small.url, str(work)))
    for i in range(8):
        gitrepo.git("checkout", "-q", "-b", f"pusher-{i}", "main", cwd=work)
        (work / f"pusher-{i}.txt").write_text(f"pusher {i}\n")
        gitrepo.git("add", "-A", cwd=work)
        gitrepo.git("commit", "-q", "-m", f"pusher {i}", cwd=work)
    pushers = [
        subprocess.Popen(
            ["git", "push", small.url, f"pusher-{i}:refs/heads/pusher-{i}"],
            cwd=work,
            env=git_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    results = [(p.wait(120), p.stderr.read() if p.stderr else "") for p in pushers]
    for code, stderr in results:
        assert code == 0, stderr
    expected = {
        **{
            name.replace("refs/remotes/origin/", "refs/heads/"): oid
            for name, oid in gitrepo.refs(work).items()
            if name.startswith("refs/remotes/origin/") and not name.endswith("/HEAD")
        },
        **{
            f"refs/heads/pusher-{i}": gitrepo.refs(work)[f"refs/heads/pusher-{i}"] for i in range(8)
        },
        **{n: o for n, o in heads_and_tags(work).items() if n.startswith("refs/tags/")},
    }
    assert len([n for n in expected if n.startswith("refs/heads/pusher-")]) == 8
    assert_replicas_hold(cluster, small.relative, expected)
    # Concurrent finalizers may leave a replica that committed a generation
    # behind; a replication job brings it up to date.
    found = metadata(cluster, small.relative)
    print(f"after 8 concurrent pushes: {[(r.storage, r.generation) for r in found.replicas]}")

    def generations_converged() -> bool:
        found = metadata(cluster, small.relative)
        return {r.generation for r in found.replicas} == {found.generation}

    wait_for(generations_converged, 30, interval=0.2, what="replica generations to converge")


def test_missing_repository_and_bad_path(gateway: GatewayProcess, tmp_path: Path) -> None:
    proc = run_git("clone", f"{gateway.url}/no/such/repo.git", str(tmp_path / "c"))
    assert proc.returncode == 128
    assert "remote: gitquorum: repository 'no/such/repo.git' not found" in proc.stderr
    assert f"fatal: repository '{gateway.url}/no/such/repo.git/' not found" in proc.stderr
    assert not (tmp_path / "c").exists()

    proc = run_git("ls-remote", f"{gateway.url}/group/%2e%2e/escape.git")
    assert proc.returncode == 128
    assert "remote: gitquorum: invalid repository path" in proc.stderr
    assert "The requested URL returned error: 400" in proc.stderr


def test_gateway_token_file_with_git(
    cluster: Cluster, pushed: Pushed, source: Path, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("push-secret\nfetch-secret read-only\n")
    guarded = start_gateway(
        tmp_path, "guarded", cluster.proxies[0].address, "--token-file", str(tokens)
    )
    try:
        host = guarded.address
        plain = f"http://{host}/{pushed.relative}"
        proc = run_git("ls-remote", plain)
        assert proc.returncode == 128
        assert "terminal prompts disabled" in proc.stderr

        proc = run_git("ls-remote", f"http://ada:wrong@{host}/{pushed.relative}")
        assert proc.returncode == 128
        assert "Authentication failed" in proc.stderr

        proc = ok(run_git("ls-remote", f"http://ada:fetch-secret@{host}/{pushed.relative}"))
        assert f"{heads_and_tags(source)['refs/heads/main']}\trefs/heads/main" in proc.stdout

        work = tmp_path / "work"
        ok(
            run_git(
                "clone",
                "-q",
                "--depth",
                "1",
                f"http://ada:fetch-secret@{host}/{pushed.relative}",
                str(work),
            )
        )
        gitrepo.git("commit", "-q", "--allow-empty", "-m", "guarded", cwd=work)
        proc = run_git("push", "origin", "HEAD:refs/heads/guarded", cwd=work)
        assert proc.returncode == 128
        assert "remote: gitquorum: this credential may fetch but not push" in proc.stderr
        assert "The requested URL returned error: 403" in proc.stderr

        push_url = f"http://ada:push-secret@{host}/{pushed.relative}"
        ok(run_git("push", push_url, "HEAD:refs/heads/guarded", cwd=work))
        assert "refs/heads/guarded" in gitrepo.refs(replica_dirs(cluster, pushed.relative)[0])
    finally:
        # SIGTERM drains and exits cleanly.
        assert guarded.terminate() == 0


def test_metrics_count_git_traffic(gateway: GatewayProcess, pushed: Pushed) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{gateway.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("gitquorum_http_requests_total{")
    }
    assert counts['gitquorum_http_requests_total{code="200",service="PostReceivePack"}'] >= 1
    assert counts['gitquorum_http_requests_total{code="200",service="PostUploadPack"}'] >= 4
    assert counts['gitquorum_http_requests_total{code="404",service="InfoRefsUploadPack"}'] >= 1


def test_proxy_down_is_503_then_service_resumes(
    cluster: Cluster, gateway: GatewayProcess, pushed: Pushed
) -> None:
    proxy = cluster.proxies[0]
    proxy.terminate()
    try:
        proc = run_git("ls-remote", pushed.url)
        assert proc.returncode == 128
        assert "remote: gitquorum: service unavailable" in proc.stderr
        assert "The requested URL returned error: 503" in proc.stderr
    finally:
        proxy.start()
    wait_for(
        lambda: run_git("ls-remote", pushed.url).returncode == 0,
        30,
        interval=0.2,
        what="the gateway to reach the restarted proxy",
    )
