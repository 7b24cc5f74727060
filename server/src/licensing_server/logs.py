"""Process logging: one line per event on stderr, no secrets (tokens and keys are never logged)."""

from __future__ import annotations

import logging


def configure_logging(level: str, process: str) -> None:
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("sqlalchemy", "alembic", "grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
