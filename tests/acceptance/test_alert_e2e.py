"""The replica-lag alert end to end: a real cluster, a real Prometheus, the real rules.

Prometheus scrapes both proxies and the three nodes every second and evaluates
deploy/prometheus/gitquorum.rules.yml every second; only the replica-lag
alert's threshold and ``for`` (and the node-unhealthy alert's ``for``) are
shortened so the test takes seconds, not minutes. A secondary node is stopped
while writes keep going through the proxy: the lag alert must fire for that
node, no sooner than its threshold plus ``for``, no later than a few scrape
intervals after, and once although two proxies are scraped. Started again, the
node is repaired by replication and the alert must resolve. Every acknowledged
write must then be on every replica, and the replicas' checksums must agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from gitquorum.gitaly import repository_pb2, repository_pb2_grpc, shared_pb2
from tests.acceptance.cluster_ops import metadata, until, write_ref
from tests.acceptance.prometheus_server import BINARY, PrometheusServer
from tests.harness import gitrepo
from tests.harness.cluster import VIRTUAL_STORAGE, Cluster

pytestmark = pytest.mark.skipif(BINARY is None, reason="prometheus is not installed")

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "gitquorum.rules.yml"
RELATIVE_PATH = "alerts/lag.git"
SCRAPE_INTERVAL = 1.0
LAG_THRESHOLD = 3  # seconds of age of the oldest pending job (production: 300)
LAG_FOR = 5  # seconds (production: 5m)
UNHEALTHY_FOR = 2  # seconds (production: 1m)
# The leader refreshes the cluster gauges every 2 s; then a scrape and an
# evaluation; and a few intervals of slack on a busy machine.
ALERT_SLACK = 2.0 + 6 * SCRAPE_INTERVAL

RUNBOOK_BASE = "https://runbooks.example.test/gitquorum/"


def shortened_rules(path: Path) -> Path:
    """A copy of the real rules with the lag and node-health alerts made fast."""
    rules = yaml.safe_load(RULES.read_text())
    changed = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "GitquorumReplicaLag":
                assert rule["expr"].count("> 300") == 1, rule["expr"]
                rule["expr"] = rule["expr"].replace("> 300", f"> {LAG_THRESHOLD}")
                rule["for"] = f"{LAG_FOR}s"
                changed.add(rule["alert"])
            elif rule.get("alert") == "GitquorumNodeUnhealthy":
                rule["for"] = f"{UNHEALTHY_FOR}s"
                changed.add(rule["alert"])
    assert changed == {"GitquorumReplicaLag", "GitquorumNodeUnhealthy"}
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    # Two proxies: the cluster-wide gauges come from the leader only, so the
    # alert must fire once, not once per proxy.
    cluster = Cluster(tmp_path / "cluster", proxies_count=2).start()
    # Restarted nodes keep their metrics port, so Prometheus's targets stay valid.
    for node in cluster.nodes:
        node.extra_args = ["--metrics-listen", f"127.0.0.1:{node.metrics_port}"]
    with cluster.reporting():
        yield cluster


@pytest.fixture
def prometheus(cluster: Cluster, tmp_path: Path) -> Iterator[PrometheusServer]:
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    interval = f"{SCRAPE_INTERVAL:g}s"
    config = {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            # Set once, as docs/operations.md says: every runbook_url becomes absolute.
            "external_labels": {"gitquorum_runbook_base": RUNBOOK_BASE},
        },
        "rule_files": [str(shortened_rules(workdir / "gitquorum.rules.yml"))],
        "scrape_configs": [
            {
                "job_name": "gitquorum-proxy",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{p.metrics_port}" for p in cluster.proxies]}
                ],
            },
            {
                "job_name": "gitquorum-node",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{n.metrics_port}" for n in cluster.nodes]}
                ],
            },
        ],
    }
    server = PrometheusServer(workdir, config).start()
    try:
        yield server
    except BaseException:
        print(f"--- prometheus ---\n{server.log_tail()}")
        raise
    finally:
        server.close()


def lag_alerts(prometheus: PrometheusServer, state: str | None = None) -> list[dict[str, Any]]:
    return [
        a for a in prometheus.alerts("GitquorumReplicaLag") if state is None or a["state"] == state
    ]


def firing_for(prometheus: PrometheusServer, alert: str, node_label: str, node: str) -> bool:
    return any(
        a["state"] == "firing" and a["labels"].get(node_label) == node
        for a in prometheus.alerts(alert)
    )


class Writer:
    """Writes a new branch through the proxy every ``pause`` seconds until stopped."""

    def __init__(self, channel: grpc.aio.Channel, repo: shared_pb2.Repository, oid: str) -> None:
        self.channel = channel
        self.repo = repo
        self.oid = oid
        self.acknowledged: list[str] = []
        self.first_ack = asyncio.Event()
        self._stop = asyncio.Event()

    async def run(self, pause: float = 0.25) -> None:
        while not self._stop.is_set():
            ref = f"refs/heads/lag-{len(self.acknowledged)}"
            await write_ref(self.channel, self.repo, ref, self.oid)
            self.acknowledged.append(ref)
            self.first_ack.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), pause)

    def stop(self) -> None:
        self._stop.set()


async def checksum(address: str, storage: str, replica_path: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = repository_pb2_grpc.RepositoryServiceStub(channel)
        response = await stub.CalculateChecksum(
            repository_pb2.CalculateChecksumRequest(
                repository=shared_pb2.Repository(storage_name=storage, relative_path=replica_path)
            ),
            timeout=30,
        )
    return str(response.checksum)


async def test_replica_lag_alert_fires_while_a_node_is_down_and_resolves_after_repair(
    cluster: Cluster, prometheus: PrometheusServer, tmp_path: Path
) -> None:
    targets = len(cluster.proxies) + len(cluster.nodes)
    await until(
        lambda: len([s for s in prometheus.query("up == 1")]) == targets,
        20,
        "prometheus to scrape every target",
    )
    source = gitrepo.make_repo(tmp_path / "source", commits=2)
    head = gitrepo.git("rev-parse", "HEAD", cwd=source).strip()
    repo = shared_pb2.Repository(storage_name=VIRTUAL_STORAGE, relative_path=RELATIVE_PATH)

    async with grpc.aio.insecure_channel(cluster.proxies[0].address) as channel:
        await gitrepo.seed(channel, repo, source, tmp_path)
        record = await metadata(channel, RELATIVE_PATH)
        lagging = next(n for n in cluster.nodes if n.name != record.primary)
        assert lag_alerts(prometheus) == []

        lagging.kill()
        stopped_at = time.monotonic()
        writer = Writer(channel, repo, head)
        writing = asyncio.create_task(writer.run())
        try:
            await until(
                lambda: firing_for(prometheus, "GitquorumReplicaLag", "target_node", lagging.name),
                LAG_THRESHOLD + LAG_FOR + ALERT_SLACK + 10,
                "the replica-lag alert to fire",
            )
            fired_after = time.monotonic() - stopped_at
            await until(
                lambda: firing_for(prometheus, "GitquorumNodeUnhealthy", "storage", lagging.name),
                UNHEALTHY_FOR + ALERT_SLACK,
                "the node-unhealthy alert to fire",
            )
        finally:
            writer.stop()
            await writing
        print(f"replica-lag alert fired {fired_after:.1f}s after the node stopped")
        # Not before the oldest job is older than the threshold for the whole `for`...
        assert fired_after >= LAG_THRESHOLD + LAG_FOR - 0.5
        # ...and not much later: the threshold, `for` and a few scrape intervals.
        assert fired_after <= LAG_THRESHOLD + LAG_FOR + ALERT_SLACK
        (alert,) = lag_alerts(prometheus, "firing")
        assert alert["labels"]["target_node"] == lagging.name
        assert alert["labels"]["virtual_storage"] == VIRTUAL_STORAGE
        assert alert["labels"]["severity"] == "warning"
        assert (
            alert["annotations"]["runbook_url"]
            == f"{RUNBOOK_BASE}docs/runbook.md#gitquorumreplicalag"
        )
        assert lagging.name in alert["annotations"]["summary"]
        assert len(writer.acknowledged) >= 10

        # The node comes back: replication repairs it and the alert resolves.
        lagging.start()
        restarted_at = time.monotonic()
        await until(lambda: lag_alerts(prometheus) == [], 30, "the replica-lag alert to resolve")
        resolved_after = time.monotonic() - restarted_at
        print(f"replica-lag alert resolved {resolved_after:.1f}s after the node restarted")
        await until(
            lambda: prometheus.alerts("GitquorumNodeUnhealthy") == [],
            15,
            "the node-unhealthy alert to resolve",
        )
        assert prometheus.query("gitquorum_replication_queue_oldest_pending_seconds") == []

        # No acknowledged write lost; every replica up to date and identical.
        record = await metadata(channel, RELATIVE_PATH)
        assert {r.storage for r in record.replicas} == {n.name for n in cluster.nodes}
        assert all(r.generation == record.generation for r in record.replicas), record
    expected = set(writer.acknowledged)
    checksums = set()
    for node in cluster.nodes:
        refs = gitrepo.refs(cluster.replica_dir(node.name, record.replica_path))
        assert expected <= set(refs), f"{node.name} misses {sorted(expected - set(refs))}"
        checksums.add(await checksum(node.address, node.name, record.replica_path))
    assert len(checksums) == 1, checksums
