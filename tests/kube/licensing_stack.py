"""A licensing stack whose backend runs enclaves as pods on the test control plane.

Used by tests/runtimes/kubernetes and bench/kubernetes_bench.py.

Everything Kubernetes here is real (kube-apiserver, scheduler, controller manager,
cert-manager) except the kubelet: kwok marks pods Running and ``PodRunner`` (a
stand-in for the kubelet's container runtime) runs each pod's process locally.
The backend acts with its own ServiceAccount's token, bound by ``k8s/base/backend-rbac.yaml``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, utils

from licensing_server.layout import DataLayout
from licensing_server.pki import CertificateAuthority
from tests.kube.cluster import KubeControlPlane
from tests.kube.pod_runner import PodRunner
from tests.support import Stack, free_port

REPO = Path(__file__).resolve().parents[2]
RBAC = REPO / "k8s" / "base" / "backend-rbac.yaml"
ENCLAVES = "licensing-enclaves"
LICENSING = "licensing"
ISSUER = "licensing-ca"
#: What the pod runner runs for the enclave image's entry point.
COMMANDS = {"licensing-enclave": [sys.executable, "-m", "licensing_enclave"]}


def apply_rbac(plane: KubeControlPlane) -> None:
    documents: list[dict[str, Any]] = list(yaml.safe_load_all(RBAC.read_text()))
    with plane.api_client() as api:
        utils.create_from_yaml(api, yaml_objects=documents)


@dataclass
class KubeStack:
    plane: KubeControlPlane
    stack: Stack
    runner: PodRunner
    namespace: str = ENCLAVES

    def core(self, api: client.ApiClient) -> client.CoreV1Api:
        return client.CoreV1Api(api)

    def objects(self, enclave_id: str) -> dict[str, list[str]]:
        """Every object in the enclave namespace labelled with ``enclave_id``, by kind."""
        selector = f"licensing.example/enclave-id={enclave_id}"
        found: dict[str, list[str]] = {}
        with self.plane.api_client() as api:
            core = client.CoreV1Api(api)
            net = client.NetworkingV1Api(api)
            custom = client.CustomObjectsApi(api)
            for kind, items in (
                ("pods", core.list_namespaced_pod(self.namespace, label_selector=selector).items),
                (
                    "configmaps",
                    core.list_namespaced_config_map(self.namespace, label_selector=selector).items,
                ),
                (
                    "services",
                    core.list_namespaced_service(self.namespace, label_selector=selector).items,
                ),
                (
                    "ingresses",
                    net.list_namespaced_ingress(self.namespace, label_selector=selector).items,
                ),
            ):
                if items:
                    found[kind] = [i.metadata.name for i in items]
            requests = custom.list_namespaced_custom_object(
                "cert-manager.io", "v1", self.namespace, "certificaterequests"
            )["items"]
            if requests:
                found["certificaterequests"] = [r["metadata"]["name"] for r in requests]
        return found


@contextlib.contextmanager
def kube_stack(plane: KubeControlPlane, tmp: Path, **extra_env: str) -> Iterator[KubeStack]:
    """Namespaces, RBAC, the licensing CA's ClusterIssuer, the pod runner, then the stack."""
    plane.create_namespace(ENCLAVES)
    plane.create_namespace(LICENSING)
    plane.create_service_account(ENCLAVES, "licensing-enclave")
    plane.create_service_account(LICENSING, "licensing-backend")
    apply_rbac(plane)
    kubeconfig = plane.kubeconfig_for_service_account(
        LICENSING, "licensing-backend", tmp / "backend.kubeconfig"
    )
    data_dir = tmp / "data-sqlite"
    data_dir.mkdir()
    layout = DataLayout(data_dir)
    CertificateAuthority.load_or_create(layout.ca_key, layout.ca_certificate)
    # The ClusterIssuer is backed by the licensing CA itself (architecture brief, section 3).
    plane.install_ca_cluster_issuer(
        ISSUER, layout.ca_certificate.read_bytes(), layout.ca_key.read_bytes()
    )
    stack = Stack(
        "sqlite",
        data_dir,
        f"sqlite+aiosqlite:///{data_dir / 'licensing.db'}",
        free_port(),
        free_port(),
        free_port(),
        extra_env={
            "LICENSING_ENCLAVE_RUNTIME": "kubernetes",
            "LICENSING_CERTIFICATE_ISSUER": "cert-manager",
            "LICENSING_KUBERNETES_KUBECONFIG": str(kubeconfig),
            "LICENSING_KUBERNETES_NAMESPACE": ENCLAVES,
            "LICENSING_KUBERNETES_ENROLLMENT_ADDR": f"127.0.0.1:{free_port()}",
            "LICENSING_KUBERNETES_CERT_MANAGER_ISSUER": ISSUER,
            "LICENSING_MAX_ENCLAVES": "300",
            **extra_env,
        },
    )
    runner = PodRunner(
        plane.kubeconfig, namespaces=[ENCLAVES], executables=COMMANDS, root=tmp / "pods"
    )
    runner.start()
    try:
        stack.start()
        yield KubeStack(plane, stack, runner)
    finally:
        stack.stop()
        runner.stop()
