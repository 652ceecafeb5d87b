"""What every admin command shares: configuration, connections, output, exit codes.

Admin commands read the proxy's own configuration file (``--config``, or
``$GITQUORUM_CONFIG``): it names etcd, the cluster prefix, the virtual
storages with their nodes and the token files. They talk to etcd directly
for cluster state, to a live proxy (found in etcd's membership, or
``--proxy``) for the PraefectInfoService RPCs, and to nodes directly for
checks.

Exit codes: 0 ok; 1 the command found a problem or failed; 2 usage or
configuration error; 3 etcd or a proxy could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import math
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gitquorum import authentication, tls, tokens
from gitquorum.cli.arguments import duration, positive_duration
from gitquorum.cli.render import cell_text as cell_text
from gitquorum.cli.render import table as table
from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.cluster.etcd_store import EtcdConfig, EtcdStore
from gitquorum.cluster.health import grpc_target
from gitquorum.cluster.history import History
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.membership import decode_member
from gitquorum.config import ProxyConfig, VirtualStorageConfig, load_proxy_config
from gitquorum.errors import ConfigError, GitquorumError
from gitquorum.proxy.channels import NodeChannels
from gitquorum.wire.options import message_size_options

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

CONFIG_ENV = "GITQUORUM_CONFIG"


class CommandError(Exception):
    """Ends a command with a message on stderr and an exit code."""

    exit_code = EXIT_PROBLEM


class UsageError(CommandError):
    exit_code = EXIT_USAGE


class Unreachable(CommandError):
    exit_code = EXIT_UNREACHABLE


# -- arguments ---------------------------------------------------------------------------


def command_name(parser: argparse.ArgumentParser) -> str:
    """The subcommand a parser was made for (one module may serve two commands)."""
    return parser.prog.split()[-1]


def add_common_arguments(
    parser: argparse.ArgumentParser, *, virtual_storage: bool = True, proxy: bool = False
) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        metavar="FILE",
        help=f"the proxy's YAML configuration (default: ${CONFIG_ENV})",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    if proxy:
        parser.add_argument(
            "--proxy",
            metavar="ADDR",
            help="proxy to send RPCs to (default: a live proxy from etcd's membership)",
        )
    parser.add_argument(
        "--timeout",
        type=positive_duration,
        default=10.0,
        metavar="DURATION",
        help="deadline of each etcd, proxy or node request, e.g. 10s or 500ms "
        "(default 10s; a bare number is seconds)",
    )
    if virtual_storage:
        parser.add_argument(
            "--virtual-storage",
            metavar="NAME",
            help="virtual storage (default: the only one configured)",
        )


def add_repository_argument(
    parser: argparse.ArgumentParser, *, required: bool = True, many: bool = False
) -> None:
    parser.add_argument(
        "--repository",
        "--relative-path",
        dest="repository",
        required=required,
        metavar="PATH",
        action="append" if many else "store",
        help="the repository's relative path, as clients name it"
        + (" (repeatable)" if many else ""),
    )


def load_config(args: argparse.Namespace) -> ProxyConfig:
    path = getattr(args, "config", None)
    if not path:
        raise UsageError(f"no configuration: pass --config FILE or set ${CONFIG_ENV}")
    try:
        return load_proxy_config(path)
    except ConfigError as exc:
        raise UsageError("\n".join(f"config: {p}" for p in exc.problems)) from exc


def pick_virtual_storage(config: ProxyConfig, name: str | None) -> VirtualStorageConfig:
    storages = {vs.name: vs for vs in config.virtual_storages}
    if name is None:
        if len(storages) != 1:
            raise UsageError(
                f"several virtual storages are configured ({', '.join(sorted(storages))}): "
                "pass --virtual-storage"
            )
        return next(iter(storages.values()))
    if name not in storages:
        raise UsageError(f"virtual storage {name!r} is not configured")
    return storages[name]


def parse_duration_arg(value: str) -> float:
    """argparse type for durations ("30s", "6h"); bare numbers are seconds."""
    return duration(value)


# -- connections ---------------------------------------------------------------------------


def _secret(path: str) -> bytes | None:
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read token file {path}: {exc.strerror}") from exc
    # Token files may list several secrets during a rotation; the first signs.
    return authentication.signing_secret(authentication.parse_secrets(data)) or data.strip()


@dataclass
class Admin:
    """Connections of one command run; closed by :func:`run`."""

    config: ProxyConfig
    args: argparse.Namespace
    keys: Keyspace
    timeout: float
    _store: EtcdStore | None = None
    _nodes: NodeChannels | None = None
    _proxy: grpc.aio.Channel | None = None
    _proxy_address: str = ""
    _client_secret: bytes | None = field(default=None, repr=False)

    @classmethod
    def create(cls, config: ProxyConfig, args: argparse.Namespace) -> Admin:
        timeout = float(getattr(args, "timeout", 10.0) or 10.0)
        return cls(
            config,
            args,
            Keyspace(cluster=config.etcd.cluster),
            timeout,
            _client_secret=_secret(config.auth_token_file),
        )

    @property
    def virtual_storage(self) -> VirtualStorageConfig:
        return pick_virtual_storage(self.config, getattr(self.args, "virtual_storage", None))

    def nodes(self, virtual_storage: str) -> list[str]:
        for vs in self.config.virtual_storages:
            if vs.name == virtual_storage:
                return [n.storage for n in vs.nodes]
        return []

    def node_addresses(self) -> dict[str, str]:
        return {n.storage: n.address for vs in self.config.virtual_storages for n in vs.nodes}

    async def store(self) -> EtcdStore:
        """A connected store; Unreachable unless etcd answers a read."""
        if self._store is None:
            etcd = self.config.etcd
            password = _secret(etcd.password_file)
            try:
                store = EtcdStore(
                    EtcdConfig(
                        endpoints=etcd.endpoints,
                        ca_file=etcd.ca_file or None,
                        cert_file=etcd.cert_file or None,
                        key_file=etcd.key_file or None,
                        username=etcd.username or None,
                        password=password.decode() if password else None,
                        request_timeout=min(self.timeout, 5.0),
                        attempts=2,
                    )
                )
            except (OSError, ValueError) as exc:
                # Unreadable TLS files, an endpoint that is not host:port.
                raise UsageError(f"etcd settings: {exc}") from exc
            try:
                await store.connect()
                # A first read proves the endpoints answer (the channel is lazy).
                await store.range(self.keys.prefix, limit=1, prefix=True)
            except StoreUnavailable as exc:
                await store.close()
                raise Unreachable(
                    f"cannot reach etcd at {', '.join(etcd.endpoints)}: {exc}"
                ) from exc
            self._store = store
        return self._store

    def node_channels(self) -> NodeChannels:
        """Channels to nodes, carrying the node token when one is configured."""
        if self._nodes is None:
            node_tls = self.config.node_tls
            self._nodes = NodeChannels(
                self.node_addresses(),
                _secret(self.config.node_token_file),
                tls.client_tls(node_tls) if node_tls is not None else None,
            )
        return self._nodes

    def node_metadata(self) -> list[tuple[str, str | bytes]]:
        return self.node_channels().forward_metadata(())

    def proxy_metadata(self) -> list[tuple[str, str]]:
        return [tokens.bearer(self._client_secret)] if self._client_secret else []

    async def live_proxies(self) -> dict[str, str]:
        """Proxies registered in etcd (their lease is alive) -> address."""
        store = await self.store()
        result = await store.get_prefix(self.keys.proxies())
        proxies = {}
        for kv in result.kvs:
            with contextlib.suppress(ValueError):
                address, _ = decode_member(kv.value)
                proxies[kv.key[len(self.keys.proxies()) :]] = address
        return proxies

    async def proxy(self) -> grpc.aio.Channel:
        """A channel to a proxy that answers its health check; Unreachable if none does."""
        if self._proxy is not None:
            return self._proxy
        explicit = getattr(self.args, "proxy", None)
        if explicit:
            candidates = [explicit]
        else:
            candidates = sorted(set((await self.live_proxies()).values()))
            if not candidates:
                raise Unreachable("no live proxy is registered in etcd (pass --proxy ADDR)")
        failures = []
        for address in candidates:
            channel = self.dial_proxy(address)
            if await health_check(channel, min(self.timeout, 3.0)):
                self._proxy, self._proxy_address = channel, address
                return channel
            await channel.close()
            failures.append(address)
        raise Unreachable(f"no proxy answers (tried {', '.join(failures)})")

    def dial_proxy(self, address: str) -> grpc.aio.Channel:
        """A channel to a proxy: TLS when the configuration's proxy serves it,
        verified with $GITQUORUM_TLS_CA, else node_tls.ca_file, else the system's roots."""
        options = message_size_options()
        client = None
        if self.config.tls.cert_file:
            ca = os.environ.get("GITQUORUM_TLS_CA") or (
                self.config.node_tls.ca_file if self.config.node_tls is not None else ""
            )
            client = tls.ClientTLS(ca)
        try:
            return tls.aio_channel(grpc_target(address), client, options)
        except ConfigError as exc:
            raise UsageError(str(exc)) from exc

    def history(self) -> History | None:
        """The history log, for commands that change primaries (after :meth:`store`)."""
        if self._store is None:
            return None
        return History(self._store, self.keys, writer=operator_name())

    async def close(self) -> None:
        if self._proxy is not None:
            await self._proxy.close()
        if self._nodes is not None:
            await self._nodes.close()
        if self._store is not None:
            await self._store.close()


