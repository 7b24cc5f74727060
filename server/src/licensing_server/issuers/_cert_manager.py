"""``cert-manager``: enclave certificates signed through a cert-manager CertificateRequest.

The ClusterIssuer (or Issuer) is a CA issuer backed by the licensing CA itself, so
whoever pins ``ca_certificates_pem`` trusts what it signs, and the issuer checks
every certificate against that CA before handing it out.

cert-manager's CA issuer copies the subject and every SAN from the CSR (its
``GenerateTemplateFromCSRPEMWithUsages``); only duration and usages come from the
CertificateRequest. The backend cannot rewrite a CSR the enclave signed, so here,
unlike ``builtin``, the CSR must already ask for exactly the names the backend
wants: a CSR naming anything else is refused (``CSR_NAMES_MISMATCH``) before any
API write, and the issued certificate is checked to carry exactly those names.

Each issue costs two API writes (create, delete); the wait is one shared watch
over the namespace's CertificateRequests, not polling. The backend's Role needs
``create, get, list, watch, delete`` on ``certificaterequests.cert-manager.io`` in
the enclave namespace.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from licensing_common.errors import DomainError, FailedPrecondition, InvalidArgument, Unavailable
from licensing_server.issuers._protocol import EnclaveCertificateRequest
from licensing_server.kube import KubeApi, ObjectWatch
from licensing_server.pki import IssuedCertificate, parse_csr

__all__ = ["CertManagerIssuer"]

_log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "cert-manager.io", "v1", "certificaterequests"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "licensing-backend"
ENCLAVE_ID_LABEL = "licensing.example/enclave-id"
USAGES = ("server auth", "digital signature", "key encipherment")
#: cert-manager's webhook refuses a shorter ``spec.duration``; shorter lifetimes are raised
#: to this (the certificate then outlives its enclave by under an hour, for a key that
#: lives only in the enclave's memory).
MIN_DURATION = dt.timedelta(hours=1)
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Names:
    """Subject and SANs of a CSR or certificate, comparable as sets."""

    subject: x509.Name
    dns_names: frozenset[str]
    ip_addresses: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]
    uris: frozenset[str]
    #: SANs of other types (e-mail, directory names...): none are wanted.
    others: int

    @classmethod
    def wanted(cls, request: EnclaveCertificateRequest) -> _Names:
        return cls(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, request.common_name)]),
            frozenset(request.dns_names),
            frozenset(ipaddress.ip_address(a) for a in request.ip_addresses),
            frozenset(request.uris),
            0,
        )

    @classmethod
    def of(cls, subject: x509.Name, extensions: x509.Extensions) -> _Names:
        try:
            sans = list(extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            sans = []
        dns = [n.value for n in sans if isinstance(n, x509.DNSName)]
        uris = [n.value for n in sans if isinstance(n, x509.UniformResourceIdentifier)]
        ips = [
            n.value
            for n in sans
            if isinstance(n, x509.IPAddress)
            and isinstance(n.value, ipaddress.IPv4Address | ipaddress.IPv6Address)
        ]
        others = len(sans) - len(dns) - len(ips) - len(uris)
        return cls(subject, frozenset(dns), frozenset(ips), frozenset(uris), others)

    def differences(self, wanted: _Names) -> list[str]:
        """What differs from ``wanted``, as short phrases for a message."""
        out = []
        if self.subject != wanted.subject:
            out.append(f"subject {self.subject.rfc4514_string()!r}")
        if self.dns_names != wanted.dns_names:
            out.append(f"DNS names {sorted(self.dns_names)}")
        if self.ip_addresses != wanted.ip_addresses:
            out.append(f"IP addresses {sorted(str(a) for a in self.ip_addresses)}")
        if self.uris != wanted.uris:
            out.append(f"URIs {sorted(self.uris)}")
        if self.others:
            out.append(f"{self.others} other SAN(s)")
        return out


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _go_duration(lifetime: dt.timedelta) -> str:
    """``spec.duration`` (Go's ``time.ParseDuration``), at least ``MIN_DURATION``."""
    return f"{int(max(lifetime, MIN_DURATION).total_seconds())}s"


def _conditions(obj: Obj | None) -> dict[str, Obj]:
    if obj is None:
        return {}
    status = obj.get("status") or {}
    return {str(c.get("type")): c for c in status.get("conditions") or []}


def _settled(obj: Obj | None) -> bool:
    """Whether cert-manager has said its last word on this request (or it is gone)."""
    if obj is None:
        return True
    conditions = _conditions(obj)
    ready = conditions.get("Ready", {})
    if ready.get("status") == "True":
        return bool((obj.get("status") or {}).get("certificate"))
    if ready.get("reason") in ("Failed", "Denied"):
        return True
    if conditions.get("Denied", {}).get("status") == "True":
        return True
    if conditions.get("InvalidRequest", {}).get("status") == "True":
        return True
    return _issuer_missing(ready)


def _issuer_missing(ready: Obj) -> bool:
    """cert-manager reports a missing issuer as Pending (and retries); waiting will not fix it."""
    message = str(ready.get("message", ""))
    return ready.get("reason") == "Pending" and message.startswith(
        ('Referenced "ClusterIssuer" not found', 'Referenced "Issuer" not found')
    )


class CertManagerIssuer:
    """Creates one CertificateRequest per enclave certificate, waits, checks, deletes it."""

    def __init__(
        self,
        api: KubeApi,
        *,
        namespace: str,
        issuer_name: str,
        issuer_kind: str,
        ca_certificates_pem: Sequence[str],
        timeout_seconds: float = 30.0,
        owns_api: bool = True,
    ):
        if not ca_certificates_pem:
            raise ValueError("ca_certificates_pem: the CA behind the issuer is required")
        self._api = api
        self._namespace = namespace
        self._issuer_ref = {"name": issuer_name, "kind": issuer_kind, "group": GROUP}
        self._ca_pem = list(ca_certificates_pem)
        self._cas = [x509.load_pem_x509_certificate(p.encode()) for p in self._ca_pem]
        self._timeout = timeout_seconds
        self._owns_api = owns_api
        self._watch: ObjectWatch | None = None
        self._closed = False

    @property
    def ca_certificates_pem(self) -> list[str]:
        return list(self._ca_pem)

    @property
    def issuer_ref(self) -> dict[str, str]:
        return dict(self._issuer_ref)

    async def issue_enclave_certificate(
        self, request: EnclaveCertificateRequest
    ) -> IssuedCertificate:
        csr = parse_csr(request.csr_pem)
        wanted = _Names.wanted(request)
        asked = _Names.of(csr.subject, csr.extensions)
        if problems := asked.differences(wanted):
            raise InvalidArgument(
                "CSR_NAMES_MISMATCH",
                "with the cert-manager issuer the CSR must ask for exactly the enclave's "
                f"names; it has {', '.join(problems)}",
            )
        if self._closed:
            raise Unavailable("ISSUER_CLOSED", "the certificate issuer is shutting down")
        watch = await self._started_watch()
        name = await self._create(request)
        try:
            obj = await self._wait(watch, name)
            pem_chain = self._outcome(name, obj)
        finally:
            await self._delete(name)
        return self._checked(pem_chain, csr.public_key(), wanted)

    async def close(self) -> None:
        """Stop the watch (and the API pool, if ours); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._watch is not None:
            await self._watch.stop()
        if self._owns_api:
            await self._api.close()

    # Steps ------------------------------------------------------------------------
    async def _started_watch(self) -> ObjectWatch:
        """One watch for all requests, started on first use (it needs the running loop)."""
        if self._watch is None:
            self._watch = ObjectWatch(
                self._api,
                PLURAL,
                self._api.custom().list_namespaced_custom_object,
                GROUP,
                VERSION,
                self._namespace,
                PLURAL,
                label_selector=f"{MANAGED_BY}={MANAGER}",
            )
            self._watch.start()
        return self._watch

    async def _create(self, request: EnclaveCertificateRequest) -> str:
        labels = {MANAGED_BY: MANAGER}
        if _LABEL_VALUE.fullmatch(request.enclave_id):
            labels[ENCLAVE_ID_LABEL] = request.enclave_id
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CertificateRequest",
            "metadata": {"generateName": "enclave-", "labels": labels},
            "spec": {
                "request": base64.b64encode(request.csr_pem.encode()).decode(),
                "usages": list(USAGES),
                "duration": _go_duration(request.lifetime),
                "issuerRef": dict(self._issuer_ref),
            },
        }
        created: Any = await self._api.call(
            "create certificaterequests",
            self._api.custom().create_namespaced_custom_object,
            GROUP,
            VERSION,
            self._namespace,
            PLURAL,
            body,
        )
        return str(created["metadata"]["name"])

    async def _wait(self, watch: ObjectWatch, name: str) -> Obj | None:
        seen = False

        def settled(obj: Obj | None) -> bool:
            nonlocal seen
            if obj is None:
                return seen  # not in the cache yet, or deleted behind our back
            seen = True
            return _settled(obj)

        try:
            return await watch.wait_until(name, settled, self._timeout)
        except TimeoutError as exc:
            ready = _conditions(watch.get(name)).get("Ready", {})
            _log.warning(
                "CertificateRequest %s/%s not issued within %.0fs (%s: %s)",
                self._namespace,
                name,
                self._timeout,
                ready.get("reason", "no status"),
                ready.get("message", ""),
            )
            raise Unavailable(
                "ISSUER_TIMEOUT",
                f"cert-manager did not issue the certificate within {self._timeout:g}s",
            ) from exc

    def _outcome(self, name: str, obj: Obj | None) -> str:
        """The PEM chain of an issued request, or the error its conditions describe."""
        if obj is None:
            raise Unavailable(
                "CERTIFICATE_REQUEST_GONE",
                "the CertificateRequest was deleted before it was issued",
            )
        conditions = _conditions(obj)
        ready = conditions.get("Ready", {})
        message = str(ready.get("message", ""))
        where = f"{self._issuer_ref['kind']} {self._issuer_ref['name']!r}"
        if ready.get("status") == "True":
            return base64.b64decode(obj["status"]["certificate"]).decode()
        _log.warning(
            "CertificateRequest %s/%s: %s: %s", self._namespace, name, ready.get("reason"), message
        )
        if ready.get("reason") == "Denied" or conditions.get("Denied", {}).get("status") == "True":
            raise FailedPrecondition(
                "CERTIFICATE_DENIED", f"an approver denied the certificate request to {where}"
            )
        if _issuer_missing(ready):
            raise FailedPrecondition(
                "ISSUER_NOT_FOUND", f"cert-manager has no {where} (check the backend's settings)"
            )
        raise FailedPrecondition("CERTIFICATE_FAILED", f"{where} failed to sign the certificate")

    async def _delete(self, name: str) -> None:
        """Remove the request (public data only; keeps the namespace clean); best effort."""
        try:
            await self._api.call(
                "delete certificaterequests",
                self._api.custom().delete_namespaced_custom_object,
                GROUP,
                VERSION,
                self._namespace,
                PLURAL,
                name,
                accept=frozenset({404}),
            )
        except DomainError as exc:
            _log.warning(
                "could not delete CertificateRequest %s/%s: %s", self._namespace, name, exc
            )

    def _checked(
        self, pem_chain: str, key: CertificatePublicKeyTypes, wanted: _Names
    ) -> IssuedCertificate:
        """The leaf, if it is for the CSR's key, signed by our CA, and exactly as named."""
        try:
            leaf = x509.load_pem_x509_certificates(pem_chain.encode())[0]
        except (ValueError, IndexError) as exc:
            raise FailedPrecondition(
                "CERTIFICATE_FAILED", "cert-manager returned no readable certificate"
            ) from exc
        if _spki(leaf.public_key()) != _spki(key):
            raise FailedPrecondition(
                "ISSUER_CA_MISMATCH", "the issued certificate is not for the CSR's key"
            )
        if not any(_issued_by(leaf, ca) for ca in self._cas):
            raise FailedPrecondition(
                "ISSUER_CA_MISMATCH",
                f"{self._issuer_ref['kind']} {self._issuer_ref['name']!r} is not backed by the "
                "licensing CA: its certificate does not verify",
            )
        if problems := _Names.of(leaf.subject, leaf.extensions).differences(wanted):
            raise FailedPrecondition(
                "ISSUER_NAMES_MISMATCH",
                f"the issuer changed the certificate's names: {', '.join(problems)}",
            )
        return IssuedCertificate.of(leaf)


def _issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
