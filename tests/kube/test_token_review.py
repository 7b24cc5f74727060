"""``PodTokenReviewer`` against a real apiserver: tokens bound to pods, and what is refused."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_asyncio
from kubernetes import client

from licensing_common.errors import FailedPrecondition, Unauthenticated
from licensing_server.kube import KubeApi, KubeConfig, PodIdentity, PodTokenReviewer
from tests.kube.cluster import KubeControlPlane as ControlPlane

AUDIENCE = "licensing-backend"


@pytest.fixture(scope="module")
def core(kube_control_plane: ControlPlane) -> client.CoreV1Api:
    return client.CoreV1Api(kube_control_plane.api_client())


@pytest.fixture(scope="module")
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"reviews-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_service_account(name, {"metadata": {"name": "enclave"}})
    yield name
    core.delete_namespace(name)


@pytest_asyncio.fixture
async def reviewer(kube_control_plane: ControlPlane) -> AsyncIterator[PodTokenReviewer]:
    api = KubeApi(KubeConfig(kubeconfig=str(kube_control_plane.kubeconfig), workers=2))
    yield PodTokenReviewer(api, AUDIENCE)
    await api.close()


def _pod(core: client.CoreV1Api, namespace: str) -> Any:
    """A pod running as ``enclave`` (it need not be scheduled to hold a bound token)."""
    return core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": f"enclave-{uuid.uuid4().hex[:8]}"},
            "spec": {
                "serviceAccountName": "enclave",
                "automountServiceAccountToken": False,
                "containers": [{"name": "enclave", "image": "licensing-enclave:test"}],
            },
        },
    )


def _token(
    core: client.CoreV1Api, namespace: str, pod: Any = None, audience: str = AUDIENCE
) -> str:
    spec: dict[str, Any] = {"audiences": [audience], "expirationSeconds": 600}
    if pod is not None:
        spec["boundObjectRef"] = {
            "kind": "Pod",
            "apiVersion": "v1",
            "name": pod.metadata.name,
            "uid": pod.metadata.uid,
        }
    answer: Any = core.create_namespaced_service_account_token("enclave", namespace, {"spec": spec})
    token: str = answer.status.token
    return token


async def test_a_pods_bound_token_reviews_to_that_pod(
    reviewer: PodTokenReviewer, core: client.CoreV1Api, namespace: str
) -> None:
    pod = _pod(core, namespace)
    identity = await reviewer.review(_token(core, namespace, pod))
    assert identity == PodIdentity(namespace, "enclave", pod.metadata.name, pod.metadata.uid)


async def test_a_token_for_another_audience_is_refused(
    reviewer: PodTokenReviewer, core: client.CoreV1Api, namespace: str
) -> None:
    token = _token(core, namespace, _pod(core, namespace), audience="some-other-service")
    with pytest.raises(Unauthenticated) as raised:
        await reviewer.review(token)
    assert raised.value.reason == "ENROLLMENT_TOKEN_INVALID"


async def test_a_token_bound_to_no_pod_is_refused(
    reviewer: PodTokenReviewer, core: client.CoreV1Api, namespace: str
) -> None:
    with pytest.raises(Unauthenticated) as raised:
        await reviewer.review(_token(core, namespace))
    assert raised.value.reason == "ENROLLMENT_TOKEN_INVALID"


async def test_the_token_of_a_deleted_pod_is_refused(
    reviewer: PodTokenReviewer, core: client.CoreV1Api, namespace: str
) -> None:
    pod = _pod(core, namespace)
    token = _token(core, namespace, pod)
    core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
    with pytest.raises(Unauthenticated):
        await reviewer.review(token)


async def test_an_expired_token_signed_with_the_clusters_own_key_is_refused(
    reviewer: PodTokenReviewer,
    core: client.CoreV1Api,
    namespace: str,
    kube_control_plane: ControlPlane,
) -> None:
    """Same header (kid) and claims as a real token, a valid ES256 signature, but expired."""
    real = _token(core, namespace, _pod(core, namespace))
    header = jwt.get_unverified_header(real)
    claims = jwt.decode(real, options={"verify_signature": False})
    hour_ago = int(time.time()) - 3600
    claims.update(iat=hour_ago - 600, nbf=hour_ago - 600, exp=hour_ago)
    key = (kube_control_plane.pki / "sa.key").read_text()
    forged = jwt.encode(claims, key, algorithm="ES256", headers={"kid": header["kid"]})
    # The apiserver accepts the same claims fresh: only the expiry is wrong.
    claims.update(iat=int(time.time()), nbf=int(time.time()), exp=int(time.time()) + 600)
    fresh = jwt.encode(claims, key, algorithm="ES256", headers={"kid": header["kid"]})
    assert (await reviewer.review(fresh)).pod_name == claims["kubernetes.io"]["pod"]["name"]

    with pytest.raises(Unauthenticated) as raised:
        await reviewer.review(forged)
    assert raised.value.reason == "ENROLLMENT_TOKEN_INVALID"


async def test_garbage_is_refused_without_asking_the_apiserver(
    kube_control_plane: ControlPlane,
) -> None:
    api = KubeApi(KubeConfig(kubeconfig=str(kube_control_plane.kubeconfig), workers=1))
    reviewer = PodTokenReviewer(api, AUDIENCE)
    for token in ("", "not-a-jwt", "a.b.c.d", "x" * 20000 + ".y.z"):
        with pytest.raises(Unauthenticated):
            await reviewer.review(token)
    assert api.requests == 0
    await api.close()


def _kubeconfig_for(plane: ControlPlane, token: str, path: Path) -> Path:
    """A kubeconfig authenticating with ``token`` (the admin one's server and CA)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {
                    "server": plane.server,
                    "certificate-authority": str(plane.pki / "ca.crt"),
                },
            }
        ],
        "users": [{"name": "backend", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "backend"}}],
        "current-context": "test",
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


