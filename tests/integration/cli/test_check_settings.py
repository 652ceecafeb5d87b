"""`gitquorum check` fails while two live proxies run with different cluster-wide settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gitquorum.launch.process import free_ports, wait_for
from tests.harness.cluster import Cluster, ProxyProcess
from tests.integration.cli.ops import cli


def settings_check(cluster: Cluster) -> tuple[int, dict[str, Any]]:
    result = cli(cluster, "check", "--json")
    checks = {c["name"]: c for c in result.json()["checks"]}
    return result.code, checks["settings"]


def test_check_fails_on_proxies_with_different_settings(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, nodes_count=1, proxies_count=2, replication_factor=1)
    with cluster.start().reporting() as c:
        code, check = settings_check(c)
        assert (code, check["status"]) == (0, "ok"), check
        assert "every proxy runs the same settings" in check["detail"]

        # A third proxy whose writes wait longer for votes: a cluster-wide setting.
        (port,) = free_ports(1)
        config = c.proxy_config("proxy3", port)
        config["vote_timeout"] = "7s"
        path = c.base / "proxy3.yaml"
        path.write_text(yaml.safe_dump(config))
        odd = ProxyProcess("proxy3", path, c.base / "logs")
        c.proxies.append(odd)
        odd.start()

        code, check = wait_for(
            lambda: (found := settings_check(c))[1]["status"] == "fail" and found,
            timeout=15,
            what="check to see proxy3's settings",
        )
        assert code == 1
        assert check["detail"].startswith("proxies differ in timeouts: proxy1, proxy2 ("), check
        assert "; proxy3 (" in check["detail"]

        # Once it is gone, the cluster passes again.
        odd.terminate(10)
        c.proxies.remove(odd)
        code, check = wait_for(
            lambda: (found := settings_check(c))[1]["status"] == "ok" and found,
            timeout=15,
            what="proxy3's membership to end",
        )
        assert code == 0
