"""``python -m licensing_enclave`` / ``licensing-enclave``: see ``_config`` for the contract."""

from __future__ import annotations

import asyncio
import ctypes
import resource
import sys
from collections.abc import Sequence

from licensing_common.logs import configure_logging
from licensing_enclave._app import run
from licensing_enclave._bootstrap import Enrolment, StartupError, StdioEnrolment
from licensing_enclave._config import parse_args
from licensing_enclave._enroll import NetworkEnrolment
from licensing_enclave._stdio import ProtocolOut

_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38


def harden() -> None:
    """Keep the enclave key in this process's memory only, before it is made.

    No core dumps (they would write the key to disk); not dumpable, so other
    processes of the same user can neither ptrace it nor read its ``/proc/<pid>/mem``;
    and no new privileges, so nothing it runs can gain any through set-uid programs.
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for option, value in ((_PR_SET_DUMPABLE, 0), (_PR_SET_NO_NEW_PRIVS, 1)):
        if libc.prctl(option, value, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 on SIGTERM/SIGINT or stdin EOF, 1 if startup fails, 2 on a bad command line.

    With ``--enroll`` (a pod) stdin and stdout are no protocol channel: stdout stays the
    container log, and stdin's EOF means nothing.
    """
    config = parse_args(argv)  # --help and usage errors are printed before stdout is taken
    enrolment: Enrolment
    if config.enrollment is None:
        enrolment = StdioEnrolment(ProtocolOut.take_stdout())
    else:
        enrolment = NetworkEnrolment(config.enrollment, config.ca_pem)
    try:
        harden()
    except OSError as exc:
        print(f"licensing-enclave: cannot protect the key's memory: {exc}", file=sys.stderr)
        return 1
    configure_logging(config.log_level, "enclave")
    try:
        return asyncio.run(run(config, enrolment))
    except StartupError as exc:
        print(f"licensing-enclave: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
