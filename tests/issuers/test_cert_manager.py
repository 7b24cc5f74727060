"""The ``cert-manager`` issuer against a real apiserver and cert-manager controller.

The ClusterIssuer is a CA issuer holding the licensing CA's own key, as a deployment
sets it up; the issuer checks every certificate against that CA regardless.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client

from licensing_common.errors import FailedPrecondition, InvalidArgument, Unavailable
from licensing_enclave._keys import EnclaveKey
from licensing_server.catalog import CERTIFICATE_ISSUERS
from licensing_server.config import Settings
from licensing_server.issuers import CertManagerIssuer, EnclaveCertificateRequest
from licensing_server.kube import KubeApi, KubeConfig
from licensing_server.pki import CertificateAuthority
from tests.kube.cluster import KubeControlPlane as ControlPlane
from tests.support import make_csr, new_key

HOUR = dt.timedelta(hours=1)


def _ca(directory: Path) -> tuple[CertificateAuthority, str]:
    """A licensing CA and its key PEM (what the deployment puts into the issuer's secret)."""
    ca = CertificateAuthority.load_or_create(directory / "ca.key", directory / "ca.crt")
    return ca, (directory / "ca.key").read_text()


@pytest.fixture(scope="module")
def licensing_ca(
    kube_control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> tuple[CertificateAuthority, str]:
    """The licensing CA, behind the ClusterIssuer ``licensing-ca-<random>``."""
    ca, key_pem = _ca(tmp_path_factory.mktemp("licensing-ca"))
    name = f"licensing-ca-{uuid.uuid4().hex[:8]}"
    kube_control_plane.install_ca_cluster_issuer(
        name, ca.ca_certificates_pem[0].encode(), key_pem.encode()
    )
    return ca, name


@pytest.fixture(scope="module")
def namespace(kube_control_plane: ControlPlane) -> Iterator[str]:
    core = client.CoreV1Api(kube_control_plane.api_client())
    name = f"enclaves-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def _requests_in(plane: ControlPlane, namespace: str) -> list[Any]:
    custom = client.CustomObjectsApi(plane.api_client())
    listing: Any = custom.list_namespaced_custom_object(
        "cert-manager.io", "v1", namespace, "certificaterequests"
    )
    items: list[Any] = listing["items"]
    return items


def _admin_api(plane: ControlPlane) -> KubeApi:
    return KubeApi(KubeConfig(kubeconfig=str(plane.kubeconfig), workers=2))


@pytest_asyncio.fixture
async def make_issuer(kube_control_plane: ControlPlane, namespace: str) -> AsyncIterator[Any]:
    """``make_issuer(issuer_name, ca, kind=..., timeout=...)``; all closed at the end."""
    made: list[CertManagerIssuer] = []

    def make(
        issuer_name: str,
        ca: CertificateAuthority,
        kind: str = "ClusterIssuer",
        timeout: float = 30.0,
        api: KubeApi | None = None,
    ) -> CertManagerIssuer:
        issuer = CertManagerIssuer(
            api or _admin_api(kube_control_plane),
            namespace=namespace,
            issuer_name=issuer_name,
            issuer_kind=kind,
            ca_certificates_pem=ca.ca_certificates_pem,
            timeout_seconds=timeout,
        )
        made.append(issuer)
        return issuer

    yield make
    for issuer in made:
        await issuer.close()


def _enclave_request(
    csr_pem: str, enclave_id: str, *, lifetime: dt.timedelta = 24 * HOUR, **names: Any
) -> EnclaveCertificateRequest:
    return EnclaveCertificateRequest(
        csr_pem=csr_pem,
        common_name=enclave_id,
        lifetime=lifetime,
        enclave_id=enclave_id,
        **names,
    )


def _csr_with_names(key: ec.EllipticCurvePrivateKey, cn: str, dns: str, ip: str, uri: str) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(dns),
                    x509.IPAddress(ipaddress.ip_address(ip)),
                    x509.UniformResourceIdentifier(uri),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def test_an_enclave_csr_is_signed_by_the_licensing_ca_and_the_request_is_gone(
    make_issuer: Any,
    licensing_ca: tuple[CertificateAuthority, str],
    kube_control_plane: ControlPlane,
    namespace: str,
) -> None:
    ca, issuer_name = licensing_ca
    api = _admin_api(kube_control_plane)
    issuer: CertManagerIssuer = make_issuer(issuer_name, ca, api=api)
    key = EnclaveKey()
    enclave_id = str(uuid.uuid4())

    issued = await issuer.issue_enclave_certificate(
        _enclave_request(key.csr_pem(enclave_id), enclave_id)
    )

    issued.certificate.verify_directly_issued_by(ca.certificate)
    assert key.owns(issued.certificate)
    assert issued.certificate.subject.rfc4514_string() == f"CN={enclave_id}"
    usages = issued.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    lifetime = issued.not_after - issued.certificate.not_valid_before_utc
    assert abs(lifetime - 24 * HOUR) < dt.timedelta(minutes=1)
    assert issued.pem.count("BEGIN CERTIFICATE") == 1
    assert _requests_in(kube_control_plane, namespace) == []

    # With the watch running, a certificate costs two API requests: create and delete.
    before = api.requests
    await issuer.issue_enclave_certificate(_enclave_request(key.csr_pem(enclave_id), enclave_id))
    assert api.requests - before == 2


async def test_the_names_come_from_the_csr_so_it_must_ask_for_exactly_the_enclaves(
    make_issuer: Any,
    licensing_ca: tuple[CertificateAuthority, str],
    kube_control_plane: ControlPlane,
) -> None:
    ca, issuer_name = licensing_ca
    api = _admin_api(kube_control_plane)
    issuer: CertManagerIssuer = make_issuer(issuer_name, ca, api=api)
    key = ec.generate_private_key(ec.SECP256R1())
    enclave_id = str(uuid.uuid4())
    names: dict[str, Any] = {
        "dns_names": [f"{enclave_id}.enclaves.example"],
        "ip_addresses": ["127.0.0.1"],
        "uris": [f"spiffe://example/enclave/{enclave_id}"],
    }
    csr = _csr_with_names(key, enclave_id, names["dns_names"][0], "127.0.0.1", names["uris"][0])

    issued = await issuer.issue_enclave_certificate(_enclave_request(csr, enclave_id, **names))

    sans = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.DNSName) == names["dns_names"]
    assert sans.value.get_values_for_type(x509.UniformResourceIdentifier) == names["uris"]

    before = api.requests
    other = _csr_with_names(key, enclave_id, "bank.example", "127.0.0.1", names["uris"][0])
    with pytest.raises(InvalidArgument) as raised:
        await issuer.issue_enclave_certificate(_enclave_request(other, enclave_id, **names))
    assert raised.value.reason == "CSR_NAMES_MISMATCH"
    assert "bank.example" in raised.value.message
    assert api.requests == before  # refused before anything was written


async def test_a_weak_csr_is_refused_before_any_request(
    make_issuer: Any, licensing_ca: tuple[CertificateAuthority, str]
) -> None:
    ca, issuer_name = licensing_ca
    issuer: CertManagerIssuer = make_issuer(issuer_name, ca)
    with pytest.raises(InvalidArgument) as raised:
        await issuer.issue_enclave_certificate(
            _enclave_request(make_csr(new_key("rsa1024"), "e"), "e")
        )
    assert raised.value.reason == "CSR_WEAK_KEY"


async def test_a_lifetime_under_an_hour_becomes_cert_managers_minimum_of_one_hour(
    make_issuer: Any, licensing_ca: tuple[CertificateAuthority, str]
) -> None:
    ca, issuer_name = licensing_ca
    issuer: CertManagerIssuer = make_issuer(issuer_name, ca)
    key = EnclaveKey()
    issued = await issuer.issue_enclave_certificate(
        _enclave_request(key.csr_pem("short"), "short", lifetime=dt.timedelta(minutes=10))
    )
    lifetime = issued.not_after - issued.certificate.not_valid_before_utc
    assert abs(lifetime - HOUR) < dt.timedelta(minutes=1)


async def test_an_issuer_that_does_not_exist_is_reported_at_once(
    make_issuer: Any,
    licensing_ca: tuple[CertificateAuthority, str],
    kube_control_plane: ControlPlane,
    namespace: str,
) -> None:
    ca, _ = licensing_ca
    issuer: CertManagerIssuer = make_issuer("no-such-issuer", ca)
    started = time.monotonic()
    with pytest.raises(FailedPrecondition) as raised:
        await issuer.issue_enclave_certificate(_enclave_request(EnclaveKey().csr_pem("x"), "x"))
    assert raised.value.reason == "ISSUER_NOT_FOUND"
    assert "no-such-issuer" in raised.value.message
    assert time.monotonic() - started < 10
    assert _requests_in(kube_control_plane, namespace) == []


async def test_a_cluster_issuer_backed_by_another_ca_is_caught(
    make_issuer: Any,
    licensing_ca: tuple[CertificateAuthority, str],
    kube_control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
) -> None:
    ca, _ = licensing_ca
    stranger, stranger_key = _ca(tmp_path)
    name = f"stranger-ca-{uuid.uuid4().hex[:8]}"
    kube_control_plane.install_ca_cluster_issuer(
        name, stranger.ca_certificates_pem[0].encode(), stranger_key.encode()
    )
    issuer: CertManagerIssuer = make_issuer(name, ca)
    with pytest.raises(FailedPrecondition) as raised:
        await issuer.issue_enclave_certificate(_enclave_request(EnclaveKey().csr_pem("y"), "y"))
    assert raised.value.reason == "ISSUER_CA_MISMATCH"
    assert _requests_in(kube_control_plane, namespace) == []


async def test_an_issuer_that_never_becomes_ready_times_out_as_unavailable(
    make_issuer: Any,
    licensing_ca: tuple[CertificateAuthority, str],
    kube_control_plane: ControlPlane,
    namespace: str,
) -> None:
    ca, _ = licensing_ca
    custom = client.CustomObjectsApi(kube_control_plane.api_client())
    custom.create_namespaced_custom_object(
        "cert-manager.io",
        "v1",
        namespace,
        "issuers",
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": {"name": "secretless"},
            "spec": {"ca": {"secretName": "missing"}},
        },
    )
    issuer: CertManagerIssuer = make_issuer("secretless", ca, kind="Issuer", timeout=3.0)
    with pytest.raises(Unavailable) as raised:
        await issuer.issue_enclave_certificate(_enclave_request(EnclaveKey().csr_pem("z"), "z"))
    assert raised.value.reason == "ISSUER_TIMEOUT"
    assert _requests_in(kube_control_plane, namespace) == []


async def test_the_catalog_builds_it_from_the_kubernetes_settings(
    kube_control_plane: ControlPlane, tmp_path: Path
) -> None:
    ca, _ = _ca(tmp_path)
    settings = Settings.from_env(
        {
            "LICENSING_CERTIFICATE_ISSUER": "cert-manager",
            "LICENSING_KUBERNETES_KUBECONFIG": str(kube_control_plane.kubeconfig),
            "LICENSING_KUBERNETES_CERT_MANAGER_ISSUER": "the-ca",
        }
    )
    issuer = CERTIFICATE_ISSUERS.resolve(settings.certificate_issuer)(settings, ca)
    assert isinstance(issuer, CertManagerIssuer)
    assert issuer.issuer_ref == {
        "name": "the-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert issuer.ca_certificates_pem == ca.ca_certificates_pem
    await issuer.close()
    await issuer.close()  # idempotent
