"""The command line: the contract with the backend's local runtime, checked before the handshake.

Files are read and vetted here so a bad deployment fails with a usage error (exit 2)
before a CSR is ever sent, rather than half-way through starting.
"""

from __future__ import annotations

import argparse
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from licensing_common.tokens import jwks_public_keys

# The id becomes the CSR's common name (at most 64 characters) and appears in logs.
_ENCLAVE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True, slots=True)
class EnclaveConfig:
    enclave_id: str
    #: The owner's user id, canonical UUID text (the form tokens and certificates carry).
    owner: str
    listen_host: str
    listen_port: int
    #: The CA that client certificates must chain to.
    ca_pem: bytes
    token_keys: dict[str, ec.EllipticCurvePublicKey]
    issuer: str
    audience: str
    log_level: str

    @property
    def listen(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="licensing-enclave",
        description="Serve enclave.v1.WorkloadService to one owner over mutual TLS. "
        "Prints JSON lines on stdout (csr, serving), reads one (certificate) on stdin, "
        "and exits when stdin reaches EOF or on SIGTERM/SIGINT.",
    )
    parser.add_argument("--enclave-id", required=True)
    parser.add_argument("--owner", required=True, help="user id (UUID) of the owner")
    parser.add_argument("--listen", required=True, help="host:port, port 0 picks a free one")
    parser.add_argument("--ca-file", required=True, type=Path, help="CA of client certificates")
    parser.add_argument("--jwks-file", required=True, type=Path, help="access token keys")
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--audience", required=True)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    return parser


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen must be host:port, got {listen!r}")
    return host, int(port)


def _read_ca(path: Path) -> bytes:
    pem = path.read_bytes()
    x509.load_pem_x509_certificates(pem)  # raises ValueError if there is no certificate
    return pem


def _read_jwks(path: Path) -> dict[str, ec.EllipticCurvePublicKey]:
    keys = jwks_public_keys(path.read_text())
    if not keys:
        raise ValueError(f"{path} has no ES256 (EC P-256) key with a kid")
    return keys


def parse_args(argv: Sequence[str] | None = None) -> EnclaveConfig:
    """Parse and load everything; on any problem print usage to stderr and exit 2."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not _ENCLAVE_ID.fullmatch(args.enclave_id):
        parser.error("--enclave-id must be 1..64 characters of [A-Za-z0-9._-]")
    try:
        owner = str(uuid.UUID(args.owner))
    except ValueError:
        parser.error("--owner must be a user id (UUID)")
    try:
        host, port = _split_listen(args.listen)
        ca_pem = _read_ca(args.ca_file)
        keys = _read_jwks(args.jwks_file)
    except (OSError, ValueError, json.JSONDecodeError, jwt.PyJWTError) as exc:
        parser.error(str(exc))
    if not args.issuer or not args.audience:
        parser.error("--issuer and --audience must not be empty")
    return EnclaveConfig(
        enclave_id=args.enclave_id,
        owner=owner,
        listen_host=host,
        listen_port=port,
        ca_pem=ca_pem,
        token_keys=keys,
        issuer=args.issuer,
        audience=args.audience,
        log_level=args.log_level,
    )
