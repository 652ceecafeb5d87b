"""Run the smart-HTTP gateway: git clone/fetch/push over http:// through a proxy."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path

from gitquorum import log
from gitquorum.cli.arguments import add_deprecated_alias, duration, positive_duration
from gitquorum.config import parse_address
from gitquorum.lifecycle import ListenError

_GRPC_SCHEME = re.compile(r"(dns|unix|unix-abstract|ipv4|ipv6|vsock):")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", default="127.0.0.1:8080", help="HTTP address host:port (default %(default)s)"
    )
    parser.add_argument(
        "--proxy",
        required=True,
        metavar="ADDR",
        help="gRPC address of the proxy (or a node); a target naming several proxies "
        "(dns:///NAME:PORT, ipv4:A:PORT,B:PORT) spreads calls over them",
    )
    parser.add_argument(
        "--virtual-storage",
        dest="virtual_storage",
        default="default",
        metavar="NAME",
        help="virtual storage that URL paths name repositories of (default %(default)s)",
    )
    # `--storage` names a node everywhere else; it meant the virtual storage here before.
    add_deprecated_alias(parser, "--storage", "--virtual-storage", "virtual_storage")
    parser.add_argument(
        "--token-file",
        default="",
        help="gateway users' secrets, one per line ('SECRET' or 'SECRET read-only'); "
        "without it anyone may fetch and push",
    )
    parser.add_argument(
        "--proxy-token-file",
        default="",
        help="shared secret for v2 tokens sent to the proxy, if it requires authentication",
    )
    parser.add_argument(
        "--tls-cert", default="", metavar="FILE", help="serve HTTPS with this certificate"
    )
    parser.add_argument("--tls-key", default="", metavar="FILE", help="the key of --tls-cert")
    parser.add_argument(
        "--proxy-ca",
        default="",
        metavar="FILE",
        help="dial the proxy with TLS, verifying it with this CA file",
    )
    parser.add_argument(
        "--create-on-push",
        action="store_true",
        help="create a missing repository when someone pushes to it",
    )
    parser.add_argument(
        "--timeout",
        type=positive_duration,
        default="60s",
        metavar="DURATION",
        help="deadline of ref advertisements and repository creation (default %(default)s)",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=duration,
        default="30s",
        metavar="DURATION",
        help="how long SIGTERM lets requests in flight finish (default %(default)s)",
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    parser.add_argument("--ready-file", type=Path, help="write 'ADDRESS METRICS_PORT' once serving")


def _tls_problems(args: argparse.Namespace) -> list[str]:
    """Unreadable or unpaired certificate files, reported before serving."""
    import ssl

    from gitquorum import tls
    from gitquorum.errors import ConfigError

    problems = []
    if bool(args.tls_cert) != bool(args.tls_key):
        problems.append("--tls-cert and --tls-key go together")
    elif args.tls_cert:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                args.tls_cert, args.tls_key
            )
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"--tls-cert/--tls-key: {exc}")
    if args.proxy_ca:
        try:
            tls.read_pem(args.proxy_ca, "--proxy-ca")
        except ConfigError as exc:
            problems += exc.problems
    return problems


def run(args: argparse.Namespace) -> int:
    from gitquorum.gateway.credentials import Credentials
    from gitquorum.gateway.http import GatewayConfig, serve

    problems: list[str] = []
    try:
        parse_address(args.listen)
    except ValueError as exc:
        problems.append(f"--listen: {exc}")
    # gRPC also takes targets such as dns:///host:port or unix:/path.
    if not _GRPC_SCHEME.match(args.proxy):
        try:
            parse_address(args.proxy)
        except ValueError as exc:
            problems.append(f"--proxy: {exc}")
    if args.token_file:
        try:
            Credentials.load(args.token_file)
        except (OSError, ValueError) as exc:
            problems.append(f"--token-file: {exc}")
    if args.proxy_token_file:
        try:
            if not Path(args.proxy_token_file).read_bytes().strip():
                problems.append(f"--proxy-token-file: {args.proxy_token_file} is empty")
        except OSError as exc:
            problems.append(f"--proxy-token-file: {exc}")
    problems += _tls_problems(args)
    if not args.virtual_storage:
        problems.append("--virtual-storage: empty")
    if problems:
        for problem in problems:
            print(f"config: {problem}", file=sys.stderr)
        return 2
    config = GatewayConfig(
        proxy=args.proxy,
        listen=args.listen,
        storage=args.virtual_storage,
        token_file=args.token_file,
        proxy_token_file=args.proxy_token_file,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        proxy_ca_file=args.proxy_ca,
        create_on_push=args.create_on_push,
        timeout=args.timeout,
        graceful_timeout=args.graceful_timeout,
    )
    log.setup(args.log_level)
    try:
        asyncio.run(serve(config, args.ready_file))
    except ListenError as exc:
        print(f"http: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"http: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 1
    return 0
