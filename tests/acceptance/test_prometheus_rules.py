"""deploy/ checked with the real tools: promtool on the rules and their unit
tests, the Grafana dashboard against the documented metrics, the example
configurations through gitquorum's own loaders and argument parser, the etcd
settings against ``etcd --help`` and the systemd units with ``systemd-analyze``.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gitquorum.cli.main import build_parser
from gitquorum.config import load_node_config, load_proxy_config, parse_address
from tests.acceptance.metrics_doc import documented_metrics, runbook_anchors

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "gitquorum.rules.yml"
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
DASHBOARD = DEPLOY / "grafana" / "gitquorum.json"
PROMTOOL = shutil.which("promtool")
RUNBOOK_BASE = "{{ $externalLabels.gitquorum_runbook_base }}"

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")

# Histogram series are queried by these suffixes of the documented name.
_SERIES_SUFFIXES = ("_bucket", "_count", "_sum")
_METRIC = re.compile(r"\bgitquorum_[a-z0-9_]+")
_RECORDED = re.compile(r"\bgitquorum:[a-z0-9_:]+")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def load_rules(path: Path = RULES) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def rules_of(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for group in data["groups"]:
        yield from group["rules"]


def alerts(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for rule in rules_of(data) if "alert" in rule]


def metric_names(expr: str) -> set[str]:
    """Documented metric names an expression refers to (histogram suffixes removed)."""
    names = set()
    documented = documented_metrics()
    for name in _METRIC.findall(expr):
        if name not in documented:
            for suffix in _SERIES_SUFFIXES:
                if name.endswith(suffix) and name[: -len(suffix)] in documented:
                    name = name[: -len(suffix)]
                    break
        names.add(name)
    return names


# -- rules -------------------------------------------------------------------------------


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    assert len(RULE_TESTS) >= 3
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def _unit_test_reports(output: str) -> dict[str, str]:
    """promtool's report of each test file, by file path."""
    reports = {}
    for chunk in output.split("Unit Testing:")[1:]:
        path, _, report = chunk.partition("\n")
        reports[path.strip()] = report
    return reports


@needs_promtool
def test_every_alert_has_a_firing_and_a_quiet_unit_test(tmp_path: Path) -> None:
    """Mutants of each alert must fail the unit tests: one that never fires
    (so some test expects it firing) and one that always fires at once (so
    some test expects it quiet). One promtool run checks every mutant."""
    names = [rule["alert"] for rule in alerts(load_rules())]
    runs: dict[str, tuple[str, str]] = {}
    for alert in names:
        for kind, expr in (("never", "vector(1) == 2"), ("always", "vector(1)")):
            rules = load_rules()
            rule = next(r for r in rules_of(rules) if r.get("alert") == alert)
            rule["expr"] = expr
            rule.pop("for", None)
            workdir = tmp_path / f"{alert}-{kind}"
            (workdir / "tests").mkdir(parents=True)
            (workdir / "gitquorum.rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
            for test in RULE_TESTS:
                suite = yaml.safe_load(test.read_text())
                # Only the test cases about this alert: promtool is slow to start each.
                suite["tests"] = [
                    case
                    for case in suite["tests"]
                    if any(c["alertname"] == alert for c in case.get("alert_rule_test", []))
                ]
                if suite["tests"]:
                    copy = workdir / "tests" / test.name
                    copy.write_text(yaml.safe_dump(suite, sort_keys=False))
                    runs[str(copy)] = (alert, kind)
    assert {alert for alert, _kind in runs.values()} == set(names), "alerts without unit tests"
    # One stream: promtool names each file on stdout and its failures on stderr.
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "test", "rules", *runs],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    reports = _unit_test_reports(result.stdout)
    assert set(reports) == set(runs), result.stdout[-2000:]
    # A "never" mutant must break an expectation of firing alerts (got none),
    # an "always" mutant an expectation of none (exp:[]).
    evidence = {"never": re.compile(r"got:\[\]"), "always": re.compile(r"exp:\[\]")}
    caught = {
        runs[path]
        for path, report in reports.items()
        if "FAILED" in report and evidence[runs[path][1]].search(report)
    }
    missed = {(alert, kind) for alert in names for kind in ("never", "always")} - caught
    assert not missed, f"no unit test notices these mutants: {sorted(missed)}"


