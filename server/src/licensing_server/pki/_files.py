"""Atomic file writes with the right permissions from the first byte."""

from __future__ import annotations

import os
from pathlib import Path


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_private_file(path: Path, data: bytes) -> None:
    """Keys: readable by the owner only (0600), never briefly world-readable."""
    _write(path, data, 0o600)


def write_public_file(path: Path, data: bytes) -> None:
    _write(path, data, 0o644)
