"""deploy/compose: every service reports its health, starts after what it needs is
healthy, and the gateway spreads its calls over the three proxies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.node import NodeProcess

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "deploy" / "compose" / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def test_every_service_has_a_health_check() -> None:
    assert all("healthcheck" in s for n, s in SERVICES.items() if n != "grafana")


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if "depends_on" in s])
def test_dependencies_wait_until_healthy(name: str) -> None:
    depends = SERVICES[name]["depends_on"]
    assert isinstance(depends, dict), f"{name}: depends_on without conditions"
    assert {d["condition"] for d in depends.values()} == {"service_healthy"}


def test_the_gateway_is_spread_over_every_proxy() -> None:
    command = SERVICES["http"]["command"]
    target = command[command.index("--proxy") + 1]
    assert target == "dns:///proxies:2305"
    proxies = [n for n in SERVICES if n.startswith("proxy")]
    assert len(proxies) == 3
    for name in proxies:
        assert "proxies" in SERVICES[name]["networks"]["default"]["aliases"]
    assert set(SERVICES["http"]["depends_on"]) == set(proxies)


def test_the_node_health_check_tells_serving_from_down(tmp_path: Path) -> None:
    """The command compose runs in a node's container, run here against a real node."""
    test = SERVICES["node1"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    node = NodeProcess("n1", tmp_path / "storage", tmp_path).start()
    try:
        check = [sys.executable, "-c", test[3], node.address]
        assert subprocess.run(check, capture_output=True, timeout=30).returncode == 0
    finally:
        node.terminate()
    assert subprocess.run(check, capture_output=True, timeout=30).returncode != 0