def test_every_alert_is_documented_with_a_runbook_section() -> None:
    anchors = runbook_anchors()
    names = []
    for rule in alerts(load_rules()):
        annotations = rule.get("annotations", {})
        assert {"summary", "description", "runbook_url"} <= set(annotations), rule["alert"]
        assert rule.get("labels", {}).get("severity") in ("warning", "critical"), rule["alert"]
        page, _, anchor = annotations["runbook_url"].partition("#")
        # Absolute with the gitquorum_runbook_base external label, set once.
        assert page == RUNBOOK_BASE + "docs/runbook.md", rule["alert"]
        assert anchor == rule["alert"].lower() and anchor in anchors, rule["alert"]
        names.append(rule["alert"])
    # The alerts the operators were promised, at least.
    assert {
        "GitquorumReplicaLag",
        "GitquorumReplicationQueueGrowing",
        "GitquorumRepositoriesUnavailable",
        "GitquorumNodeUnhealthy",
        "GitquorumFailover",
        "GitquorumNoLeader",
        "GitquorumEtcdUnreachable",
        "GitquorumProxyDown",
        "GitquorumProxyErrors",
        "GitquorumProxyLatencyHigh",
        "GitquorumNoProxyScraped",
        "GitquorumNodeDown",
        "GitquorumHttpGatewayDown",
        "GitquorumReplicationJobsDead",
    } <= set(names)
    metrics_doc = (ROOT / "docs" / "metrics.md").read_text()
    for name in names:
        assert f"`{name}`" in metrics_doc, f"{name} missing from the alert table of metrics.md"


def test_rules_use_only_documented_metrics() -> None:
    rules = load_rules()
    recorded = {r["record"] for r in rules_of(rules) if "record" in r}
    documented = documented_metrics()
    for rule in rules_of(rules):
        unknown = metric_names(rule["expr"]) - set(documented)
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: {unknown}"
        assert set(_RECORDED.findall(rule["expr"])) <= recorded


# -- Grafana -----------------------------------------------------------------------------


def _panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target and annotation."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        (panel.get("title", ""), target["expr"])
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    queries += [(a["name"], a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]
    return queries


def test_dashboard_panels_query_documented_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in _panels(dashboard["panels"]) if p["type"] != "row"]
    ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert all(p.get("targets") for p in panels), "every panel needs a query"
    documented = set(documented_metrics())
    recorded = {r["record"] for r in rules_of(load_rules()) if "record" in r}
    used: set[str] = set()
    for title, expr in dashboard_queries():
        names = metric_names(expr)
        assert names or "up{" in expr, f"{title}: queries no gitquorum metric"
        assert names <= documented, f"{title}: unknown metrics {names - documented}"
        assert set(_RECORDED.findall(expr)) <= recorded, title
        used |= names
    # Every query follows the cluster and instance picked at the top.
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"cluster", "instance", "virtual_storage"} <= variables
    for title, expr in dashboard_queries():
        for selector in re.findall(r"\b(?:gitquorum_[a-z0-9_]+|up)\{[^}]*\}", expr):
            assert 'cluster=~"$cluster"' in selector, f"{title}: {selector}"
            assert 'instance=~"$instance"' in selector, f"{title}: {selector}"
    # The dashboard covers traffic, latency, reads, lag, queue, health and failovers.
    for name in (
        "gitquorum_rpc_requests_total",
        "gitquorum_rpc_duration_seconds",
        "gitquorum_read_distribution_total",
        "gitquorum_replication_queue_oldest_pending_seconds",
        "gitquorum_outdated_replicas",
        "gitquorum_replication_queue_depth",
        "gitquorum_node_healthy",
        "gitquorum_failovers_total",
    ):
        assert name in used, f"dashboard has no panel on {name}"


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query, as the expression of a recording rule."""
    grafana_variables = {
        "$__rate_interval": "5m",
        "$__interval": "1m",
        "$__range": "1h",
        "$virtual_storage": ".*",
        "$cluster": ".*",
        "$instance": ".*",
    }
    rules = []
    for index, (_title, expr) in enumerate(dashboard_queries()):
        for variable, value in grafana_variables.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# -- Prometheus example ------------------------------------------------------------------


@needs_promtool
def test_prometheus_example_config_is_valid() -> None:
    config = DEPLOY / "prometheus" / "prometheus.example.yml"
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {job["job_name"] for job in yaml.safe_load(config.read_text())["scrape_configs"]}
    assert {"gitquorum-proxy", "gitquorum-node", "gitquorum-http"} <= jobs


# -- example configurations --------------------------------------------------------------


def _targets(config: Path, job: str) -> set[str]:
    for scrape in yaml.safe_load(config.read_text())["scrape_configs"]:
        if scrape["job_name"] == job:
            return {t for static in scrape["static_configs"] for t in static["targets"]}
    raise AssertionError(f"no job {job} in {config}")


def test_production_example_configs_load_and_agree() -> None:
    config_dir = DEPLOY / "config"
    nodes = [load_node_config(config_dir / f"node{i}.yml") for i in (1, 2, 3)]
    proxies = [load_proxy_config(config_dir / f"proxy{i}.yml") for i in (1, 2, 3)]
    node_names = [n.storages[0].name for n in nodes]
    assert node_names == ["node1", "node2", "node3"]
    assert len({p.name for p in proxies}) == 3
    assert len({p.advertise for p in proxies}) == 3
    for proxy in proxies:
        assert len(proxy.etcd.endpoints) == 3
        (storage,) = proxy.virtual_storages
        assert [n.storage for n in storage.nodes] == node_names
        assert storage.default_replication_factor == 3
        # Proxies present the secret the nodes require.
        assert proxy.node_token_file == nodes[0].auth_token_file
        # Every node's gRPC port is the one its configuration listens on.
        for entry in storage.nodes:
            assert parse_address(entry.address)[1] == parse_address(nodes[0].listen)[1]
    # Prometheus scrapes the ports the processes actually serve metrics on.
    example = DEPLOY / "prometheus" / "prometheus.example.yml"
    node_port = parse_address(nodes[0].metrics_listen)[1]
    proxy_port = parse_address(proxies[0].metrics_listen)[1]
    assert {parse_address(t)[1] for t in _targets(example, "gitquorum-node")} == {node_port}
    assert {parse_address(t)[1] for t in _targets(example, "gitquorum-proxy")} == {proxy_port}
    # etcd endpoints match the members' advertised client URLs.
    members = [_etcd_env(config_dir / "etcd" / f"etcd{i}.env") for i in (1, 2, 3)]
    advertised = {m["ETCD_ADVERTISE_CLIENT_URLS"] for m in members}
    assert set(proxies[0].etcd.endpoints) == advertised


def _etcd_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd not installed")
def test_etcd_member_settings_are_real_etcd_flags() -> None:
    help_text = subprocess.run(
        ["etcd", "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30
    ).stdout
    flags = set(re.findall(r"--([a-z0-9-]+)", help_text))
    members = [_etcd_env(DEPLOY / "config" / "etcd" / f"etcd{i}.env") for i in (1, 2, 3)]
    for member in members:
        for key in member:
            assert key.startswith("ETCD_"), key
            flag = key[len("ETCD_") :].lower().replace("_", "-")
            assert flag in flags, f"{key}: etcd has no --{flag}"
    names = [m["ETCD_NAME"] for m in members]
    assert names == ["etcd1", "etcd2", "etcd3"]
    initial = dict(e.split("=", 1) for e in members[0]["ETCD_INITIAL_CLUSTER"].split(","))
    for member in members:
        assert member["ETCD_INITIAL_CLUSTER"] == members[0]["ETCD_INITIAL_CLUSTER"]
        assert initial[member["ETCD_NAME"]] == member["ETCD_INITIAL_ADVERTISE_PEER_URLS"]


# -- systemd and compose -----------------------------------------------------------------


def _gitquorum_argv(command: list[str]) -> list[str]:
    """Arguments after the program name, checked by gitquorum's real parser."""
    return command[1:] if command and command[0].endswith("gitquorum") else command