def operator_name() -> str:
    """Who runs this command, as recorded with operator marks and history entries."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"


async def health_check(channel: grpc.aio.Channel, seconds: float) -> bool:
    """``grpc.health.v1`` Check: SERVING within ``seconds``."""
    try:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=seconds
        )
    except grpc.aio.AioRpcError:
        return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


# -- running a command ---------------------------------------------------------------------

Body = Callable[[Admin], Awaitable[int]]


def run(args: argparse.Namespace, body: Body) -> int:
    """Load the configuration, run ``body`` with its connections, map failures to exit codes."""
    try:
        config = load_config(args)
        admin = Admin.create(config, args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code

    async def main() -> int:
        try:
            return await body(admin)
        finally:
            await admin.close()

    try:
        return asyncio.run(main())
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except grpc.aio.AioRpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return rpc_exit_code(exc.code())
    except StoreUnavailable as exc:
        print(f"error: etcd: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except GitquorumError as exc:
        print(f"error: {exc.code.name}: {exc}", file=sys.stderr)
        return rpc_exit_code(exc.code)
    except KeyboardInterrupt:
        return 130


def rpc_exit_code(code: grpc.StatusCode) -> int:
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return EXIT_UNREACHABLE
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return EXIT_USAGE
    return EXIT_PROBLEM


# -- output --------------------------------------------------------------------------------


def format_age(seconds: float | None) -> str:
    """A compact duration: 850ms, 12s, 3m04s, 2h05m, 3d04h; "-" for none."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_time(unix: float | None) -> str:
    if not unix:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def dump_json(data: Any, stream: TextIO | None = None) -> None:
    """JSON for scripts: sorted keys, one document, trailing newline."""
    out = stream or sys.stdout
    json.dump(data, out, indent=2, sort_keys=True, default=_json_default)
    out.write("\n")


def _json_default(value: object) -> object:
    if isinstance(value, set | frozenset):
        return sorted(value)  # type: ignore[type-var]
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def emit(args: argparse.Namespace, data: Any, human: Callable[[], str]) -> None:
    """Print ``data`` as JSON with ``--json``, else the human rendering."""
    if getattr(args, "json", False):
        dump_json(data)
    else:
        text = human()
        if text:
            print(text)
