"""Process logging: one line per event on stderr, no secrets (tokens and keys are never logged)."""

from __future__ import annotations

import logging


class _DropBadHeaderTracebacks(logging.Filter):
    """grpc logs a full traceback for every header that is not UTF-8: anyone could flood us."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Invalid encoding" not in str(record.msg)


def configure_logging(level: str, process: str) -> None:
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("sqlalchemy", "alembic", "grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("grpc._cython.cygrpc").addFilter(_DropBadHeaderTracebacks())
