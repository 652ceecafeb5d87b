"""JSON logging with a correlation id carried in a context variable."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import TextIO

CORRELATION_METADATA_KEYS = ("x-gitquorum-correlation-id", "x-gitlab-correlation-id")
correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("correlation_id", default="")


def new_correlation_id() -> str:
    # 128 random bits as 32 hex digits, like ``uuid4().hex`` without building a UUID.
    return os.urandom(16).hex()


# What a caller's correlation id may be: it goes into every log line, into
# replication jobs and write intents in etcd, and into clients' error messages.
CORRELATION_ID = re.compile(r"[A-Za-z0-9._-]{1,128}\Z")


def valid_correlation_id(value: str) -> bool:
    return CORRELATION_ID.match(value) is not None


def correlation_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The caller's correlation id, or a fresh one so every log line has one
    (also instead of one that is too long or has other characters than
    letters, digits and ``._-``)."""
    for key, value in metadata or ():
        if key in CORRELATION_METADATA_KEYS and value:
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            return text if valid_correlation_id(text) else new_correlation_id()
    return new_correlation_id()


# One encoder for every line: ``json.dumps(entry, default=str)`` builds a new one per call.
# A line's fields are flat values, never a cycle: no id bookkeeping per value.
_ENCODER = json.JSONEncoder(default=str, check_circular=False)


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        # The timestamp up to the second, made once per second rather than per line.
        self._second = -1
        self._stamp = ""

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        # As LogRecord.msecs: the milliseconds of ``created``, truncated.
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"

    def line(
        self, created: float, level: str, name: str, msg: str, extra: object, error: str = ""
    ) -> str:
        entry: dict[str, object] = {
            "time": self._time(created),
            "level": level,
            "logger": name,
            "msg": msg,
        }
        cid = correlation_id.get()
        if cid:
            entry["correlation_id"] = cid
        if isinstance(extra, dict):
            entry.update(extra)
        if error:
            entry["error"] = error
        return _ENCODER.encode(entry)

    def format(self, record: logging.LogRecord) -> str:
        error = self.formatException(record.exc_info) if record.exc_info else ""
        return self.line(
            record.created,
            record.levelname.lower(),
            record.name,
            record.getMessage(),
            getattr(record, "fields", None),
            error,
        )


# The handler ``setup`` installed: while it is the root's only one, ``emit``
# writes a line without building a LogRecord.
_handler: logging.StreamHandler[TextIO] | None = None
_formatter: JsonFormatter | None = None
_LEVELS = {
    level: logging.getLevelName(level).lower()
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
}


def emit(logger: logging.Logger, level: int, msg: str, fields: dict[str, object]) -> None:
    """``logger.log(level, msg, extra={"fields": fields})``, the same line, cheaper.

    On a path every call takes (the proxy's per-RPC line): when the process's
    logging is ``setup``'s alone (one JSON handler on the root, none on the
    way), the line is formatted and written directly; otherwise, as in tests
    that capture records, it goes through ``logging`` as usual.
    """
    handler, formatter = _handler, _formatter
    root = logging.root
    if (
        handler is None
        or formatter is None
        or logger.handlers
        or not logger.propagate
        or len(root.handlers) != 1
        or root.handlers[0] is not handler
        or level not in _LEVELS
        or level < handler.level
    ):
        logger.log(level, msg, extra={"fields": fields})
        return
    line = formatter.line(time.time(), _LEVELS[level], logger.name, msg, fields)
    with handler.lock or contextlib.nullcontext():
        handler.stream.write(line + "\n")
        handler.flush()


def setup(level: str = "info") -> None:
    global _handler, _formatter
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _handler, _formatter = handler, formatter
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
