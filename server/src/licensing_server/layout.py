"""Where each process keeps its files under the data directory.

The backend writes the frontend's certificates (as cert-manager would write a
Secret in Kubernetes); the frontend never reads anything under ``backend/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class DataLayout:
    root: Path

    @property
    def ca_certificate(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "backend" / "ca-key.pem"

    @property
    def frontend_dir(self) -> Path:
        return self.root / "frontend"

    @property
    def frontend_server_key(self) -> Path:
        return self.frontend_dir / "server-key.pem"

    @property
    def frontend_server_cert(self) -> Path:
        return self.frontend_dir / "server.pem"

    @property
    def frontend_client_key(self) -> Path:
        return self.frontend_dir / "internal-client-key.pem"

    @property
    def frontend_client_cert(self) -> Path:
        return self.frontend_dir / "internal-client.pem"

    @property
    def token_keys_dir(self) -> Path:
        """The token signing key set (tokens.KeySetFiles), unless LICENSING_TOKEN_KEYS_DIR."""
        return self.frontend_dir

    @property
    def enclaves_dir(self) -> Path:
        """Work directories of local enclaves (public files only: CA and JWKS)."""
        return self.root / "backend" / "enclaves"

    @property
    def ak_certificate(self) -> Path:
        """The attestation key's certificate, as the backend last issued it."""
        return self.root / "backend" / "ak.pem"
