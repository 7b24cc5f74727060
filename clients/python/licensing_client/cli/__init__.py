"""``licensing``: the command line client, a thin layer over ``LicensingClient``.

Modules, one concern each: ``_store`` (the config directory, the on-disk session
store with its lock), ``_trust`` (pinning the licensing CA), ``_session`` (one
command's client and the peers its errors name), ``_output`` (text, JSON lines, the
live progress bar), ``_errors`` (failures as sentences, one ``explain``), the
commands: ``_auth_commands``, ``_progress_commands`` (create, watch),
``_attest_commands`` (attest, the verification report), ``_workload_commands``
(call), ``_enclave_commands`` (list, get, delete); ``_parser`` (the grammar),
``_context`` (settings).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

from licensing_client.cli._context import Context, Settings
from licensing_client.cli._errors import EXIT_FAILED, CliError
from licensing_client.cli._output import Output
from licensing_client.cli._parser import build_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 failed, 2 usage)."""
    args = build_parser().parse_args(argv)  # exits 2 on a usage error
    settings = Settings.from_args(args, os.environ)
    output = Output(settings.output)
    context = Context(settings, output, environ=os.environ, stdin=sys.stdin)
    try:
        code: int = asyncio.run(args.handler(context, args))
    except CliError as exc:
        output.notice(f"error: {exc.sentence}")
        return exc.exit_code
    except KeyboardInterrupt:
        output.notice("error: interrupted")
        return 130
    except Exception as exc:
        if os.environ.get("LICENSING_DEBUG"):
            raise
        output.notice(
            f"error: unexpected failure ({type(exc).__name__}: {exc}); "
            "set LICENSING_DEBUG=1 to see where"
        )
        return EXIT_FAILED
    return code
