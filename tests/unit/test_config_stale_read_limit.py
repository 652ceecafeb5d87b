"""``stale_read_limit``: 5 s by default, never below what a healthy etcd watch needs."""

from __future__ import annotations

import pytest

from gitquorum.cluster.etcd_store import EtcdConfig
from gitquorum.config import ConfigError, ProxyConfig, proxy_config_from_dict
from tests.unit.test_config import GOOD_PROXY


def test_default_is_five_seconds() -> None:
    assert proxy_config_from_dict(dict(GOOD_PROXY)).stale_read_limit == 5.0
    assert ProxyConfig.stale_read_limit == 5.0


@pytest.mark.parametrize(
    ("value", "seconds"), [("3s", 3.0), ("5s", 5.0), ("1m", 60.0), ("3500ms", 3.5)]
)
def test_accepted(value: str, seconds: float) -> None:
    config = proxy_config_from_dict({**GOOD_PROXY, "stale_read_limit": value})
    assert config.stale_read_limit == seconds


@pytest.mark.parametrize("value", ["0s", "1s", "2999ms"])
def test_below_three_seconds_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"stale_read_limit: must be at least 3s"):
        proxy_config_from_dict({**GOOD_PROXY, "stale_read_limit": value})


def test_the_watch_hears_from_etcd_well_within_the_minimum() -> None:
    # Three progress answers may go missing, and a silent stream is replaced,
    # before the smallest accepted limit refuses reads.
    watch = EtcdConfig()
    assert watch.watch_progress_interval <= 1.0
    assert watch.watch_idle_timeout <= 3.0
