"""One command's ``LicensingClient``, with the CLI's wording for where a failure happened.

The client does the work (sessions that refresh themselves, serialised between
processes by the store's lock, attestation, pinning); this names the peers and the
pinned CA in error sentences (``explain``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from licensing_client import LicensingClient
from licensing_client._errors import paced, retry_delay
from licensing_client.cli._errors import explain
from licensing_client.cli._store import FileSessionStore

__all__ = ["Connection", "paced", "retry_delay"]

CALL_TIMEOUT = 30.0


@dataclass
class Connection:
    """The client of one command, the addresses it talks to, and the pinned CA's file."""

    client: LicensingClient
    store: FileSessionStore
    ca_path: Path

    @property
    def server(self) -> str:
        return self.client.enroll_addr

    @property
    def server_peer(self) -> str:
        return f"the licensing server at {self.client.enroll_addr}"

    @property
    def api_peer(self) -> str:
        return f"the licensing API at {self.client.api_addr}"

    @property
    def trust_hint(self) -> str:
        return (
            f"it does not verify against the pinned CA {self.ca_path}; if the server's CA "
            "really changed, compare fingerprints and pass --ca-file"
        )

    @contextmanager
    def explain(self, action: str, *, enrollment: bool = False) -> Iterator[None]:
        """``explain`` for a step talking to the API (or to the enrollment listener)."""
        peer = self.server_peer if enrollment else self.api_peer
        with explain(action, peer=peer, trust=self.trust_hint):
            yield
