"""A Python developer uses the generated betterproto client over TLS and mutual TLS."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpclib
import pytest
from grpclib.exceptions import GRPCError

from licensing_client import api_channel, bearer, enrollment_channel
from licensing_client.attestation import Check, verify_attestation
from licensing_client.gen.licensing import v1
from tests.support import PASSWORD, Stack, key_pem, make_csr, new_key


async def test_signup_login_and_whoami_with_the_generated_client(
    stack: Stack, tmp_path: Path
) -> None:
    name = f"py-{uuid.uuid4().hex[:8]}"
    key = new_key()
    enroll = enrollment_channel(stack.enroll_addr, ca_file=stack.ca_path)
    try:
        auth = v1.AuthServiceStub(enroll)
        signed_up = await auth.sign_up(v1.SignUpRequest(username=name, password=PASSWORD))
        login = await auth.login(
            v1.LoginRequest(username=name, password=PASSWORD, csr_pem=make_csr(key))
        )
        bundle = await v1.TrustServiceStub(enroll).get_trust_bundle(v1.GetTrustBundleRequest())
    finally:
        enroll.close()
    assert login.user_id == signed_up.user_id
    assert bundle.ca_certificates_pem == login.ca_certificates_pem
    assert '"kid"' in bundle.jwks_json

    (tmp_path / "me.key").write_bytes(key_pem(key))
    (tmp_path / "me.pem").write_text(login.client_certificate_pem)
    api = api_channel(
        stack.api_addr,
        ca_file=stack.ca_path,
        cert_file=tmp_path / "me.pem",
        key_file=tmp_path / "me.key",
    )
    try:
        me = await v1.AuthServiceStub(api).get_current_user(
            v1.GetCurrentUserRequest(), metadata=bearer(login.access_token)
        )
        assert me.user.username == name

        # Server streaming through the generated client: one message per phase, ending
        # ATTESTED with the attestation over our nonce, which the verifier reads as it is.
        enclaves = v1.EnclaveServiceStub(api)
        nonce = b"n" * 16
        events = [
            event
            async for event in enclaves.create_enclave(
                v1.CreateEnclaveRequest(request_id="r1", nonce=nonce),
                metadata=bearer(login.access_token),
            )
        ]
        assert [e.phase for e in events] == [
            v1.Phase.ACCEPTED,
            v1.Phase.SCHEDULED,
            v1.Phase.RUNNING,
            v1.Phase.CERTIFICATE_ISSUED,
            v1.Phase.READY,
            v1.Phase.ATTESTING,
            v1.Phase.ATTESTED,
        ]
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert events[-1].enclave.endpoint
        assert [bool(e.attestation.quote) for e in events] == [False] * 6 + [True]
        report = verify_attestation(
            events[-1].attestation,
            nonce=nonce,
            expected_certificate_pem=events[-1].enclave.certificate_pem,
            trusted_ca_pem=list(bundle.ca_certificates_pem),
        )
        assert [r.check for r in report.checks] == list(Check)
        await enclaves.delete_enclave(
            v1.DeleteEnclaveRequest(enclave_id=events[-1].enclave_id),
            metadata=bearer(login.access_token),
        )
        # Errors arrive as grpclib statuses.
        with pytest.raises(GRPCError) as raised:
            await enclaves.get_enclave(
                v1.GetEnclaveRequest(enclave_id=events[-1].enclave_id),
                metadata=bearer(login.access_token),
            )
        assert raised.value.status == grpclib.Status.NOT_FOUND
    finally:
        api.close()
