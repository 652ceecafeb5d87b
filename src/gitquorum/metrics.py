"""Prometheus metrics shared by every component, and the /metrics endpoint."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class RpcMetrics:
    """Per-method RPC counters and latency, for both nodes and proxies."""

    def __init__(self, registry: CollectorRegistry, component: str) -> None:
        self.requests = Counter(
            "gitquorum_rpc_requests_total",
            "RPCs handled, by method, op type and status code.",
            ["component", "method", "op_type", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "gitquorum_rpc_duration_seconds",
            "Time to handle an RPC, by method and op type.",
            ["component", "method", "op_type"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.component = component
        # Labelled children, looked up once per label set: ``labels()`` validates
        # and locks on every call, and the set of methods and codes is small.
        self._counted: dict[tuple[str, str, str], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    def observe(self, method: str, op_type: str, code: str, seconds: float) -> None:
        key = (method, op_type, code)
        counter = self._counted.get(key)
        if counter is None:
            counter = self._counted[key] = self.requests.labels(
                self.component, method, op_type, code
            )
        counter.inc()
        timed = self._timed.get(key[:2])
        if timed is None:
            timed = self._timed[key[:2]] = self.latency.labels(self.component, method, op_type)
        timed.observe(seconds)


class MetricsServer:
    """Serves ``/metrics`` for one registry on its own HTTP listener."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self.port

    async def _handle(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
