"""SwtpmSimulator: private CA, idempotent preparation, and the foreground entry point."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from licensing_server.tpm import SwtpmSimulator, TpmDevice
from tests.support import free_port_pair


def test_prepare_keeps_everything_under_the_state_dir(swtpm: SwtpmSimulator) -> None:
    assert (swtpm.ca_dir / "swtpm-localca-rootca-cert.pem").is_file()
    assert (swtpm.tpm_dir / "tpm2-00.permall").is_file()
    for config in ("swtpm_setup.conf", "swtpm-localca.conf"):
        text = (swtpm.state_dir / config).read_text()
        assert "/var/lib" not in text
        assert "/etc" not in text


def test_prepare_is_idempotent(swtpm: SwtpmSimulator) -> None:
    ca_before = swtpm.manufacturer_ca_pem()
    state = swtpm.tpm_dir / "tpm2-00.permall"
    mtime_before = state.stat().st_mtime_ns
    again = SwtpmSimulator.prepare(swtpm.state_dir)
    assert again.manufacturer_ca_pem() == ca_before
    assert state.stat().st_mtime_ns == mtime_before


def test_module_becomes_swtpm_in_the_foreground_until_sigterm(tmp_path: Path) -> None:
    port = free_port_pair()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "licensing_server.tpm",
            "--state-dir",
            str(tmp_path),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert f"swtpm:host=127.0.0.1,port={port}" in line, process.stderr
        # The module becomes swtpm (exec), which then opens its port.
        deadline = time.monotonic() + 10
        while not _answers(port):
            assert time.monotonic() < deadline, "swtpm did not open its port"
            time.sleep(0.05)
        assert len(asyncio.run(_ek_certificate(f"swtpm:host=127.0.0.1,port={port}"))) > 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # swtpm went with it: its port no longer answers.
    deadline = time.monotonic() + 5
    while _answers(port):
        assert time.monotonic() < deadline, "swtpm still serving after SIGTERM"
        time.sleep(0.1)


async def _ek_certificate(tcti: str) -> bytes:
    async with TpmDevice(tcti) as device:
        return await device.ek_certificate_der()


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
    except OSError:
        return False
    return True
