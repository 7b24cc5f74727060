"""The Go client (clients/go): gofmt and go vet clean, and its `go test` against a real stack.

The Go tests skip only when the LICENSING_GO_TEST_* variables are absent, so this test
passes them and requires that the story ran; a machine without Go fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Stack, start_stack

GO_MODULE = Path(__file__).resolve().parents[2] / "clients" / "go"


@pytest.fixture(scope="module")
def go_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One SQLite stack: the Go client exercises the API, not the database."""
    yield from start_stack("sqlite", tmp_path_factory.mktemp("go-client"), None)


def go_binary() -> str:
    go = shutil.which("go")
    if go is None:
        pytest.fail("go is not on PATH: scripts/setup.sh installs it (golang-go)")
    return go


def test_go_client_is_formatted_and_vetted() -> None:
    go = go_binary()
    gofmt = Path(go).resolve().parent / "gofmt"
    unformatted = subprocess.run(
        [str(gofmt), "-l", "."], cwd=GO_MODULE, capture_output=True, text=True, check=True
    ).stdout
    assert unformatted == "", f"gofmt -w these: {unformatted}"
    env = dict(os.environ, GOFLAGS="-mod=readonly")
    vet = subprocess.run(
        [go, "vet", "./..."], cwd=GO_MODULE, env=env, capture_output=True, text=True, check=False
    )
    assert vet.returncode == 0, vet.stdout + vet.stderr


def test_go_client_tells_the_whole_story_against_a_live_server(go_stack: Stack) -> None:
    go = go_binary()
    env = dict(
        os.environ,
        GOFLAGS="-mod=readonly",
        LICENSING_GO_TEST_ENROLL_ADDR=go_stack.enroll_addr,
        LICENSING_GO_TEST_API_ADDR=go_stack.api_addr,
        LICENSING_GO_TEST_CA_FILE=str(go_stack.ca_path),
    )
    result = subprocess.run(
        [go, "test", "-count=1", "-v", "./..."],
        cwd=GO_MODULE,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = result.stdout + result.stderr
    print(output)  # shown with -s, and by pytest on failure
    assert result.returncode == 0, output
    assert "--- PASS: TestStory" in output, output
    assert "PHASE_ATTESTED" in output, output
    # The shared vectors are committed: the verifier test must run, not skip.
    assert "--- PASS: TestSharedVectors" in output, output
