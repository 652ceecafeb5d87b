"""Run a proxy: one process, or with ``workers: N`` a parent of N worker processes."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from pathlib import Path

from gitquorum import log, tls
from gitquorum.authentication import NODE_TOKEN_ENV, TOKEN_ENV
from gitquorum.cli.pooled import add_worker_arguments, run_pool, worker_slot
from gitquorum.config import ProxyConfig, load_proxy_config, parse_address
from gitquorum.errors import ConfigError
from gitquorum.lifecycle import ListenError
from gitquorum.worker_pool import SINGLE, WorkerSlot

# Reads are refused per worker once its cache is this old: the oldest one counts.
STATE_AGE = "gitquorum_cluster_state_age_seconds"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML configuration file")
    parser.add_argument("--ready-file", type=Path, help="write 'ADDRESS METRICS_PORT' once serving")
    add_worker_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from gitquorum.proxy.server import load_proxy_secrets

    worker: WorkerSlot | None = None
    try:
        config = load_proxy_config(args.config)
        worker = worker_slot(args)
        if worker is not None:
            # The parent's count, not the file's: `workers: auto` depends on the CPU affinity.
            config = dataclasses.replace(
                config, listen=args.worker_listen or config.listen, workers=worker.count
            )
        # Read now, so an unreadable file is a configuration error, not a crash.
        # The parent of workers leaves the variables to them (see _run_pool).
        pooled_parent = worker is None and config.workers > 1
        secrets = load_proxy_secrets(config, take=not pooled_parent)
        server_tls = tls.server_tls(config.tls)
        if server_tls is not None:
            server_tls.credentials()
        if config.node_tls is not None:
            tls.client_tls(config.node_tls).credentials()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        return 2
    log.setup(config.log_level)
    try:
        if pooled_parent:
            return _run_pool(args, config)
        from gitquorum.proxy.server import serve

        asyncio.run(serve(config, args.ready_file, secrets, worker or SINGLE))
    except ListenError as exc:
        print(f"proxy: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_pool(args: argparse.Namespace, config: ProxyConfig) -> int:
    """Start the workers on the listen address, supervise them until signalled."""
    env = dict(os.environ)
    # The workers read the secrets from the environment; this process and
    # whatever it might start do not keep them.
    for name in (TOKEN_ENV, NODE_TOKEN_ENV):
        os.environ.pop(name, None)
    return run_pool(
        ["proxy", "--config", str(args.config)],
        config,
        ready_file=args.ready_file,
        env=env,
        logger_name=log.get("gitquorum.proxy").name,
        worst_gauges=(STATE_AGE,),
        reserved=[a for a in config.vote_listen if parse_address(a)[1] != 0],
    )
