"""Drive the real ``licensing`` CLI as a subprocess against the test stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import PASSWORD, Stack

CLI_TIMEOUT = 120


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def ok(self) -> Result:
        assert self.returncode == 0, f"{self.args}: exit {self.returncode}\n{self.stderr}"
        assert "Traceback" not in self.stderr, self.stderr
        return self

    def json(self) -> Any:
        return json.loads(self.stdout)

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def error_line(self) -> str:
        """The CLI's one-sentence error, asserting nothing else went wrong."""
        assert self.returncode != 0, self.stdout
        assert "Traceback" not in self.stderr, self.stderr
        lines = [line for line in self.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, self.stderr
        return lines[0]


@dataclass
class Cli:
    """One user's CLI: a config directory and the stack's addresses."""

    stack: Stack
    config_dir: Path

    def run(
        self,
        *args: str,
        stdin: str | None = None,
        env: dict[str, str] | None = None,
        addresses: bool = True,
    ) -> Result:
        command = [
            sys.executable,
            "-m",
            "licensing_client.cli",
            "--config-dir",
            str(self.config_dir),
        ]
        if addresses:
            command += ["--server", self.stack.enroll_addr, "--api", self.stack.api_addr]
        command += list(args)
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("LICENSING_") or k == "LICENSING_TEST_POSTGRES_URL"
        }
        environ.update(env or {})
        proc = subprocess.run(
            command,
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            env=environ,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        return Result(command, proc.returncode, proc.stdout, proc.stderr)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        command = [
            sys.executable,
            "-m",
            "licensing_client.cli",
            "--config-dir",
            str(self.config_dir),
            "--server",
            self.stack.enroll_addr,
            "--api",
            self.stack.api_addr,
            *args,
        ]
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def session(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.config_dir / "session.json").read_text())
        return data

    def edit_session(self, **changes: str) -> None:
        data = self.session()
        data.update(changes)
        (self.config_dir / "session.json").write_text(json.dumps(data))

    def signup_and_login(self, name: str | None = None) -> str:
        username = name or f"cli-{uuid.uuid4().hex[:10]}"
        self.run("signup", username, "--password-stdin", stdin=PASSWORD + "\n").ok()
        self.run("login", username, env={"LICENSING_PASSWORD": PASSWORD}).ok()
        return username
