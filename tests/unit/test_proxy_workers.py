"""Proxy and node workers: the setting, the limits each worker enforces, addresses and options."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gitquorum import worker_pool
from gitquorum.cli import main as cli_main
from gitquorum.cli.pooled import add_worker_arguments, worker_argv, worker_slot
from gitquorum.config import (
    ConfigError,
    LimitsConfig,
    NodeConfig,
    ProxyConfig,
    auto_workers,
    node_config_from_dict,
    proxy_config_from_dict,
    usable_cores,
)
from gitquorum.lifecycle import ListenError
from gitquorum.limits import share, worker_limits
from gitquorum.proxy.server import with_port
from gitquorum.wire.options import server_options
from gitquorum.worker_pool import WorkerSlot, join_address, reserve_address
from tests.unit.test_config import GOOD_NODE, GOOD_PROXY


def test_one_worker_when_the_file_does_not_say() -> None:
    """Absent is 1, as before workers existed: votes, limits and ports unchanged on upgrade."""
    assert "workers" not in GOOD_PROXY
    assert proxy_config_from_dict(dict(GOOD_PROXY)).workers == 1


def test_auto_is_one_worker_per_usable_core() -> None:
    unlimited = {"mutator_concurrency": 0, "read_concurrency": 0, "max_queued": 0}
    config = proxy_config_from_dict({**GOOD_PROXY, "workers": "auto", "limits": unlimited})
    assert config.workers == len(os.sched_getaffinity(0)) == usable_cores()


def test_auto_follows_the_cpu_affinity() -> None:
    """A proxy started under ``taskset -c 0`` may use one core: one worker."""
    code = (
        "from gitquorum.config import proxy_config_from_dict; "
        "from tests.unit.test_config import GOOD_NODE, GOOD_PROXY; "
        "print(proxy_config_from_dict({**GOOD_PROXY, 'workers': 'auto'}).workers)"
    )
    done = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == "1", done.stderr


def test_auto_stays_within_the_smallest_limit() -> None:
    """Every worker gets a share of 1 at least of each limit, the queue included."""
    data = {**GOOD_PROXY, "workers": "auto", "limits": {"mutator_concurrency": 1}}
    assert proxy_config_from_dict(data).workers == 1
    assert auto_workers(LimitsConfig(mutator_concurrency=1, read_concurrency=8)) == 1
    assert auto_workers(LimitsConfig(mutator_concurrency=0, read_concurrency=0, max_queued=1)) == 1
    unlimited = LimitsConfig(mutator_concurrency=0, read_concurrency=0, max_queued=0)
    assert auto_workers(unlimited) == usable_cores()


def test_auto_is_capped_by_a_max_queued_share_of_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gitquorum.config.usable_cores", lambda: 8)
    limits = {"mutator_concurrency": 0, "read_concurrency": 0, "max_queued": 3}
    config = proxy_config_from_dict({**GOOD_PROXY, "workers": "auto", "limits": limits})
    assert config.workers == 3
    assert all(worker_limits(config.limits, 3, i).max_queued >= 1 for i in range(3))


def test_config_validate_accepts_auto(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump({**GOOD_PROXY, "workers": "auto"}))
    with pytest.raises(SystemExit) as exited:
        cli_main.main(["config", "validate", "--kind", "proxy", str(path)])
    assert exited.value.code in (0, None), capsys.readouterr()


def test_one_worker_when_the_file_says_so() -> None:
    assert proxy_config_from_dict({**GOOD_PROXY, "workers": 1}).workers == 1


@pytest.mark.parametrize("value", [0, "many"])
def test_config_validate_reports_bad_workers(
    value: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump({**GOOD_PROXY, "workers": value}))
    with pytest.raises(SystemExit) as exited:
        cli_main.main(["config", "validate", "--kind", "proxy", str(path)])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "workers: expected an integer >= 1" in err, err


def test_config_validate_reports_a_limit_below_the_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "proxy.yaml"
    data = {**GOOD_PROXY, "workers": 3, "limits": {"read_concurrency": 2}}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as exited:
        cli_main.main(["config", "validate", "--kind", "proxy", str(path)])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "limits.read_concurrency: 2 is less than workers (3)" in err, err


@pytest.mark.parametrize("value", [0, -1, "2", 1.5, True])
def test_workers_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(ConfigError, match=r"workers: expected an integer >= 1"):
        proxy_config_from_dict({**GOOD_PROXY, "workers": value})


def test_a_limit_below_the_workers_is_refused() -> None:
    data = {**GOOD_PROXY, "workers": 4, "limits": {"mutator_concurrency": 3}}
    with pytest.raises(ConfigError, match=r"limits.mutator_concurrency: 3 is less than workers"):
        proxy_config_from_dict(data)


@pytest.mark.parametrize("limits", [{"mutator_concurrency": 4}, {"mutator_concurrency": 0}])
def test_a_limit_of_at_least_the_workers_or_none_is_accepted(limits: dict[str, int]) -> None:
    data = {**GOOD_PROXY, "workers": 4, "limits": limits}
    assert proxy_config_from_dict(data).workers == 4


@pytest.mark.parametrize(
    ("total", "workers", "shares"),
    [
        (10, 1, [10]),
        (10, 2, [5, 5]),
        (10, 3, [4, 3, 3]),
        (7, 4, [2, 2, 2, 1]),
        (2, 2, [1, 1]),
        (1, 2, [1, 0]),
        (0, 3, [0, 0, 0]),
    ],
)
def test_shares_add_up_to_the_total(total: int, workers: int, shares: list[int]) -> None:
    assert [share(total, workers, i) for i in range(workers)] == shares
    assert sum(shares) == total


def test_each_worker_enforces_its_share_of_the_limits() -> None:
    limits = LimitsConfig(
        max_message_size=1 << 20, mutator_concurrency=10, read_concurrency=0, max_queued=5
    )
    first, second = (worker_limits(limits, 2, i) for i in range(2))
    assert (first.mutator_concurrency, second.mutator_concurrency) == (5, 5)
    # 0 means no limit, in every worker.
    assert first.read_concurrency == second.read_concurrency == 0
    assert (first.max_queued, second.max_queued) == (3, 2)
    assert first.max_message_size == second.max_message_size == 1 << 20
    assert first.queue_timeout == limits.queue_timeout
    assert worker_limits(limits, 1, 0) is limits


def test_worker_slot() -> None:
    assert not WorkerSlot().pooled and WorkerSlot().first
    assert WorkerSlot(0, 2).pooled and WorkerSlot(0, 2).first
    assert not WorkerSlot(1, 2).first


@pytest.mark.parametrize(
    ("address", "port", "expected"),
    [
        ("127.0.0.1:2305", 4000, "127.0.0.1:4000"),
        ("tls://proxy1.example:2305", 4001, "tls://proxy1.example:4001"),
        ("tcp://[::1]:2305", 4002, "tcp://[::1]:4002"),
    ],
)
def test_a_workers_vote_address_keeps_host_and_scheme(
    address: str, port: int, expected: str
) -> None:
    assert with_port(address, port) == expected


def test_join_address_brackets_ipv6() -> None:
    assert join_address("::1", 5) == "[::1]:5"
    assert join_address("127.0.0.1", 5) == "127.0.0.1:5"


def test_so_reuseport_only_for_workers() -> None:
    assert dict(server_options())["grpc.so_reuseport"] == 0
    assert dict(server_options(reuse_port=True))["grpc.so_reuseport"] == 1


def test_reserving_a_taken_port_fails() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenError, match=f"127.0.0.1:{port}"):
            reserve_address("127.0.0.1", port)


def test_a_reserved_port_cannot_be_shared_by_a_second_pool() -> None:
    holder = reserve_address("127.0.0.1", 0)
    try:
        port = holder.getsockname()[1]
        assert port != 0
        # Workers bind it with SO_REUSEPORT ...
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
        # ... but another pooled server asking for the same port is refused.
        with pytest.raises(ListenError):
            reserve_address("127.0.0.1", port)
    finally:
        holder.close()


# -- the storage node's workers ----------------------------------------------------------


def test_a_node_runs_one_process_unless_told() -> None:
    assert "workers" not in GOOD_NODE
    assert node_config_from_dict(dict(GOOD_NODE)).workers == 1
    assert node_config_from_dict({**GOOD_NODE, "workers": 3}).workers == 3


@pytest.mark.parametrize("value", [0, "2", True])
def test_node_workers_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(ConfigError, match=r"workers: expected an integer >= 1"):
        node_config_from_dict({**GOOD_NODE, "workers": value})


def test_a_node_limit_below_its_workers_is_refused() -> None:
    data = {**GOOD_NODE, "workers": 4, "limits": {"read_concurrency": 2}}
    with pytest.raises(ConfigError, match=r"limits.read_concurrency: 2 is less than workers"):
        node_config_from_dict(data)


def test_the_parent_passes_its_worker_count_on_every_worker_command_line(tmp_path: Path) -> None:
    argv = worker_argv(["proxy", "--config", "p.yml"], 1, 3, tmp_path / "r", "127.0.0.1:5")
    assert argv[argv.index("--worker-index") + 1] == "1"
    assert argv[argv.index("--worker-count") + 1] == "3"


@pytest.mark.parametrize("kind", ["proxy", "node"])
def test_a_worker_takes_the_parents_count_not_its_own_reading_of_the_file(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``workers: auto`` read by a worker under another CPU affinity must not change its count."""
    served: list[tuple[ProxyConfig | NodeConfig, WorkerSlot]] = []

    async def serve(config: ProxyConfig | NodeConfig, _ready: object, *rest: object) -> None:
        worker = rest[-1]
        assert isinstance(worker, WorkerSlot)
        served.append((config, worker))

    monkeypatch.setattr("gitquorum.config.usable_cores", lambda: 1)
    path = tmp_path / f"{kind}.yaml"
    if kind == "proxy":
        monkeypatch.setattr("gitquorum.proxy.server.serve", serve)
        path.write_text(yaml.safe_dump({**GOOD_PROXY, "workers": "auto"}))
    else:
        monkeypatch.setattr("gitquorum.storage.server.serve", serve)
        node = {k: v for k, v in GOOD_NODE.items() if k != "auth"}
        path.write_text(yaml.safe_dump({**node, "workers": 1}))
    args = [kind, "--config", str(path), "--worker-index", "2", "--worker-count", "3"]
    with pytest.raises(SystemExit) as exited:
        cli_main.main([*args, "--worker-listen", "127.0.0.1:1"])
    assert exited.value.code == 0
    [(config, worker)] = served
    assert (worker.index, worker.count) == (2, 3)
    assert config.workers == 3


