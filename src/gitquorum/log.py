"""JSON logging with a correlation id carried in a context variable."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import uuid
from collections.abc import Sequence

CORRELATION_METADATA_KEYS = ("x-gitquorum-correlation-id", "x-gitlab-correlation-id")
correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("correlation_id", default="")


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def correlation_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The caller's correlation id, or a fresh one so every log line has one."""
    for key, value in metadata or ():
        if key in CORRELATION_METADATA_KEYS and value:
            return value.decode() if isinstance(value, bytes) else value
    return new_correlation_id()


# One encoder for every line: ``json.dumps(entry, default=str)`` builds a new one per call.
_ENCODER = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        # The timestamp up to the second, made once per second rather than per line.
        self._second = -1
        self._stamp = ""

    def _time(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self._time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        cid = correlation_id.get()
        if cid:
            entry["correlation_id"] = cid
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # A JSON line shows none of the caller's file, line, thread or process: a
    # record need not look them up (a walk up the stack per line otherwise).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def get(name: str) -> logging.Logger:
    return logging.getLogger(name)


def fields(**kwargs: object) -> dict[str, object]:
    """``log.info("msg", extra=fields(a=1))`` puts a=1 into the JSON line."""
    return {"fields": kwargs}
