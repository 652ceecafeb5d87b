"""Run a proxy."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gitquorum import log, tls
from gitquorum.config import load_proxy_config
from gitquorum.errors import ConfigError
from gitquorum.lifecycle import ListenError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML configuration file")
    parser.add_argument("--ready-file", type=Path, help="write 'ADDRESS METRICS_PORT' once serving")


def run(args: argparse.Namespace) -> int:
    from gitquorum.proxy.server import load_proxy_secrets

    try:
        config = load_proxy_config(args.config)
        # Read now, so an unreadable file is a configuration error, not a crash.
        secrets = load_proxy_secrets(config, take=True)
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
    from gitquorum.proxy.server import serve

    try:
        asyncio.run(serve(config, args.ready_file, secrets))
    except ListenError as exc:
        print(f"proxy: {exc}", file=sys.stderr)
        return 1
    return 0
