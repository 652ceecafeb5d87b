"""Merging the workers' metrics pages into one process's (worker_metrics.merge)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gitquorum.worker_metrics import MergedMetricsServer, exposition, merge

AGE = "gitquorum_cluster_state_age_seconds"


def page(
    *, calls: int, leader: float, age: float, latencies: tuple[float, ...] = (), only: str = ""
) -> str:
    """One worker's page, made by prometheus-client as a worker makes it."""
    registry = CollectorRegistry()
    requests = Counter(
        "gitquorum_rpc_requests_total", "RPCs", ["method", "code"], registry=registry
    )
    if calls:
        requests.labels("/a", "OK").inc(calls)
    requests.labels("/b", "OK").inc(1)
    Gauge("gitquorum_leader", "leading", ["proxy"], registry=registry).labels("p1").set(leader)
    Gauge(AGE, "state age", registry=registry).set(age)
    latency = Histogram(
        "gitquorum_rpc_duration_seconds", "latency", buckets=(0.01, 0.1), registry=registry
    )
    for seconds in latencies:
        latency.observe(seconds)
    if only:
        Gauge(only, "in one worker only", registry=registry).set(7)
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def merged(pages: list[str | None], worst: tuple[str, ...] = (AGE,)) -> dict:  # type: ignore[type-arg]
    # Through the text format and back: what a scraper reads.
    return samples(exposition(merge(pages, worst=worst)).decode())


def test_counters_are_summed_per_label_set() -> None:
    found = merged([page(calls=3, leader=1, age=0.1), page(calls=4, leader=0, age=0.2)])
    assert found[("gitquorum_rpc_requests_total", (("code", "OK"), ("method", "/a")))] == 7
    assert found[("gitquorum_rpc_requests_total", (("code", "OK"), ("method", "/b")))] == 2


def test_histograms_are_summed_bucket_by_bucket() -> None:
    found = merged(
        [
            page(calls=0, leader=1, age=0, latencies=(0.005, 0.05)),
            page(calls=0, leader=0, age=0, latencies=(0.005, 1.0)),
        ]
    )
    bucket = "gitquorum_rpc_duration_seconds_bucket"
    assert found[(bucket, (("le", "0.01"),))] == 2
    assert found[(bucket, (("le", "0.1"),))] == 3
    assert found[(bucket, (("le", "+Inf"),))] == 4
    assert found[("gitquorum_rpc_duration_seconds_count", ())] == 4
    assert abs(found[("gitquorum_rpc_duration_seconds_sum", ())] - 1.06) < 1e-9


def test_a_gauge_is_worker_0s_and_a_worst_gauge_the_largest() -> None:
    found = merged([page(calls=0, leader=1, age=0.1), page(calls=0, leader=0, age=2.5)])
    # Worker 0 leads: the proxy leads (not 1 + 0, nor the last worker's 0).
    assert found[("gitquorum_leader", (("proxy", "p1"),))] == 1
    assert found[(AGE, ())] == 2.5


def test_a_gauge_is_never_taken_from_another_worker() -> None:
    """A gauge worker 0 lacks is not filled in by another worker (which never leads)."""
    found = merged([page(calls=0, leader=1, age=0), page(calls=0, leader=0, age=0, only="x_g")])
    assert ("x_g", ()) not in found
    # Worker 0 unreadable (never read): its gauges are missing, not another worker's.
    found = merged([None, page(calls=0, leader=0, age=0.5)])
    assert ("gitquorum_leader", (("proxy", "p1"),)) not in found
    assert found[(AGE, ())] == 0.5


def test_each_worker_is_shown_with_its_calls_and_whether_it_was_read() -> None:
    found = merged([page(calls=3, leader=1, age=0), None, page(calls=5, leader=0, age=0)])
    assert found[("gitquorum_worker_up", (("worker", "0"),))] == 1
    assert found[("gitquorum_worker_up", (("worker", "1"),))] == 0
    assert found[("gitquorum_worker_up", (("worker", "2"),))] == 1
    # Each worker's own RPC total (calls on /a plus one on /b).
    assert found[("gitquorum_worker_rpc_requests_total", (("worker", "0"),))] == 4
    assert found[("gitquorum_worker_rpc_requests_total", (("worker", "2"),))] == 6
    assert ("gitquorum_worker_rpc_requests_total", (("worker", "1"),)) not in found
    # The unreadable worker's calls are missing from the sum, not guessed.
    assert found[("gitquorum_rpc_requests_total", (("code", "OK"), ("method", "/a")))] == 8


def test_one_page_merges_to_itself() -> None:
    alone = page(calls=2, leader=1, age=0.3, latencies=(0.02,))
    found = merged([alone])
    for key, value in samples(alone).items():
        assert found[key] == value, key


def test_created_timestamps_take_the_earliest() -> None:
    first, second = page(calls=1, leader=1, age=0), page(calls=1, leader=0, age=0)
    key = ("gitquorum_rpc_requests_created", (("code", "OK"), ("method", "/a")))
    earliest = min(samples(first)[key], samples(second)[key])
    assert merged([second, first])[key] == earliest


async def test_a_worker_that_cannot_be_read_keeps_its_last_page() -> None:
    """Sums never go down (a reset to Prometheus) and worker 0's gauges stay worker 0's."""
    good: dict[int, str | None] = {
        1: page(calls=3, leader=1, age=0.1, only="leader_only"),
        2: page(calls=4, leader=0, age=0.2),
    }
    answers = dict(good)
    server = MergedMetricsServer("127.0.0.1", 0, lambda: [1, 2])

    async def read(port: int) -> str | None:
        return answers[port]

    server._page = read  # type: ignore[method-assign]

    async def scrape() -> dict:  # type: ignore[type-arg]
        response = await server._handle(None)  # type: ignore[arg-type]
        assert response.body is not None
        return samples(bytes(response.body).decode())  # type: ignore[arg-type]

    calls = ("gitquorum_rpc_requests_total", (("code", "OK"), ("method", "/a")))
    leader = ("gitquorum_leader", (("proxy", "p1"),))
    up = "gitquorum_worker_up"
    first = await scrape()
    assert first[calls] == 7 and first[leader] == 1
    for failing in (2, 1):  # another worker, then worker 0
        answers = {**good, failing: None}
        found = await scrape()
        assert found[calls] == 7
        assert found[leader] == 1
        assert found[("leader_only", ())] == 7
        assert found[("gitquorum_worker_rpc_requests_total", (("worker", "0"),))] == 4
        assert found[("gitquorum_worker_rpc_requests_total", (("worker", "1"),))] == 5
        worker = str(failing - 1)
        assert found[(up, (("worker", worker),))] == 0
        assert found[(up, (("worker", str(2 - failing)),))] == 1
