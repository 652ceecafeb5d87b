"""The proxy benchmark's pure parts: arguments, targets, pack-protocol helpers, report.

No timing is asserted here; the benchmark itself runs with ``python bench/proxy_bench.py``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bench import common, proxy_bench


def test_arguments_select_quick_settings_and_phases() -> None:
    args = proxy_bench.parse_args(["--quick", "--phases", "unary,push", "--pushes", "7"])
    settings = proxy_bench.settings_from(args)
    assert args.phases == ["unary", "push"]
    assert settings.pushes == 7
    assert settings.unary_calls == proxy_bench.Settings.quick().unary_calls
    assert proxy_bench.settings_from(proxy_bench.parse_args([])).clone_mb >= 50


@pytest.mark.parametrize("argv", [["--phases", "unary,bogus"], ["--clone-mb", "0"]])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        proxy_bench.parse_args(argv)


def test_targets_are_judged_against_the_issue_thresholds() -> None:
    results = {
        "unary": {"proxy_added_p50_ms": 0.6},
        "throughput": {"proxy_vs_direct": 0.61},
        "clone": {"pack_mb": 52.0, "grpc": {"proxy_vs_direct": 0.79}},
        "push": {"git": {"proxy_vs_direct_p50": 2.0}},
    }
    met = [check.met for check in proxy_bench.checks(results)]
    assert met == [False, True, False, True]


def test_upload_pack_answer_yields_the_whole_pack() -> None:
    body = b"PACK\x00\x00\x00\x02\x00\x00\x00\x00"
    pack = body + hashlib.sha1(body).digest()
    answer = (
        common.pkt(b"abc refs/heads/main\0caps\n")
        + common.FLUSH
        + common.pkt(b"NAK\n")
        + common.pkt(b"\x02progress")
        + common.pkt(b"\x01" + pack[:10])
        + common.pkt(b"\x01" + pack[10:])
        + common.FLUSH
    )
    extracted = common.pack_from_upload_pack(answer)
    assert extracted == pack
    assert common.pack_is_whole(extracted)
    assert not common.pack_is_whole(extracted[:-1] + b"\x00")


def test_canned_requests_are_pkt_lines() -> None:
    request = common.upload_pack_request(["a" * 40, "b" * 40, "a" * 40])
    lines = list(common.pkt_lines(request))
    assert lines[0] is not None and lines[0].startswith(b"want " + b"a" * 40 + b" side-band-64k")
    assert lines[1:] == [b"want " + b"b" * 40 + b"\n", None, b"done\n"]
    push = common.receive_pack_request("0" * 40, "1" * 40, "refs/heads/main", b"PACK")
    assert push.endswith(common.FLUSH + b"PACK")


def test_hot_spots_rank_frames_from_collapsed_stacks(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "main (pkg/cli/main.py);serve (pkg/handler.py);hot (grpc/b.py) 30\n"
        "main (pkg/cli/main.py);cold (pkg/c.py) 10\n"
    )
    spots = common.hot_spots(raw, top=2, focus="pkg/")
    assert spots["samples"] == 40
    assert spots["self"][0] == ("hot (grpc/b.py)", 75.0)
    # Entry points (cli/) and other packages are left out of the focus list.
    assert spots["focus"] == [("serve (pkg/handler.py)", 75.0), ("cold (pkg/c.py)", 25.0)]


def test_report_renders_every_measured_phase() -> None:
    latency = {"p50_ms": 1.0, "p99_ms": 2.0}
    per = {"client": 1.0, "hop": 2.0, "proxy": 3.0, "node": 4.0}
    results = {
        "unary": {
            "latency": dict.fromkeys(proxy_bench.SIDES, latency),
            "proxy_added_p50_ms": 0.4,
            "proxy_added_p99_ms": 0.9,
            "hop_added_p50_ms": 0.3,
            "hop_added_p99_ms": 0.5,
            "calls_per_side": 10,
            "node": "node1",
            "cpu_us_per_call": dict.fromkeys(proxy_bench.SIDES, per),
        },
    }
    report = {
        "machine": {"nproc": 2, "cpu": "test cpu"},
        "settings": {},
        "results": results,
        "targets": [vars(c) for c in proxy_bench.checks(results)],
        "total_s": 1.0,
    }
    text = proxy_bench.render_markdown(report)
    assert "FindCommit p50, concurrency 1 (ms)" in text
    assert "+0.40 ms (bare hop +0.30 ms)" in text
    assert "| test cpu |" in text


def test_bulk_phase_and_proxy_workers_are_selectable() -> None:
    args = proxy_bench.parse_args(["--quick", "--phases", "bulk", "--proxy-workers", "2"])
    settings = proxy_bench.settings_from(args)
    assert args.phases == ["bulk"]
    assert (settings.proxy_workers, settings.bulk_rounds) == (2, 1)
    full = proxy_bench.settings_from(proxy_bench.parse_args(["--phases", "bulk"]))
    assert full.clone_mb >= 50 and full.bulk_rounds >= 2 and full.proxy_workers == 1
    with pytest.raises(SystemExit):
        proxy_bench.parse_args(["--proxy-workers", "0"])


def _bulk_results(ssh_share: float, http_share: float, push_factor: float) -> dict[str, object]:
    lat = {"count": 3, "p50_ms": 10.0, "p90_ms": 11.0, "p99_ms": 12.0, "mean_ms": 10.5}
    clone_cpu = {"client": 1.0, "proxy": 2.0, "nodes": 3.0, "http": 4.0, "etcd": 5.0}
    push_cpu = {"client": 1.0, "proxy": 2.0, "primary node": 3.0, "other nodes": 4.0}
    ways = {"git": "git's own", "ssh": "through git-ssh", "http": "through the gateway"}
    return {
        "bulk": {
            "pack_mb": 54.5,
            "loadavg_start": "1.00 1.00 1.00",
            "loadavg_end": "2.00 2.00 2.00",
            "clone": {
                "ways": ways,
                "rounds": 2,
                "mb_per_s": {"git": 100.0, "ssh": 100 * ssh_share, "http": 100 * http_share},
                "vs_git": {"ssh": ssh_share, "http": http_share},
                "samples_mb_per_s": {way: [1.0, 2.0] for way in ways},
                "round_vs_git": {"ssh": [ssh_share] * 2, "http": [http_share] * 2},
                "cpu_ms_per_clone": {way: {**clone_cpu, "servers": 14.0} for way in ways},
                "logged_ms_p50": {"git": {}, "ssh": {"proxy1": 9.0}, "http": {"http": 8.0}},
                "checked": "refs and fsck",
            },
            "push": {
                "latency": {"direct": lat, "proxy": lat},
                "proxy_vs_direct_p50": push_factor,
                "cpu_ms_per_push": {
                    "direct": {**push_cpu, "servers": 9.0},
                    "proxy": {**push_cpu, "servers": 9.0},
                },
                "breakdown_p50_ms": {
                    "direct": {"client": 1.0, "node": 2.0},
                    "proxy": {"client": 1.0, "proxy": 2.0, "primary": 3.0, "slowest_secondary": 4},
                },
                "pushes_per_side": 3,
                "commits_per_push": 1,
                "generation_after": 4,
                "replicas_up_to_date": "3/3",
            },
        }
    }


@pytest.mark.parametrize(
    ("ssh", "http", "push", "met"),
    [
        (0.85, 0.9, 1.3, [True, True, True]),
        (0.849, 0.9, 1.31, [False, True, False]),
        (1.2, 0.5, 1.0, [True, False, True]),
    ],
)
def test_bulk_targets_are_judged_against_the_issue_thresholds(
    ssh: float, http: float, push: float, met: list[bool]
) -> None:
    checks = proxy_bench.checks(_bulk_results(ssh, http, push))
    assert [check.met for check in checks] == met
    assert "git-ssh" in checks[0].name and "HTTP gateway" in checks[1].name


def test_bulk_report_has_targets_and_its_own_tables() -> None:
    results = _bulk_results(0.5, 0.9, 1.25)
    report = {
        "machine": {"nproc": 2},
        "settings": {},
        "results": results,
        "targets": [vars(c) for c in proxy_bench.checks(results)],
        "total_s": 1.0,
    }
    text = proxy_bench.render_markdown(report)
    # Only the bulk phase ran: no empty table of the other phases.
    assert "### Results" not in text
    assert "### Bulk transfer against git's own speed (54.5 MB pack" in text
    assert (
        "| through git-ssh | 50.0 | 1.0, 2.0 | 50% (rounds: 50%, 50%) | >= 85% | **no** |" in text
    )
    assert (
        "| through the gateway | 90.0 | 1.0, 2.0 | 90% (rounds: 90%, 90%) | >= 85% | yes |" in text
    )
    assert "1.25x | <= 1.3x | yes |" in text
    assert "push: 3 voting replicas | 1.0 | 2.0 | 3.0 + 4.0 |" in text


def test_cpu_summary_counts_the_proxy_workers_with_the_proxy() -> None:
    used = {"client": 0.1, "proxy": 0.2, "proxy worker 1": 0.3, "node1": 0.4, "node2": 0.5}
    per = proxy_bench._cpu_summary(used, 2, ["node1", "node2"], primary="node1")
    assert per == {
        "client": 50.0,
        "proxy": 250.0,
        "primary node": 200.0,
        "other nodes": 250.0,
        "servers": 700.0,
    }


def test_read_availability_bench_arguments_and_report() -> None:
    from bench import read_availability_bench as bench

    args = bench.parse_args(["--readers", "2", "--stall", "3"])
    assert (args.readers, args.stall, args.normal) == (2, 3.0, 20.0)
    with pytest.raises(SystemExit):
        bench.parse_args(["--stall", "0"])
    reads = [bench.Read(0.0, 0.01), bench.Read(0.1, 0.02, "UNAVAILABLE")]
    counters = dict.fromkeys(
        ("accessors", "retries", "hedges_sent", "hedges_won", "ejections"), 1.0
    )
    phase = {**bench.summary(reads), "counters": counters}
    assert (phase["reads"], phase["failed"], phase["errors"]) == (2, 1, ["UNAVAILABLE"])
    results = {
        "normal": {**phase, "hedged_fraction": 0.04},
        "stall": phase,
        "kill": phase,
        "goal": {"stall_p99_limit_ms": 250.0, "stall_p99_met": True, "no_failed_reads": False},
    }
    text = bench.report(results)
    assert "4.00% of accessor RPCs" in text and "0 failed reads: NOT met" in text


def test_node_bench_arguments_and_report() -> None:
    from bench import node_bench

    args = node_bench.parse_args(["--quick", "--only", "FindCommit,GetBlob", "--calls", "9"])
    assert args.only == ["FindCommit", "GetBlob"]
    for argv in (["--only", "FindNothing"], ["--calls", "0"]):
        with pytest.raises(SystemExit):
            node_bench.parse_args(argv)
    latency = {"count": 3, "p50_ms": 1.0, "p90_ms": 1.5, "p99_ms": 2.0, "mean_ms": 1.1}
    echo = {**latency, "p50_ms": 0.5}
    accessor = {
        "title": "t",
        "calls_per_side": 3,
        "node": latency,
        "echo": echo,
        "ratio_p50": 2.0,
        "ratio_p99": 1.0,
        "cpu_us_per_call": {"node": 900.0, "node_with_git": 950.0, "echo": 400.0},
    }
    report = {
        "machine": {"nproc": 2},
        "settings": {},
        "total_s": 1.0,
        "results": {
            "answers": {"FindCommit": {"messages": 1, "bytes": 250}},
            "accessors": {
                "FindCommit": {**accessor, "small": True, "met": False},
                "FindLocalBranches": {**accessor, "small": False, "met": None},
            },
        },
    }
    text = node_bench.render_markdown(report)
    assert "| FindCommit | 3 | 1.000 / 2.000 | 0.500 / 2.000 | 2.00 | 1.00 | **missed** |" in text
    assert "n/a (large answer)" in text


def test_forwarder_costs_report_gives_each_duty_against_the_bare_hop() -> None:
    from bench import forwarder_costs

    result = {
        "machine": {"nproc": 2},
        "calls_per_variant": 6000,
        "variants": {
            "bare": {"cpu_us_per_call": 900.0, "p50_ms": 1.5},
            "metadata": {"cpu_us_per_call": 945.0, "p50_ms": 1.55},
            "log": {"cpu_us_per_call": 1010.0, "p50_ms": 1.56},
            "bare-again": {"cpu_us_per_call": 890.0, "p50_ms": 1.49},
        },
    }
    rows = {
        line.split(" | ")[0].lstrip("| "): line
        for line in forwarder_costs.render(result).splitlines()
        if line.startswith("| ") and " µs |" in line and not line.startswith("| variant")
    }
    assert set(rows) == set(forwarder_costs.VARIANTS)
    assert "| 945 | +45 µs | 1.550 | +50 µs |" in rows["metadata"]
    assert "| 1010 | +110 µs |" in rows["log"]
    assert "| 890 | -10 µs |" in rows["bare-again"]