async def test_a_backend_with_only_create_tokenreviews_can_review(
    kube_control_plane: ControlPlane, core: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    rbac = client.RbacAuthorizationV1Api(kube_control_plane.api_client())
    backend = f"backend-{uuid.uuid4().hex[:8]}"
    core.create_namespaced_service_account(namespace, {"metadata": {"name": backend}})
    answer: Any = core.create_namespaced_service_account_token(
        backend, namespace, {"spec": {"expirationSeconds": 600}}
    )
    api = KubeApi(
        KubeConfig(
            kubeconfig=str(
                _kubeconfig_for(kube_control_plane, answer.status.token, tmp_path / "kubeconfig")
            ),
            workers=1,
        )
    )
    reviewer = PodTokenReviewer(api, AUDIENCE)
    pod = _pod(core, namespace)
    token = _token(core, namespace, pod)

    with pytest.raises(FailedPrecondition) as raised:  # not a bad token: a missing ClusterRole
        await reviewer.review(token)
    assert raised.value.reason == "KUBERNETES_FORBIDDEN"

    rbac.create_cluster_role(
        {
            "metadata": {"name": backend},
            "rules": [
                {
                    "apiGroups": ["authentication.k8s.io"],
                    "resources": ["tokenreviews"],
                    "verbs": ["create"],
                }
            ],
        }
    )
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": backend},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": backend,
            },
            "subjects": [{"kind": "ServiceAccount", "name": backend, "namespace": namespace}],
        }
    )
    try:
        identity = await _eventually(reviewer, token)
        assert identity.pod_uid == pod.metadata.uid
    finally:
        rbac.delete_cluster_role_binding(backend)
        rbac.delete_cluster_role(backend)
        await api.close()


async def _eventually(reviewer: PodTokenReviewer, token: str) -> PodIdentity:
    """RBAC changes reach the authorizer's cache within a moment."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return await reviewer.review(token)
        except FailedPrecondition:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
