"""Config loading over random YAML documents and random files: ConfigError or a config.

An operator's typo must come back as a list of problems with dotted paths,
never a traceback: the loaders get random structures (mappings, lists,
scalars of every YAML type in every position) and random file contents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitquorum.config import (
    load_node_config,
    load_proxy_config,
    node_config_from_dict,
    parse_address,
    parse_duration,
    proxy_config_from_dict,
)
from gitquorum.errors import ConfigError

SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["1s", "500ms", "-1s", "1e400s", "127.0.0.1:0", "h:99999", "[::1]:1", "/abs"]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)

NODE_KEYS = ["listen", "storages", "metrics_listen", "log_level", "graceful_timeout", "auth"]
PROXY_KEYS = [
    "listen",
    "name",
    "etcd",
    "virtual_storages",
    "metrics_listen",
    "graceful_timeout",
    "health",
    "election",
    "replication",
    "auth",
    "write_timeout",
]
LIMIT_KEYS = ["max_message_size", "mutator_concurrency", "read_concurrency", "queue_timeout"]


def _documents(keys: list[str]) -> st.SearchStrategy[Any]:
    """Mostly-plausible documents: known keys (and limits) with random values."""
    limits = st.dictionaries(st.sampled_from([*LIMIT_KEYS, "max_queued", "bogus"]), values)
    known = st.dictionaries(st.sampled_from(keys), values, max_size=len(keys)).flatmap(
        lambda d: st.one_of(st.just(d), limits.map(lambda lim: {**d, "limits": lim}))
    )
    return st.one_of(known, values)


def _loaded(load: Any, data: Any) -> None:
    try:
        load(data)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and ": " in p for p in exc.problems)


@SETTINGS
@given(data=_documents(NODE_KEYS))
def test_node_config_from_random_documents(data: Any) -> None:
    _loaded(node_config_from_dict, data)


@SETTINGS
@given(data=_documents(PROXY_KEYS))
def test_proxy_config_from_random_documents(data: Any) -> None:
    _loaded(proxy_config_from_dict, data)


@SETTINGS
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_config_files_with_random_content(tmp_path: Path, content: bytes | str) -> None:
    path = tmp_path / "config.yaml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(content)
    for load in (load_node_config, load_proxy_config):
        try:
            load(path)
        except ConfigError as exc:
            assert exc.problems


@pytest.mark.parametrize(
    "text",
    [
        "[" * 1000,  # nesting deeper than the parser's recursion
        "a: &x [*x]",  # a self-referencing alias
        "!!python/object:os.system {}",  # safe_load refuses arbitrary tags
        "\x00\x01",
        "limits: {max_message_size: 1e999}",
    ],
    ids=["deep-nesting", "alias-loop", "python-tag", "control-bytes", "huge-float"],
)
def test_hostile_yaml_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_proxy_config(path)


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(scalars, st.text(max_size=12)))
def test_duration_and_address_parsers_raise_value_error_only(value: Any) -> None:
    for parse in (parse_duration, parse_address):
        try:
            result = parse(value)
        except (ValueError, TypeError, AttributeError) as exc:
            # Loaders turn ValueError into a problem; parse_address is only
            # given strings by the loaders (reader.string checks first).
            assert parse is parse_address or isinstance(exc, ValueError)
            continue
        if parse is parse_duration:
            assert result >= 0 and result != float("inf")


def test_yaml_round_trip_of_a_limits_section(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                "storages": [{"name": "s", "path": str(tmp_path)}],
                "limits": {"max_message_size": 65536, "queue_timeout": "1s"},
            }
        )
    )
    limits = load_node_config(path).limits
    assert limits.max_message_size == 65536 and limits.queue_timeout == 1.0
