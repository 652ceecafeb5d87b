"""Following a key prefix: a consistent initial read, then the watch, forever.

:class:`PrefixMirror` is the one place that turns the store's watch contract
into a local view: it reads the prefix at revision R, watches from R + 1, and
when the watch reports compaction (or fails beyond the store's own reconnects)
it reads again and hands the consumer a fresh full state. Consumers
(repository cache, health view) only implement ``reset`` and ``apply``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable, Sequence

from tenacity import wait_fixed

from gitquorum.cluster.clock import REAL_CLOCK, Clock
from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.cluster.store import KeyValue, Store, WatchEvent
from gitquorum.cluster.store_retry import StoreRetry, report, store_failure

log = logging.getLogger(__name__)

ResetFn = Callable[[Sequence[KeyValue], int], None]
ApplyFn = Callable[[Sequence[WatchEvent], int], None]


class PrefixMirror:
    def __init__(
        self,
        store: Store,
        prefix: str,
        *,
        reset: ResetFn,
        apply: ApplyFn,
        page_size: int = 2000,
        retry_delay: float = 0.2,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self._reset = reset
        self._apply = apply
        self.page_size = page_size
        self.retry_delay = retry_delay
        self.clock = clock or REAL_CLOCK
        self.revision = 0
        # Local time the view was last known to be current (a read or an event).
        self.last_sync = 0.0
        self.resyncs = 0
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Condition()
        self.ready = asyncio.Event()

    async def start(self) -> None:
        """Load the prefix (raises StoreUnavailable), then follow it in the background."""
        await self._load()
        self._task = asyncio.get_running_loop().create_task(
            self._follow(), name=f"mirror:{self.prefix}"
        )

    async def _load(self) -> None:
        # A full load allocates one or more objects per key; with the cyclic GC
        # running meanwhile, its repeated scans of the growing heap cost more
        # than the load itself (seconds for 100k keys). Nothing here creates
        # cycles, so collection waits until the load is done.
        paused = gc.isenabled()
        gc.disable()
        try:
            result = await self.store.get_prefix(self.prefix, page_size=self.page_size)
            self._reset(result.kvs, result.revision)
        finally:
            if paused:
                gc.enable()
        await self._advance(result.revision)
        self.ready.set()

    async def _advance(self, revision: int) -> None:
        self.last_sync = self.clock.now()
        if revision > self.revision:
            async with self._progress:
                self.revision = revision
                self._progress.notify_all()

    async def _follow(self) -> None:
        while True:
            try:
                async for batch in self.store.watch(
                    self.prefix, prefix=True, start_revision=self.revision + 1
                ):
                    if batch.compacted:
                        log.warning(
                            "watch on %s compacted at %d; resync", self.prefix, batch.revision
                        )
                        break
                    if batch.events:
                        self._apply(batch.events, batch.revision)
                    await self._advance(batch.revision)
                else:
                    # The watch ended without compaction: the store is closing.
                    return
            except StoreUnavailable as exc:
                log.warning("watch on %s failed: %s; resync", self.prefix, exc)
            except Exception:
                log.exception("watch consumer for %s failed; resync", self.prefix)
            # Resync: a fresh snapshot replaces the view.
            await self._until_loaded(self._load)
            self.resyncs += 1

    @property
    def _until_loaded(self) -> StoreRetry:
        return StoreRetry(
            retry_on=store_failure,
            wait=wait_fixed(self.retry_delay),
            before_retry=report(
                lambda exc: log.warning("reload of %s failed: %s", self.prefix, exc)
            ),
        )

    async def wait_for_revision(self, revision: int) -> None:
        """Wait until every change up to ``revision`` under the prefix was applied.

        Only meaningful for revisions of writes under the prefix (other writes
        produce no event here), e.g. to read one's own writes.
        """
        async with self._progress:
            await self._progress.wait_for(lambda: self.revision >= revision)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
