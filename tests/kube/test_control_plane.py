"""The test control plane behaves like a real cluster where the licensing server needs it."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity
from urllib3.exceptions import MaxRetryError, ReadTimeoutError

from tests.kube.cluster import KubeControlPlane, wait_until

DEFAULT_PORTS = {"6443", "2379", "2380", "10257", "10259", "9402"}


def test_the_control_plane_has_a_ready_kwok_node_on_free_loopback_ports(
    kube_control_plane: KubeControlPlane,
) -> None:
    ports = kube_control_plane.ports
    assert not DEFAULT_PORTS & set(ports.values()), ports
    assert ipaddress.IPv4Network(ports["POD_CIDR"]).subnet_of(ipaddress.IPv4Network("127.0.0.0/8"))
    assert (kube_control_plane.pki / "sa.key").exists()
    with kube_control_plane.api_client() as api:
        node = client.CoreV1Api(api).read_node(kube_control_plane.node_name)
    conditions = {c.type: c.status for c in node.status.conditions}
    assert conditions["Ready"] == "True"
    assert parse_quantity(node.status.allocatable["pods"]) >= 100
    assert parse_quantity(node.status.allocatable["memory"]) >= 64 * 2**30


def test_a_pod_is_scheduled_on_the_kwok_node_and_runs_with_a_loopback_ip(
    kube_control_plane: KubeControlPlane, kube_namespace: str
) -> None:
    with kube_control_plane.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespaced_pod(
            kube_namespace,
            {"metadata": {"name": "web"}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
        )
        pod = wait_until(
            lambda: _running(core.read_namespaced_pod("web", kube_namespace)), what="pod Running"
        )
    assert pod.spec.node_name == kube_control_plane.node_name
    cidr = ipaddress.ip_network(kube_control_plane.ports["POD_CIDR"])
    assert ipaddress.ip_address(pod.status.pod_ip) in cidr


def test_a_token_for_a_custom_audience_is_accepted_for_it_and_rejected_for_another(
    kube_control_plane: KubeControlPlane, kube_namespace: str
) -> None:
    kube_control_plane.create_service_account(kube_namespace, "robot")
    with kube_control_plane.api_client() as api:
        core, auth = client.CoreV1Api(api), client.AuthenticationV1Api(api)
        token = core.create_namespaced_service_account_token(
            "robot",
            kube_namespace,
            {"spec": {"audiences": ["licensing-enclave"], "expirationSeconds": 600}},
        ).status.token
        accepted = auth.create_token_review(
            {"spec": {"token": token, "audiences": ["licensing-enclave"]}}
        ).status
        rejected = auth.create_token_review(
            {"spec": {"token": token, "audiences": ["someone-else"]}}
        ).status
    assert _claims(token)["aud"] == ["licensing-enclave"]
    assert accepted.authenticated
    assert accepted.user.username == f"system:serviceaccount:{kube_namespace}:robot"
    assert accepted.audiences == ["licensing-enclave"]
    assert not rejected.authenticated


def test_a_service_account_is_denied_until_a_role_binding_allows_it(
    kube_control_plane: KubeControlPlane, kube_namespace: str, tmp_path: Path
) -> None:
    kube_control_plane.create_service_account(kube_namespace, "reader")
    kubeconfig = kube_control_plane.kubeconfig_for_service_account(
        kube_namespace, "reader", tmp_path / "reader.kubeconfig"
    )
    with kube_control_plane.api_client(kubeconfig) as api:
        as_reader = client.CoreV1Api(api)
        with pytest.raises(ApiException) as denied:
            as_reader.list_namespaced_pod(kube_namespace)
        assert denied.value.status == 403
        kube_control_plane.create_role(
            kube_namespace,
            "pod-reader",
            [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        )
        kube_control_plane.bind_role(kube_namespace, "pod-reader", "reader")
        wait_until(
            lambda: as_reader.list_namespaced_pod(kube_namespace) is not None, what="RBAC allow"
        )


def test_a_ca_cluster_issuer_signs_an_approved_certificate_request(
    kube_control_plane: KubeControlPlane, kube_namespace: str
) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _self_signed_ca(ca_key)
    kube_control_plane.install_ca_cluster_issuer(
        "licensing-test-ca",
        ca_cert.public_bytes(serialization.Encoding.PEM),
        ca_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enclave-1")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("enclave-1")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    request = {
        "apiVersion": "cert-manager.io/v1",
        "kind": "CertificateRequest",
        "metadata": {"name": "enclave-1"},
        "spec": {
            "request": base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode(),
            "usages": ["server auth", "digital signature"],
            "duration": "24h",
            "issuerRef": {
                "name": "licensing-test-ca",
                "kind": "ClusterIssuer",
                "group": "cert-manager.io",
            },
        },
    }
    with kube_control_plane.api_client() as api:
        custom = client.CustomObjectsApi(api)
        custom.create_namespaced_custom_object(
            "cert-manager.io", "v1", kube_namespace, "certificaterequests", request
        )

        def issued() -> dict[str, Any] | None:
            got: dict[str, Any] = custom.get_namespaced_custom_object(
                "cert-manager.io", "v1", kube_namespace, "certificaterequests", "enclave-1"
            )
            return got if got.get("status", {}).get("certificate") else None

        done = wait_until(issued, what="CertificateRequest issued")
    conditions = {c["type"]: c["status"] for c in done["status"]["conditions"]}
    assert conditions["Approved"] == "True"
    assert conditions["Ready"] == "True"
    cert = x509.load_pem_x509_certificate(base64.b64decode(done["status"]["certificate"]))
    cert.verify_directly_issued_by(ca_cert)
    assert cert.public_key() == key.public_key()


def test_the_apiserver_can_be_restarted_and_paused_for_fault_tests(
    kube_control_plane: KubeControlPlane,
) -> None:
    port = kube_control_plane.ports["APISERVER_PORT"]
    kube_control_plane.restart_apiserver()
    assert kube_control_plane.ports["APISERVER_PORT"] == port
    with kube_control_plane.apiserver_paused(), kube_control_plane.api_client() as api:
        api.configuration.retries = False
        with pytest.raises((ReadTimeoutError, MaxRetryError)):
            client.VersionApi(api).get_code(_request_timeout=1)
    with kube_control_plane.api_client() as api:
        assert client.VersionApi(api).get_code().git_version.startswith("v1.")


def _running(pod: Any) -> Any:
    return pod if pod.status.phase == "Running" and pod.status.pod_ip else None


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def _self_signed_ca(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "licensing test CA")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
