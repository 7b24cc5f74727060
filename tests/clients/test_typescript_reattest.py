"""The TypeScript client's followAttestations against a stack that re-attests every 2 s."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator

import pytest

from tests.clients.test_typescript_client import CLIENT, built_client  # noqa: F401 - fixture
from tests.support import PASSWORD, Stack, start_stack


@pytest.fixture(scope="module")
def reattesting_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from start_stack(
        "sqlite",
        tmp_path_factory.mktemp("ts-reattest"),
        None,
        LICENSING_REATTEST_INTERVAL_SECONDS="2",
    )


def test_typescript_client_follows_verified_rounds(
    reattesting_stack: Stack,
    built_client: None,  # noqa: F811
) -> None:
    stack = reattesting_stack
    result = subprocess.run(
        ["node", "--test", "--test-reporter=tap", "dist/test/reattest.test.js"],
        cwd=CLIENT,
        env={
            **os.environ,
            "LICENSING_ENROLL_ADDR": stack.enroll_addr,
            "LICENSING_API_ADDR": stack.api_addr,
            "LICENSING_CA_FILE": str(stack.ca_path),
            "LICENSING_PASSWORD": PASSWORD,
            "LICENSING_REATTEST": "1",
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"^# pass 1$", output, re.M), output
    assert "# SKIP" not in output, output
