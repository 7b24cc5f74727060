"""Process logging: one line per event on stderr, no secrets (tokens and keys are never logged).

Two formats: ``text`` for people at a terminal, ``json`` (one object per line) for log
collectors. Either carries the correlation id of the RPC being served, when there is one
(``set_correlation_id``), so every line a call causes can be found from the id its client
sent or was given back.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "configure_logging",
    "current_correlation_id",
    "set_correlation_id",
]

LOG_FORMATS = ("text", "json")

_correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("correlation_id", default="")


def current_correlation_id() -> str:
    """The correlation id of the RPC this code runs for ("" outside one)."""
    return _correlation_id.get()


def set_correlation_id(correlation_id: str) -> None:
    """From now on in this task (and in tasks it starts), log lines carry ``correlation_id``.

    The RPC interceptor calls it once per call; grpc runs each call in a task of its own.
    """
    _correlation_id.set(correlation_id)


class _DropBadHeaderTracebacks(logging.Filter):
    """grpc logs a full traceback for every header that is not UTF-8: anyone could flood us."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Invalid encoding" not in str(record.msg)


class _WithCorrelationId(logging.Filter):
    """Puts the current correlation id on every record (``%(correlation_id)s``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "correlation_id"):
            record.correlation_id = _correlation_id.get()
        return True


class _TextFormatter(logging.Formatter):
    def __init__(self, process: str):
        super().__init__(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        correlation_id = getattr(record, "correlation_id", "")
        if not correlation_id:
            return line
        head, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{head} [correlation_id={correlation_id}]{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, RFC 3339), level, logger, message, process,
    and ``correlation_id`` and ``exception`` when there is one."""

    def __init__(self, process: str):
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": self._process,
        }
        correlation_id = getattr(record, "correlation_id", "")
        if correlation_id:
            entry["correlation_id"] = correlation_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, process: str, log_format: str = "text") -> None:
    """Log at ``level`` to stderr as ``process`` (``frontend``, ``backend``, ...).

    ``log_format`` is ``text`` or ``json`` (``LOG_FORMATS``).
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler()
    handler.addFilter(_WithCorrelationId())
    handler.setFormatter(
        JsonFormatter(process) if log_format == "json" else _TextFormatter(process)
    )
    logging.basicConfig(level=level, handlers=[handler])
    for noisy in ("sqlalchemy", "alembic", "grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("grpc._cython.cygrpc").addFilter(_DropBadHeaderTracebacks())
