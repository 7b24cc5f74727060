"""The overlays on the real test control plane (kube-apiserver, controller manager, scheduler,
kwok and cert-manager; tests/kube/cluster.py): the apiserver accepts every object of each
overlay (server-side dry run, with the dev Secrets decrypted by sops), and the dev overlay,
applied for real the way k8s/README.md says, gets its certificate from cert-manager and its
pods admitted under the "restricted" Pod Security Standard."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.deploy.conftest import DEV_KEY, OVERLAYS, REPO, decrypt, documents
from tests.kube.cluster import KubeControlPlane, wait_until

NAMESPACES = REPO / "k8s" / "base" / "namespaces.yaml"


class Kubectl:
    def __init__(self, binary: str, kubeconfig: Path) -> None:
        self.binary, self.kubeconfig = binary, kubeconfig

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.binary, "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
            )
        return done


@pytest.fixture(scope="module")
def cluster(kube_control_plane: KubeControlPlane, kubectl: str) -> Iterator[Kubectl]:
    """The control plane with the overlays' namespaces; everything they made is deleted after,
    so later tests find the cluster as it was."""
    k = Kubectl(kubectl, kube_control_plane.kubeconfig)
    k("apply", "-f", str(NAMESPACES))
    yield k
    k(
        "delete",
        "-k",
        str(REPO / "k8s" / "overlays" / "dev"),
        "--ignore-not-found",
        "--wait=false",
        check=False,
    )
    k("delete", "secret", "licensing-ca", "-n", "cert-manager", "--ignore-not-found", check=False)
    k(
        "delete",
        "namespace",
        "licensing",
        "licensing-enclaves",
        "--ignore-not-found",
        "--timeout=120s",
        check=False,
    )


def _stream(objects_yaml: str, *more: str) -> str:
    return "\n---\n".join([objects_yaml, *more])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_apiserver_accepts_every_object_of_each_overlay(
    cluster: Kubectl, sops: str, overlay: str, tmp_path: Path
) -> None:
    rendered = cluster("kustomize", str(REPO / "k8s" / "overlays" / overlay)).stdout
    parts = [rendered]
    if overlay == "dev":
        secrets = decrypt(
            sops, REPO / "k8s" / "overlays" / "dev" / "secrets.enc.yaml", DEV_KEY, tmp_path
        )
        assert secrets.returncode == 0, secrets.stderr
        parts.append(secrets.stdout)
    # Production's Secrets open only with the operator's key: their shape is the dev one's.
    done = cluster("apply", "--dry-run=server", "-f", "-", stdin=_stream(*parts))
    accepted = [line for line in done.stdout.splitlines() if line.endswith("(server dry run)")]
    expected = len(documents(_stream(*parts)))
    assert len(accepted) == expected, done.stdout


def test_the_dev_overlay_deploys_and_cert_manager_issues_the_frontend_certificate(
    cluster: Kubectl, kube_control_plane: KubeControlPlane, sops: str, tmp_path: Path
) -> None:
    # Exactly the documented path: namespaces, decrypted Secrets, the overlay.
    env = {
        **os.environ,
        "KUBECTL": cluster.binary,
        "SOPS": sops,
        "SOPS_AGE_KEY_FILE": str(DEV_KEY),
    }
    done = subprocess.run(
        [
            str(REPO / "scripts" / "k8s" / "apply.sh"),
            "dev",
            "--kubeconfig",
            str(kube_control_plane.kubeconfig),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    # Every object of the overlay exists.
    rendered = cluster("kustomize", str(REPO / "k8s" / "overlays" / "dev")).stdout
    names = cluster("get", "-f", "-", "-o", "name", stdin=rendered).stdout.split()
    assert len(names) == len(documents(rendered))

    # cert-manager: the CA issuer is Ready and the frontend's certificate issued.
    cluster("wait", "--for=condition=Ready", "clusterissuer/licensing-ca", "--timeout=60s")
    cluster(
        "wait",
        "--for=condition=Ready",
        "-n",
        "licensing",
        "certificate/licensing-frontend",
        "--timeout=90s",
    )
    issued = cluster(
        "get",
        "secret",
        "licensing-frontend-tls",
        "-n",
        "licensing",
        "-o",
        "jsonpath={.data.tls\\.crt}",
    ).stdout
    cert = x509.load_pem_x509_certificate(base64.b64decode(issued))
    ca_pem = cluster(
        "get", "secret", "licensing-ca", "-n", "licensing", "-o", "jsonpath={.data.tls\\.crt}"
    ).stdout
    ca = x509.load_pem_x509_certificate(base64.b64decode(ca_pem))
    cert.verify_directly_issued_by(ca)
    names_in_cert = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"licensing.dev.test", "api.licensing.dev.test", "localhost"} <= set(
        names_in_cert.get_values_for_type(x509.DNSName)
    )

    # The pods are admitted (the namespaces enforce "restricted") and the licensing pod is
    # scheduled on the node; PostgreSQL waits for a volume no provisioner here makes.
    def pods(selector: str) -> list[str]:
        out = cluster(
            "get",
            "pods",
            "-n",
            "licensing",
            "-l",
            selector,
            "-o",
            "jsonpath={.items[*].metadata.name}",
        )
        return out.stdout.split()

    # ``kubectl wait -l`` fails at once while the selector matches nothing: the Deployment's
    # ReplicaSet makes the pod a moment later (longer on a loaded machine).
    wait_until(
        lambda: pods("app.kubernetes.io/name=licensing"),
        what="the Deployment's pod created",
        timeout=90,
    )
    cluster(
        "wait",
        "--for=condition=PodScheduled",
        "pod",
        "-n",
        "licensing",
        "-l",
        "app.kubernetes.io/name=licensing",
        "--timeout=60s",
    )
    assert len(pods("app.kubernetes.io/name=licensing")) == 1
    assert pods("app.kubernetes.io/name=licensing-postgres") == ["licensing-postgres-0"]
    events = cluster(
        "get", "events", "-n", "licensing", "-o", "jsonpath={.items[*].message}"
    ).stdout
    assert "violates PodSecurity" not in events
