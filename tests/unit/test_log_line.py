"""The per-RPC log line written directly (``log.emit``) is the line ``logging`` writes."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from gitquorum import log


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    log.setup("info")
    yield buffer
    root.handlers[:], root.level = saved
    log._handler = log._formatter = None


def test_emit_writes_the_line_logging_would(stderr: io.StringIO) -> None:
    logger = log.get("gitquorum.rpc")
    fields = {"method": "/gitaly.CommitService/FindCommit", "code": "OK", "duration_ms": 1.5}
    token = log.correlation_id.set("abc123")
    try:
        logger.log(logging.INFO, "rpc finished", extra={"fields": fields})
        log.emit(logger, logging.INFO, "rpc finished", fields)
        log.emit(logger, logging.DEBUG, "not shown at info", fields)
    finally:
        log.correlation_id.reset(token)
    through_logging, direct = (json.loads(line) for line in stderr.getvalue().splitlines())
    assert list(direct) == list(through_logging)  # same keys, same order
    del direct["time"], through_logging["time"]
    assert direct == through_logging
    assert direct["correlation_id"] == "abc123" and direct["level"] == "info"


def test_emit_goes_through_logging_when_another_handler_is_installed(
    stderr: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        log.emit(log.get("gitquorum.rpc"), logging.WARNING, "rpc failed", {"code": "INTERNAL"})
    assert [r.getMessage() for r in caplog.records] == ["rpc failed"]


@pytest.mark.parametrize(
    ("offered", "kept"),
    [
        ("01HX4Z7Q.req-1_a", True),
        (b"abc123", True),
        ("x" * 128, True),
        ("x" * 129, False),  # it goes into etcd (jobs, intents) and every line
        ("with space", False),
        ("new\nline", False),
        ("ünïcode", False),
    ],
)
def test_a_callers_correlation_id_is_kept_only_when_short_and_plain(
    offered: str | bytes, kept: bool
) -> None:
    found = log.correlation_from_metadata([("x-gitquorum-correlation-id", offered)])
    text = offered.decode() if isinstance(offered, bytes) else offered
    assert (found == text) is kept
    assert log.valid_correlation_id(found)  # a fresh one otherwise
