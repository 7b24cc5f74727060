"""The dev overlay applied for real and its pods run: the whole user story through the CLI.

Everything Kubernetes is real (tests/kube/cluster.py) except what a cluster's nodes and add-ons
do, which test stand-ins do instead:

* the kubelet: ``tests.kube.pod_runner.PodRunner`` runs the licensing pod's containers
  (install-secrets, the swtpm sidecar, frontend, backend) and the enclave pods as local
  processes with the manifests' own command, environment and mounts; the images stand for this
  repository's ``.venv/bin`` (and grpc_health_probe from .tools/bin, under its image name);
* the StatefulSet's PostgreSQL: its pod waits for a volume no provisioner makes here, so the
  Service ``licensing-postgres.licensing.svc:5432`` is mapped to a private PostgreSQL server
  of this test (``tests.postgres_server``) with the overlay's role, password and database;
* cluster DNS: ``tests.kube.cluster_dns.ClusterDns``, in each container's
  ``/etc/resolv.conf``: Service names (the enrolment Service the enclave pods dial) to the pod
  behind them, and ``*.dev.test`` (the Ingress hosts, which the backend dials to check an
  enclave's health) to the ingress stand-in;
* the ingress controller: ``tests.kube.ingress.PassthroughIngress`` forwards by SNI to the pod
  behind each Ingress rule (TLS passthrough), on port 443 of a loopback address of its own;
  the CLI, a process of the machine, finds it by name through ``tests/kube/resolve``.

The CLI reaches the frontend as a user of the dev deployment does: by the Ingress's host names
(licensing.dev.test, api.licensing.dev.test), through the same Ingress stand-in.
"""

from __future__ import annotations

import base64
import functools
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.clients.cli_support import Result
from tests.clients.test_cli_enclaves import CHECKS, PHASES, checks_in, created_id, phases_in
from tests.deploy.conftest import DEV_KEY, REPO
from tests.deploy.test_cluster import NAMESPACES, Kubectl
from tests.kube.cluster import KubeControlPlane, wait_until
from tests.kube.cluster_dns import ClusterDns, free_loopback_address
from tests.kube.ingress import PassthroughIngress
from tests.kube.pod_runner import PodProcess, PodRunner
from tests.postgres_server import PostgresServer, private_postgres
from tests.support import PASSWORD

DEV = REPO / "k8s" / "overlays" / "dev"
VENV_BIN = Path(sys.executable).parent
RESOLVER = REPO / "tests" / "kube" / "resolve"
#: The frontend's two listeners, by the dev Ingress's host names (TLS passthrough).
ENROLL, API = "licensing.dev.test:443", "api.licensing.dev.test:443"


@pytest.fixture(scope="module")
def dev_cluster(kube_control_plane: KubeControlPlane, kubectl: str) -> Iterator[Kubectl]:
    """The overlay's namespaces; everything the dev overlay made is deleted after."""
    k = Kubectl(kubectl, kube_control_plane.kubeconfig)
    k("apply", "-f", str(NAMESPACES))
    yield k
    k("delete", "-k", str(DEV), "--ignore-not-found", "--wait=false", check=False)
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


def _dev_secret(sops: str, name: str, key: str, home: Path) -> str:
    from tests.deploy.conftest import decrypt, documents

    done = decrypt(sops, DEV / "secrets.enc.yaml", DEV_KEY, home)
    assert done.returncode == 0, done.stderr
    for secret in documents(done.stdout):
        if secret["metadata"]["name"] == name and secret["metadata"]["namespace"] == "licensing":
            return str(secret["stringData"][key])
    raise LookupError(name)


