"""What ``KubernetesRuntime`` makes and removes, driven directly on the real apiserver.

No pod runner follows these namespaces: the pods are scheduled (kwok) but never enrol,
which is all that placing, sweeping and stopping need. API failures come back as
domain errors with reasons, never as exceptions of the client library.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from kubernetes import client

from licensing_common.errors import FailedPrecondition, ResourceExhausted
from licensing_server.kube import KubeApi, KubeConfig, PodTokenReviewer
from licensing_server.runtimes import EnrollmentDesk, WorkloadSpec
from licensing_server.runtimes._kubernetes import KubernetesRuntime, PodTemplate
from tests.kube.cluster import KubeControlPlane

DOMAIN = "enclaves.example.test"


def _spec() -> WorkloadSpec:
    return WorkloadSpec(
        enclave_id=str(uuid.uuid4()),
        owner_id=str(uuid.uuid4()),
        jwks_json=json.dumps({"keys": []}),
        ca_pem="-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        token_issuer="licensing",
        token_audience="licensing",
    )


@pytest.fixture
async def runtime(
    kube_control_plane: KubeControlPlane,
) -> AsyncIterator[tuple[KubernetesRuntime, str]]:
    namespace = kube_control_plane.create_namespace(f"rt-{uuid.uuid4().hex[:8]}")
    kube_control_plane.create_service_account(namespace, "licensing-enclave")
    api = KubeApi(KubeConfig(kubeconfig=str(kube_control_plane.kubeconfig), workers=4))
    template = PodTemplate(
        namespace=namespace,
        image="licensing-enclave:test",
        service_account="licensing-enclave",
        port=8443,
        token_audience="licensing-backend",
        enrollment_url="licensing-enrollment.licensing.svc:8445",
        ingress_domain=DOMAIN,
        ingress_class="nginx",
    )
    runtime = KubernetesRuntime(
        api, EnrollmentDesk(PodTokenReviewer(api, "licensing-backend")), template
    )
    await runtime.start()
    yield runtime, namespace
    await runtime.close()
    kube_control_plane.delete_namespace(namespace)


def _labelled(plane: KubeControlPlane, namespace: str, enclave_id: str) -> dict[str, int]:
    selector = f"licensing.example/enclave-id={enclave_id}"
    with plane.api_client() as api:
        core, net = client.CoreV1Api(api), client.NetworkingV1Api(api)
        counts = {
            "pods": len(core.list_namespaced_pod(namespace, label_selector=selector).items),
            "configmaps": len(
                core.list_namespaced_config_map(namespace, label_selector=selector).items
            ),
            "services": len(core.list_namespaced_service(namespace, label_selector=selector).items),
            "ingresses": len(net.list_namespaced_ingress(namespace, label_selector=selector).items),
        }
    return {k: v for k, v in counts.items() if v}


async def _gone(plane: KubeControlPlane, namespace: str, enclave_id: str) -> dict[str, int]:
    deadline = time.monotonic() + 30
    left = _labelled(plane, namespace, enclave_id)
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        left = _labelled(plane, namespace, enclave_id)
    return left


async def _eventually_dead(rt: KubernetesRuntime, enclave_id: str, handle: str) -> bool:
    deadline = time.monotonic() + 10
    while await rt.is_alive(enclave_id, handle):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def test_placing_makes_an_owned_ingress_with_tls_passthrough_and_stop_removes_all(
    kube_control_plane: KubeControlPlane, runtime: tuple[KubernetesRuntime, str]
) -> None:
    rt, namespace = runtime
    spec = _spec()
    workload = await rt.place(spec)
    assert _labelled(kube_control_plane, namespace, spec.enclave_id) == {
        "pods": 1,
        "configmaps": 1,
        "services": 1,
        "ingresses": 1,
    }
    name = f"enclave-{spec.enclave_id}"
    with kube_control_plane.api_client() as api:
        ingress = client.NetworkingV1Api(api).read_namespaced_ingress(name, namespace)
        config_map = client.CoreV1Api(api).read_namespaced_config_map(name, namespace)
    annotations = ingress.metadata.annotations
    assert annotations["nginx.ingress.kubernetes.io/ssl-passthrough"] == "true"
    assert ingress.spec.rules[0].host == f"{spec.enclave_id}.{DOMAIN}"
    assert ingress.spec.ingress_class_name == "nginx"
    assert ingress.metadata.owner_references[0].kind == "Pod"
    assert config_map.immutable is True
    assert config_map.data["enclave-id"] == spec.enclave_id
    assert f"{spec.enclave_id}.{DOMAIN}" in config_map.data["dns-names"].split()
    assert f"{spec.enclave_id}.{DOMAIN}" in workload.names.dns_names
    assert await rt.is_alive(spec.enclave_id, workload.handle)

    await rt.stop(spec.enclave_id, workload.handle)
    assert await _gone(kube_control_plane, namespace, spec.enclave_id) == {}
    # The runtime learns it from its watch, a moment after the apiserver.
    assert await _eventually_dead(rt, spec.enclave_id, workload.handle)
    await rt.stop(spec.enclave_id, workload.handle)  # idempotent


async def test_sweep_removes_what_the_database_no_longer_knows(
    kube_control_plane: KubeControlPlane, runtime: tuple[KubernetesRuntime, str]
) -> None:
    rt, namespace = runtime
    kept, leftover = _spec(), _spec()
    await rt.place(kept)
    await rt.place(leftover)
    assert await rt.sweep({kept.enclave_id}) == [leftover.enclave_id]
    assert await _gone(kube_control_plane, namespace, leftover.enclave_id) == {}
    assert _labelled(kube_control_plane, namespace, kept.enclave_id)["pods"] == 1


async def test_a_used_up_quota_is_resource_exhausted(
    kube_control_plane: KubeControlPlane, runtime: tuple[KubernetesRuntime, str]
) -> None:
    rt, namespace = runtime
    with kube_control_plane.api_client() as api:
        client.CoreV1Api(api).create_namespaced_resource_quota(
            namespace, {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
        )
    await asyncio.sleep(1)  # the quota controller records its usage
    spec = _spec()
    with pytest.raises(ResourceExhausted) as refused:
        await rt.place(spec)
    assert refused.value.reason == "KUBERNETES_QUOTA_EXCEEDED"
    assert _labelled(kube_control_plane, namespace, spec.enclave_id) == {}


async def test_a_missing_namespace_is_a_failed_precondition(
    kube_control_plane: KubeControlPlane,
) -> None:
    api = KubeApi(KubeConfig(kubeconfig=str(kube_control_plane.kubeconfig)))
    template = PodTemplate(
        namespace="no-such-namespace",
        image="x",
        service_account="x",
        port=8443,
        token_audience="licensing-backend",
        enrollment_url="x:1",
    )
    rt = KubernetesRuntime(
        api, EnrollmentDesk(PodTokenReviewer(api, "licensing-backend")), template
    )
    await rt.start()
    try:
        with pytest.raises(FailedPrecondition) as refused:
            await rt.place(_spec())
        assert refused.value.reason == "KUBERNETES_NOT_FOUND"
    finally:
        await rt.close()
