"""The TypeScript client (clients/typescript) passes its own node:test suite against a real stack.

The Node tests tell the example's whole story (sign up to a verified enclave signature),
refuse an endpoint with another certificate of the same CA before any token is sent, and
run the shared attestation vectors. They skip only without a server, so this test fails
when they were skipped, and when Node.js is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.support import PASSWORD, REPO, Stack

CLIENT = REPO / "clients" / "typescript"
VECTORS = REPO / "clients" / "testdata" / "attestation-vectors.json"


@pytest.fixture(scope="module")
def built_client() -> None:
    """npm ci (only when the lockfile changed) and tsc, as scripts/setup.sh does."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("the TypeScript client needs Node.js (node and npm): run scripts/setup.sh")
    subprocess.run([str(REPO / "scripts" / "tools" / "node-client.sh")], check=True, timeout=600)


def test_the_typescript_client_tells_the_whole_story(stack: Stack, built_client: None) -> None:
    result = subprocess.run(
        ["node", "--test", "--test-reporter=tap", "dist/test/"],
        cwd=CLIENT,
        env={
            **os.environ,
            "LICENSING_ENROLL_ADDR": stack.enroll_addr,
            "LICENSING_API_ADDR": stack.api_addr,
            "LICENSING_CA_FILE": str(stack.ca_path),
            "LICENSING_PASSWORD": PASSWORD,
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    counts = {k: int(v) for k, v in re.findall(r"^# (pass|fail|skipped) (\d+)$", output, re.M)}
    assert counts.get("fail") == 0, output
    assert counts.get("pass", 0) >= 5, output
    assert "# SKIP no live server" not in output, output
    if VECTORS.exists():  # the shared vectors (vectors-compat) ran, each with the Python verdict
        assert "# SKIP no vectors" not in output, output
    for story in ("sign up, log in, create with streamed progress", "an endpoint presenting"):
        assert re.search(rf"^\s*ok \d+ - {story}", output, re.M), output