def _exec_lines(unit: str) -> list[list[str]]:
    joined = unit.replace("\\\n", " ")
    return [
        shlex.split(line.split("=", 1)[1])
        for line in joined.splitlines()
        if line.startswith(("ExecStart=", "ExecStartPre="))
    ]


UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_systemd_unit_commands_parse(unit: Path) -> None:
    commands = _exec_lines(unit.read_text())
    assert commands, unit.name
    for command in commands:
        argv = _gitquorum_argv(command)
        args = build_parser(argv[0]).parse_args(argv)
        assert getattr(args, "_module", None) is not None, command


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_units_verify(tmp_path: Path) -> None:
    executable = Path(sys.executable).with_name("gitquorum")
    if not executable.exists():
        found = shutil.which("gitquorum")
        if found is None:
            pytest.skip("the gitquorum script is not installed")
        executable = Path(found)
    assert {u.name for u in UNITS} == {
        "gitquorum-node.service",
        "gitquorum-proxy.service",
        "gitquorum-http.service",
    }
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/opt/gitquorum/bin/gitquorum", str(executable)))
        result = subprocess.run(
            ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_compose_file_is_consistent() -> None:
    compose_dir = DEPLOY / "compose"
    compose = yaml.safe_load((compose_dir / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"etcd1", "etcd2", "etcd3", "node1", "node2", "node3"} <= set(services)
    assert {"proxy1", "proxy2", "proxy3", "http", "prometheus", "grafana"} <= set(services)
    build = services["node1"]["build"]
    assert (compose_dir / build["context"] / build["dockerfile"]).resolve().is_file()
    node_addresses = set()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (compose_dir / source).exists(), f"{name}: {source} does not exist"
        command = service.get("command")
        if service.get("image") == services["node1"]["image"]:
            args = build_parser(command[0]).parse_args(command)
            if command[0] == "node":
                node_addresses.add(f"{name}:{parse_address(args.listen)[1]}")
                assert args.storage[0].startswith(f"{name}=")
    for i in (1, 2, 3):
        proxy = load_proxy_config(compose_dir / "config" / f"proxy{i}.yml")
        assert proxy.name == f"proxy{i}"
        assert {n.address for n in proxy.virtual_storages[0].nodes} == node_addresses
    scraped = _targets(compose_dir / "prometheus.yml", "gitquorum-proxy")
    assert scraped == {f"proxy{i}:{parse_address(proxy.metrics_listen)[1]}" for i in (1, 2, 3)}
