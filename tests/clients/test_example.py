"""The Python example (clients/python/examples/whole_story.py) runs as a user would run it,
against a real stack, and tells the whole story: every step printed, exit status 0."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from tests.support import PASSWORD, REPO, Stack

EXAMPLE = REPO / "clients" / "python" / "examples" / "whole_story.py"


def test_the_whole_story_example_runs_against_a_real_stack(stack: Stack) -> None:
    username = f"example-{uuid.uuid4().hex[:10]}"
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--enroll",
            stack.enroll_addr,
            "--api",
            stack.api_addr,
            "--ca",
            str(stack.ca_path),
            "--username",
            username,
        ],
        env={**os.environ, "LICENSING_PASSWORD": PASSWORD},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"signed up {username}")
    assert lines[1].startswith("logged in")
    # Streamed progress, in order, up to the attested enclave.
    phases = [line.split("] ", 1)[1].split(":", 1)[0] for line in lines if line.startswith("  [")]
    assert phases[-3:] == ["READY", "ATTESTING", "ATTESTED"], phases
    assert any(line.startswith("created enclave ") for line in lines)
    assert "    measurement_proof: " in "\n".join(lines)
    assert "stored and read back secret 'db-password'" in lines
    assert any(line.startswith("signature verified against the attested") for line in lines)
    assert lines[-1].startswith("deleted enclave ")


def test_the_example_fails_clearly_when_the_name_is_taken(stack: Stack) -> None:
    name = stack.sign_up()  # the example signs up first: this name is already taken
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--enroll",
            stack.enroll_addr,
            "--api",
            stack.api_addr,
            "--ca",
            str(stack.ca_path),
            "--username",
            name,
            "--password",
            PASSWORD,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("failed: "), result.stderr
    assert "(USERNAME_TAKEN)" in result.stderr
