"""deploy/systemd: units an operator can ship as they are.

Type=notify with a watchdog (the process sends READY=1 and WATCHDOG=1, see
tests/integration/node/test_reload.py), ExecReload where SIGHUP reloads, the
install path docs/operations.md gives, and `systemd-analyze security` "OK"
(exposure 3.0 or less), measured offline when systemd-analyze is installed.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
RELOADS = {"gitquorum-node.service", "gitquorum-proxy.service"}
BINARY = "/opt/gitquorum/bin/gitquorum"


def service(unit: Path) -> dict[str, list[str]]:
    """The [Service] section: each key with every value it is given."""
    values: dict[str, list[str]] = {}
    section = ""
    text = unit.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_three_units() -> None:
    assert [u.name for u in UNITS] == [
        "gitquorum-http.service",
        "gitquorum-node.service",
        "gitquorum-proxy.service",
    ]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_notifies_has_a_watchdog_and_reloads_where_it_can(unit: Path) -> None:
    s = service(unit)
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] and s["WatchdogSec"][0].endswith("s")
    assert ("ExecReload" in s) == (unit.name in RELOADS)
    if unit.name in RELOADS:
        assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["ExecStart"][0].startswith(BINARY + " ")
    # The notify socket is a unix socket: the address families must allow it.
    assert "AF_UNIX" in s["RestrictAddressFamilies"][0].split()


def test_operations_doc_installs_where_the_units_look() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    assert BINARY in text and "python3 -m venv /opt/gitquorum" in text
    assert "pipx" in text


SCORE = re.compile(r"Overall exposure level for \S+: (\d+\.\d+)")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_analyze_security_rates_the_unit_ok(unit: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = SCORE.search(proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 3.0, proc.stdout


def test_units_parse_as_ini() -> None:
    for unit in UNITS:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(unit.read_text())
        assert {"Unit", "Service", "Install"} <= set(parser.sections())
