"""swtpm: a software TPM 2.0 for development and tests, with its own EK certificate chain.

``prepare`` manufactures the TPM the way a vendor would: swtpm_setup creates
the EKs and swtpm_localca signs their certificates with a CA that lives under
the state directory (never /var/lib/swtpm-localca or /etc), so each checkout
and each test session has its own "manufacturer". Run it in the foreground
with ``python -m licensing_server.tpm.swtpm --state-dir D --port P``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["SwtpmSimulator", "main"]

_ROOT_CA = "swtpm-localca-rootca-cert.pem"
_ISSUER_CA = "issuercert.pem"
_PREPARED = ".prepared"  # written last: a half-made state is redone, never used
_HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


class SwtpmSimulator:
    """A swtpm state directory, and the swtpm process serving it over TCP.

    Layout of ``state_dir``: ``tpm/`` (the TPM's NV: seeds, EK certificates,
    persistent keys, so an AK survives restarts), ``localca/`` (the
    manufacturer CA), the swtpm_setup / swtpm-localca configuration and logs.
    """

    def __init__(
        self,
        state_dir: Path | str,
        *,
        swtpm: str = "swtpm",
        swtpm_setup: str = "swtpm_setup",
        swtpm_localca: str = "swtpm_localca",
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self._swtpm = swtpm
        self._swtpm_setup = swtpm_setup
        self._swtpm_localca = swtpm_localca
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    @classmethod
    def prepare(cls, state_dir: Path | str, **tools: str) -> SwtpmSimulator:
        """A simulator whose TPM is manufactured in ``state_dir`` (once: later calls reuse it)."""
        simulator = cls(state_dir, **tools)
        simulator.manufacture()
        return simulator

    @property
    def tpm_dir(self) -> Path:
        return self.state_dir / "tpm"

    @property
    def ca_dir(self) -> Path:
        return self.state_dir / "localca"

    @property
    def prepared(self) -> bool:
        return (self.state_dir / _PREPARED).is_file()

    def manufacture(self) -> None:
        """Create the TPM state with EK and platform certificates, unless already done."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            if self.prepared:
                return
            setup = _tool(self._swtpm_setup)
            localca = _tool(self._swtpm_localca)
            swtpm = _tool(self._swtpm)
            self.ca_dir.mkdir(mode=0o700, exist_ok=True)
            shutil.rmtree(self.tpm_dir, ignore_errors=True)
            self.tpm_dir.mkdir(mode=0o700)
            config = self._write_configuration(localca)
            log = self.state_dir / "swtpm_setup.log"
            result = subprocess.run(
                [
                    setup,
                    "--tpm2",
                    "--tpmstate",
                    str(self.tpm_dir),
                    "--tpm",
                    f"{swtpm} socket",
                    "--create-ek-cert",
                    "--create-platform-cert",
                    "--pcr-banks",
                    "sha256",
                    "--config",
                    str(config),
                    "--logfile",
                    str(log),
                    "--overwrite",
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"swtpm_setup failed (exit {result.returncode}); see {log}: "
                    + _tail(result.stderr + result.stdout)
                )
            for needed in (self.ca_dir / _ROOT_CA, self.ca_dir / _ISSUER_CA):
                if not needed.is_file():
                    raise RuntimeError(f"swtpm_setup did not produce {needed}")
            (self.state_dir / _PREPARED).write_text("swtpm_setup completed\n")

    def manufacturer_ca_pem(self) -> str:
        """The local CA's root and issuer certificates (PEM), which verify the EK certificate."""
        return "".join(
            (self.ca_dir / name).read_text(encoding="ascii") for name in (_ROOT_CA, _ISSUER_CA)
        )

    def _write_configuration(self, localca: str) -> Path:
        """swtpm_setup.conf and swtpm-localca.{conf,options}, all pointing inside state_dir."""
        ca = self.ca_dir
        localca_conf = self.state_dir / "swtpm-localca.conf"
        localca_conf.write_text(
            f"statedir = {ca}\n"
            f"signingkey = {ca / 'signkey.pem'}\n"
            f"issuercert = {ca / _ISSUER_CA}\n"
            f"certserial = {ca / 'certserial'}\n"
        )
        options = self.state_dir / "swtpm-localca.options"
        options.write_text(
            "--platform-manufacturer licensing\n--platform-version 2.1\n--platform-model swtpm\n"
        )
        setup_conf = self.state_dir / "swtpm_setup.conf"
        setup_conf.write_text(
            f"create_certs_tool = {localca}\n"
            f"create_certs_tool_config = {localca_conf}\n"
            f"create_certs_tool_options = {options}\n"
            "active_pcr_banks = sha256\n"
        )
        return setup_conf

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise manufacture between processes sharing a state directory."""
        with (self.state_dir / ".lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- the swtpm process -------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("swtpm has not been started")
        return self._port

    @property
    def tcti(self) -> str:
        """The TCTI string for ``TpmDevice``."""
        return f"swtpm:host={_HOST},port={self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The swtpm process id while it runs (tests pause it to simulate a hung TPM)."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def start(self, port: int, *, ready_timeout: float = 10.0) -> None:
        """Serve the TPM on ``port`` (commands) and ``port + 1`` (control), on loopback.

        ``startup-clear`` makes each start a TPM reset: PCRs are zero and the
        reset count goes up, as after a reboot.
        """
        if not self.prepared:
            raise RuntimeError(f"{self.state_dir} is not prepared: call prepare() first")
        if self.running:
            raise RuntimeError("swtpm is already running")
        log = (self.state_dir / "swtpm.log").open("ab")
        try:
            process = subprocess.Popen(
                self.command(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self._process, self._port = process, port
        deadline = time.monotonic() + ready_timeout
        while not _accepts(port):
            if process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"swtpm did not start on port {port}; see {self.state_dir / 'swtpm.log'}"
                )
            time.sleep(0.02)

    def command(self, port: int) -> list[str]:
        """The swtpm command line serving this state on ``port`` and ``port + 1``."""
        return [
            _tool(self._swtpm),
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={self.tpm_dir}",
            "--server",
            f"type=tcp,port={port},bindaddr={_HOST}",
            "--ctrl",
            f"type=tcp,port={port + 1},bindaddr={_HOST}",
            "--flags",
            "not-need-init,startup-clear",
        ]

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate swtpm (SIGTERM, then SIGKILL after ``timeout``)."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL swtpm, as a crash would; NV written so far survives."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        self._process = None

    def __enter__(self) -> SwtpmSimulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (Debian: apt-get install swtpm swtpm-tools)")
    return path


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def _tail(output: bytes, lines: int = 5) -> str:
    return " | ".join(output.decode(errors="replace").strip().splitlines()[-lines:])


def _die_with_parent() -> None:
    """SIGKILL when the parent dies (survives exec): a supervisor killed with -9 takes swtpm too.

    The supervisor runs swtpm in a process group of its own, so a signal to its
    group no longer reaches swtpm.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the prctl
        raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> int:
    """Prepare the state, then become swtpm (exec): signals and pids reach the TPM itself."""
    parser = argparse.ArgumentParser(
        prog="python -m licensing_server.tpm", description=main.__doc__
    )
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=2321, help="command port; control is +1")
    parser.add_argument(
        "--die-with-parent", action="store_true", help="get SIGKILL when the parent process dies"
    )
    args = parser.parse_args(argv)
    if args.die_with_parent:
        _die_with_parent()
    simulator = SwtpmSimulator.prepare(args.state_dir)
    command = simulator.command(args.port)
    print(f"swtpm serving swtpm:host={_HOST},port={args.port}", flush=True)
    os.execv(command[0], command)  # noqa: S606 - a fixed argv, no shell
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
