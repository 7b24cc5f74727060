"""Fixtures shared by the client tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import Stack, start_stack

#: Access tokens of ``short_lived_stack`` live this long (seconds).
SHORT_TTL = 30


@pytest.fixture(scope="session")
def short_lived_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second stack whose access tokens live 30 s, so one can really expire.

    Shared by the CLI's and the Python API's refresh tests (one stack start, not two).
    """
    stacks = start_stack("sqlite", tmp_path_factory.mktemp("short-ttl"), None)
    with pytest.MonkeyPatch.context() as patch:  # the server reads it at start only
        patch.setenv("LICENSING_ACCESS_TOKEN_TTL_SECONDS", str(SHORT_TTL))
        stack = next(stacks)
    try:
        yield stack
    finally:
        for _ in stacks:  # runs start_stack's clean-up
            pass
