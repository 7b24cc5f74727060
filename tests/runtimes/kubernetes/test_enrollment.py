"""Only the pod made for an enclave gets its certificate, whatever token others present.

The enrolment desk with the real TokenReview: a token for another audience, the token of
another pod, and an expired token signed with the cluster's own key are all refused, and
the enclave's own pod's token is taken. Over the network, the live stack's enrolment
listener answers strangers with the same statuses and reasons.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jwt
import pytest
from enclave.v1 import enrollment_pb2, enrollment_pb2_grpc
from kubernetes import client

from licensing_common.errors import AlreadyExists, PermissionDenied, Unauthenticated
from licensing_server.kube import KubeApi, KubeConfig, PodTokenReviewer
from licensing_server.runtimes import EnrollmentDesk
from tests.kube.cluster import KubeControlPlane
from tests.kube.licensing_stack import KubeStack

AUDIENCE = "licensing-backend"
SERVICE_ACCOUNT = "enclave-sa"


@pytest.fixture
def namespace(kube_control_plane: KubeControlPlane) -> str:
    name = kube_control_plane.create_namespace(f"enrol-{uuid.uuid4().hex[:8]}")
    kube_control_plane.create_service_account(name, SERVICE_ACCOUNT)
    return name


@pytest.fixture
async def desk(kube_control_plane: KubeControlPlane) -> AsyncIterator[EnrollmentDesk]:
    api = KubeApi(KubeConfig(kubeconfig=str(kube_control_plane.kubeconfig), workers=2))
    yield EnrollmentDesk(PodTokenReviewer(api, AUDIENCE), answer_within=10)
    await api.close()


def _pod(plane: KubeControlPlane, namespace: str) -> Any:
    with plane.api_client() as api:
        return client.CoreV1Api(api).create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": f"enclave-{uuid.uuid4().hex[:8]}"},
                "spec": {
                    "serviceAccountName": SERVICE_ACCOUNT,
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "enclave", "image": "licensing-enclave:test"}],
                },
            },
        )


def _token(plane: KubeControlPlane, namespace: str, pod: Any, audience: str = AUDIENCE) -> str:
    spec = {
        "audiences": [audience],
        "expirationSeconds": 600,
        "boundObjectRef": {
            "kind": "Pod",
            "apiVersion": "v1",
            "name": pod.metadata.name,
            "uid": pod.metadata.uid,
        },
    }
    with plane.api_client() as api:
        answer: Any = client.CoreV1Api(api).create_namespaced_service_account_token(
            SERVICE_ACCOUNT, namespace, {"spec": spec}
        )
    token: str = answer.status.token
    return token


def _expired(plane: KubeControlPlane, token: str) -> str:
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    hour_ago = int(time.time()) - 3600
    claims.update(iat=hour_ago - 600, nbf=hour_ago - 600, exp=hour_ago)
    key = (plane.pki / "sa.key").read_text()
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": header["kid"]})


async def test_only_the_enclaves_own_pod_gets_the_certificate(
    kube_control_plane: KubeControlPlane, desk: EnrollmentDesk, namespace: str
) -> None:
    plane = kube_control_plane
    ours, other = _pod(plane, namespace), _pod(plane, namespace)
    enclave_id = str(uuid.uuid4())
    enrollment = desk.expect(
        enclave_id,
        namespace=namespace,
        service_account=SERVICE_ACCOUNT,
        pod_name=ours.metadata.name,
        pod_uid=ours.metadata.uid,
    )
    own = _token(plane, namespace, ours)
    refusals = {
        "another audience": (_token(plane, namespace, ours, audience="elsewhere"), Unauthenticated),
        "another pod": (_token(plane, namespace, other), PermissionDenied),
        "expired": (_expired(plane, own), Unauthenticated),
    }
    for what, (token, error) in refusals.items():
        with pytest.raises(error) as refused:
            await desk.enroll(enclave_id, token, "CSR")
        assert refused.value.reason in ("ENROLLMENT_TOKEN_INVALID", "ENROLLMENT_POD_MISMATCH"), what
        assert not enrollment.csr.done(), f"{what}: the CSR went through"

    answer = asyncio.create_task(desk.enroll(enclave_id, own, "THE CSR"))
    assert await asyncio.wait_for(enrollment.csr, 10) == "THE CSR"
    desk.deliver(enclave_id, "CERTIFICATE", ["CA"])
    assert await answer == ("CERTIFICATE", ["CA"])


async def test_only_the_enclaves_own_pod_hears_its_revocations(
    kube_control_plane: KubeControlPlane, desk: EnrollmentDesk, namespace: str
) -> None:
    """The pods' counterpart of the local pipe: logouts down a stream the pod keeps open."""
    plane = kube_control_plane
    ours, other = _pod(plane, namespace), _pod(plane, namespace)
    enclave_id = str(uuid.uuid4())
    desk.expect(
        enclave_id,
        namespace=namespace,
        service_account=SERVICE_ACCOUNT,
        pod_name=ours.metadata.name,
        pod_uid=ours.metadata.uid,
    )
    with pytest.raises(PermissionDenied):
        await anext(desk.revocations(enclave_id, _token(plane, namespace, other)))

    assert desk.revoke_sessions(["before"]) == 0  # nobody listens yet: kept for later
    stream = desk.revocations(enclave_id, _token(plane, namespace, ours))
    assert await asyncio.wait_for(anext(stream), 10) == ["before"]  # the recent ones first
    assert desk.revoke_sessions(["s-1", "s-2"]) == 1
    assert await asyncio.wait_for(anext(stream), 10) == ["s-1", "s-2"]
    desk.forget(enclave_id)  # the enclave was stopped: its stream ends
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(stream), 10)

    # After a backend restart the runtime readmits the pods that outlived it: the pod may
    # reopen its stream, but not enrol a second time.
    desk.readmit(
        enclave_id,
        namespace=namespace,
        service_account=SERVICE_ACCOUNT,
        pod_name=ours.metadata.name,
        pod_uid=ours.metadata.uid,
    )
    again = desk.revocations(enclave_id, _token(plane, namespace, ours))
    assert await asyncio.wait_for(anext(again), 10) == ["before", "s-1", "s-2"]
    with pytest.raises(AlreadyExists):
        await desk.enroll(enclave_id, _token(plane, namespace, ours), "ANOTHER CSR")
    desk.forget(enclave_id)


def test_strangers_get_clear_statuses_from_the_enrolment_listener(
    kube_licensing: KubeStack,
) -> None:
    stack = kube_licensing.stack
    address = stack.extra_env["LICENSING_KUBERNETES_ENROLLMENT_ADDR"]
    credentials = grpc.ssl_channel_credentials(root_certificates=stack.ca_pem)
    with grpc.secure_channel(address, credentials) as channel:
        enroll = enrollment_pb2_grpc.EnrollmentServiceStub(channel).Enroll
        request = enrollment_pb2.EnrollRequest(enclave_id=str(uuid.uuid4()), csr_pem="x")
        with pytest.raises(grpc.RpcError) as no_token:
            enroll(request, timeout=10)
        assert no_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as not_a_pod:
            enroll(request, timeout=10, metadata=(("authorization", "Bearer a.b.c"),))
        assert not_a_pod.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "ENROLLMENT_TOKEN_INVALID" in str(not_a_pod.value.trailing_metadata())
