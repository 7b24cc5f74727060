"""``KubernetesRuntime``: each enclave is a Pod (+ ConfigMap, Service, optional Ingress).

The Pod is the root object: the ConfigMap (what the enclave may know), the Service
and the Ingress name it as their owner, so deleting the Pod removes everything made
for the enclave through the garbage collector. Every object carries the enclave's id
and owner as labels, which is how ``sweep`` finds what a crash left behind.

The enclave makes its key in the pod and sends only its CSR, over TLS, with its
projected ServiceAccount token (``EnrollmentDesk``); no Secret ever holds its key.
Phases come from one namespace-wide Pod watch (``ObjectWatch``), never from sleeps,
and every API call runs on ``KubeApi``'s thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from licensing_server.kube import KubeApi, ObjectWatch
from licensing_server.kube._watch import Obj
from licensing_server.pki import TRUST_DOMAIN
from licensing_server.runtimes._enrollment import Enrollment, EnrollmentDesk
from licensing_server.runtimes._protocol import (
    RuntimeFailure,
    WorkloadNames,
    WorkloadSpec,
    enclave_server_name,
)

__all__ = ["KubernetesHandle", "KubernetesRuntime", "KubernetesWorkload", "PodTemplate"]

_log = logging.getLogger(__name__)

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "licensing-backend"
ENCLAVE_ID_LABEL = "licensing.example/enclave-id"
OWNER_LABEL = "licensing.example/owner"
_SELECTOR = f"{MANAGED_BY}={MANAGER},app.kubernetes.io/name=licensing-enclave"
CONFIG_DIR = "/etc/licensing-enclave"
TOKEN_DIR = "/var/run/secrets/licensing"  # noqa: S105 - a path, not a secret
#: The kubelet refreshes a projected token at 80% of its life; 600 s is the API minimum.
TOKEN_SECONDS = 600


@dataclass(frozen=True, slots=True)
class PodTemplate:
    """What every enclave pod gets (from ``LICENSING_KUBERNETES_*``)."""

    namespace: str
    image: str
    service_account: str
    port: int
    token_audience: str
    enrollment_url: str
    cpu_request: str = "50m"
    cpu_limit: str = "500m"
    memory_request: str = "64Mi"
    memory_limit: str = "256Mi"
    ingress_domain: str = ""
    ingress_class: str = ""
    #: Kubernetes' cluster DNS suffix, for the Service's names in the certificate.
    cluster_domain: str = "cluster.local"


@dataclass(frozen=True, slots=True)
class KubernetesHandle:
    """The Pod's name and uid: the uid tells our pod from a namesake made later."""

    pod: str
    uid: str

    def dump(self) -> str:
        return json.dumps({"pod": self.pod, "uid": self.uid})

    @classmethod
    def load(cls, text: str) -> KubernetesHandle | None:
        try:
            raw: Any = json.loads(text)
            return cls(str(raw["pod"]), str(raw["uid"]))
        except (ValueError, KeyError, TypeError):
            return None


def pod_name(enclave_id: str) -> str:
    return f"enclave-{enclave_id}"


