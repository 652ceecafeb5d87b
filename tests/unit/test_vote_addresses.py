"""Fixed vote addresses of pooled proxy workers: ``vote_listen`` and ``vote_advertise``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gitquorum.config import ConfigError, proxy_config_from_dict
from gitquorum.proxy.server import vote_listen
from tests.unit.test_config import GOOD_PROXY, problems

FIXED: dict[str, Any] = {
    **GOOD_PROXY,
    "workers": 2,
    "vote_listen": ["0.0.0.0:2311", "0.0.0.0:2312"],
    "vote_advertise": ["proxy-a.example:9311", "tcp://proxy-a.example:9312"],
}


def test_each_worker_takes_its_own_entry() -> None:
    config = proxy_config_from_dict(dict(FIXED))
    assert config.vote_listen == ("0.0.0.0:2311", "0.0.0.0:2312")
    assert config.vote_advertise == ("proxy-a.example:9311", "tcp://proxy-a.example:9312")
    assert [vote_listen(config, i) for i in range(2)] == ["0.0.0.0:2311", "0.0.0.0:2312"]


def test_without_them_a_worker_takes_any_port_on_the_host_of_listen() -> None:
    config = proxy_config_from_dict({**GOOD_PROXY, "workers": 2})
    assert config.vote_listen == config.vote_advertise == ()
    assert vote_listen(config, 1) == "0.0.0.0:0"
    ipv6 = proxy_config_from_dict({**GOOD_PROXY, "workers": 2, "listen": "[::1]:2305"})
    assert vote_listen(ipv6, 0) == "[::1]:0"


def test_vote_listen_alone_is_enough() -> None:
    """The advertised address is then the host of ``advertise`` with each fixed port."""
    config = proxy_config_from_dict({**FIXED, "vote_advertise": None})
    assert config.vote_advertise == ()
    assert config.vote_listen == ("0.0.0.0:2311", "0.0.0.0:2312")


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        (
            {"vote_listen": ["0.0.0.0:2311"], "vote_advertise": None},
            "vote_listen",
            "1 addresses for 2 workers",
        ),
        ({"vote_advertise": ["a:1", "b:2", "c:3"]}, "vote_advertise", "3 addresses for 2 workers"),
        ({"workers": 1}, "vote_listen", "only with workers >= 2"),
        ({"vote_listen": None}, "vote_advertise", "needs vote_listen"),
        (
            {"vote_listen": ["0.0.0.0:2311", "127.0.0.1:2311"]},
            "vote_listen.1",
            "port 2311 is also vote_listen.0's",
        ),
        (
            {"vote_listen": ["0.0.0.0:2305", "0.0.0.0:2312"]},
            "vote_listen.0",
            "port 2305 is also listen's",
        ),
        (
            {"vote_listen": ["0.0.0.0:0", "0.0.0.0:2312"]},
            "vote_listen.0",
            "port 0 cannot be advertised",
        ),
        ({"vote_listen": ["0.0.0.0:2311", "nohost"]}, "vote_listen.1", "not a host:port address"),
        (
            {"vote_listen": ["tls://0.0.0.0:2311", "0.0.0.0:2312"]},
            "vote_listen.0",
            "unexpected scheme",
        ),
        ({"vote_advertise": ["ftp://a:1", "b:2"]}, "vote_advertise.0", "unexpected scheme"),
        ({"vote_advertise": ["a:1", 7]}, "vote_advertise.1", "expected a host:port string"),
        ({"vote_listen": "0.0.0.0:2311"}, "vote_listen", "expected a non-empty list"),
        ({"vote_listen": []}, "vote_listen", "expected a non-empty list"),
        (
            {
                "workers": "auto",
                "limits": {"mutator_concurrency": 0, "read_concurrency": 0, "max_queued": 0},
            },
            "vote_listen",
            'cannot be used with workers: "auto"',
        ),
        (
            {"vote_advertise": ["p:2311", "p:2311"]},
            "vote_advertise.1",
            "p:2311 is also vote_advertise.0",
        ),
        (
            {"vote_advertise": ["P:2311", "tcp://p:2311"]},
            "vote_advertise.1",
            "is also vote_advertise.0",
        ),
        ({"vote_advertise": ["p:0", "p:2312"]}, "vote_advertise.0", "a port other than 0"),
        (
            {"vote_advertise": ["tls://p:2311", "p:2312"]},
            "vote_advertise.0",
            "tls:// but the vote ports serve plaintext",
        ),
    ],
)
def test_bad_vote_addresses_are_refused(change: dict[str, Any], path: str, message: str) -> None:
    data = {**FIXED, **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ConfigError) as exc:
        proxy_config_from_dict(data)
    found = problems(exc)
    assert path in found, found
    assert message in found[path], found


def test_two_workers_on_one_port_are_refused_whatever_the_hosts() -> None:
    """Workers bind with SO_REUSEPORT: a port given twice would be shared, and the
    kernel would hand a node's vote to a worker that does not hold its transaction."""
    data = {**FIXED, "vote_listen": ["127.0.0.1:2311", "127.0.0.2:2311"]}
    with pytest.raises(ConfigError, match=r"vote_listen\.1: port 2311 is also"):
        proxy_config_from_dict(data)


def test_every_problem_is_reported_at_once() -> None:
    data = {**FIXED, "vote_listen": ["0.0.0.0:2305", "x"], "vote_advertise": ["a:1"]}
    with pytest.raises(ConfigError) as exc:
        proxy_config_from_dict(data)
    found = problems(exc)
    assert "vote_listen.1" in found and "not a host:port" in found["vote_listen.1"]
    # The list with a bad entry is dropped whole; the other list's count is still checked.
    assert "1 addresses for 2 workers" in found["vote_advertise"]


def test_a_bad_worker_count_is_reported_once() -> None:
    """Not a second, misleading problem about vote_listen."""
    with pytest.raises(ConfigError) as exc:
        proxy_config_from_dict({**FIXED, "workers": 0})
    found = problems(exc)
    assert "workers" in found and "vote_listen" not in found, found


def test_tcp_with_a_tls_listener_is_refused(tmp_path: Path) -> None:
    """The vote ports serve what the listener serves: a tcp:// entry would never answer."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    data = {**FIXED, "tls": {"cert_file": str(cert), "key_file": str(key)}}
    with pytest.raises(ConfigError) as exc:
        proxy_config_from_dict(data)
    found = problems(exc)
    assert "tcp:// but the vote ports serve TLS" in found["vote_advertise.1"], found
    assert "vote_advertise.0" not in found, found
