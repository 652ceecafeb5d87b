"""Where ``gitquorum repo`` sends its calls, and what a failed call means to a person.

The proxy is named by ``--proxy ADDR`` or by a proxy configuration
(``--config FILE``: its listen address, its client token file and its etcd
settings); ``GITQUORUM_ADDRESS``, ``GITQUORUM_CONFIG``, ``GITQUORUM_STORAGE``
and ``GITQUORUM_TOKEN_FILE`` are the defaults, as for ``gitquorum git-ssh``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from gitquorum.cli.arguments import add_deprecated_alias, positive_duration
from gitquorum.config import ProxyConfig, load_proxy_config, parse_address
from gitquorum.errors import ConfigError

# Exit codes: 0 done, 1 the operation failed, 2 the command line or a
# configuration file is wrong.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# Statuses that mean the request itself was wrong rather than the operation failing.
_USAGE_CODES = {grpc.StatusCode.INVALID_ARGUMENT}


class CliError(Exception):
    """A failure with the message to print and the exit code to return."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--proxy",
        default=os.environ.get("GITQUORUM_ADDRESS"),
        metavar="ADDR",
        help="proxy address host:port (default $GITQUORUM_ADDRESS)",
    )
    parser.add_argument(
        "--config",
        default=os.environ.get("GITQUORUM_CONFIG"),
        metavar="FILE",
        help="a proxy configuration: its listen address, token and etcd settings are used "
        "(default $GITQUORUM_CONFIG)",
    )
    parser.add_argument(
        "--virtual-storage",
        dest="virtual_storage",
        default=os.environ.get("GITQUORUM_STORAGE", "default"),
        metavar="NAME",
        help="virtual storage (default $GITQUORUM_STORAGE or 'default')",
    )
    # `--storage` names a node everywhere else (node, verify); it meant the
    # virtual storage here before, and still does, with a warning.
    add_deprecated_alias(parser, "--storage", "--virtual-storage", "virtual_storage")
    parser.add_argument(
        "--token-file",
        default=os.environ.get("GITQUORUM_TOKEN_FILE"),
        metavar="FILE",
        help="shared secret when the proxy requires authentication",
    )
    parser.add_argument(
        "--timeout",
        type=positive_duration,
        default=30.0,
        metavar="DURATION",
        help="how long to wait for an answer, e.g. 30s (default 30s; a bare number is seconds)",
    )


@dataclass(frozen=True)
class Target:
    address: str
    storage: str
    timeout: float
    token_file: str = ""
    config: ProxyConfig | None = None

    def metadata(self) -> list[tuple[str, str]]:
        if not self.token_file:
            return []
        from gitquorum import tokens

        try:
            with open(self.token_file, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise CliError(f"cannot read token file {self.token_file}: {exc.strerror}", 2) from exc
        # A token file may list several secrets during a rotation; the first signs.
        secret = next((line.strip() for line in data.splitlines() if line.strip()), b"")
        return [tokens.bearer(secret)]

    def describe(self, error: grpc.RpcError, subject: str) -> CliError:
        """A person's message for a failed call about ``subject``."""
        code = error.code()  # type: ignore[attr-defined]
        details = error.details() or ""  # type: ignore[attr-defined]
        where = f"virtual storage {self.storage!r}"
        if code == grpc.StatusCode.NOT_FOUND:
            return CliError(f"{subject} not found on {where} ({details})")
        if code == grpc.StatusCode.ALREADY_EXISTS:
            return CliError(f"{subject} already exists on {where}")
        if code == grpc.StatusCode.UNAVAILABLE:
            if "failed to connect" in details.lower():
                return CliError(
                    f"cannot reach the proxy at {self.address}: is it running? ({details})"
                )
            return CliError(f"the proxy at {self.address} is unavailable: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return CliError(f"the proxy at {self.address} did not answer within {self.timeout:g}s")
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            hint = "" if self.token_file else " (pass --token-file)"
            return CliError(f"the proxy at {self.address} refused access: {details}{hint}")
        exit_code = EXIT_USAGE if code in _USAGE_CODES else EXIT_FAILED
        return CliError(f"{details or 'request failed'} ({code.name})", exit_code)


def _dialable(listen: str) -> str:
    """A listen address as a client address: wildcard hosts mean this machine."""
    host, port = parse_address(listen)
    if port == 0:
        raise CliError(f"the proxy listens on {listen!r} (any port): pass --proxy ADDR", 2)
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def load_config(args: argparse.Namespace) -> ProxyConfig | None:
    if not args.config:
        return None
    try:
        return load_proxy_config(args.config)
    except ConfigError as exc:
        problems = "\n".join(f"  {p}" for p in exc.problems)
        raise CliError(f"invalid configuration {args.config}:\n{problems}", EXIT_USAGE) from exc


def resolve(args: argparse.Namespace, need_proxy: bool = True) -> Target:
    """The proxy and virtual storage from the command line, or a CliError (exit 2)."""
    config = load_config(args)
    address = args.proxy or ""
    if config is not None:
        known = [vs.name for vs in config.virtual_storages]
        if args.virtual_storage not in known:
            raise CliError(
                f"virtual storage {args.virtual_storage!r} is not in {args.config} "
                f"(it has {', '.join(known)}): pass --virtual-storage",
                EXIT_USAGE,
            )
        address = address or _dialable(config.listen)
    elif address:
        try:
            parse_address(address)
        except ValueError as exc:
            raise CliError(f"--proxy: {exc}", EXIT_USAGE) from exc
    if need_proxy and not address:
        raise CliError("no proxy given: pass --proxy HOST:PORT or --config FILE", EXIT_USAGE)
    token_file = args.token_file or (config.auth_token_file if config is not None else "")
    return Target(address, args.virtual_storage, args.timeout, token_file or "", config)


def channel(target: Target) -> grpc.Channel:
    # TLS, as git-ssh: when $GITQUORUM_TLS_CA names a CA or the --config proxy serves TLS.
    ca_file = os.environ.get("GITQUORUM_TLS_CA", "")
    if not ca_file and (target.config is None or not target.config.tls.cert_file):
        return grpc.insecure_channel(target.address)
    try:
        ca = Path(ca_file).read_bytes() if ca_file else None
    except OSError as exc:
        raise CliError(f"cannot read GITQUORUM_TLS_CA {ca_file}: {exc.strerror}", 2) from exc
    return grpc.secure_channel(target.address, grpc.ssl_channel_credentials(ca))
