"""Typed configuration: every problem at once, with its dotted path."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gitquorum.config import (
    ReadsConfig,
    load_node_config,
    load_proxy_config,
    node_config_from_dict,
    parse_address,
    parse_duration,
    proxy_config_from_dict,
)
from gitquorum.errors import ConfigError

GOOD_NODE: dict[str, Any] = {
    "listen": "127.0.0.1:9075",
    "storages": [{"name": "node-1", "path": "/srv/gitquorum/node-1"}],
    "metrics_listen": "127.0.0.1:9236",
    "log_level": "debug",
    "graceful_timeout": "2m",
    "auth": {"token_file": "/etc/gitquorum/token"},
}

GOOD_PROXY: dict[str, Any] = {
    "listen": "0.0.0.0:2305",
    "name": "proxy-a",
    "etcd": {"endpoints": ["127.0.0.1:2379"], "cluster": "test"},
    "virtual_storages": [
        {
            "name": "default",
            "nodes": [
                {"storage": "node-1", "address": "127.0.0.1:9075"},
                {"storage": "node-2", "address": "127.0.0.1:9076"},
                {"storage": "node-3", "address": "[::1]:9077"},
            ],
        }
    ],
    "health": {"interval": "500ms", "timeout": "1s"},
    "election": {"ttl": "5s"},
    "replication": {"workers": 4, "attempts": 5, "reconcile_interval": "10s"},
}


def problems(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    """dotted path -> message."""
    result: dict[str, str] = {}
    for problem in exc.value.problems:
        path, _, message = problem.partition(": ")
        result[path] = message
    return result


# --- durations and addresses ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (" 10s ", 10.0),
        ("0s", 0.0),
        (3, 3.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "1",
        "s",
        "1x",
        "-1s",
        "1 s s",
        "1e3s",
        "1,5s",
        "ms",
        "1S",
        True,
        -1,
        math.nan,
        math.inf,
        10**400,
        "9" * 400 + "s",
        "²s",
    ],
)
def test_parse_duration_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9075", ("127.0.0.1", 9075)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:80", ("::1", 80)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "host",
        ":80",
        "host:",
        "host:port",
        "host:65536",
        "host:-1",
        "host:²",
        "host:\u0661\u0662",
    ],
)
def test_parse_address_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_address(bad)


# --- node ------------------------------------------------------------------------------------


def test_node_config_good() -> None:
    config = node_config_from_dict(GOOD_NODE)
    assert config.listen == "127.0.0.1:9075"
    assert [(s.name, str(s.path)) for s in config.storages] == [("node-1", "/srv/gitquorum/node-1")]
    assert config.graceful_timeout == 120.0
    assert config.log_level == "debug"
    assert config.auth_token_file == "/etc/gitquorum/token"


def test_node_config_defaults() -> None:
    config = node_config_from_dict(
        {"listen": "127.0.0.1:0", "storages": [{"name": "a", "path": "/a"}]}
    )
    assert config.metrics_listen == "127.0.0.1:0"
    assert config.log_level == "info"
    assert config.graceful_timeout == 10.0
    assert config.auth_token_file == ""


def test_node_config_reports_every_problem_at_once() -> None:
    data = {
        "listen": "nowhere",
        "storages": [
            {"name": "a", "path": "relative/dir"},
            {"name": "a", "path": "/b", "colour": "red"},
            {"path": "/c"},
            "not-a-mapping",
        ],
        "metrics_listen": "127.0.0.1:99999",
        "log_level": "loud",
        "graceful_timeout": "soon",
        "auth": {"token_file": ["x"], "secret": "y"},
        "typo_option": 1,
    }
    with pytest.raises(ConfigError) as exc:
        node_config_from_dict(data)
    found = problems(exc)
    # A non-mapping entry is reported as such (and its required keys as missing).
    assert "expected a mapping" in found["storages.3"]
    assert set(found) - {"storages.3.name", "storages.3.path"} == {
        "listen",
        "storages.0.path",
        "storages.1.name",
        "storages.1.colour",
        "storages.2.name",
        "storages.3",
        "metrics_listen",
        "log_level",
        "graceful_timeout",
        "auth.token_file",
        "auth.secret",
        "typo_option",
    }
    assert "duplicate" in found["storages.1.name"]
    assert "absolute" in found["storages.0.path"]
    assert "unknown option" in found["typo_option"]
    assert "required" in found["storages.2.name"]


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (None, "listen"),
        ([], "<root>"),
        ("text", "<root>"),
        ({"listen": "a:1"}, "storages"),
        ({"listen": "a:1", "storages": []}, "storages"),
        ({"listen": "a:1", "storages": {"name": "x"}}, "storages"),
        ({"listen": 9075, "storages": [{"name": "a", "path": "/a"}]}, "listen"),
        ({"listen": "a:1", "storages": [{"name": "", "path": "/a"}]}, "storages.0.name"),
        (
            {"listen": "a:1", "storages": [{"name": "a", "path": "/a"}], "log_level": []},
            "log_level",
        ),
        (
            {"listen": "a:1", "storages": [{"name": "a", "path": "/a"}], "graceful_timeout": None},
            "graceful_timeout",
        ),
        (
            {"listen": "a:1", "storages": [{"name": "a", "path": "/a"}], "auth": "token"},
            "auth",
        ),
    ],
)
def test_node_config_single_problem_paths(data: Any, path: str) -> None:
    with pytest.raises(ConfigError) as exc:
        node_config_from_dict(data)
    assert path in problems(exc)


def test_duplicate_missing_names_are_not_duplicates() -> None:
    with pytest.raises(ConfigError) as exc:
        node_config_from_dict({"listen": "a:1", "storages": [{"path": "/a"}, {"path": "/b"}]})
    assert all("duplicate" not in p for p in exc.value.problems)
    assert {"storages.0.name", "storages.1.name"} <= set(problems(exc))


# --- proxy -----------------------------------------------------------------------------------


def test_proxy_config_good() -> None:
    config = proxy_config_from_dict(GOOD_PROXY)
    assert config.name == "proxy-a"
    assert config.etcd.endpoints == ("127.0.0.1:2379",)
    assert config.etcd.cluster == "test"
    (vs,) = config.virtual_storages
    assert [n.storage for n in vs.nodes] == ["node-1", "node-2", "node-3"]
    assert vs.default_replication_factor == 3
    assert config.health_interval == 0.5
    assert config.replication_workers == 4
    assert config.reconcile_interval == 10.0
    assert config.verify_interval == 300.0


def test_proxy_replication_factor_defaults_to_node_count() -> None:
    data = {**GOOD_PROXY, "virtual_storages": [{**GOOD_PROXY["virtual_storages"][0]}]}
    data["virtual_storages"][0]["nodes"] = data["virtual_storages"][0]["nodes"][:2]
    assert proxy_config_from_dict(data).virtual_storages[0].default_replication_factor == 2


def test_proxy_config_reports_every_problem_at_once() -> None:
    data = {
        "listen": "0.0.0.0",
        "etcd": {"endpoints": [], "cluster": "../other", "user": "x", "username": 5},
        "virtual_storages": [
            {
                "name": "default",
                "nodes": [
                    {"storage": "n1", "address": "h:1"},
                    {"storage": "n1", "address": "bad"},
                ],
                "default_replication_factor": 3,
            },
            {"name": "default", "nodes": []},
            {"nodes": [{"address": "h:2", "extra": True}], "default_replication_factor": 0},
        ],
        "health": {"interval": "fast", "period": "1s"},
        "election": {"ttl": -5},
        "replication": {"workers": 0, "attempts": "3"},
        "vote_timeout": "1 minute",
        "advertise": ["x"],
        "auth": {"token_file": {}, "node_token_file": 3},
        "log_level": "trace",
    }
    with pytest.raises(ConfigError) as exc:
        proxy_config_from_dict(data)
    found = problems(exc)
    expected = {
        "listen",
        "etcd.endpoints",
        "etcd.cluster",
        "etcd.user",
        "etcd.username",
        "virtual_storages.0.nodes.1.storage",
        "virtual_storages.0.nodes.1.address",
        "virtual_storages.0.default_replication_factor",
        "virtual_storages.1.name",
        "virtual_storages.1.nodes",
        "virtual_storages.2.name",
        "virtual_storages.2.nodes.0.storage",
        "virtual_storages.2.nodes.0.extra",
        "virtual_storages.2.default_replication_factor",
        "health.interval",
        "health.period",
        "election.ttl",
        "replication.workers",
        "replication.attempts",
        "vote_timeout",
        "advertise",
        "auth.token_file",
        "auth.node_token_file",
        "log_level",
    }
    assert set(found) == expected, set(found) ^ expected
    assert (
        "more than the 2 configured nodes" in found["virtual_storages.0.default_replication_factor"]
    )
    assert "duplicate" in found["virtual_storages.1.name"]


def test_proxy_config_missing_everything() -> None:
    with pytest.raises(ConfigError) as exc:
        proxy_config_from_dict({})
    assert {"listen", "etcd.endpoints", "virtual_storages"} <= set(problems(exc))


# --- files -----------------------------------------------------------------------------------


def test_load_files(tmp_path: Path) -> None:
    node = tmp_path / "node.yaml"
    node.write_text(yaml.safe_dump(GOOD_NODE))
    assert load_node_config(node).listen == "127.0.0.1:9075"
    proxy = tmp_path / "proxy.yaml"
    proxy.write_text(yaml.safe_dump(GOOD_PROXY))
    assert load_proxy_config(proxy).name == "proxy-a"


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"listen: [unclosed\n", "not valid YAML"),
        (b"a: b\n  c: d\n", "not valid YAML"),
        (b"listen: \xff\xfe\n", "UTF-8"),
        (b"[" * 700 + b"]" * 700, "YAML"),
        (b"? [a, b]\n: c\n", "YAML"),
    ],
    ids=["unclosed", "bad-indent", "not-utf8", "deep-nesting", "unhashable-key"],
)
def test_bad_yaml_is_config_error(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as exc:
        load_node_config(path)
    assert why in str(exc.value)
    assert str(path) in exc.value.problems[0]


def test_unreadable_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_node_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_proxy_config(tmp_path)


def test_empty_file_reports_required_options(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as exc:
        load_node_config(path)
    # Each problem names the file (no line: the options are missing).
    assert all(p.startswith(f"{path}: ") for p in exc.value.problems)
    paths = {p.removeprefix(f"{path}: ").partition(": ")[0] for p in exc.value.problems}
    assert {"listen", "storages"} <= paths


# --- fuzz ------------------------------------------------------------------------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["1s", "500ms", "127.0.0.1:0", "/abs", "info", "-1s", "a:²"]),
)
_KEYS = st.one_of(
    st.sampled_from(
        [
            "listen",
            "storages",
            "name",
            "path",
            "metrics_listen",
            "log_level",
            "graceful_timeout",
            "auth",
            "token_file",
            "node_token_file",
            "etcd",
            "endpoints",
            "cluster",
            "username",
            "virtual_storages",
            "nodes",
            "storage",
            "address",
            "default_replication_factor",
            "health",
            "interval",
            "timeout",
            "election",
            "ttl",
            "replication",
            "workers",
            "attempts",
            "advertise",
        ]
    ),
    st.text(max_size=6),
    st.integers(),
    st.booleans(),
    st.none(),
)
_YAMLISH = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=6),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(data=_YAMLISH)
def test_fuzz_only_config_errors(data: Any) -> None:
    for loader in (node_config_from_dict, proxy_config_from_dict):
        try:
            loader(data)
        except ConfigError as exc:
            assert exc.problems
            assert all(isinstance(p, str) and ": " in p for p in exc.problems)


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=200))
def test_fuzz_yaml_text_only_config_errors(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_text(text, encoding="utf-8")
    for loader in (load_node_config, load_proxy_config):
        try:
            loader(path)
        except ConfigError as exc:
            assert exc.problems


def test_proxy_reads_section() -> None:
    base = {
        "listen": "127.0.0.1:0",
        "etcd": {"endpoints": ["127.0.0.1:2379"]},
        "virtual_storages": [{"name": "vs", "nodes": [{"storage": "n1", "address": "h:1"}]}],
    }
    assert proxy_config_from_dict(base).reads == ReadsConfig()
    reads = {
        "hedging": False,
        "hedge_delay_floor": "50ms",
        "outlier_failures": 5,
        "outlier_ejection_time": "30s",
        "last_resort": False,
        "last_resort_timeout": "500ms",
    }
    assert proxy_config_from_dict({**base, "reads": reads}).reads == ReadsConfig(
        hedging=False,
        hedge_delay_floor=0.05,
        outlier_failures=5,
        outlier_ejection_time=30.0,
        last_resort=False,
        last_resort_timeout=0.5,
    )
    bad = {
        "hedging": "yes",
        "hedge_delay_floor": "0s",
        "outlier_failures": 0,
        "outlier_ejection_time": "1h",
        "hedge": True,
        "last_resort": "no",
        "last_resort_timeout": "10ms",
    }
    with pytest.raises(ConfigError) as failed:
        proxy_config_from_dict({**base, "reads": bad})
    assert sorted(p.split(":")[0] for p in failed.value.problems) == [
        "reads.hedge",
        "reads.hedge_delay_floor",
        "reads.hedging",
        "reads.last_resort",
        "reads.last_resort_timeout",
        "reads.outlier_ejection_time",
        "reads.outlier_failures",
    ]
