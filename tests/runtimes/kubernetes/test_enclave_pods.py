"""An operator runs enclaves as pods: a user creates one and uses it, and nothing is left.

The enclave's key is made in the pod; its CSR reaches the backend over TLS with the
pod's projected token; cert-manager signs it through the licensing CA's ClusterIssuer.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client

from licensing_client import Created, LicensingClient, Progress
from licensing_client.gen.licensing import v1
from tests.clients.test_cli_enclaves import CHECKS, PHASES
from tests.kube.licensing_stack import KubeStack
from tests.support import PASSWORD


def _client(kube: KubeStack) -> LicensingClient:
    stack = kube.stack
    return LicensingClient.connect(stack.enroll_addr, stack.api_addr, ca_pem=stack.ca_pem)


async def _until_gone(kube: KubeStack, enclave_id: str, within: float = 30) -> dict[str, list[str]]:
    deadline = time.monotonic() + within
    left = await asyncio.to_thread(kube.objects, enclave_id)
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        left = await asyncio.to_thread(kube.objects, enclave_id)
    return left


async def test_an_enclave_pod_is_created_attested_used_and_deleted(
    kube_licensing: KubeStack,
) -> None:
    async with _client(kube_licensing) as licensing:
        name = f"kube-{uuid.uuid4().hex[:10]}"
        await licensing.sign_up(name, PASSWORD)
        await licensing.log_in(name, PASSWORD)
        nonce = b"kube-nonce-" + uuid.uuid4().bytes
        events = [e async for e in licensing.create_enclave(nonce=nonce)]
        phases = [v1.Phase(e.phase).name for e in events if isinstance(e, Progress)]
        assert phases == PHASES, [getattr(e, "message", e) for e in events]
        created = events[-1]
        assert isinstance(created, Created)
        assert created.attestation is not None
        assert [c.check.value for c in created.attestation.report.checks] == CHECKS
        enclave = created.enclave

        # The Kubernetes objects, as an operator inspects them.
        with kube_licensing.plane.api_client() as api:
            core = client.CoreV1Api(api)
            pod = core.read_namespaced_pod(f"enclave-{enclave.id}", kube_licensing.namespace)
            assert pod.metadata.labels["licensing.example/enclave-id"] == enclave.id
            assert pod.metadata.labels["licensing.example/owner"] == enclave.owner
            spec = pod.spec
            assert spec.automount_service_account_token is False
            assert spec.security_context.run_as_non_root is True
            assert spec.security_context.seccomp_profile.type == "RuntimeDefault"
            (container,) = spec.containers
            sc = container.security_context
            assert sc.allow_privilege_escalation is False
            assert sc.read_only_root_filesystem is True
            assert sc.capabilities.drop == ["ALL"]
            assert sc.seccomp_profile.type == "RuntimeDefault"
            assert container.resources.limits
            assert container.resources.requests
            (projected,) = [v for v in spec.volumes if v.projected]
            token = projected.projected.sources[0].service_account_token
            assert token.audience == "licensing-backend"
            for kind, fn in (
                ("configmap", core.read_namespaced_config_map),
                ("service", core.read_namespaced_service),
            ):
                obj = fn(f"enclave-{enclave.id}", kube_licensing.namespace)
                (owner,) = obj.metadata.owner_references
                assert (owner.kind, owner.uid) == ("Pod", pod.metadata.uid), kind
            # No Secret anywhere in the namespace holds a private key.
            for secret in core.list_namespaced_secret(kube_licensing.namespace).items:
                for value in (secret.data or {}).values():
                    assert b"PRIVATE KEY" not in __import__("base64").b64decode(value)

        # The certificate cert-manager issued is the one attested, and it serves the enclave.
        certificate = x509.load_pem_x509_certificate(enclave.certificate_pem.encode())
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert (
            f"enclave-{enclave.id}.{kube_licensing.namespace}.svc"
            in names.value.get_values_for_type(x509.DNSName)
        )
        workload = await licensing.open_enclave(enclave.id)
        assert (await workload.get_identity()).matches_pinned_certificate
        await workload.put_secret("licence", b"seat-1")
        assert await workload.get_secret("licence") == b"seat-1"
        signed = await workload.sign(b"sign me")
        public = certificate.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(signed.signature, b"sign me", ec.ECDSA(hashes.SHA256()))

        await licensing.delete_enclave(enclave.id)
        assert await _until_gone(kube_licensing, enclave.id) == {}


async def test_twenty_concurrent_creates_complete(kube_licensing: KubeStack) -> None:
    async with _client(kube_licensing) as licensing:
        name = f"kube20-{uuid.uuid4().hex[:10]}"
        await licensing.sign_up(name, PASSWORD)
        await licensing.log_in(name, PASSWORD)

        async def create() -> Created:
            events = [e async for e in licensing.create_enclave()]
            assert isinstance(events[-1], Created), events[-1]
            return events[-1]

        done = await asyncio.gather(*(create() for _ in range(20)))
        assert all(c.enclave.phase == v1.Phase.ATTESTED for c in done)
        await asyncio.gather(*(licensing.delete_enclave(c.enclave.id) for c in done))
        for c in done:
            assert await _until_gone(kube_licensing, c.enclave.id) == {}
