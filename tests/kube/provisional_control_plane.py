"""A stand-in for the project's control-plane fixture: an apiserver someone else started.

``LICENSING_TEST_KUBECONFIG`` names the admin kubeconfig of a running control plane
(etcd, kube-apiserver, kube-controller-manager, cert-manager with its CRDs applied);
its directory is the PKI (``sa.key`` among it). Unset, the tests fail: they are
about a real apiserver, and skipping would hide that none ran.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

#: Where cert-manager (``--cluster-resource-namespace``) looks for ClusterIssuer secrets.
CLUSTER_RESOURCE_NAMESPACE = "cert-manager"


@dataclass(frozen=True)
class ControlPlane:
    kubeconfig: Path
    pki: Path

    def api_client(self) -> client.ApiClient:
        configuration = client.Configuration()
        config.load_kube_config(
            config_file=str(self.kubeconfig), client_configuration=configuration
        )
        return client.ApiClient(configuration)

    def install_ca_cluster_issuer(self, name: str, ca_cert_pem: str, ca_key_pem: str) -> None:
        """A CA ClusterIssuer ``name`` signing with this CA; returns once it is Ready."""
        api = self.api_client()
        core = client.CoreV1Api(api)
        custom = client.CustomObjectsApi(api)
        try:
            core.create_namespace({"metadata": {"name": CLUSTER_RESOURCE_NAMESPACE}})
        except ApiException as exc:
            if exc.status != 409:
                raise
        secret = {
            "metadata": {"name": f"{name}-ca"},
            "type": "kubernetes.io/tls",
            "data": {
                "tls.crt": base64.b64encode(ca_cert_pem.encode()).decode(),
                "tls.key": base64.b64encode(ca_key_pem.encode()).decode(),
            },
        }
        core.create_namespaced_secret(CLUSTER_RESOURCE_NAMESPACE, secret)
        custom.create_cluster_custom_object(
            "cert-manager.io",
            "v1",
            "clusterissuers",
            {
                "apiVersion": "cert-manager.io/v1",
                "kind": "ClusterIssuer",
                "metadata": {"name": name},
                "spec": {"ca": {"secretName": f"{name}-ca"}},
            },
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            issuer: Any = custom.get_cluster_custom_object(
                "cert-manager.io", "v1", "clusterissuers", name
            )
            conditions = (issuer.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return
            time.sleep(0.1)
        raise AssertionError(f"ClusterIssuer {name} did not become Ready")


@pytest.fixture(scope="session")
def kube_control_plane() -> ControlPlane:
    kubeconfig = os.environ.get("LICENSING_TEST_KUBECONFIG", "")
    if not kubeconfig:
        pytest.fail("set LICENSING_TEST_KUBECONFIG to a running control plane's admin kubeconfig")
    path = Path(kubeconfig)
    return ControlPlane(kubeconfig=path, pki=path.parent)
