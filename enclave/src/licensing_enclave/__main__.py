"""``python -m licensing_enclave`` / ``licensing-enclave``: see ``_config`` for the contract."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
from collections.abc import Sequence

from licensing_enclave._app import run
from licensing_enclave._bootstrap import StartupError
from licensing_enclave._config import parse_args
from licensing_enclave._stdio import ProtocolOut
from licensing_server.logs import configure_logging


def _no_core_dumps() -> None:
    """A core dump would write the enclave key to disk; the key must only ever be in memory."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 on SIGTERM/SIGINT or stdin EOF, 1 if startup fails, 2 on a bad command line."""
    config = parse_args(argv)  # --help and usage errors are printed before stdout is taken
    out = ProtocolOut.take_stdout()
    _no_core_dumps()
    configure_logging(config.log_level, "enclave")
    try:
        return asyncio.run(run(config, out))
    except StartupError as exc:
        print(f"licensing-enclave: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