def _terminated(pod: Obj | None, uid: str) -> str | None:
    """Why the pod ``uid`` cannot (any longer) be an enclave, or None while it can."""
    if pod is None or pod["metadata"].get("uid") != uid:
        return "its pod was deleted"
    if pod["metadata"].get("deletionTimestamp"):
        return "its pod is being deleted"
    phase = pod.get("status", {}).get("phase")
    if phase in ("Failed", "Succeeded"):
        code = ""
        for status in pod.get("status", {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated")
            if terminated:
                code = f" with code {terminated.get('exitCode')}"
        return f"its pod ended ({phase}{code})"
    return None


def _scheduled(pod: Obj | None) -> bool:
    return pod is not None and bool(pod.get("spec", {}).get("nodeName"))


def _unschedulable(pod: Obj | None) -> str:
    for condition in (pod or {}).get("status", {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return str(condition.get("message") or condition.get("reason") or "")
    return ""


class KubernetesWorkload:
    def __init__(
        self,
        runtime: KubernetesRuntime,
        enclave_id: str,
        handle: KubernetesHandle,
        enrollment: Enrollment,
    ):
        self._runtime = runtime
        self._enclave_id = enclave_id
        self._handle = handle
        self._enrollment = enrollment

    @property
    def handle(self) -> str:
        return self._handle.dump()

    @property
    def names(self) -> WorkloadNames:
        # The enclave puts exactly these into its CSR (cert-manager's CA issuer signs
        # the CSR's names); the issuer checks they are these.
        template = self._runtime.template
        host = f"{self._enclave_id}.{template.ingress_domain}" if template.ingress_domain else ""
        return WorkloadNames(
            tuple(self._runtime.certificate_names(self._enclave_id)), server_name=host
        )

    async def _until_pod_ends(self) -> str:
        pods = self._runtime.pods
        while True:
            ended = await pods.wait_until(
                self._handle.pod, lambda p: _terminated(p, self._handle.uid) is not None, 1e9
            )
            why = _terminated(ended, self._handle.uid) or "its pod ended"
            if ended is not None:
                return why
            # Gone from the watch's view (a relist around an apiserver restart can lag):
            # only the apiserver itself may say the pod is gone.
            current = await self._runtime.read_pod(self._handle.pod)
            if _terminated(current, self._handle.uid) is not None:
                return why
            await pods.wait_until(self._handle.pod, lambda p: p is not None, 1e9)

    async def _first(self, wanted: asyncio.Future[Any]) -> Any:
        """``wanted``'s result, unless the pod ends first (``RuntimeFailure``)."""
        ending = asyncio.ensure_future(self._until_pod_ends())
        try:
            await asyncio.wait({ending, wanted}, return_when=asyncio.FIRST_COMPLETED)
            if wanted.done():
                return wanted.result()
            why = ending.result()
            raise RuntimeFailure("ENCLAVE_EXITED", f"the enclave stopped: {why}")
        finally:
            ending.cancel()

    async def certificate_request(self) -> str:
        csr: str = await self._first(self._enrollment.csr)
        return csr

    async def install_certificate(self, certificate_pem: str, ca_pems: list[str]) -> str:
        self._runtime.enrollment_desk.deliver(self._enclave_id, certificate_pem, ca_pems)
        template = self._runtime.template
        if template.ingress_domain:
            return f"{self._enclave_id}.{template.ingress_domain}:443"
        pod = await self._runtime.pods.wait_until(
            self._handle.pod,
            lambda p: p is None or bool(p.get("status", {}).get("podIP")),
            30,
        )
        if pod is None or _terminated(pod, self._handle.uid):
            raise RuntimeFailure("ENCLAVE_EXITED", "the enclave stopped: its pod was deleted")
        return f"{pod['status']['podIP']}:{template.port}"


class KubernetesRuntime:
    """Enclaves as pods in one namespace, through the Kubernetes API (``kube``)."""

    def __init__(
        self,
        api: KubeApi,
        desk: EnrollmentDesk,
        template: PodTemplate,
        *,
        schedule_timeout: float = 30.0,
    ):
        self._api = api
        self.enrollment_desk = desk
        self.template = template
        self._schedule_timeout = schedule_timeout
        core = api.core()
        self.pods = ObjectWatch(
            api,
            "pods",
            core.list_namespaced_pod,
            template.namespace,
            label_selector=_SELECTOR,
        )
        self._started = False

    # Names ---------------------------------------------------------------------------
    def certificate_names(self, enclave_id: str) -> list[str]:
        """The DNS names the enclave's certificate carries: ours, its Service's, its host."""
        t = self.template
        service = pod_name(enclave_id)
        names = [
            enclave_server_name(enclave_id),
            f"{service}.{t.namespace}.svc",
            f"{service}.{t.namespace}.svc.{t.cluster_domain}",
        ]
        if t.ingress_domain:
            names.append(f"{enclave_id}.{t.ingress_domain}")
        return names

    def _labels(self, spec: WorkloadSpec) -> dict[str, str]:
        return {
            MANAGED_BY: MANAGER,
            "app.kubernetes.io/name": "licensing-enclave",
            ENCLAVE_ID_LABEL: spec.enclave_id,
            OWNER_LABEL: spec.owner_id,
        }

    # Objects -------------------------------------------------------------------------
    def pod_manifest(self, spec: WorkloadSpec) -> dict[str, Any]:
        t = self.template
        name = pod_name(spec.enclave_id)
        restricted = {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": t.namespace, "labels": self._labels(spec)},
            "spec": {
                "serviceAccountName": t.service_account,
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "restartPolicy": "Never",
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 10001,
                    "runAsGroup": 10001,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "enclave",
                        "image": t.image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["licensing-enclave"],
                        "args": [
                            "--config-dir",
                            CONFIG_DIR,
                            "--enroll",
                            t.enrollment_url,
                            "--token-file",
                            f"{TOKEN_DIR}/token",
                            "--listen",
                            f"$(POD_IP):{t.port}",
                        ],
                        "env": [
                            {
                                "name": "POD_IP",
                                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                            }
                        ],
                        "ports": [{"name": "grpc", "containerPort": t.port, "protocol": "TCP"}],
                        "resources": {
                            "requests": {"cpu": t.cpu_request, "memory": t.memory_request},
                            "limits": {"cpu": t.cpu_limit, "memory": t.memory_limit},
                        },
                        "securityContext": restricted,
                        "volumeMounts": [
                            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                            {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "config", "configMap": {"name": name}},
                    {
                        "name": "token",
                        "projected": {
                            "sources": [
                                {
                                    "serviceAccountToken": {
                                        "audience": t.token_audience,
                                        "expirationSeconds": TOKEN_SECONDS,
                                        "path": "token",
                                    }
                                }
                            ]
                        },
                    },
                ],
            },
        }

    def _owned(self, spec: WorkloadSpec, pod: KubernetesHandle) -> dict[str, Any]:
        return {
            "name": pod.pod,
            "namespace": self.template.namespace,
            "labels": self._labels(spec),
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod.pod,
                    "uid": pod.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }

    def config_map_manifest(self, spec: WorkloadSpec, pod: KubernetesHandle) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self._owned(spec, pod),
            "immutable": True,
            "data": {
                "enclave-id": spec.enclave_id,
                "owner": spec.owner_id,
                "jwks.json": spec.jwks_json,
                "ca.pem": spec.ca_pem,
                "issuer": spec.token_issuer,
                "audience": spec.token_audience,
                "dns-names": "\n".join(self.certificate_names(spec.enclave_id)) + "\n",
                "uris": f"spiffe://{TRUST_DOMAIN}/enclave/{spec.enclave_id}\n",
            },
        }

    def service_manifest(self, spec: WorkloadSpec, pod: KubernetesHandle) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self._owned(spec, pod),
            "spec": {
                "selector": {ENCLAVE_ID_LABEL: spec.enclave_id, MANAGED_BY: MANAGER},
                "ports": [{"name": "grpc", "port": self.template.port, "targetPort": "grpc"}],
            },
        }

    def ingress_manifest(self, spec: WorkloadSpec, pod: KubernetesHandle) -> dict[str, Any]:
        t = self.template
        metadata = self._owned(spec, pod)
        # TLS passthrough: the enclave terminates TLS itself, or its attested
        # certificate would mean nothing to the client.
        metadata["annotations"] = {
            "nginx.ingress.kubernetes.io/ssl-passthrough": "true",
            "nginx.ingress.kubernetes.io/backend-protocol": "GRPCS",
        }
        body: dict[str, Any] = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": metadata,
            "spec": {
                "rules": [
                    {
                        "host": f"{spec.enclave_id}.{t.ingress_domain}",
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {
                                        "service": {
                                            "name": pod.pod,
                                            "port": {"number": t.port},
                                        }
                                    },
                                }
                            ]
                        },
                    }
                ]
            },
        }
        if t.ingress_class:
            body["spec"]["ingressClassName"] = t.ingress_class
        return body

    # EnclaveRuntime --------------------------------------------------------------------
    async def start(self) -> None:
        self.pods.start()
        self._started = True
        try:
            await asyncio.wait_for(self.pods.synced(), self._api.request_timeout * 3)
        except TimeoutError as exc:
            raise RuntimeFailure(
                "KUBERNETES_UNAVAILABLE", "cannot list the enclave namespace's pods"
            ) from exc

    async def place(self, spec: WorkloadSpec) -> KubernetesWorkload:
        core = self._api.core()
        ns = self.template.namespace
        name = pod_name(spec.enclave_id)
        # The ConfigMap first, so the pod never starts before what it mounts exists;
        # it is given the Pod as owner once the Pod (and so its uid) exists.
        config_map = self.config_map_manifest(spec, KubernetesHandle(name, ""))
        owner_refs = config_map["metadata"].pop("ownerReferences")
        await self._api.call("create configmaps", core.create_namespaced_config_map, ns, config_map)
        try:
            created = await self._api.call(
                "create pods", core.create_namespaced_pod, ns, self.pod_manifest(spec)
            )
        except BaseException:
            await self._delete_orphans(spec.enclave_id)
            raise
        handle = KubernetesHandle(name, str(created.metadata.uid))
        owner_refs[0]["uid"] = handle.uid
        enrollment = self.enrollment_desk.expect(
            spec.enclave_id,
            namespace=ns,
            service_account=self.template.service_account,
            pod_name=name,
            pod_uid=handle.uid,
        )
        try:
            await self._api.call(
                "own configmaps",
                core.patch_namespaced_config_map,
                name,
                ns,
                {"metadata": {"ownerReferences": owner_refs}},
            )
            await self._api.call(
                "create services",
                core.create_namespaced_service,
                ns,
                self.service_manifest(spec, handle),
            )
            if self.template.ingress_domain:
                await self._api.call(
                    "create ingresses",
                    self._api.networking().create_namespaced_ingress,
                    ns,
                    self.ingress_manifest(spec, handle),
                )
            try:
                pod = await self.pods.wait_until(
                    name,
                    lambda p: _scheduled(p) or _terminated(p, handle.uid) is not None,
                    self._schedule_timeout,
                    after=str(created.metadata.resource_version or ""),
                )
            except TimeoutError as exc:
                why = _unschedulable(self.pods.get(name)) or "no node took it"
                raise RuntimeFailure(
                    "ENCLAVE_UNSCHEDULABLE", f"the enclave's pod was not scheduled: {why}"
                ) from exc
            if (ended := _terminated(pod, handle.uid)) is not None:
                raise RuntimeFailure("ENCLAVE_EXITED", f"the enclave stopped: {ended}")
        except BaseException:
            await self._delete_pod(name, handle.uid)
            await self._delete_orphans(spec.enclave_id)
            self.enrollment_desk.forget(spec.enclave_id)
            raise
        return KubernetesWorkload(self, spec.enclave_id, handle, enrollment)

    async def _delete_pod(self, name: str, uid: str | None) -> None:
        """Delete the pod (its owned objects follow); absent is fine."""
        body: dict[str, Any] = {"propagationPolicy": "Background", "gracePeriodSeconds": 5}
        if uid:
            body["preconditions"] = {"uid": uid}
        await self._api.call(
            "delete pods",
            self._api.core().delete_namespaced_pod,
            name,
            self.template.namespace,
            body=body,
            accept=frozenset({404, 409}),
        )

    async def revoke_sessions(self, session_ids: Sequence[str]) -> int:
        """``SessionRevoker``: down each enclave pod's WatchRevocations stream."""
        return self.enrollment_desk.revoke_sessions(list(session_ids))

    async def stop(self, enclave_id: str, handle: str) -> None:
        self.enrollment_desk.forget(enclave_id)
        parsed = KubernetesHandle.load(handle) if handle else None
        name = pod_name(enclave_id)
        # A handle-less stop (killed before SCHEDULED was recorded) deletes by name.
        await self._delete_pod(name, parsed.uid if parsed else None)
        if parsed is None:
            await self._delete_orphans(enclave_id)

    async def _delete_orphans(self, enclave_id: str) -> None:
        """Objects whose Pod was never created never get garbage-collected: delete them."""
        ns = self.template.namespace
        core = self._api.core()
        name = pod_name(enclave_id)
        for what, fn in (
            ("delete configmaps", core.delete_namespaced_config_map),
            ("delete services", core.delete_namespaced_service),
        ):
            await self._api.call(what, fn, name, ns, accept=frozenset({404}))

    async def is_alive(self, enclave_id: str, handle: str) -> bool:
        parsed = KubernetesHandle.load(handle)
        if parsed is None:
            return False
        pod = self.pods.get(parsed.pod) if self._started else None
        if _terminated(pod, parsed.uid) is not None:
            # Not (or no longer) in the watch's view: ask the apiserver, which alone may
            # say a pod is gone (a lagging relist must not fail a live enclave).
            pod = await self.read_pod(parsed.pod)
        alive = _terminated(pod, parsed.uid) is None
        if alive:  # kept after a backend restart: its revocation stream may reopen
            self.enrollment_desk.readmit(
                enclave_id,
                namespace=self.template.namespace,
                service_account=self.template.service_account,
                pod_name=parsed.pod,
                pod_uid=parsed.uid,
            )
        return alive

    async def read_pod(self, name: str) -> Obj | None:
        found = await self._api.call(
            "get pods",
            self._api.core().read_namespaced_pod,
            name,
            self.template.namespace,
            accept=frozenset({404}),
        )
        if isinstance(found, Exception):
            return None
        obj: Obj = self._api.client.sanitize_for_serialization(found)
        return obj

    async def sweep(self, keep: set[str]) -> list[str]:
        """Delete every enclave pod (and so its objects) not in ``keep``, and orphans."""
        removed: set[str] = set()
        for pod in self.pods.objects():
            enclave_id = pod["metadata"].get("labels", {}).get(ENCLAVE_ID_LABEL, "")
            if enclave_id and enclave_id not in keep:
                await self._delete_pod(pod["metadata"]["name"], None)
                self.enrollment_desk.forget(enclave_id)
                removed.add(enclave_id)
        core = self._api.core()
        ns = self.template.namespace
        for what, lister, deleter in (
            ("list configmaps", core.list_namespaced_config_map, core.delete_namespaced_config_map),
            ("list services", core.list_namespaced_service, core.delete_namespaced_service),
        ):
            listing = await self._api.call(what, lister, ns, label_selector=_SELECTOR)
            for item in listing.items:
                enclave_id = (item.metadata.labels or {}).get(ENCLAVE_ID_LABEL, "")
                owned = bool(item.metadata.owner_references)
                if enclave_id and enclave_id not in keep and not owned:
                    await self._api.call(
                        what.replace("list", "delete"),
                        deleter,
                        item.metadata.name,
                        ns,
                        accept=frozenset({404}),
                    )
                    removed.add(enclave_id)
        return sorted(removed)

    async def close(self) -> None:
        """Pods outlive the backend (a restart finds them); only the watch stops here."""
        await self.enrollment_desk.close()
        await self.pods.stop()
        self._started = False
        await self._api.close()