@pytest.fixture(scope="module")
def postgres_for_the_statefulset(
    sops: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PostgresServer]:
    """A private server with what the StatefulSet's would hold: role and database
    ``licensing``, the password of the Secret ``licensing-database``."""
    password = _dev_secret(sops, "licensing-database", "password", tmp_path_factory.mktemp("h"))
    with private_postgres() as server:
        for sql in (
            f"CREATE ROLE licensing LOGIN PASSWORD '{password}'",
            "CREATE DATABASE licensing OWNER licensing",
        ):
            server._run(
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(server.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            )
        yield server


def _image_folders(tmp: Path) -> list[Path]:
    """The server image's PATH: the venv, and grpc_health_probe under the image's name."""
    probes = tmp / "probe-bin"
    probes.mkdir(exist_ok=True)
    link = probes / "grpc_health_probe"
    if not link.exists():
        link.symlink_to(REPO / ".tools" / "bin" / "grpc-health-probe")
    return [VENV_BIN, probes]


@dataclass
class DevDeployment:
    runner: PodRunner
    ingress: PassthroughIngress
    dns: ClusterDns


@pytest.fixture(scope="module")
def running_dev(
    dev_cluster: Kubectl,
    kube_control_plane: KubeControlPlane,
    postgres_for_the_statefulset: PostgresServer,
    sops: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DevDeployment]:
    """The stand-ins started, then the dev overlay applied (scripts/k8s/apply.sh)."""
    tmp = tmp_path_factory.mktemp("dev-pods")
    kubeconfig = kube_control_plane.kubeconfig
    namespaces = ["licensing", "licensing-enclaves"]
    ingress = PassthroughIngress(kubeconfig, namespaces, (free_loopback_address(443), 443))
    dns = ClusterDns(kubeconfig, {".dev.test": ingress.host})
    runner = PodRunner(
        kubeconfig,
        namespaces=namespaces,
        root=tmp / "pods",
        images={"licensing-server": _image_folders(tmp), "licensing-enclave": [VENV_BIN]},
        services={
            "licensing-postgres.licensing.svc:5432": (
                f"127.0.0.1:{postgres_for_the_statefulset.port}"
            ),
        },
        pod_local_addresses=True,
        resolv_conf=dns.resolv_conf,
        base_env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
        missing_object_seconds=120,
    )
    with ingress, dns, runner:
        env = {
            **os.environ,
            "KUBECTL": dev_cluster.binary,
            "SOPS": sops,
            "SOPS_AGE_KEY_FILE": str(DEV_KEY),
        }
        done = subprocess.run(
            [str(REPO / "scripts" / "k8s" / "apply.sh"), "dev", "--kubeconfig", str(kubeconfig)],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        try:
            yield DevDeployment(runner, ingress, dns)
        finally:
            print(runner.logs())


def _licensing_pod(runner: PodRunner) -> PodProcess:
    pod = runner.wait_pod("licensing", "licensing-", timeout=240)
    assert not pod.name.startswith("licensing-postgres")
    return pod


def test_the_dev_pods_run_with_the_manifests_command_env_and_mounts(
    running_dev: DevDeployment, dev_cluster: Kubectl
) -> None:
    runner = running_dev.runner
    dev_cluster(
        "wait",
        "--for=condition=Ready",
        "-n",
        "licensing",
        "certificate/licensing-frontend",
        "--timeout=120s",
    )
    pod = _licensing_pod(runner)
    assert list(pod.containers) == ["install-secrets", "swtpm", "frontend", "backend"]
    assert pod.containers["install-secrets"].exit_code == 0
    swtpm, frontend, backend = (pod.containers[n] for n in ("swtpm", "frontend", "backend"))
    assert swtpm.kind == "sidecar"
    assert swtpm.process
    assert swtpm.process.poll() is None

    # Each container's own command, environment and mounts (rewritten under its folder).
    assert frontend.argv == [str(VENV_BIN / "licensing-frontend")]
    assert backend.argv == [str(VENV_BIN / "licensing-backend")]
    assert swtpm.argv[1:] == [
        "-m",
        "licensing_server.tpm",
        "--state-dir",
        str(swtpm.root / "var/lib/licensing/tpm"),
        "--port",
        "2321",
    ]
    assert backend.env["POD_NAME"] == pod.name
    assert backend.env["LICENSING_DATA_DIR"] == str(backend.root / "var/lib/licensing")
    assert frontend.env["LICENSING_TOKEN_KEYS_DIR"] == str(
        frontend.root / "run/licensing/token-signing"
    )
    assert "KUBECONFIG" in backend.env
    assert "KUBECONFIG" not in frontend.env
    assert backend.env["LICENSING_LOG_LEVEL"] == "DEBUG"  # the dev overlay's ConfigMap

    # The certificate cert-manager issued is the one the frontend serves (install-secrets).
    issued = dev_cluster(
        "get",
        "secret",
        "licensing-frontend-tls",
        "-n",
        "licensing",
        "-o",
        "jsonpath={.data.tls\\.crt}",
    ).stdout
    served = (frontend.root / "var/lib/licensing/frontend/server.pem").read_bytes()
    assert base64.b64decode(issued).strip() == served.strip()

    # The manifests' own probes pass (grpc_health_probe over TLS, as the kubelet runs them).
    for container in ("frontend", "backend"):
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            wait_until(
                functools.partial(_passes, runner, pod, container, kind),
                what=f"{container} {kind}",
                timeout=180,
                every=2,
            )


def _passes(runner: PodRunner, pod: PodProcess, container: str, kind: str) -> bool:
    return runner.probe(pod, container, kind).returncode == 0


def _cli(config_dir: Path, ingress: PassthroughIngress, *args: str, stdin: str = "") -> Result:
    command = [
        sys.executable,
        "-m",
        "licensing_client.cli",
        "--config-dir",
        str(config_dir),
        "--server",
        ENROLL,
        "--api",
        API,
        *args,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LICENSING_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(RESOLVER), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        TEST_RESOLVE=f".dev.test:443={ingress.host}:443",
        LICENSING_PASSWORD=PASSWORD,
    )
    done = subprocess.run(
        command, input=stdin, capture_output=True, text=True, env=env, timeout=180, check=False
    )
    return Result(command, done.returncode, done.stdout, done.stderr)


def test_the_cli_completes_the_whole_story_against_the_dev_pods(
    running_dev: DevDeployment, dev_cluster: Kubectl, tmp_path: Path
) -> None:
    runner, ingress = running_dev.runner, running_dev.ingress
    pod = _licensing_pod(runner)
    wait_until(
        lambda: runner.probe(pod, "backend").returncode == 0,
        what="backend ready",
        timeout=180,
        every=2,
    )
    config = tmp_path / "cli"
    name = f"dev-{uuid.uuid4().hex[:10]}"
    _cli(config, ingress, "signup", name, "--password-stdin", stdin=PASSWORD + "\n").ok()
    _cli(config, ingress, "login", name).ok()

    # Create with live progress: the enclave is a pod in licensing-enclaves, run by the
    # runner, its certificate signed by cert-manager, reached through the Ingress.
    created = _cli(config, ingress, "enclave", "create")
    seen = f"dns {running_dev.dns.queries}\ningress {ingress.forwarded}\n"
    assert created.returncode == 0, seen + created.stdout + created.stderr + runner.logs()[-6000:]
    assert phases_in(created.stdout) == PHASES, created.stdout
    assert checks_in(created.stdout) == CHECKS, created.stdout
    enclave_id = created_id(created)
    enclave_pod = runner.wait_started("licensing-enclaves", f"enclave-{enclave_id}")
    assert enclave_pod.main is not None
    assert "--enroll" in enclave_pod.argv
    # The enclave dials the enrolment Service by name: cluster DNS gave it the backend's pod.
    enroll = enclave_pod.argv[enclave_pod.argv.index("--enroll") + 1]
    assert enroll == "licensing-enrollment.licensing.svc:8445"
    answered = dict(running_dev.dns.queries)
    assert answered["licensing-enrollment.licensing.svc.cluster.local"] == pod.pod_ip
    # The backend checked the enclave's health through its Ingress host, as in a cluster.
    assert answered[f"{enclave_id}.enclaves.dev.test"] == ingress.host

    # Reached by its Ingress host, which is also the name asked for (SNI) and checked.
    got_json = _cli(config, ingress, "--output", "json", "enclave", "get", enclave_id).ok()
    described = got_json.json()
    host = f"{enclave_id}.enclaves.dev.test"
    assert (described["endpoint"], described["tls_server_name"]) == (f"{host}:443", host)

    attested = _cli(config, ingress, "enclave", "attest", enclave_id).ok()
    assert checks_in(attested.stdout) == CHECKS, attested.stdout
    _cli(config, ingress, "enclave", "call", enclave_id, "put-secret", "db", "hunter2").ok()
    got = _cli(config, ingress, "enclave", "call", enclave_id, "get-secret", "db").ok()
    assert got.stdout == "hunter2"
    assert (host, f"{enclave_pod.pod_ip}:8443") in ingress.forwarded

    deleted = _cli(config, ingress, "enclave", "delete", enclave_id).ok()
    assert enclave_id in deleted.stdout
    wait_until(
        lambda: (
            not dev_cluster(
                "get",
                "pods",
                "-n",
                "licensing-enclaves",
                "-l",
                f"licensing.example/enclave-id={enclave_id}",
                "-o",
                "name",
            ).stdout.strip()
        ),
        what="the enclave's pod gone",
        timeout=60,
    )
