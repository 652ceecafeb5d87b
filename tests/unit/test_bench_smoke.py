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
