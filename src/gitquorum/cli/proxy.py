"""Run a proxy."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gitquorum import log
from gitquorum.config import load_proxy_config
from gitquorum.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML configuration file")
    parser.add_argument("--ready-file", type=Path, help="write 'ADDRESS METRICS_PORT' once serving")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_proxy_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        return 2
    log.setup(config.log_level)
    from gitquorum.proxy.server import serve

    asyncio.run(serve(config, args.ready_file))
    return 0
