"""Real etcd clusters for tests: 1 or 3 members on free loopback ports.

``EtcdCluster`` starts the ``etcd`` binary (``$ETCD_BIN`` or ``etcd`` on PATH)
in a directory of its own, waits until every member answers ``/health`` with a
deadline, and lets a test SIGKILL, SIGSTOP/SIGCONT, stop and restart single
members. Logs stay in the directory; :meth:`EtcdCluster.log_tail` prints them
when a test fails. :meth:`EtcdCluster.close` always removes every process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

ETCD_BIN = os.environ.get("ETCD_BIN") or shutil.which("etcd") or "/usr/bin/etcd"


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client one."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def create(cls, directory: Path) -> TlsFiles:
        directory.mkdir(parents=True, exist_ok=True)

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=gitquorum-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        )
        for name, extension in (
            ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
            ("client", "extendedKeyUsage=clientAuth"),
        ):
            openssl(
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                f"/CN={name}",
                "-keyout",
                f"{name}.key",
                "-out",
                f"{name}.csr",
            )
            (directory / f"{name}.ext").write_text(extension + "\n")
            openssl(
                "x509",
                "-req",
                "-in",
                f"{name}.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                f"{name}.ext",
                "-out",
                f"{name}.pem",
            )
        return cls(
            directory / "ca.pem",
            directory / "server.pem",
            directory / "server.key",
            directory / "client.pem",
            directory / "client.key",
        )

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False
    tls: TlsFiles | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    def _open(self, request: str | urllib.request.Request, timeout: float):  # type: ignore[no-untyped-def]
        context = self.tls.ssl_context() if self.tls else None
        return urllib.request.urlopen(request, timeout=timeout, context=context)

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self, timeout: float = 0.5) -> bool:
        if not self.alive() or self.paused:
            return False
        try:
            with self._open(f"{self.client_url}/health", timeout) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, urllib.error.URLError, ValueError):
            return False


@dataclass
class EtcdCluster:
    size: int = 1
    base_dir: Path | None = None
    quota_bytes: int | None = None
    extra_args: list[str] = field(default_factory=list)
    # Faster raft timing than the defaults so tests recover from a lost
    # leader in well under a second (still 10 heartbeats per election timeout).
    heartbeat_ms: int = 50
    election_ms: int = 500
    # Serve clients over TLS with client certificates (peers stay plain).
    tls: bool = False
    tls_files: TlsFiles | None = None
    members: list[EtcdMember] = field(default_factory=list)
    _own_dir: bool = False

    def __post_init__(self) -> None:
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="etcd-"))
            self._own_dir = True
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.tls and self.tls_files is None:
            self.tls_files = TlsFiles.create(self.base_dir / "tls")
        ports = free_ports(2 * self.size)
        for i in range(self.size):
            name = f"etcd{i}"
            self.members.append(
                EtcdMember(
                    name,
                    ports[2 * i],
                    ports[2 * i + 1],
                    self.base_dir / f"{name}.data",
                    self.base_dir / f"{name}.log",
                    tls=self.tls_files,
                )
            )

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def _spawn(self, member: EtcdMember, state: str) -> None:
        args = [
            ETCD_BIN,
            "--name",
            member.name,
            "--data-dir",
            str(member.data_dir),
            "--listen-client-urls",
            member.client_url,
            "--advertise-client-urls",
            member.client_url,
            "--listen-peer-urls",
            member.peer_url,
            "--initial-advertise-peer-urls",
            member.peer_url,
            "--initial-cluster",
            self._initial_cluster(),
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            f"gitquorum-test-{os.getpid()}-{self.members[0].client_port}",
            "--heartbeat-interval",
            str(self.heartbeat_ms),
            "--election-timeout",
            str(self.election_ms),
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            *(["--quota-backend-bytes", str(self.quota_bytes)] if self.quota_bytes else []),
            *self._tls_args(),
            *self.extra_args,
        ]
        with open(member.log_path, "ab") as log:
            member.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own process group: a Ctrl-C of pytest does not hit etcd first.
                start_new_session=True,
            )
        member.paused = False

    def _tls_args(self) -> list[str]:
        files = self.tls_files
        if files is None:
            return []
        return [
            "--cert-file",
            str(files.server_cert),
            "--key-file",
            str(files.server_key),
            "--trusted-ca-file",
            str(files.ca),
            "--client-cert-auth",
        ]

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        try:
            for member in self.members:
                self._spawn(member, "new")
            self.wait_healthy(timeout=timeout)
        except BaseException:
            print(self.log_tail())
            self.close()
            raise
        return self

    def wait_healthy(self, members: list[int] | None = None, timeout: float = 30.0) -> None:
        """Poll ``/health`` of the given members (default all running) until OK."""
        chosen = (
            [self.members[i] for i in members]
            if members is not None
            else [m for m in self.members if m.alive() and not m.paused]
        )
        deadline = time.monotonic() + timeout
        while True:
            for member in chosen:
                if member.proc is not None and member.proc.poll() is not None:
                    raise RuntimeError(f"{member.name} exited:\n{self.log_tail()}")
            if all(m.healthy() for m in chosen):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd not healthy after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def _signal(self, index: int, sig: signal.Signals) -> EtcdMember:
        member = self.members[index]
        if member.proc is None or member.proc.poll() is not None:
            raise RuntimeError(f"{member.name} is not running")
        member.proc.send_signal(sig)
        return member

    def kill(self, index: int) -> None:
        """SIGKILL one member (no clean shutdown)."""
        member = self._signal(index, signal.SIGKILL)
        assert member.proc is not None
        member.proc.wait(timeout=10)
        member.paused = False

    def stop(self, index: int) -> None:
        """SIGTERM one member and wait for it to exit."""
        member = self._signal(index, signal.SIGTERM)
        assert member.proc is not None
        try:
            member.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            member.proc.kill()
            member.proc.wait(timeout=10)

    def pause(self, index: int) -> None:
        self._signal(index, signal.SIGSTOP)
        self.members[index].paused = True

    def resume(self, index: int) -> None:
        self._signal(index, signal.SIGCONT)
        self.members[index].paused = False

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """Start a stopped or killed member again on its data dir and ports."""
        member = self.members[index]
        if member.alive():
            self.stop(index)
        self._spawn(member, "existing")
        self.wait_healthy([index], timeout=timeout)

    def leader_index(self) -> int | None:
        """Index of the raft leader, from the members' v3 status (JSON gateway)."""
        for i, member in enumerate(self.members):
            if not member.alive() or member.paused:
                continue
            try:
                request = urllib.request.Request(
                    f"{member.client_url}/v3/maintenance/status", data=b"{}", method="POST"
                )
                with member._open(request, 0.5) as resp:
                    status = json.loads(resp.read())
                if status.get("leader") and status["leader"] == status["header"]["member_id"]:
                    return i
            except (OSError, ValueError, KeyError):
                continue
        return None

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for member in self.members:
            try:
                text = member.log_path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = ["<no log>"]
            parts.append(f"--- {member.name} ({member.log_path}) ---\n" + "\n".join(text))
        return "\n".join(parts)

    def close(self) -> None:
        for member in self.members:
            proc = member.proc
            if proc is None or proc.poll() is not None:
                continue
            if member.paused:
                proc.send_signal(signal.SIGCONT)
            proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self._own_dir and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            print(self.log_tail())
        self.close()
