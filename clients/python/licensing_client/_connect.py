"""Channels to the licensing server's listeners and to enclaves (grpclib, as betterproto needs)."""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

from grpclib.client import Channel
from grpclib.config import Configuration


def load_client_pem(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Present a client certificate held in memory.

    ``ssl`` loads keys from files only, so the pair is written to a private (0700)
    temporary directory, loaded, and removed before this returns.
    """
    with tempfile.TemporaryDirectory(prefix="licensing-client-") as tmp:
        paths = []
        for name, data in (("cert.pem", cert_pem), ("key.pem", key_pem)):
            path = os.path.join(tmp, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            paths.append(path)
        context.load_cert_chain(paths[0], paths[1])


def tls_context(
    ca_file: Path | str | None = None,
    *,
    cert_file: Path | str | None = None,
    key_file: Path | str | None = None,
    ca_pem: str | bytes | None = None,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
) -> ssl.SSLContext:
    """Verify the server against the licensing CA only; present a client certificate if given.

    The CA comes from ``ca_file`` or ``ca_pem``, the client pair from files or from memory.
    """
    if (ca_file is None) == (ca_pem is None):
        raise ValueError("give exactly one of ca_file and ca_pem")
    cadata = ca_pem.decode() if isinstance(ca_pem, bytes) else ca_pem
    cafile = str(ca_file) if ca_file is not None else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile, cadata=cadata)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    elif cert_pem is not None and key_pem is not None:
        load_client_pem(context, cert_pem, key_pem)
    return context


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def enrollment_channel(address: str, *, ca_file: Path | str) -> Channel:
    """The TLS listener: SignUp, Login, RefreshToken, TrustService, health, reflection."""
    host, port = split_address(address)
    return Channel(host, port, ssl=tls_context(ca_file))


def api_channel(
    address: str, *, ca_file: Path | str, cert_file: Path | str, key_file: Path | str
) -> Channel:
    """The mutual-TLS listener, with the client certificate issued at Login."""
    host, port = split_address(address)
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
    host, port = split_address(address)
    return Channel(host, port, ssl=context)


def pinned_tls_context(
    pinned_certificate_pem: str,
    *,
    cert_file: Path | str | None = None,
    key_file: Path | str | None = None,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
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
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file))
    elif cert_pem is not None and key_pem is not None:
        load_client_pem(context, cert_pem, key_pem)
    else:
        raise ValueError("give the client certificate and key as files or as PEM")
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
    host, port = split_address(endpoint)
    context = pinned_tls_context(pinned_certificate_pem, cert_file=cert_file, key_file=key_file)
    config = Configuration(ssl_target_name_override=tls_server_name or None)
    return Channel(host, port, ssl=context, config=config)


def bearer(access_token: str) -> dict[str, str]:
    """Per-call metadata carrying the access token."""
    return {"authorization": f"Bearer {access_token}"}
