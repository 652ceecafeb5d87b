"""One ``/metrics`` for a server of several worker processes: each worker's scrape, merged.

Every worker of a pooled server (``worker_pool``) keeps its own registry and
serves it on a private loopback port. The parent serves the server's
configured metrics address; a scrape there fetches every worker's page and
merges them into what one process would have reported:

* counters, histograms and summaries are summed series by series (same name,
  same labels): the server's totals, under the names and labels a single
  process exports, so rules and dashboards read a pooled server unchanged;
* gauges are state, not sums: each series is taken from worker 0 (the one
  that runs what is single per server, such as a proxy's leader tasks and
  cluster gauges) and from no other worker, except the names given as
  ``worst`` (the largest value among the workers wins: e.g. the age of the
  oldest cache) and ``*_created`` timestamps (the earliest).

A worker whose page cannot be read at a scrape is merged from its last page
that could be: without it its counters would drop out of the sums, which
Prometheus takes for a reset (and then counts everything again), and a
gauge taken from another worker would say something else (the leader gauge
of a worker that never leads) or vanish (resetting an alert's ``for:``).

Two series per worker tell the workers apart: ``gitquorum_worker_up`` (its
page was read at this scrape) and ``gitquorum_worker_rpc_requests_total`` (the
RPCs it handled), so one scrape also shows how the kernel spread the clients.

prometheus-client's multiprocess mode was not taken: it needs a shared
directory of memory-mapped files, does not carry custom collectors (computed
at scrape time, like the cluster gauges), and exports every gauge per process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Sequence

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from gitquorum import log

logger = log.get("gitquorum.workers")

# Types whose samples add up across processes.
_SUMMED = frozenset({"counter", "histogram", "summary", "gaugehistogram"})
# The counter whose total per worker is exported as WORKER_RPCS.
RPC_COUNTER = "gitquorum_rpc_requests"
WORKER_UP = "gitquorum_worker_up"
WORKER_RPCS = "gitquorum_worker_rpc_requests"
# A worker's page must come back within this; a stuck worker must not hang the scrape.
SCRAPE_TIMEOUT = 5.0

_Key = tuple[str, tuple[tuple[str, str], ...]]


class _Family:
    """One metric family being merged: its samples keyed by (name, labels)."""

    def __init__(self, name: str, documentation: str, typ: str) -> None:
        self.name = name
        self.documentation = documentation
        self.type = typ
        self.samples: dict[_Key, float] = {}

    def add(self, sample: Sample, combine: Callable[[float, float], float] | None) -> None:
        key = (sample.name, tuple(sorted(sample.labels.items())))
        old = self.samples.get(key)
        if old is None:
            self.samples[key] = sample.value
        elif combine is not None:
            self.samples[key] = combine(old, sample.value)
        # combine None: the first value (worker 0's) stands.

    def metric(self) -> Metric:
        metric = Metric(self.name, self.documentation, self.type)
        for (name, labels), value in self.samples.items():
            metric.add_sample(name, dict(labels), value)
        return metric


def _combiner(
    family: str, typ: str, worst: frozenset[str]
) -> Callable[[float, float], float] | None:
    if typ in _SUMMED:
        return lambda a, b: a + b
    if family in worst:
        return max
    if family.endswith("_created"):
        return min
    return None


def merge(
    pages: Sequence[str | None],
    *,
    worst: Iterable[str] = (),
    read: Sequence[bool] | None = None,
) -> list[Metric]:
    """Worker pages (index = worker, None: none ever read) as one process's metric families.

    ``read``: whether each page was read at this scrape (``gitquorum_worker_up``);
    by default, whether it is there.
    """
    worst = frozenset(worst)
    families: dict[str, _Family] = {}
    up = Metric(WORKER_UP, "1 if the worker's metrics could be read in this scrape", "gauge")
    rpcs = Metric(WORKER_RPCS, "RPCs handled by each worker process of this server", "counter")
    for index, page in enumerate(pages):
        worker = {"worker": str(index)}
        fresh = page is not None if read is None else read[index]
        up.add_sample(WORKER_UP, worker, 1.0 if fresh else 0.0)
        if page is None:
            continue
        handled = 0.0
        for parsed in text_string_to_metric_families(page):
            family = families.get(parsed.name)
            if family is None:
                family = families[parsed.name] = _Family(
                    parsed.name, parsed.documentation, parsed.type
                )
            elif family.type != parsed.type:
                # Workers of one server run one program: a mismatch is a bug to hear of,
                # not a reason to lose the whole scrape.
                logger.warning(
                    "metric type differs between workers",
                    extra=log.fields(metric=parsed.name, worker=index),
                )
                continue
            combine = _combiner(parsed.name, parsed.type, worst)
            if combine is None and index != 0:
                continue  # a state gauge: worker 0's, never another worker's
            for sample in parsed.samples:
                family.add(sample, combine)
            if parsed.name == RPC_COUNTER:
                handled += sum(s.value for s in parsed.samples if s.name.endswith("_total"))
        rpcs.add_sample(f"{WORKER_RPCS}_total", worker, handled)
    return [*(f.metric() for f in families.values()), up, rpcs]


class _Merged(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


def exposition(metrics: list[Metric]) -> bytes:
    """The text format of ``metrics``."""
    return generate_latest(_Merged(metrics))  # type: ignore[arg-type]


class MergedMetricsServer:
    """Serves ``/metrics`` at ``host:port`` as the merge of the workers' pages.

    ``ports()``: each worker's metrics port on loopback, by worker index, read
    at every scrape (0: not serving yet). Bound before the workers start, so a
    taken metrics port fails the server before any worker runs.
    """

    def __init__(
        self,
        host: str,
        port: int,
        ports: Callable[[], Sequence[int]],
        *,
        worst: Iterable[str] = (),
    ) -> None:
        self.host = host
        self.port = port
        self._ports = ports
        self._worst = frozenset(worst)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        # Each worker's last page that could be read, by index: used when a read fails.
        self._last: dict[int, str] = {}

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT))
        return self.port

    async def _page(self, port: int) -> str | None:
        if not port or self._session is None:
            return None
        try:
            async with self._session.get(f"http://127.0.0.1:{port}/metrics") as response:
                if response.status != 200:
                    return None
                return await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None  # shown as gitquorum_worker_up 0

    async def _handle(self, _request: web.Request) -> web.Response:
        pages = await asyncio.gather(*(self._page(port) for port in self._ports()))
        read = [page is not None for page in pages]
        for index, page in enumerate(pages):
            if page is not None:
                self._last[index] = page
        kept = [self._last.get(index) for index in range(len(pages))]
        body = exposition(merge(kept, worst=self._worst, read=read))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
