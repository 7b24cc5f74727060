"""How the local runtime starts an enclave process: ``exec`` or the ``fork-server``.

Both give ``LocalWorkload`` the same thing, a process whose stdin, stdout and stderr
are pipes to the backend (``EnclaveProcess``), so the handshake is driven one way.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

__all__ = ["DEFAULT_COMMAND", "LINE_LIMIT", "EnclaveLauncher", "EnclaveProcess", "ExecLauncher"]

#: The built-in enclave program, in this interpreter.
DEFAULT_COMMAND = (sys.executable, "-m", "licensing_enclave")
#: The longest protocol line an enclave may write (a certificate chain fits easily).
LINE_LIMIT = 1024 * 1024


class EnclaveProcess(Protocol):
    """What ``LocalWorkload`` uses of a process: ``asyncio.subprocess.Process`` has it."""

    pid: int

    @property
    def returncode(self) -> int | None: ...

    @property
    def stdin(self) -> asyncio.StreamWriter | None: ...

    @property
    def stdout(self) -> asyncio.StreamReader | None: ...

    @property
    def stderr(self) -> asyncio.StreamReader | None: ...

    async def wait(self) -> int: ...


class EnclaveLauncher(Protocol):
    """Starts enclave processes for the local runtime.

    The runtime calls ``start`` once before the first ``spawn`` and ``close`` once at
    shutdown (also after a failed start-up: ``close`` must work whatever ``start``
    did). Each child gets its own session (process group), pipes on its stdin,
    stdout and stderr, and exits when its stdin closes; the runtime, not the
    launcher, stops children.
    """

    async def start(self) -> None:
        """Get ready to spawn (start helper processes); raises ``RuntimeFailure``."""
        ...

    async def spawn(
        self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str]
    ) -> EnclaveProcess:
        """Start one enclave with ``argv`` (its arguments, not the program) in ``cwd``.

        Raises ``OSError`` when the program cannot be run and ``RuntimeFailure``
        when a helper refuses or is gone; nothing is left running either way.
        """
        ...

    async def close(self) -> None:
        """Stop what ``start`` started; idempotent. Children keep running."""
        ...


class ExecLauncher:
    """A fresh interpreter per enclave: the only way to run a custom enclave command."""

    def __init__(self, command: Sequence[str] = DEFAULT_COMMAND, *, line_limit: int = LINE_LIMIT):
        self._command = tuple(command)
        self._line_limit = line_limit

    async def start(self) -> None:
        """Nothing to start: each spawn is an exec."""

    async def spawn(
        self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str]
    ) -> EnclaveProcess:
        return await asyncio.create_subprocess_exec(
            *self._command,
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            limit=self._line_limit,
        )

    async def close(self) -> None:
        """Nothing to stop."""
