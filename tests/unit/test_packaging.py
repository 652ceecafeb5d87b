"""The package's metadata tells the truth: floors, version, links."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import gitquorum
from gitquorum.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
FLOORS_FILE = ROOT / "constraints" / "floors.txt"
GENERATED = ROOT / "src" / "gitquorum" / "gitaly"


def requirements() -> list[Requirement]:
    """Runtime dependencies and the test tools (the ones `make test-floors` installs)."""
    listed = [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["test"]]
    listed += PROJECT["optional-dependencies"]["proto"]
    return [r for r in map(Requirement, listed) if r.name != "gitquorum"]


def floor(requirement: Requirement) -> str:
    lows = [s.version for s in requirement.specifier if s.operator in (">=", "==")]
    assert len(lows) == 1, f"{requirement}: one floor (>= or ==) expected"
    return lows[0]


def pinned() -> dict[str, str]:
    result = {}
    for line in FLOORS_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{line!r}: expected NAME==VERSION"
            result[name.strip().lower()] = version.strip()
    return result


def test_floors_file_pins_every_floor_of_pyproject() -> None:
    expected = {r.name.lower(): floor(r) for r in requirements()}
    assert pinned() == expected


def test_floors_cover_the_generated_modules() -> None:
    """The generated modules refuse (at import) a runtime older than their generator."""
    grpc_versions = {
        Version(m.group(1))
        for path in GENERATED.glob("*_pb2_grpc.py")
        if (m := re.search(r"^GRPC_GENERATED_VERSION = '([^']+)'", path.read_text(), re.M))
    }
    proto_versions = {
        Version(m.group(1))
        for path in GENERATED.glob("*_pb2.py")
        if (m := re.search(r"^# Protobuf Python Version: (\S+)", path.read_text(), re.M))
    }
    assert grpc_versions and proto_versions
    by_name = {r.name: r for r in requirements()}
    assert Version(floor(by_name["grpcio"])) >= max(grpc_versions)
    assert Version(floor(by_name["grpcio-health-checking"])) >= max(grpc_versions)
    protobuf = by_name["protobuf"]
    assert Version(floor(protobuf)) >= max(proto_versions)
    # The runtime refuses gencode of a newer major version: no protobuf 8 until regenerated.
    next_major = f"{max(proto_versions).major + 1}.0"
    assert next_major not in protobuf.specifier


def test_one_version_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert "version" in PROJECT["dynamic"] and "version" not in PROJECT
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "gitquorum.__version__"
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"gitquorum {gitquorum.__version__}"


def test_license() -> None:
    assert (ROOT / PROJECT["license-files"][0]).read_text().startswith(f"{PROJECT['license']} ")


def test_readme_links_name_files_that_exist() -> None:
    """The README's links point into the checkout (relative: the project has
    no public address to make them absolute for a package index page)."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", (ROOT / "README.md").read_text()):
        if target.startswith(("#", "https://", "http://")):
            continue
        if not (ROOT / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert broken == []
