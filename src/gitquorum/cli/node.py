"""Run a storage node."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from pathlib import Path

from gitquorum import log, tls
from gitquorum.authentication import NODE_TOKEN_ENV, take_secrets
from gitquorum.cli.arguments import positive_duration
from gitquorum.cli.pooled import add_worker_arguments, run_pool, worker_slot
from gitquorum.config import load_node_config, node_config_from_dict
from gitquorum.errors import ConfigError
from gitquorum.lifecycle import ListenError
from gitquorum.worker_pool import SINGLE, WorkerSlot


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML configuration file")
    parser.add_argument(
        "--listen", metavar="HOST:PORT", help="gRPC address host:port (without --config)"
    )
    parser.add_argument(
        "--storage",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a storage to serve (repeatable; without --config)",
    )
    parser.add_argument("--metrics-listen", default=None, help="address of /metrics")
    parser.add_argument(
        "--ready-file", type=Path, help="write 'ADDRESS METRICS_PORT' here once serving"
    )
    parser.add_argument(
        "--vote-timeout",
        type=positive_duration,
        default=None,
        metavar="DURATION",
        help="how long one transaction vote waits for the proxy (e.g. 1s, 500ms; a bare "
        "number is seconds; default 60s; with --config: the file's vote_timeout)",
    )
    # Secrets only ever by file or environment: argv is visible to every user (ps).
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"node secret file: require v2 tokens signed with it (else ${NODE_TOKEN_ENV}; "
        "without --config)",
    )
    parser.add_argument(
        "--tls-cert", metavar="FILE", help="serve TLS with this certificate (without --config)"
    )
    parser.add_argument("--tls-key", metavar="FILE", help="the key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="require client certificates signed by this CA (mutual TLS)",
    )
    parser.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="CA verifying tls:// proxies and nodes this node calls (default: system roots)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes serving --listen together (default 1; without --config)",
    )
    add_worker_arguments(parser)


NO_ARGUMENTS = (
    "nothing to serve: pass --config FILE, or --listen HOST:PORT and --storage NAME=PATH "
    "(repeatable)"
)


def run(args: argparse.Namespace) -> int:
    if not (args.config or args.listen or args.storage):
        parser = getattr(args, "_parser", None)
        if isinstance(parser, argparse.ArgumentParser):
            parser.error(NO_ARGUMENTS)  # prints the node's usage, exits 2
        print(f"node: {NO_ARGUMENTS}", file=sys.stderr)
        return 2
    # Before the secret is taken out of it: a pooled node's workers need it.
    env = dict(os.environ)
    worker: WorkerSlot | None = None
    try:
        file_flags = {
            "--token-file": ("auth", "token_file", args.token_file),
            "--tls-cert": ("tls", "cert_file", args.tls_cert),
            "--tls-key": ("tls", "key_file", args.tls_key),
            "--tls-client-ca": ("tls", "client_ca_file", args.tls_client_ca),
            "--tls-ca": ("tls", "ca_file", args.tls_ca),
        }
        if args.config:
            given = [flag for flag, (_, _, value) in file_flags.items() if value]
            given += ["--vote-timeout"] if args.vote_timeout is not None else []
            given += ["--workers"] if args.workers is not None else []
            if given:
                raise ConfigError(
                    [f"{flag}: set it in the --config file instead" for flag in given]
                )
            config = load_node_config(args.config)
        else:
            storages = []
            for spec in args.storage:
                name, sep, path = spec.partition("=")
                storages.append({"name": name, "path": str(Path(path).resolve()) if sep else ""})
            data: dict[str, object] = {"listen": args.listen, "storages": storages}
            if args.metrics_listen:
                data["metrics_listen"] = args.metrics_listen
            if args.vote_timeout is not None:
                # Parsed to seconds by the flag; the file's form for the config.
                data["vote_timeout"] = f"{args.vote_timeout}s"
            if args.workers is not None:
                data["workers"] = args.workers
            for section, key, value in file_flags.values():
                if value:
                    entry = data.setdefault(section, {})
                    assert isinstance(entry, dict)
                    entry[key] = str(Path(value).resolve())
            config = node_config_from_dict(data)
        worker = worker_slot(args)
        if worker is not None:
            # The parent's count, so that every worker splits the limits alike.
            config = dataclasses.replace(
                config, listen=args.worker_listen or config.listen, workers=worker.count
            )
        # Read now, so an unreadable file is a configuration error, not a crash;
        # the variable is then dropped so git and hooks do not inherit it.
        secrets = take_secrets(config.auth_token_file, NODE_TOKEN_ENV)
        server_tls = tls.server_tls(config.tls)
        if server_tls is not None:
            server_tls.credentials()
        tls.client_tls(config.tls).credentials()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        return 2
    log.setup(config.log_level)
    from gitquorum.storage.server import serve

    try:
        if worker is None and config.workers > 1:
            return run_pool(
                _worker_command(args),
                config,
                ready_file=args.ready_file,
                env=env,
                logger_name=log.get("gitquorum.node").name,
            )
        asyncio.run(serve(config, args.ready_file, config.vote_timeout, secrets, worker or SINGLE))
    except ListenError as exc:
        print(f"node: {exc}", file=sys.stderr)
        return 1
    return 0


def _worker_command(args: argparse.Namespace) -> list[str]:
    """The ``gitquorum`` arguments of each worker: this node's own, less its ready file."""
    if args.config:
        return ["node", "--config", str(Path(args.config).resolve())]
    command = ["node", "--listen", args.listen, "--workers", str(args.workers)]
    for spec in args.storage:
        command += ["--storage", spec]
    if args.metrics_listen:
        command += ["--metrics-listen", args.metrics_listen]
    if args.vote_timeout is not None:
        command += ["--vote-timeout", f"{args.vote_timeout}s"]
    for flag in ("token_file", "tls_cert", "tls_key", "tls_client_ca", "tls_ca"):
        value = getattr(args, flag)
        if value:
            command += [f"--{flag.replace('_', '-')}", str(Path(value).resolve())]
    return command
