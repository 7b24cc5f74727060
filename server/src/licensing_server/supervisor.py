"""``licensing-server``: runs backend and frontend as two processes, for one-machine use.

They still talk over mTLS exactly as they do as two containers of one pod; the
supervisor only starts them in order, forwards signals and stops both if one dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys

from licensing_server.config import ConfigError, Settings
from licensing_server.layout import DataLayout


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
"""


async def run(settings: Settings) -> int:
    python = sys.executable
    layout = DataLayout(settings.data_dir)
    backend = await asyncio.create_subprocess_exec(python, "-m", "licensing_server.backend.app")
    children = [backend]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if not await _port_open(settings.backend_addr, 60) or backend.returncode is not None:
            print("licensing-server: backend did not start", file=sys.stderr)
            return 1
        frontend = await asyncio.create_subprocess_exec(
            python, "-m", "licensing_server.frontend.app"
        )
        children.append(frontend)
        up = await _port_open(settings.frontend_api_addr, 120)
        if up and frontend.returncode is None and layout.ca_certificate.exists():
            print(_banner(settings), flush=True)
        waits = [asyncio.create_task(c.wait()) for c in children]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*waits, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        return 0 if stopper in done else 1
    finally:
        for child in reversed(children):
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                await asyncio.wait_for(child.wait(), 10)
            except TimeoutError:
                child.kill()


def main() -> None:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from exc
    socket.setdefaulttimeout(None)
    raise SystemExit(asyncio.run(run(settings)))


if __name__ == "__main__":
    main()
