"""Run a server command as the parent of its worker processes (``workers`` > 1).

Shared by ``gitquorum proxy`` and ``gitquorum node``: reserve the listen
address, start the workers (the same command with ``--worker-index I
--worker-count N --worker-listen ADDRESS``) on it, serve the merged metrics, supervise them
until signalled (``gitquorum.worker_pool``, docs/workers.md).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from gitquorum.config import parse_address
from gitquorum.errors import ConfigError
from gitquorum.lifecycle import run_until_signalled
from gitquorum.worker_pool import (
    WorkerFailed,
    WorkerPool,
    WorkerSlot,
    join_address,
    reserve_address,
)


class PooledConfig(Protocol):
    """What the parent reads of a proxy's or node's configuration."""

    @property
    def workers(self) -> int: ...
    @property
    def listen(self) -> str: ...
    @property
    def metrics_listen(self) -> str: ...
    @property
    def graceful_timeout(self) -> float: ...


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments the parent of a pooled ``command`` sets on its workers' command lines."""
    parser.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    # The parent's count: a worker re-deriving it (from the file and its own CPU
    # affinity, for ``workers: auto``) could disagree with the parent and its peers.
    parser.add_argument("--worker-count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-listen", help=argparse.SUPPRESS)


def worker_slot(args: argparse.Namespace) -> WorkerSlot | None:
    """This worker's place among the parent's workers; None when not started as a worker."""
    if args.worker_index is None:
        return None
    count = args.worker_count
    if count is None or count < 1:
        raise ConfigError(["--worker-count: expected an integer >= 1 with --worker-index"])
    if not 0 <= args.worker_index < count:
        raise ConfigError([f"--worker-index: expected 0 to {count - 1}"])
    return WorkerSlot(args.worker_index, count)


def worker_argv(
    command: Sequence[str], index: int, count: int, ready: Path, listen: str
) -> list[str]:
    """The command line of worker ``index`` of ``count``."""
    return [
        sys.executable,
        "-m",
        "gitquorum.cli.main",
        *command,
        "--ready-file",
        str(ready),
        "--worker-index",
        str(index),
        "--worker-count",
        str(count),
        "--worker-listen",
        listen,
    ]


def run_pool(
    command: Sequence[str],
    config: PooledConfig,
    *,
    ready_file: Path | None,
    env: Mapping[str, str],
    logger_name: str,
    worst_gauges: tuple[str, ...] = (),
    reserved: Sequence[str] = (),
) -> int:
    """Serve ``command`` (``gitquorum`` arguments) as ``config.workers`` processes; the exit status.

    ``env``: the workers' environment (with the secrets this process dropped
    from its own). ``reserved``: fixed addresses the workers will bind one each
    (a proxy's ``vote_listen``), held like the listen address for as long as
    this process runs. Raises ListenError when an address is taken.
    """
    grace = config.graceful_timeout
    host, port = parse_address(config.listen)
    holder = reserve_address(host, port)
    holders = [holder]
    try:
        # The workers bind with SO_REUSEPORT: without this, another process
        # could share a fixed port with one of them, unnoticed, and take part
        # of its connections (for vote ports: votes for transactions it does
        # not hold).
        holders += [reserve_address(*parse_address(address)) for address in reserved]
    except BaseException:
        for each in holders:
            each.close()
        raise
    shared = join_address(host, holder.getsockname()[1])

    def argv(index: int, worker_ready: Path) -> list[str]:
        return worker_argv(command, index, config.workers, worker_ready, shared)

    pool = WorkerPool(
        config.workers,
        argv,
        ready_base=ready_file,
        env=env,
        grace=grace,
        # This process serves the metrics address: every worker's page, merged.
        metrics_listen=parse_address(config.metrics_listen),
        worst_gauges=worst_gauges,
    )

    def ready() -> None:
        if ready_file is not None:
            ready_file.write_text(f"{shared} {pool.metrics_port}\n")

    try:
        asyncio.run(
            run_until_signalled(
                pool, grace=grace, ready=ready, logger_name=logger_name, reload=pool.reload
            )
        )
    except WorkerFailed as exc:
        print(f"{command[0]}: {exc}", file=sys.stderr)
        return 1
    finally:
        for each in holders:
            each.close()
    return 1 if pool.failed else 0
