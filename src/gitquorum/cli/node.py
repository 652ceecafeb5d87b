"""Run a storage node."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gitquorum import log
from gitquorum.config import load_node_config, node_config_from_dict, parse_duration
from gitquorum.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML configuration file")
    parser.add_argument("--listen", help="gRPC address host:port (without --config)")
    parser.add_argument(
        "--storage",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a storage to serve (repeatable; without --config)",
    )
    parser.add_argument("--metrics-listen", default=None, help="address of /metrics")
    parser.add_argument("--ready-file", type=Path, help="write 'ADDRESS METRICS_PORT' here once serving")
    parser.add_argument(
        "--vote-timeout",
        default="60s",
        help="how long one transaction vote waits for the proxy (e.g. '1s', '500ms')",
    )


def run(args: argparse.Namespace) -> int:
    try:
        try:
            vote_timeout = parse_duration(args.vote_timeout)
        except ValueError as exc:
            raise ConfigError([f"--vote-timeout: {exc}"]) from exc
        if args.config:
            config = load_node_config(args.config)
        else:
            storages = []
            for spec in args.storage:
                name, sep, path = spec.partition("=")
                storages.append({"name": name, "path": str(Path(path).resolve()) if sep else ""})
            data: dict[str, object] = {"listen": args.listen, "storages": storages}
            if args.metrics_listen:
                data["metrics_listen"] = args.metrics_listen
            config = node_config_from_dict(data)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        return 2
    log.setup(config.log_level)
    from gitquorum.storage.server import serve

    asyncio.run(serve(config, args.ready_file, vote_timeout))
    return 0