def test_a_worker_index_needs_a_count_and_fits_in_it() -> None:
    parser = argparse.ArgumentParser()
    add_worker_arguments(parser)
    assert worker_slot(parser.parse_args([])) is None
    for argv, problem in [
        (["--worker-index", "0"], "--worker-count"),
        (["--worker-index", "3", "--worker-count", "3"], "--worker-index: expected 0 to 2"),
    ]:
        with pytest.raises(ConfigError) as refused:
            worker_slot(parser.parse_args(argv))
        assert problem in str(refused.value.problems)


def _port_in_time_wait() -> int:
    """A closed listener's port (no SO_REUSEPORT), one connection it closed in TIME_WAIT."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port: int = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the side that closes first keeps TIME_WAIT on the listen port
    client.recv(1)
    client.close()
    listener.close()
    return port


def test_reserving_waits_out_time_wait_of_a_single_process_listener(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Switching from one process to workers: the holder's bind is retried, not failed at once."""
    port = _port_in_time_wait()
    started = time.monotonic()
    with pytest.raises(ListenError):
        reserve_address("127.0.0.1", port, wait=0.6)
    assert time.monotonic() - started >= 0.6  # retried until the deadline
    # Once TIME_WAIT ends the bind succeeds: here, after two refusals.
    attempts: list[int] = []
    real_bind = worker_pool._bind

    def bind(sock: socket.socket, address: tuple[str, int]) -> None:
        attempts.append(1)
        if len(attempts) <= 2:
            raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
        real_bind(sock, address)

    monkeypatch.setattr(worker_pool, "_bind", bind)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    free_port = free.getsockname()[1]
    free.close()
    caplog.clear()
    with caplog.at_level("WARNING", logger="gitquorum.workers"):
        holder = reserve_address("127.0.0.1", free_port, wait=30)
    with holder:
        assert holder.getsockname()[1] == free_port
    assert len(attempts) == 3
    assert sum("TIME_WAIT" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_reserving_a_port_something_listens_on_still_fails_at_once() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        started = time.monotonic()
        with pytest.raises(ListenError):
            reserve_address("127.0.0.1", taken.getsockname()[1], wait=30)
        assert time.monotonic() - started < 5
