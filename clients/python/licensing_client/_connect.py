"""Channels to the licensing server's listeners and to enclaves (grpclib, as betterproto needs)."""

from __future__ import annotations

import ssl
from pathlib import Path

from grpclib.client import Channel
from grpclib.config import Configuration


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
    return Channel(host, port, ssl=tls_context(ca_file, cert_file=cert_file, key_file=key_file))


def unverified_channel(address: str) -> Channel:
    """TLS that verifies nothing: only for fetching the trust bundle on first use.

    Whatever comes back over it is unauthenticated. A caller must pin it, show the
    user its fingerprint to compare out of band, and verify everything after that
    against the pin (``enrollment_channel``).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    host, port = _split(address)
    return Channel(host, port, ssl=context)


def pinned_tls_context(
    pinned_certificate_pem: str,
    *,
    cert_file: Path | str,
    key_file: Path | str,
) -> ssl.SSLContext:
    """Trust exactly one certificate, the peer's own, and present a client certificate.

    The pinned certificate is the only trust anchor, and ``VERIFY_X509_PARTIAL_CHAIN``
    lets OpenSSL accept it as one although it is a leaf. Any other certificate fails
    the handshake, even one from the same CA for the same name, so nothing (no
    token) is sent to it.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=pinned_certificate_pem)
    if context.cert_store_stats()["x509"] != 1:
        raise ValueError("pinned_certificate_pem must hold exactly one certificate")
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.set_alpn_protocols(["h2"])
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


def enclave_channel(
    endpoint: str,
    *,
    tls_server_name: str,
    pinned_certificate_pem: str,
    cert_file: Path | str,
    key_file: Path | str,
) -> Channel:
    """Mutual TLS to an enclave, pinned to the certificate the licensing server reported.

    ``tls_server_name`` is sent as SNI and checked against the pinned certificate's
    names (it may differ from the host in ``endpoint``); empty means the endpoint host.
    """
    host, port = _split(endpoint)
    context = pinned_tls_context(pinned_certificate_pem, cert_file=cert_file, key_file=key_file)
    config = Configuration(ssl_target_name_override=tls_server_name or None)
    return Channel(host, port, ssl=context, config=config)


def bearer(access_token: str) -> dict[str, str]:
    """Per-call metadata carrying the access token."""
    return {"authorization": f"Bearer {access_token}"}
