"""A backend whose start-up fails late closes what it had opened, and says why.

Its listen address is taken by another socket: by then the database, the TPM (the
attestation key is being proven) and the enclave fork server are open.
"""

from __future__ import annotations

import re
from pathlib import Path

from licensing_server.runtimes import start_time
from licensing_server.tpm import SwtpmSimulator
from tests.startup import (
    assert_database_unlocked,
    assert_port_free,
    assert_shut_down_cleanly,
    port_taken,
    run_module,
    sqlite_stack,
)
from tests.tpm.da import lockout_counter, use_da_protected_key


def test_a_backend_that_cannot_listen_exits_and_leaves_nothing_open(tmp_path: Path) -> None:
    stack = sqlite_stack(tmp_path)
    # The embedded swtpm, run here as the supervisor would run it.
    swtpm = SwtpmSimulator.prepare(stack.data_dir / "tpm")
    swtpm.start(stack.swtpm_port)
    try:
        # After a DA-protected use, a stop of swtpm counts against the lockout
        # unless the backend sent TPM2_Shutdown first.
        use_da_protected_key(swtpm.tcti)
        with port_taken(stack.backend_port):
            done = run_module("licensing_server.backend.app", stack.env())
        output = done.stdout
        assert done.returncode == 1, output
        assert output.rstrip().splitlines()[-1] == (
            f"licensing-backend: cannot listen on {stack.backend_addr} "
            "(is another process listening there?)"
        ), output
        assert_shut_down_cleanly(output)

        started = re.search(r"enclave fork server started \(pid (\d+)\)", output)
        assert started, output
        assert start_time(int(started[1])) is None, "the fork server outlived the backend"
        assert "TPM shut down in order" in output, output
        assert "not shut down in order" not in output, output
        assert_database_unlocked(stack.data_dir / "licensing.db")
        assert_port_free(stack.backend_port)

        port = swtpm.port
        swtpm.stop()
        swtpm.start(port)
        assert lockout_counter(swtpm.tcti) == 0
    finally:
        swtpm.stop()
