"""Channels to the licensing server's two listeners (grpclib, as betterproto needs)."""

from __future__ import annotations

import ssl
from pathlib import Path

from grpclib.client import Channel


def tls_context(
    ca_file: Path | str,
    *,
    cert_file: Path | str | None = None,
    key_file: Path | str | None = None,
) -> ssl.SSLContext:
    """Verify the server against the licensing CA only; present a client certificate if given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def enrollment_channel(address: str, *, ca_file: Path | str) -> Channel:
    """The TLS listener: SignUp, Login, RefreshToken, TrustService, health, reflection."""
    host, port = _split(address)
    return Channel(host, port, ssl=tls_context(ca_file))


def api_channel(
    address: str, *, ca_file: Path | str, cert_file: Path | str, key_file: Path | str
) -> Channel:
    """The mutual-TLS listener, with the client certificate issued at Login."""
    host, port = _split(address)
    return Channel(
        host, port, ssl=tls_context(ca_file, cert_file=cert_file, key_file=key_file)
    )


def bearer(access_token: str) -> dict[str, str]:
    """Per-call metadata carrying the access token."""
    return {"authorization": f"Bearer {access_token}"}
