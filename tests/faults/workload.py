"""The fault suite's workload: many repositories, several clients each, every proxy.

One :class:`tests.chaos.workload.Workload` per repository, all recording into
one :class:`~tests.chaos.workload.History` on one monotonic clock (every
operation carries its repository). Writers move to the next proxy after every
write, so each repository is written through every proxy; readers go round
the proxies too. Some writers hang up mid-write (a deadline that expires while
replicas vote), some repositories also take real ``git push`` over git-ssh.
Writers pause between writes so that twenty repositories fit on a small
machine without saturating it (the run measures faults, not overload), except
on a few hot repositories whose writers never pause: there replicas fall
behind and catch up under a stream of writes, and repairs race writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.chaos.workload import Chain, History, Settings, Workload


@dataclass(frozen=True)
class FleetSettings:
    writers_per_repo: int = 2
    readers_per_repo: int = 1
    # Repositories (the first ones) whose first writer also pushes with git.
    pushing_repos: int = 4
    push_ratio: float = 0.3
    cas_ratio: float = 0.25
    impatient_ratio: float = 0.05
    # WriteRef, UserCreateBranch and UserCreateTag.
    other_kinds_ratio: float = 0.2
    write_pause: float = 3.0
    read_pause: float = 1.5
    op_timeout: float = 10.0
    # Hot repositories (the last ones): more writers, no pause -- replicas fall
    # behind and catch up while writes keep coming, repairs race writes.
    hot_repos: int = 2
    hot_writers: int = 3
    hot_write_pause: float = 0.3


class Fleet:
    def __init__(
        self,
        proxies: Sequence[str],
        repos: Sequence[str],
        chain: Chain,
        history: History,
        scratch: Path,
        settings: FleetSettings,
        seed: int,
    ) -> None:
        rng = random.Random(seed)
        self.workloads: list[Workload] = []
        for i, repo in enumerate(repos):
            hot = i >= len(repos) - settings.hot_repos
            directory = scratch / f"clients-{i}"
            directory.mkdir(parents=True, exist_ok=True)
            self.workloads.append(
                Workload(
                    proxies,
                    repo,
                    chain,
                    history,
                    directory,
                    Settings(
                        writers=settings.hot_writers if hot else settings.writers_per_repo,
                        readers=settings.readers_per_repo,
                        cas_ratio=settings.cas_ratio,
                        push_ratio=settings.push_ratio if i < settings.pushing_repos else 0.0,
                        op_timeout=settings.op_timeout,
                        impatient_ratio=settings.impatient_ratio,
                        other_kinds_ratio=settings.other_kinds_ratio,
                        write_pause=settings.hot_write_pause if hot else settings.write_pause,
                        read_pause=settings.read_pause,
                        rotate=True,
                    ),
                    seed=rng.randrange(1 << 30),
                )
            )

    async def start(self) -> Fleet:
        for workload in self.workloads:
            await workload.start()
        return self

    def pause_writes(self) -> None:
        for workload in self.workloads:
            workload.writing.clear()

    def resume_writes(self) -> None:
        for workload in self.workloads:
            workload.writing.set()

    async def stop(self) -> None:
        results = await asyncio.gather(*(w.stop() for w in self.workloads), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def stop_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.gather(*(w.stop_quietly() for w in self.workloads))
