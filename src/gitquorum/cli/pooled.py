"""Run a server command as the parent of its worker processes (``workers`` > 1).

Shared by ``gitquorum proxy`` and ``gitquorum node``: reserve the listen
address, start the workers (the same command with ``--worker-index I
--worker-listen ADDRESS``) on it, serve the merged metrics, supervise them
until signalled (``gitquorum.worker_pool``, docs/workers.md).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from gitquorum.config import parse_address
from gitquorum.lifecycle import run_until_signalled
from gitquorum.worker_pool import WorkerFailed, WorkerPool, join_address, reserve_address


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


def run_pool(
    command: Sequence[str],
    config: PooledConfig,
    *,
    ready_file: Path | None,
    env: Mapping[str, str],
    logger_name: str,
    worst_gauges: tuple[str, ...] = (),
) -> int:
    """Serve ``command`` (``gitquorum`` arguments) as ``config.workers`` processes; the exit status.

    ``env``: the workers' environment (with the secrets this process dropped
    from its own). Raises ListenError when the address is taken.
    """
    grace = config.graceful_timeout
    host, port = parse_address(config.listen)
    holder = reserve_address(host, port)
    shared = join_address(host, holder.getsockname()[1])

    def argv(index: int, worker_ready: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gitquorum.cli.main",
            *command,
            "--ready-file",
            str(worker_ready),
            "--worker-index",
            str(index),
            "--worker-listen",
            shared,
        ]

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
        holder.close()
    return 1 if pool.failed else 0
