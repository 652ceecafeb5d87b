"""A whole gitquorum cluster on this machine: etcd, nodes, proxies, HTTP gateway.

:class:`LocalCluster` runs every part as a child process of the caller on
loopback ports, waits until each one serves (the ``--ready-file`` of nodes,
proxies and the gateway, etcd's ``/health``, then the proxies' health
consensus and a ServerInfo call through the first proxy), and stops them in
dependency order: gateway, proxies, nodes, etcd. ``gitquorum up`` is a thin
command line over it.

The data directory holds everything, so ``--dir`` keeps a cluster across runs::

    cluster.json        ports and topology, reused by the next start so that
                        clone URLs and metrics targets stay valid
    proxyN.yaml         generated proxy configuration (``gitquorum proxy
                        --config``, ``gitquorum repo --config``)
    etcd/               etcd's data
    nodeN/storage/      the repositories of storage node ``nodeN``
    logs/NAME.log       each child's stdout and stderr
    run/NAME.ready      ready files written by the children
    node-token          the node secret (mode 0600), made with ``--token-file``:
                        proxies -> nodes; the client secret is the given file
    up.lock             held while a cluster runs on this directory

Children die with the launcher even when it is killed with SIGKILL: on Linux
each child asks the kernel for SIGTERM when its parent goes away
(``PR_SET_PDEATHSIG``). The kernel ties that to the *thread* that spawned the
child, so :meth:`LocalCluster.start` must run on a thread that outlives the
cluster (the main thread in ``gitquorum up``).

Local settings are fast but sane: nodes are health-checked every second,
leadership and replication-job leases last 5 s, the reconciler looks for
outdated replicas every 5 s instead of 30 s (the defaults of
:func:`gitquorum.launch.proxy_config.proxy_config`), and etcd uses a 100 ms
heartbeat with a 1 s election timeout.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from gitquorum.launch.etcd import etcd_command, etcd_healthy, find_etcd
from gitquorum.launch.process import HOST, ChildProcess, LaunchError, die_with_parent, stop_group
from gitquorum.launch.proxy_config import VIRTUAL_STORAGE, proxy_config

__all__ = ["Child", "LaunchError", "LocalCluster", "Settings", "find_etcd", "saved_settings"]

STATE_FILE = "cluster.json"
# How long a child gets between SIGTERM and SIGKILL on close; the proxy's own
# drain (graceful_timeout) is shorter so it finishes in time.
STOP_TIMEOUT = 10.0
GRACEFUL_TIMEOUT = "5s"
# Ports kept from an earlier run may still be held for a moment by the
# children of a launcher that was just killed (they drain on SIGTERM).
PORT_WAIT = 15.0

NODE_TOKEN_FILE = "node-token"
_SECRET_VARIABLES = ("GITQUORUM_TOKEN", "GITQUORUM_NODE_TOKEN")


@dataclass(frozen=True)
class Settings:
    nodes: int = 3
    proxies: int = 1
    # 0: three replicas, or every node when there are fewer.
    replication_factor: int = 0
    http: bool = True
    # Client secret file (``gitquorum up --token-file``): authentication on.
    token_file: str = ""
    # Top-level proxy settings that replace the local defaults of
    # gitquorum.launch.proxy_config (a benchmark's production timings).
    proxy_settings: dict[str, Any] = field(default_factory=dict)

    @property
    def effective_replication_factor(self) -> int:
        return self.replication_factor or min(3, self.nodes)

    def validate(self) -> None:
        problems = []
        if self.nodes < 1:
            problems.append("--nodes must be at least 1")
        if self.proxies < 1:
            problems.append("--proxies must be at least 1")
        if not 0 <= self.replication_factor <= max(self.nodes, 1):
            problems.append(
                f"--replication-factor must be between 1 and the number of nodes ({self.nodes})"
            )
        if problems:
            raise ValueError("; ".join(problems))


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # TIME_WAIT leftovers of a previous run must not count as taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


class PortBook:
    """Ports by component name; kept in the data directory so a restart reuses them."""

    def __init__(self, saved: dict[str, int]) -> None:
        self.ports = dict(saved)
        self._fresh: set[str] = set()

    def port(self, name: str) -> int:
        if name in self.ports:
            return self.ports[name]
        taken = set(self.ports.values())
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((HOST, 0))
                port = int(probe.getsockname()[1])
            if port not in taken:
                break
        self.ports[name] = port
        self._fresh.add(name)
        return port

    def wait_reused_free(self, names: Iterable[str], timeout: float = PORT_WAIT) -> None:
        """Ports kept from an earlier run must be free before anything binds them."""
        deadline = time.monotonic() + timeout
        for name in names:
            if name in self._fresh:
                continue
            port = self.ports[name]
            while not _port_free(port):
                if time.monotonic() > deadline:
                    raise LaunchError(
                        f"port {port} of {name} (kept in {STATE_FILE}) is in use: is another "
                        f"cluster still running? Stop it, or remove the port from {STATE_FILE}"
                    )
                time.sleep(0.1)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise LaunchError(f"{path}: unreadable state ({exc}); remove it to start afresh") from exc
    return data if isinstance(data, dict) else {}


def saved_settings(data_dir: Path) -> dict[str, int]:
    """The topology an earlier run recorded in ``data_dir`` (empty if none)."""
    saved = _read_state(data_dir / STATE_FILE).get("settings", {})
    keys = ("nodes", "proxies", "replication_factor")
    return {k: int(saved[k]) for k in keys if isinstance(saved, dict) and k in saved}


class Child(ChildProcess):
    """One child of the local cluster: a process plus what the launcher reports of it."""

    def __init__(
        self,
        name: str,
        kind: str,
        argv: list[str],
        log_path: Path,
        ready_file: Path | None = None,
        *,
        address: str = "",
        extra: dict[str, Any] | None = None,
    ) -> None:
        # Own session: a Ctrl-C in the terminal reaches only the launcher,
        # which then stops the children in order.
        super().__init__(name, log_path, ready_file, argv=argv, new_session=True)
        self.kind = kind
        self.address = address
        self.extra = dict(extra or {})

    def environment(self) -> dict[str, str]:
        # Secrets come from the files named in argv and configs only: a token
        # variable in the caller's shell (meant for git-ssh) must not switch
        # authentication on or change a secret behind the launcher's back.
        return {k: v for k, v in os.environ.items() if k not in _SECRET_VARIABLES}

    def log_tail(self, lines: int = 25) -> str:
        if not self.log_path.exists():
            return f"--- {self.name}: no log at {self.log_path} ---"
        return f"--- {self.name} ({self.log_path}) ---\n" + super().log_tail(lines)


class LocalCluster:
    """etcd, storage nodes, proxies and the HTTP gateway as child processes.

    ``data_dir=None`` uses a temporary directory that :meth:`close` removes.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        data_dir: Path | None = None,
        *,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.settings.validate()
        self.temporary = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="gitquorum-up-")) if data_dir is None else data_dir
        ).resolve()
        self.progress = progress or (lambda _message: None)
        self.etcd_binary = ""
        self.etcd_source = ""
        self.etcd: Child | None = None
        self.nodes: list[Child] = []
        self.proxies: list[Child] = []
        self.http: Child | None = None
        self._lock: IO[bytes] | None = None
        self._reported: set[str] = set()
        self._closed = False

    # -- layout -----------------------------------------------------------------

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def children(self) -> list[Child]:
        parts = [self.etcd, *self.nodes, *self.proxies, self.http]
        return [c for c in parts if c is not None]

    def proxy_config_path(self, index: int = 0) -> Path:
        return self.data_dir / f"proxy{index + 1}.yaml"

    @property
    def node_token_path(self) -> Path:
        return self.data_dir / NODE_TOKEN_FILE

    def _node_token_args(self) -> list[str]:
        return ["--token-file", str(self.node_token_path)] if self.settings.token_file else []

    def _ensure_node_secret(self) -> None:
        """A node secret of our own, kept with the data (0600) so restarts reuse it.

        It differs from the client secret: clients cannot call nodes directly.
        """
        from gitquorum.authentication import load_secrets
        from gitquorum.errors import ConfigError

        try:
            clients = set(load_secrets(self.settings.token_file))
        except ConfigError as exc:
            raise LaunchError(str(exc)) from exc
        path = self.node_token_path
        if path.exists():
            if not clients & set(load_secrets(str(path))):
                return
            path.unlink()
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")

    # -- start ------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> LocalCluster:
        """Start everything and wait until the cluster serves; on failure stop
        what was started and raise :class:`LaunchError` with the logs' tails."""
        deadline = time.monotonic() + timeout
        try:
            self._prepare()
            state = _read_state(self.data_dir / STATE_FILE)
            ports = PortBook({k: int(v) for k, v in state.get("ports", {}).items()})
            self._plan(ports)
            ports.wait_reused_free(ports.ports)
            self._save_state(ports)
            preexec = die_with_parent()
            for child in self.children:
                child.preexec = preexec

            assert self.etcd is not None
            self.progress(f"starting etcd ({self.etcd_binary}, from {self.etcd_source})")
            self.etcd.spawn()
            self._wait(deadline, "etcd to serve", self._etcd_healthy)

            self.progress(
                f"starting {len(self.nodes)} nodes and {len(self.proxies)} "
                f"prox{'y' if len(self.proxies) == 1 else 'ies'}"
            )
            # Nodes and proxies start together: proxies find nodes through
            # their health checks, so the order does not matter and the
            # interpreters start in parallel.
            for child in [*self.nodes, *self.proxies]:
                child.spawn()
            if self.http is not None:
                self.http.spawn()
            waiting = [*self.nodes, *self.proxies, *([self.http] if self.http else [])]
            self._wait(deadline, "nodes and proxies to serve", lambda: self._all_ready(waiting))
            # Every child exists now: threads (gRPC's) are safe from here on.
            self.progress("waiting for the proxies to see every node healthy")
            self._wait(deadline, "every node to be healthy", self._consensus_healthy)
            self._wait(deadline, "a leader among the proxies", self._has_leader)
            self._wait(deadline, "the virtual storage to be writable", self._writable)
        except BaseException as exc:
            tails = self.log_tail()
            self.close()
            if isinstance(exc, LaunchError | TimeoutError):
                raise LaunchError(f"{exc}\n{tails}" if tails else str(exc)) from exc
            raise
        return self

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        self.run_dir.mkdir(exist_ok=True)
        if self.settings.token_file:
            self._ensure_node_secret()
        # Held (open) until close(); the kernel drops the lock if we die.
        lock = open(self.data_dir / "up.lock", "ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise LaunchError(f"another cluster is running on {self.data_dir}") from None
        self._lock = lock
        self.etcd_binary, self.etcd_source = find_etcd()

    def _python(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gitquorum.cli.main", *args]

    def _plan(self, ports: PortBook) -> None:
        s = self.settings
        client, peer = ports.port("etcd"), ports.port("etcd.peer")
        etcd_url, peer_url = f"http://{HOST}:{client}", f"http://{HOST}:{peer}"
        self.etcd = Child(
            "etcd",
            "etcd",
            etcd_command(
                self.etcd_binary,
                name="local",
                data_dir=self.data_dir / "etcd",
                client_url=etcd_url,
                peer_url=peer_url,
                initial_cluster=f"local={peer_url}",
                cluster_token="gitquorum-local",
                heartbeat_ms=100,
                election_ms=1000,
            ),
            self.logs_dir / "etcd.log",
            address=f"{HOST}:{client}",
            extra={"client_url": etcd_url},
        )
        for i in range(s.nodes):
            name = f"node{i + 1}"
            storage = self.data_dir / name / "storage"
            storage.mkdir(parents=True, exist_ok=True)
            listen = f"{HOST}:{ports.port(name)}"
            self.nodes.append(
                Child(
                    name,
                    "node",
                    self._python(
                        "node",
                        "--listen",
                        listen,
                        "--storage",
                        f"{name}={storage}",
                        "--metrics-listen",
                        f"{HOST}:{ports.port(name + '.metrics')}",
                        "--ready-file",
                        str(self.run_dir / f"{name}.ready"),
                        *self._node_token_args(),
                    ),
                    self.logs_dir / f"{name}.log",
                    self.run_dir / f"{name}.ready",
                    address=listen,
                    extra={"storage_path": str(storage)},
                )
            )
        for i in range(s.proxies):
            name = f"proxy{i + 1}"
            path = self.proxy_config_path(i)
            listen = f"{HOST}:{ports.port(name)}"
            config = self.proxy_config(name, listen, f"{HOST}:{ports.port(name + '.metrics')}")
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            self.proxies.append(
                Child(
                    name,
                    "proxy",
                    self._python(
                        "proxy",
                        "--config",
                        str(path),
                        "--ready-file",
                        str(self.run_dir / f"{name}.ready"),
                    ),
                    self.logs_dir / f"{name}.log",
                    self.run_dir / f"{name}.ready",
                    address=listen,
                    extra={"config": str(path)},
                )
            )
        if s.http:
            self._plan_http(ports)

    def proxy_config(self, name: str, listen: str, metrics_listen: str) -> dict[str, Any]:
        assert self.etcd is not None
        return proxy_config(
            name=name,
            listen=listen,
            metrics_listen=metrics_listen,
            etcd_endpoints=[self.etcd.address],
            nodes=[(n.name, n.address) for n in self.nodes],
            replication_factor=self.settings.effective_replication_factor,
            token_file=self.settings.token_file,
            node_token_file=str(self.node_token_path) if self.settings.token_file else "",
            overrides=self.settings.proxy_settings,
        )

    def _plan_http(self, ports: PortBook) -> None:
        listen = f"{HOST}:{ports.port('http')}"
        self.http = Child(
            "http",
            "http",
            self._python(
                "http",
                "--listen",
                listen,
                "--proxy",
                self.proxies[0].address,
                "--virtual-storage",
                VIRTUAL_STORAGE,
                "--create-on-push",
                "--graceful-timeout",
                GRACEFUL_TIMEOUT,
                # The client secret both admits git users (HTTP Basic password)
                # and signs the gateway's calls to the proxy.
                *(
                    ["--token-file", token, "--proxy-token-file", token]
                    if (token := self.settings.token_file)
                    else []
                ),
                "--ready-file",
                str(self.run_dir / "http.ready"),
            ),
            self.logs_dir / "http.log",
            self.run_dir / "http.ready",
            address=listen,
        )

    def _save_state(self, ports: PortBook) -> None:
        s = self.settings
        state = {
            "ports": ports.ports,
            "settings": {
                "nodes": s.nodes,
                "proxies": s.proxies,
                "replication_factor": s.replication_factor,
            },
        }
        target = self.data_dir / STATE_FILE
        scratch = target.with_suffix(".tmp")
        scratch.write_text(json.dumps(state, indent=2) + "\n")
        scratch.replace(target)

    # -- readiness --------------------------------------------------------------

    def _wait(self, deadline: float, what: str, predicate: Callable[[], bool]) -> None:
        while not predicate():
            for child in self.children:
                if child.proc is not None and child.exited():
                    raise LaunchError(f"{child.name} {child.describe_exit()} while starting")
            if time.monotonic() > deadline:
                raise LaunchError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def _etcd_healthy(self) -> bool:
        assert self.etcd is not None
        return etcd_healthy(self.etcd.extra["client_url"])

    @staticmethod
    def _all_ready(children: list[Child]) -> bool:
        return all([c.check_ready() for c in children])

    def _scrape(self, child: Child) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(self.metrics_url(child), timeout=2) as response:
                text = response.read().decode()
        except (OSError, ValueError):
            return {}
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def _consensus_healthy(self) -> bool:
        for proxy in self.proxies:
            samples = self._scrape(proxy)
            for node in self.nodes:
                labels = (("storage", node.name), ("view", "consensus"))
                key = ("gitquorum_node_healthy", (*labels, ("virtual_storage", VIRTUAL_STORAGE)))
                if samples.get(key) != 1.0:
                    return False
        return True

    def _has_leader(self) -> bool:
        total = 0.0
        for proxy in self.proxies:
            samples = self._scrape(proxy)
            total += samples.get(("gitquorum_leader", (("proxy", proxy.name),)), 0.0)
        return total >= 1.0

    def _writable(self) -> bool:
        import grpc

        from gitquorum.gitaly import server_pb2, server_pb2_grpc

        metadata = []
        if self.settings.token_file:
            from gitquorum import tokens
            from gitquorum.authentication import load_secrets, signing_secret

            secret = signing_secret(load_secrets(self.settings.token_file))
            if secret is not None:
                metadata.append(tokens.bearer(secret))
        with grpc.insecure_channel(self.proxies[0].address) as channel:
            try:
                response = server_pb2_grpc.ServerServiceStub(channel).ServerInfo(
                    server_pb2.ServerInfoRequest(), timeout=5, metadata=metadata
                )
            except grpc.RpcError:
                return False
        return any(
            s.storage_name == VIRTUAL_STORAGE and s.readable and s.writeable
            for s in response.storage_statuses
        )

    # -- running ----------------------------------------------------------------

    def metrics_url(self, child: Child) -> str:
        if child.kind == "etcd":
            return f"{child.extra['client_url']}/metrics"
        if not child.metrics_port:
            return ""
        return f"http://{HOST}:{child.metrics_port}/metrics"

    def newly_exited(self) -> list[Child]:
        """Children that stopped on their own since the last call (each reported once)."""
        found = []
        for child in self.children:
            if child.proc is not None and child.exited() and child.name not in self._reported:
                self._reported.add(child.name)
                found.append(child)
        return found

    def node(self, name: str) -> Child:
        return next(n for n in self.nodes if n.name == name)

    def log_tail(self, lines: int = 25) -> str:
        """The end of every started child's log, for a failure report."""
        return "\n".join(c.log_tail(lines) for c in self.children if c.proc is not None)

    def git_ssh_command(self) -> str:
        if shutil.which("gitquorum"):
            return "gitquorum git-ssh"
        return f"{sys.executable} -m gitquorum.cli.main git-ssh"

    def endpoints(self) -> dict[str, Any]:
        """Everything a client, an operator or a test needs, JSON-ready."""
        assert self.etcd is not None
        proxy = self.proxies[0]
        http_url = f"http://{self.http.address}/" if self.http is not None else None

        def common(child: Child) -> dict[str, Any]:
            return {
                "name": child.name,
                "address": child.address,
                "pid": child.pid,
                "metrics_url": self.metrics_url(child),
                "log": str(child.log_path),
            }

        return {
            # The launcher: signal it to stop everything.
            "pid": os.getpid(),
            "data_dir": str(self.data_dir),
            "temporary": self.temporary,
            "logs_dir": str(self.logs_dir),
            "virtual_storage": VIRTUAL_STORAGE,
            "replication_factor": self.settings.effective_replication_factor,
            "config": str(self.proxy_config_path(0)),
            "etcd": {
                **common(self.etcd),
                "endpoints": [self.etcd.address],
                "binary": self.etcd_binary,
                "binary_source": self.etcd_source,
                "data_dir": str(self.data_dir / "etcd"),
            },
            "nodes": [
                {**common(n), "storage": n.name, "storage_path": n.extra["storage_path"]}
                for n in self.nodes
            ],
            "proxies": [{**common(p), "config": p.extra["config"]} for p in self.proxies],
            "http": None if self.http is None else {**common(self.http), "url": http_url},
            "metrics_urls": {c.name: self.metrics_url(c) for c in self.children},
            "ssh": {
                "git_ssh_command": self.git_ssh_command(),
                "url_template": f"ssh://{proxy.address}/<repository>.git",
            },
            "http_url_template": f"{http_url}<repository>.git" if http_url else None,
            # Paths, never the secrets themselves.
            "auth": {
                "token_file": self.settings.token_file,
                "node_token_file": str(self.node_token_path),
            }
            if self.settings.token_file
            else None,
            "settings": asdict(self.settings),
        }

    # -- stop -------------------------------------------------------------------

    def close(self, timeout: float = STOP_TIMEOUT, hurry: Callable[[], bool] | None = None) -> None:
        """Stop the gateway, then proxies, then nodes, then etcd; each group gets
        SIGTERM and ``timeout`` seconds (or until ``hurry()``) before SIGKILL."""
        if self._closed:
            return
        self._closed = True
        groups = [[self.http] if self.http else [], self.proxies, self.nodes]
        groups.append([self.etcd] if self.etcd else [])
        for group in groups:
            stop_group([c for c in group if c.proc is not None], timeout, hurry)
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self.temporary:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()
