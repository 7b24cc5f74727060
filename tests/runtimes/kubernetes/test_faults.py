"""Crashes and faults with enclaves as pods: nothing is orphaned, everything ends clearly.

The backend killed mid-provisioning, an enclave's pod deleted behind the backend's
back, the apiserver restarted in the middle of a create, and the backend's own
credentials tried where they must not reach.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from licensing_client import Created, LicensingClient, Progress
from licensing_client.gen.licensing import v1
from tests.kube.licensing_stack import ENCLAVES, KubeStack
from tests.provisioning.streams import kill_and_wait_restart
from tests.support import PASSWORD


def _client(kube: KubeStack) -> LicensingClient:
    stack = kube.stack
    return LicensingClient.connect(stack.enroll_addr, stack.api_addr, ca_pem=stack.ca_pem)


async def _logged_in(licensing: LicensingClient) -> None:
    name = f"kf-{uuid.uuid4().hex[:10]}"
    await licensing.sign_up(name, PASSWORD)
    await licensing.log_in(name, PASSWORD)


async def _until(probe: object, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await asyncio.to_thread(probe):  # type: ignore[arg-type]
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {within}s")


async def test_a_backend_killed_mid_provisioning_leaves_no_orphan(
    kube_licensing: KubeStack,
) -> None:
    async with _client(kube_licensing) as licensing:
        await _logged_in(licensing)
        stream = licensing.create_enclave(request_id=f"kill-{uuid.uuid4().hex}")
        enclave_id = ""
        async for event in stream:
            if isinstance(event, Progress) and v1.Phase(event.phase) == v1.Phase.SCHEDULED:
                enclave_id = event.enclave_id
                await asyncio.to_thread(kill_and_wait_restart, kube_licensing.stack, "backend")
                break
        assert enclave_id
        # The restarted backend's reconciler ends it and deletes its pod and objects.
        await _until(lambda: kube_licensing.objects(enclave_id) == {})
        enclave = await licensing.get_enclave(enclave_id)
        assert enclave.phase == v1.Phase.FAILED
        assert enclave.failure_reason == "PROVISIONING_INTERRUPTED"


async def test_a_pod_deleted_behind_the_backends_back_is_reported_lost(
    kube_licensing: KubeStack,
) -> None:
    async with _client(kube_licensing) as licensing:
        await _logged_in(licensing)
        events = [e async for e in licensing.create_enclave()]
        created = events[-1]
        assert isinstance(created, Created)
        enclave_id = created.enclave.id
        with kube_licensing.plane.api_client() as api:
            client.CoreV1Api(api).delete_namespaced_pod(f"enclave-{enclave_id}", ENCLAVES)

        async def lost() -> bool:
            return (await licensing.get_enclave(enclave_id)).phase == v1.Phase.FAILED

        deadline = time.monotonic() + 30
        while not await lost():
            assert time.monotonic() < deadline, "the lost pod was not noticed"
            await asyncio.sleep(0.3)
        assert (await licensing.get_enclave(enclave_id)).failure_reason == "WORKLOAD_LOST"
        await _until(lambda: kube_licensing.objects(enclave_id) == {})


async def test_a_create_survives_an_apiserver_restart(kube_licensing: KubeStack) -> None:
    async with _client(kube_licensing) as licensing:
        await _logged_in(licensing)
        restarted = False
        phases = []
        async for event in licensing.create_enclave():
            if isinstance(event, Progress):
                phases.append(v1.Phase(event.phase))
                if phases[-1] == v1.Phase.SCHEDULED and not restarted:
                    await asyncio.to_thread(kube_licensing.plane.restart_apiserver)
                    restarted = True
            last = event
        assert restarted
        assert isinstance(last, Created), phases
        assert last.enclave.phase == v1.Phase.ATTESTED
        await licensing.delete_enclave(last.enclave.id)
        await _until(lambda: kube_licensing.objects(last.enclave.id) == {})


def test_the_backends_credentials_reach_nothing_else(kube_licensing: KubeStack) -> None:
    kubeconfig = kube_licensing.stack.extra_env["LICENSING_KUBERNETES_KUBECONFIG"]
    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    with client.ApiClient(configuration) as api:
        core = client.CoreV1Api(api)
        core.list_namespaced_pod(ENCLAVES)  # what it needs works
        attempts: list[Callable[[], object]] = [
            lambda: core.list_namespaced_secret(ENCLAVES),
            lambda: core.read_namespaced_secret("licensing-ca", "cert-manager"),
            lambda: core.create_namespaced_pod(
                "default",
                {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "x", "image": "x"}]}},
            ),
            lambda: core.list_namespace(),
            lambda: core.list_node(),
        ]
        for forbidden in attempts:
            with pytest.raises(ApiException) as refused:
                forbidden()
            assert refused.value.status == 403
