"""The gateway's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# Fetches and pushes of big repositories take minutes, not milliseconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# ``service`` for requests that never reached one (bad path, unknown endpoint).
NO_SERVICE = "none"
# ``code`` for a response cut off after its 200 status went out.
ABORTED = "aborted"


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gitquorum_http_requests_total",
            "Smart-HTTP requests handled by the gateway, by service (the SmartHTTPService "
            "method) and HTTP status code ('aborted': cut off mid-stream).",
            ["service", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "gitquorum_http_request_duration_seconds",
            "Time from a smart-HTTP request's arrival to its last response byte, by service.",
            ["service"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )

    def observe(self, service: str, code: str, seconds: float) -> None:
        self.requests.labels(service, code).inc()
        self.duration.labels(service).observe(seconds)
