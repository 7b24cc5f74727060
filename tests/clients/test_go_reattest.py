"""The Go client's FollowAttestations against a stack that re-attests every 2 s."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.clients.test_go_client import GO_MODULE, go_binary
from tests.support import Stack, start_stack


@pytest.fixture(scope="module")
def reattesting_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from start_stack(
        "sqlite",
        tmp_path_factory.mktemp("go-reattest"),
        None,
        LICENSING_REATTEST_INTERVAL_SECONDS="2",
    )


def test_go_client_follows_verified_rounds(reattesting_stack: Stack) -> None:
    stack = reattesting_stack
    env = dict(
        os.environ,
        GOFLAGS="-mod=readonly",
        LICENSING_GO_TEST_ENROLL_ADDR=stack.enroll_addr,
        LICENSING_GO_TEST_API_ADDR=stack.api_addr,
        LICENSING_GO_TEST_CA_FILE=str(stack.ca_path),
        LICENSING_GO_TEST_REATTEST="1",
    )
    result = subprocess.run(
        [
            go_binary(),
            "test",
            "-count=1",
            "-v",
            "-run",
            "^TestFollowAttestations$",
            "./examples/story/",
        ],
        cwd=GO_MODULE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "--- PASS: TestFollowAttestations" in output, output
    assert "requested=true" in output, output
