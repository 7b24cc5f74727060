"""Settings from the command line and environment, and what every command builds from them."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from licensing_client import LicensingClient
from licensing_client.cli._errors import CliError
from licensing_client.cli._output import Mode, Output
from licensing_client.cli._session import CALL_TIMEOUT, Connection
from licensing_client.cli._store import (
    CredentialStore,
    FileSessionStore,
    SessionRecord,
    default_config_dir,
)
from licensing_client.cli._trust import ensure_trust

DEFAULT_SERVER = "127.0.0.1:8443"
DEFAULT_API = "127.0.0.1:9443"


def address(text: str) -> str:
    """argparse type for HOST:PORT."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


@dataclass(frozen=True, slots=True)
class Settings:
    """Global flags; an address left out comes from the stored session, then the default."""

    server: str | None
    api: str | None
    ca_file: Path | None
    config_dir: Path
    output: Mode

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
        return cls(
            server=args.server,
            api=args.api,
            ca_file=args.ca_file,
            config_dir=args.config_dir or default_config_dir(environ),
            output=args.output,
        )


class Context:
    """What a command needs: settings, the store, the output, the environment."""

    def __init__(
        self,
        settings: Settings,
        output: Output,
        *,
        environ: Mapping[str, str],
        stdin: TextIO,
    ) -> None:
        self.settings = settings
        self.output = output
        self.environ = environ
        self.stdin = stdin
        self.store = CredentialStore(settings.config_dir)

    def server(self, record: SessionRecord | None = None) -> str:
        return self.settings.server or (record.server if record else None) or DEFAULT_SERVER

    def api(self, record: SessionRecord | None = None) -> str:
        return self.settings.api or (record.api if record else None) or DEFAULT_API

    @asynccontextmanager
    async def connect(
        self, record: SessionRecord | None = None, *, api: str | None = None
    ) -> AsyncIterator[Connection]:
        """A client verifying the server against the pinned CA (pinned first).

        Its session lives in the config directory under the addresses of ``record``
        (or the current ones when there is none, as at login).
        """
        self.store.prepare()
        server = self.server(record)
        ca_path = await ensure_trust(
            self.store, self.output, server=server, ca_file=self.settings.ca_file
        )
        store = FileSessionStore(
            self.store,
            server=record.server if record else server,
            api=record.api if record else self.api(),
        )
        try:
            ca_pem = ca_path.read_bytes()
            client = LicensingClient(
                server,
                api or self.api(record),
                ca_pem=ca_pem,
                store=store,
                rpc_timeout=CALL_TIMEOUT,
            )
        except (OSError, ValueError) as exc:
            raise CliError(
                f"the pinned CA {ca_path} cannot be read ({exc}); pass --ca-file"
            ) from exc
        async with client:
            yield Connection(client, store, ca_path)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Connection]:
        """The stored session; ``CliError`` if there is none."""
        record = self.store.load_session()
        if record is None:
            raise CliError(
                f"not logged in (no session in {self.store.root}); "
                "run `licensing login USERNAME` first"
            )
        for path in (self.store.key_path, self.store.cert_path):
            if not path.exists():
                raise CliError(f"the session is incomplete ({path} is missing); log in again")
        async with self.connect(record) as connection:
            yield connection
