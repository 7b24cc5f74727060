"""Session fixtures: real servers started once per database backend."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Stack, grpcurl_path, start_stack


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The licensing server (backend + frontend) on SQLite, then on PostgreSQL."""
    tmp: Path = tmp_path_factory.mktemp(f"stack-{request.param}")
    yield from start_stack(request.param, tmp, os.environ.get("LICENSING_TEST_POSTGRES_URL"))


@pytest.fixture(scope="session")
def grpcurl() -> str:
    return grpcurl_path()
