"""The command line: the contract with whoever starts the enclave, checked before enrolment.

Two sources of settings: individual flags (the backend's local runtime) or ``--config-dir``,
a mounted ConfigMap (a Kubernetes pod). Two ways to enrol: the stdio handshake with the
parent (the default), or ``--enroll`` over the network with a ServiceAccount token.
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

#: The individual flags ``--config-dir`` replaces, with the file of the directory that does.
_CONFIG_FILES = {
    "enclave_id": ("--enclave-id", "enclave-id"),
    "owner": ("--owner", "owner"),
    "ca_file": ("--ca-file", "ca.pem"),
    "jwks_file": ("--jwks-file", "jwks.json"),
    "issuer": ("--issuer", "issuer"),
    "audience": ("--audience", "audience"),
}


@dataclass(frozen=True, slots=True)
class NetworkEnrollment:
    """Where and how to enrol when there is no parent process on stdio."""

    #: ``host:port`` of enclave.v1.EnrollmentService.
    target: str
    #: The name the service's TLS certificate must carry (the host of ``target``).
    server_name: str
    #: The projected ServiceAccount token; read at each attempt because the kubelet rotates it.
    token_file: Path
    #: The names the CSR asks for (the ConfigMap's ``dns-names`` and ``uris``, one per
    #: line): cert-manager's CA issuer signs the CSR's names, and the backend checks
    #: they are exactly the ones it wants.
    dns_names: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EnclaveConfig:
    enclave_id: str
    #: The owner's user id, canonical UUID text (the form tokens and certificates carry).
    owner: str
    listen_host: str
    listen_port: int
    #: The CA that client certificates (and the enrolment service's certificate) chain to.
    ca_pem: bytes
    token_keys: dict[str, ec.EllipticCurvePublicKey]
    issuer: str
    audience: str
    log_level: str
    #: ``None``: the stdio handshake with the parent process.
    enrollment: NetworkEnrollment | None = None

    @property
    def listen(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="licensing-enclave",
        description="Serve enclave.v1.WorkloadService to one owner over mutual TLS. "
        "By default prints JSON lines on stdout (csr, serving), reads one (certificate) on "
        "stdin, and exits when stdin reaches EOF or on SIGTERM/SIGINT. With --enroll it gets "
        "its certificate from enclave.v1.EnrollmentService instead and exits on SIGTERM/SIGINT.",
    )
    parser.add_argument("--listen", required=True, help="host:port, port 0 picks a free one")
    parser.add_argument(
        "--config-dir",
        type=Path,
        help="a directory with the files enclave-id, owner, ca.pem, jwks.json, issuer and "
        "audience (a mounted ConfigMap), instead of the six flags below",
    )
    parser.add_argument("--enclave-id")
    parser.add_argument("--owner", help="user id (UUID) of the owner")
    parser.add_argument("--ca-file", type=Path, help="CA of client certificates")
    parser.add_argument("--jwks-file", type=Path, help="access token keys")
    parser.add_argument("--issuer")
    parser.add_argument("--audience")
    parser.add_argument(
        "--enroll",
        metavar="HOST:PORT",
        help="enrol over TLS with enclave.v1.EnrollmentService here (needs --token-file)",
    )
    parser.add_argument(
        "--token-file", type=Path, help="ServiceAccount token sent as the bearer to --enroll"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    return parser


def _split_address(address: str, flag: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{flag} must be host:port, got {address!r}")
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


def _from_config_dir(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill the six settings from the directory's files, as if they had been given as flags."""
    given = [flag for name, (flag, _) in _CONFIG_FILES.items() if getattr(args, name) is not None]
    if given:
        parser.error(f"--config-dir replaces {', '.join(given)}: give one or the other")
    directory: Path = args.config_dir
    if not directory.is_dir():
        parser.error(f"--config-dir {directory} is not a directory")
    for name, (_, file) in _CONFIG_FILES.items():
        path = directory / file
        if name in ("ca_file", "jwks_file"):
            setattr(args, name, path)  # read and checked like the flags' files below
            continue
        try:
            # ConfigMap values written from YAML usually end with a newline.
            setattr(args, name, path.read_text().strip())
        except (OSError, UnicodeDecodeError) as exc:
            parser.error(f"--config-dir: cannot read {file}: {exc}")


def _enrollment(parser: argparse.ArgumentParser, args: argparse.Namespace) -> NetworkEnrollment:
    if args.enroll is None or args.token_file is None:
        parser.error("--enroll and --token-file go together")
    try:
        host, _ = _split_address(args.enroll, "--enroll")
        if not args.token_file.read_text().strip():
            raise ValueError(f"--token-file {args.token_file} is empty")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        parser.error(str(exc))
    names: dict[str, tuple[str, ...]] = {"dns-names": (), "uris": ()}
    if args.config_dir is not None:
        for file in names:
            path = args.config_dir / file
            try:
                text = path.read_text() if path.exists() else ""
            except (OSError, UnicodeDecodeError) as exc:
                parser.error(f"--config-dir: cannot read {file}: {exc}")
            names[file] = tuple(line.strip() for line in text.splitlines() if line.strip())
    return NetworkEnrollment(
        target=args.enroll,
        server_name=host.strip("[]"),
        token_file=args.token_file,
        dns_names=names["dns-names"],
        uris=names["uris"],
    )


def parse_args(argv: Sequence[str] | None = None) -> EnclaveConfig:
    """Parse and load everything; on any problem print usage to stderr and exit 2."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.config_dir is not None:
        _from_config_dir(parser, args)
    missing = [flag for name, (flag, _) in _CONFIG_FILES.items() if getattr(args, name) is None]
    if missing:
        parser.error(
            f"the following arguments are required: {', '.join(missing)} (or --config-dir)"
        )

    def source(name: str) -> str:
        """What to name in a message: the flag, or the file of the config directory."""
        flag, file = _CONFIG_FILES[name]
        return flag if args.config_dir is None else str(args.config_dir / file)

    if not _ENCLAVE_ID.fullmatch(args.enclave_id):
        parser.error(f"{source('enclave_id')} must be 1..64 characters of [A-Za-z0-9._-]")
    try:
        owner = str(uuid.UUID(args.owner))
    except ValueError:
        parser.error(f"{source('owner')} must be a user id (UUID)")
    try:
        host, port = _split_address(args.listen, "--listen")
    except ValueError as exc:
        parser.error(str(exc))
    try:
        ca_pem = _read_ca(args.ca_file)
    except (OSError, ValueError) as exc:
        parser.error(f"{source('ca_file')}: {exc}")
    try:
        keys = _read_jwks(args.jwks_file)
    except (OSError, ValueError, json.JSONDecodeError, jwt.PyJWTError) as exc:
        parser.error(f"{source('jwks_file')}: {exc}")
    for name in ("issuer", "audience"):
        if not getattr(args, name):
            parser.error(f"{source(name)} must not be empty")
    enrollment = None
    if args.enroll is not None or args.token_file is not None:
        enrollment = _enrollment(parser, args)
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
        enrollment=enrollment,
    )
