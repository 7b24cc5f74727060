"""Running the real grpcurl binary against a stack."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any


@dataclass
class GrpcurlResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_grpcurl(binary: str, *args: str, data: str | None = None) -> GrpcurlResult:
    argv = [binary, "-max-time", "20"]
    if data is not None:
        argv += ["-d", "@"]
    proc = subprocess.run(
        [*argv, *args], input=data, capture_output=True, text=True, timeout=60, check=False
    )
    return GrpcurlResult(proc.returncode, proc.stdout, proc.stderr)
