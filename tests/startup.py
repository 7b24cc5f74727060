"""Running one server process whose start-up fails late, and checking what it left behind."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.support import Stack, free_port


def sqlite_stack(tmp: Path) -> Stack:
    """Settings of a stack on SQLite in ``tmp`` (nothing is started)."""
    data_dir = tmp / "data"
    data_dir.mkdir(parents=True)
    url = f"sqlite+aiosqlite:///{data_dir / 'licensing.db'}"
    return Stack("sqlite", data_dir, url, free_port(), free_port(), free_port())


@contextlib.contextmanager
def port_taken(port: int) -> Iterator[socket.socket]:
    """Another process's listener on ``port`` (no SO_REUSEPORT, so nobody else can bind it)."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        yield blocker


def run_module(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module`` to its end; stdout and stderr together."""
    return subprocess.run(
        [sys.executable, "-m", module],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
        check=False,
    )


def assert_port_free(port: int) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


def assert_database_unlocked(path: Path) -> None:
    """An exclusive write lock on the SQLite file is granted at once (nobody holds it open)."""
    connection = sqlite3.connect(path, timeout=0)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        connection.rollback()
    finally:
        connection.close()


def assert_shut_down_cleanly(output: str) -> None:
    """Nothing was left for the interpreter to complain about at exit."""
    for complaint in (
        "Traceback",
        "Task was destroyed but it is pending",
        "Task exception was never retrieved",
        "Exception ignored",
        "was never awaited",
    ):
        assert complaint not in output, output
