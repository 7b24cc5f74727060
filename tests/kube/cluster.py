"""A real Kubernetes control plane on loopback for tests, started by ``scripts/kube/up.sh``.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (one fake node and pod
states, no kubelet) and the cert-manager controller run as local processes on free loopback
ports. Pods do not run anything by themselves: ``tests.kube.pod_runner.PodRunner`` stands in
for the kubelet's container runtime.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

__all__ = ["NODE_NAME", "REPO", "KubeControlPlane", "KubeStartError", "wait_until"]

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "kube"
#: The one kwok node up.sh creates; untainted, so every pod is scheduled there.
NODE_NAME = "kwok-node-0"
CERT_MANAGER_NAMESPACE = "cert-manager"

_T = TypeVar("_T")


class KubeStartError(RuntimeError):
    """The control plane did not come up; the message carries the script's output."""


def wait_until(
    probe: Callable[[], _T | None], *, what: str, timeout: float = 60.0, every: float = 0.2
) -> _T:
    """Call ``probe`` until it returns something truthy; API errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except ApiException as exc:
            last = exc
        else:
            if value:
                return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})")


class KubeControlPlane:
    """One control plane in ``run_dir`` (ports, PKI, etcd data and logs all live there)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir.resolve()
        self.kubeconfig = self.run_dir / "pki" / "admin.kubeconfig"
        #: The throw-away PKI: ca.crt/ca.key, admin.crt/.key, sa.key/sa.pub (token signing).
        self.pki = self.run_dir / "pki"
        self.node_name = NODE_NAME
        self.start_seconds = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start everything (or whatever is not running) and wait for a Ready node."""
        began = time.monotonic()
        done = subprocess.run(
            [str(SCRIPTS / "up.sh"), str(self.run_dir)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise KubeStartError(
                f"scripts/kube/up.sh {self.run_dir} exited {done.returncode}:\n"
                f"{done.stdout}{done.stderr}\n{self.log_tails()}"
            )
        self.start_seconds = time.monotonic() - began

    def stop(self, *, wipe: bool = False) -> None:
        """Stop every component; ``wipe`` also drops etcd data, PKI and ports."""
        args = [str(SCRIPTS / "down.sh"), str(self.run_dir)] + (["--wipe"] if wipe else [])
        subprocess.run(args, check=False, capture_output=True)

    def __enter__(self) -> KubeControlPlane:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def ports(self) -> dict[str, str]:
        """What up.sh recorded: ``APISERVER_PORT``, ``ETCD_CLIENT_PORT``, ``POD_CIDR``, ..."""
        text = (self.run_dir / "ports.env").read_text()
        return dict(line.split("=", 1) for line in text.split() if "=" in line)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['APISERVER_PORT']}"

    def log_path(self, component: str) -> Path:
        """``etcd``, ``apiserver``, ``kcm``, ``scheduler``, ``kwok`` or ``cert-manager``."""
        return self.run_dir / "log" / f"{component}.log"

    def log_tails(self, lines: int = 20) -> str:
        parts = []
        for path in sorted((self.run_dir / "log").glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    # -- faults: the apiserver alone ------------------------------------------------------

    def apiserver_pid(self) -> int:
        return int((self.run_dir / "pid" / "apiserver").read_text())

    def stop_apiserver(self) -> None:
        """Stop the kube-apiserver (etcd and the rest stay) and wait until it is gone.

        A second SIGTERM after a moment makes it exit at once rather than drain watches for
        a minute; SIGKILL if even that does not help.
        """
        pid = self.apiserver_pid()
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
            if not _alive(pid):
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a paused one cannot act on SIGTERM
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        if _alive(pid):
            raise RuntimeError(f"kube-apiserver (pid {pid}) did not stop")

    def start_apiserver(self) -> None:
        """Start the kube-apiserver again on its recorded port; wait until pods schedule.

        Ready is not enough: the scheduler and kwok lost their watches, and client-go
        retries them with a jittered backoff that grows with every restart (up to a
        minute). A canary pod in ``default`` that gets scheduled and Running shows both
        follow the new apiserver again, so a test's next pod is not stuck in Pending.
        """
        self.start()
        name = f"canary-{uuid.uuid4().hex[:8]}"
        with self._core() as core:
            core.create_namespaced_pod(
                "default",
                {
                    "metadata": {"name": name},
                    "spec": {"containers": [{"name": "c", "image": "canary"}]},
                },
            )
            try:
                wait_until(
                    lambda: core.read_namespaced_pod(name, "default").status.phase == "Running",
                    what="a canary pod scheduled and Running after the apiserver restart",
                    timeout=120,
                )
            finally:
                with contextlib.suppress(ApiException):
                    core.delete_namespaced_pod(name, "default", grace_period_seconds=0)

    def restart_apiserver(self) -> None:
        self.stop_apiserver()
        self.start_apiserver()

    def pause_apiserver(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a very slow apiserver)."""
        os.kill(self.apiserver_pid(), signal.SIGSTOP)

    def resume_apiserver(self) -> None:
        os.kill(self.apiserver_pid(), signal.SIGCONT)

    @contextlib.contextmanager
    def apiserver_paused(self) -> Iterator[None]:
        self.pause_apiserver()
        try:
            yield
        finally:
            self.resume_apiserver()

    # -- API helpers ----------------------------------------------------------------------

    def api_client(self, kubeconfig: Path | None = None) -> client.ApiClient:
        """A fresh client, admin (system:masters) unless another kubeconfig; close it."""
        configuration = client.Configuration()
        config.load_kube_config(
            config_file=str(kubeconfig or self.kubeconfig), client_configuration=configuration
        )
        return client.ApiClient(configuration)

    @contextlib.contextmanager
    def _core(self) -> Iterator[client.CoreV1Api]:
        with self.api_client() as api:
            yield client.CoreV1Api(api)

    def create_namespace(self, name: str) -> str:
        """Create ``name``; wait for what the controller manager adds and pods need.

        That is the ``default`` ServiceAccount and the ``kube-root-ca.crt`` ConfigMap
        (projected into every pod's API access volume).
        """
        with self._core() as core:
            core.create_namespace({"metadata": {"name": name}})
            wait_until(
                lambda: core.read_namespaced_service_account("default", name),
                what=f"the default ServiceAccount in {name}",
            )
            wait_until(
                lambda: core.read_namespaced_config_map("kube-root-ca.crt", name),
                what=f"the kube-root-ca.crt ConfigMap in {name}",
            )
        return name

    def delete_namespace(self, name: str) -> None:
        with self._core() as core, contextlib.suppress(ApiException):
            core.delete_namespace(name)

    def create_service_account(self, namespace: str, name: str) -> None:
        with self._core() as core:
            core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})

    def create_role(self, namespace: str, name: str, rules: list[dict[str, Any]]) -> None:
        """``rules`` as in a Role manifest: ``[{"apiGroups": [""], "resources": [...], ...}]``."""
        with self.api_client() as api:
            client.RbacAuthorizationV1Api(api).create_namespaced_role(
                namespace, {"metadata": {"name": name}, "rules": rules}
            )

    def bind_role(
        self, namespace: str, role: str, service_account: str, *, name: str | None = None
    ) -> None:
        """A RoleBinding of ``role`` to ``service_account`` (both in ``namespace``)."""
        body = {
            "metadata": {"name": name or f"{role}-{service_account}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [
                {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
            ],
        }
        with self.api_client() as api:
            client.RbacAuthorizationV1Api(api).create_namespaced_role_binding(namespace, body)

    def kubeconfig_for_service_account(self, namespace: str, name: str, path: Path) -> Path:
        """Write a kubeconfig that acts as ``namespace/name`` (a one-hour bound token)."""
        with self._core() as core:
            token = core.create_namespaced_service_account_token(
                name, namespace, {"spec": {"expirationSeconds": 3600}}
            ).status.token
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: test\n  cluster: {{server: '{self.server}', "
            f"certificate-authority: '{self.pki / 'ca.crt'}'}}\n"
            f"users:\n- name: sa\n  user: {{token: '{token}'}}\n"
            "contexts:\n- name: test\n  context: {cluster: test, user: sa}\n"
            "current-context: test\n"
        )
        return path

    def install_ca_cluster_issuer(
        self, name: str, ca_cert_pem: bytes, ca_key_pem: bytes, *, timeout: float = 60.0
    ) -> None:
        """A cert-manager ClusterIssuer of kind CA backed by this CA, waited for until Ready.

        The CA sits in the Secret ``name`` (type kubernetes.io/tls) in namespace cert-manager,
        cert-manager's cluster resource namespace.
        """
        secret = {
            "metadata": {"name": name},
            "type": "kubernetes.io/tls",
            "data": {
                "tls.crt": base64.b64encode(ca_cert_pem).decode(),
                "tls.key": base64.b64encode(ca_key_pem).decode(),
            },
        }
        issuer = {
            "apiVersion": "cert-manager.io/v1",
            "kind": "ClusterIssuer",
            "metadata": {"name": name},
            "spec": {"ca": {"secretName": name}},
        }
        with self.api_client() as api:
            client.CoreV1Api(api).create_namespaced_secret(CERT_MANAGER_NAMESPACE, secret)
            custom = client.CustomObjectsApi(api)
            custom.create_cluster_custom_object("cert-manager.io", "v1", "clusterissuers", issuer)

            def ready() -> bool:
                got = custom.get_cluster_custom_object(
                    "cert-manager.io", "v1", "clusterissuers", name
                )
                conditions = got.get("status", {}).get("conditions", [])
                return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

            wait_until(ready, what=f"ClusterIssuer {name} Ready", timeout=timeout)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (our child, not reaped) is gone for our purposes.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True
