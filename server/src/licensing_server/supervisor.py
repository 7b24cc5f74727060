"""``licensing-server``: runs backend and frontend as two processes, for one-machine use.

They still talk over mTLS exactly as they do as two containers of one pod; the
supervisor only starts them in order, forwards signals (SIGHUP to the frontend: reload
the token signing keys) and stops both if one dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from licensing_server.config import Settings
from licensing_server.layout import DataLayout
from licensing_server.process import load_settings
from licensing_server.tasks import spawn


async def _port_open(address: str, wait_seconds: float) -> bool:
    host, _, port = address.rpartition(":")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while loop.time() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.close()
            await writer.wait_closed()
            return True
        await asyncio.sleep(0.1)
    return False


def _banner(settings: Settings) -> str:
    ca = DataLayout(settings.data_dir).ca_certificate
    enroll, api = settings.frontend_enroll_addr, settings.frontend_api_addr
    return f"""
licensing server is up.
  enrollment (TLS, no client certificate): {enroll}
  API (mutual TLS, certificate from Login): {api}
  CA certificate: {ca}

Try it with grpcurl:
  grpcurl -cacert {ca} {enroll} list
  grpcurl -cacert {ca} {enroll} grpc.health.v1.Health/Check
  grpcurl -cacert {ca} -d '{{"username":"alice","password":"correct horse battery"}}' \\
      {enroll} licensing.v1.AuthService/SignUp
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\
      -keyout alice.key -subj /CN=alice -out alice.csr
  grpcurl -cacert {ca} -d "$(jq -n --rawfile csr alice.csr \\
      '{{username:"alice",password:"correct horse battery",csr_pem:$csr}}')" \\
      {enroll} licensing.v1.AuthService/Login > login.json
  jq -r .client_certificate_pem login.json > alice.pem
  grpcurl -cacert {ca} -cert alice.pem -key alice.key \\
      -H "authorization: Bearer $(jq -r .access_token login.json)" \\
      {api} licensing.v1.AuthService/GetCurrentUser
  NONCE=$(head -c 32 /dev/urandom | base64 -w0)
  grpcurl -cacert {ca} -cert alice.pem -key alice.key \\
      -H "authorization: Bearer $(jq -r .access_token login.json)" \\
      -d "{{\\"request_id\\":\\"first\\",\\"nonce\\":\\"$NONCE\\"}}" \\
      {api} licensing.v1.EnclaveService/CreateEnclave

Or with the CLI: .venv/bin/licensing --ca-file {ca} signup bob; .venv/bin/licensing login bob;
  .venv/bin/licensing enclave create
"""


class _Child:
    """One supervised process; restarted when it dies unasked, like systemd's on-failure."""

    MAX_RESTARTS, WINDOW = 5, 60.0

    def __init__(self, name: str, module: str, run_dir: Path, *args: str, own_group: bool = False):
        self.name = name
        self._module = module
        self._args = args
        self._own_group = own_group
        self._pid_file = run_dir / f"{name}.pid"
        self._restarts: list[float] = []
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        # A process in its own group misses a Ctrl-C (SIGINT to the terminal's
        # group) and is stopped by ``stop`` instead, in the supervisor's order.
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self._module,
            *self._args,
            process_group=0 if self._own_group else None,
        )
        self._pid_file.write_text(f"{self.process.pid}\n")

    def may_restart(self, now: float) -> bool:
        self._restarts = [t for t in self._restarts if now - t < self.WINDOW]
        self._restarts.append(now)
        return len(self._restarts) <= self.MAX_RESTARTS

    def send_signal(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)

    async def stop(self) -> None:
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._pid_file.unlink(missing_ok=True)


async def run(settings: Settings) -> int:
    layout = DataLayout(settings.data_dir)
    run_dir = settings.data_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    backend = _Child("backend", "licensing_server.backend.app", run_dir)
    frontend = _Child("frontend", "licensing_server.frontend.app", run_dir)
    children = [backend, frontend]
    swtpm: _Child | None = None
    if not settings.tpm_tcti:
        # The embedded default TPM is a software TPM; production sets LICENSING_TPM_TCTI.
        # It stops last, after the backend sent TPM2_Shutdown, even on Ctrl-C: so it
        # runs in its own process group (and dies with us if we are killed).
        swtpm = _Child(
            "swtpm",
            "licensing_server.tpm",
            run_dir,
            "--state-dir",
            str(settings.swtpm_state_dir),
            "--port",
            str(settings.swtpm_port),
            "--die-with-parent",
            own_group=True,
        )
        children.insert(0, swtpm)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP: the frontend reads its token signing keys again (after a rotation).
    loop.add_signal_handler(signal.SIGHUP, frontend.send_signal, signal.SIGHUP)
    try:
        if swtpm is not None:
            await swtpm.start()
            if not await _port_open(f"127.0.0.1:{settings.swtpm_port}", 120):
                print("licensing-server: swtpm did not start", file=sys.stderr)
                return 1
        await backend.start()
        if not await _port_open(settings.backend_addr, 60):
            print("licensing-server: backend did not start", file=sys.stderr)
            return 1
        await frontend.start()
        if await _port_open(settings.frontend_api_addr, 120) and layout.ca_certificate.exists():
            print(_banner(settings), flush=True)
        stopper = spawn(stop.wait(), name="stop-signal")
        while True:
            exits = {
                spawn(child.process.wait(), name=f"wait-{child.name}"): child
                for child in children
                if child.process is not None
            }
            done, _ = await asyncio.wait([*exits, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in exits:
                task.cancel()
            if stopper in done:
                return 0
            for task in done:
                child = exits[task]
                print(
                    f"licensing-server: {child.name} exited with {task.result()}; restarting",
                    file=sys.stderr,
                    flush=True,
                )
                if not child.may_restart(loop.time()):
                    print(
                        f"licensing-server: {child.name} keeps failing; giving up", file=sys.stderr
                    )
                    return 1
                await asyncio.sleep(0.5)
                await child.start()
    finally:
        for child in reversed(children):
            await child.stop()


def main() -> None:
    settings = load_settings()
    raise SystemExit(asyncio.run(run(settings)))


if __name__ == "__main__":
    main()
